"""What ``status`` shows of a shared backfill's ranges and of the throttle in force.

The ranges themselves are the backfill's (capture's); ``status`` is handed their summary by
its caller (see :data:`~cdc_migrator.operations.status.RangesOf`).
"""

from __future__ import annotations

from typing import Any

from ..core.state import MigrationState
from ..core.throttle import describe_hold


def throttle_status(state: MigrationState) -> dict[str, Any]:
    """The throttle in force and why: ``manual`` (``cdc-migrator throttle``), ``auto`` (a
    bound exceeded, holding everything now), or none; and why the replication lag is unknown
    while its bound runs without it (``--on-lag-unknown run``)."""
    throttle = state.throttle
    status: dict[str, Any] = {"rate": throttle.rate, "set_at": throttle.set_at,
                              "reason": "manual" if throttle.rate is not None else None,
                              "hold": None, "refused": throttle.refused,
                              "lag_unknown": throttle.lag_unknown}
    if throttle.holding and throttle.auto is not None:
        status["reason"] = "auto"
        status["hold"] = {**throttle.auto, "why": describe_hold(throttle.auto)}
    return status


def render_lines(status: dict[str, Any]) -> list[str]:
    """The lines of ``status`` for the ranges and the throttle."""
    lines = []
    ranges = (status.get("backfill") or {}).get("ranges")
    if ranges:
        owners = ", ".join(f"#{r['range']} by {r['owner']}" for r in ranges["in_progress"])
        lines.append(f"  ranges: {ranges['done']}/{ranges['total']} done, "
                     f"{len(ranges['in_progress'])} in progress"
                     + (f" ({owners})" if owners else "") + f", {ranges['left']} left")
    throttle = status.get("throttle")
    if throttle and throttle.get("hold"):
        lines.append(f"  throttle: auto, holding: {throttle['hold']['why']}"
                     + (f"; manual rate {throttle['rate']:g} documents/s"
                        if throttle.get("rate") is not None else ""))
    elif throttle and throttle.get("rate") is not None:
        lines.append(f"  throttle: manual, {throttle['rate']:g} documents/s "
                     f"(set at {throttle.get('set_at')})")
    if throttle and throttle.get("refused"):
        lines.append(f"  throttle REFUSED: {throttle['refused']}")
    unknown = (throttle or {}).get("lag_unknown")
    if unknown:
        lines.append(f"  replication lag: unknown, --max-replication-lag not enforced "
                     f"({unknown.get('reason')}; {unknown.get('fix')})")
    return lines
