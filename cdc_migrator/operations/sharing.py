"""What ``status`` shows of a shared backfill's ranges and of the throttle in force."""

from __future__ import annotations

import time
from typing import Any

from ..base.ranges import RangeStore
from ..base.settings import Settings
from ..base.state import MigrationState
from ..base.throttle import describe_hold


def ranges_status(settings: Settings, name: str) -> dict[str, Any] | None:
    """The ranges of the backfill: how many are done, which are in progress (by whom, how
    far), how many are left (not started, or their worker's lease ran out). None before a
    backfill planned any."""
    ranges = RangeStore(settings.db[settings.state_collection]).ranges(name)
    if not ranges:
        return None
    in_progress = [{"range": r.index, "owner": r.owner, "scanned": r.scanned,
                    "lease_left_seconds": round(float(r.lease_until or 0) - time.time(), 1)}
                   for r in ranges if r.leased]
    done = sum(r.done for r in ranges)
    return {"total": len(ranges), "done": done, "in_progress": in_progress,
            "left": len(ranges) - done - len(in_progress)}


def throttle_status(state: MigrationState) -> dict[str, Any]:
    """The throttle in force and why: ``manual`` (``cdc-migrator throttle``), ``auto`` (a
    bound exceeded, holding everything now), or none."""
    throttle = state.throttle
    status: dict[str, Any] = {"rate": throttle.rate, "set_at": throttle.set_at,
                              "reason": "manual" if throttle.rate is not None else None,
                              "hold": None, "refused": throttle.refused}
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
    return lines
