"""What ``status`` shows: phase, backfill progress with ETA, counts, lag, last error, and the
runway of the server's change history."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from ..apply.consumer import group_id
from ..base import logs, topics
from ..base.progress import format_duration
from ..base.settings import Settings
from ..base.state import CATCHING_UP, CUT_OVER, READY, StateStore
from ..capture.tailer import HEARTBEAT_STALE_AFTER
from ..migration import Migration
from . import runway


def _timestamp_seconds(ts: Any) -> float | None:
    return float(ts.time) if ts is not None and hasattr(ts, "time") else None


def migration_status(settings: Settings, migration: Migration | None,
                     state: dict[str, Any]) -> dict[str, Any]:
    """A JSON-friendly status of one migration, lag measured now from the broker."""
    backfill = state.get("backfill") or {}
    tail = state.get("tail") or {}
    counts = state.get("counts") or {}
    status: dict[str, Any] = {
        "migration": state["_id"],
        "collection": state.get("collection"),
        "phase": state.get("phase"),
        "paused": bool(state.get("paused")),
        "counts": {k: counts.get(k, 0) for k in ("produced", "skipped", "consumed", "applied",
                                                 "updated", "deleted", "unchanged", "failed",
                                                 "retried")},
        "last_error": _masked(state.get("last_error")),
        "failure": state.get("failure"),
        # The pieces that stopped on an error (until they run again), and why.
        "stopped": {component: _masked(record)
                    for component, record in (state.get("stopped") or {}).items() if record},
        # Pieces running but making no progress where there is work (the consumer watchdog).
        "stalled": {component: _masked(record)
                    for component, record in (state.get("stalled") or {}).items() if record},
        "completed_at": state.get("completed_at"),
    }
    total, scanned = backfill.get("total"), backfill.get("scanned", 0)
    if backfill:
        started = backfill.get("started_at") or state.get("created_at")
        eta = None
        if started and total and not backfill.get("done") and scanned:
            elapsed = (dt.datetime.now(dt.UTC) - _aware(started)).total_seconds()
            eta = (total - scanned) / (scanned / elapsed) if elapsed > 0 else None
        status["backfill"] = {"scanned": scanned, "total": total,
                              "done": bool(backfill.get("done")), "eta_seconds": eta}
    apply_state = state.get("apply")
    if apply_state:
        status["apply"] = {"done": bool(apply_state.get("done"))}
    if tail.get("armed_at") is not None:
        heartbeat = tail.get("heartbeat")
        position = _timestamp_seconds(tail.get("last_event_time"))
        status["tail"] = {
            "armed": True,
            "seconds_since_heartbeat": round(time.time() - heartbeat, 1) if heartbeat else None,
            "last_event_age_seconds": round(time.time() - position, 1) if position else None,
            "recoveries": tail.get("recoveries", 0),
            "last_recovery": tail.get("last_recovery"),
        }
        if status["phase"] != CUT_OVER:
            status["history"] = _history(settings, tail, status.get("backfill"))
    if migration is not None and (tail.get("armed_at") is not None or backfill):
        lag = topics.group_lag(settings, settings.topic(migration.collection),
                               group_id(settings, migration))
        status["lag"] = lag.as_dict()
        heartbeat = (status.get("tail") or {}).get("seconds_since_heartbeat")
        # Measured, not stored: the always-on deployment never writes this phase itself. An
        # idle tailer writes its heartbeat every HEARTBEAT_INTERVAL; three missed mean stopped.
        if status["phase"] == CATCHING_UP and lag.total == 0 and heartbeat is not None \
                and heartbeat < HEARTBEAT_STALE_AFTER:
            status["phase"] = READY
    return status


def _history(settings: Settings, tail: dict[str, Any],
             backfill: dict[str, Any] | None) -> dict[str, Any]:
    """The runway of the tailer's resume point in the server's change history."""
    window, unknown = runway.history_window(settings.db.client)
    if window is None:
        return {"unknown": unknown}
    position = tail.get("position_time")
    if position is None and tail.get("resume_token") is None:
        position = _timestamp_seconds(tail.get("armed_at"))  # not started: it starts there
    eta = (backfill or {}).get("eta_seconds")
    return runway.assess(window, position, eta if not (backfill or {}).get("done") else None)


def _masked(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """An error record whose message cannot show a secret."""
    if not record:
        return record
    return {**record, "error": logs.mask(str(record.get("error") or ""))}


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def all_status(settings: Settings, migrations: dict[str, Migration],
               name: str | None = None) -> list[dict[str, Any]]:
    store = StateStore(settings.db, settings.state_collection)
    states = [store.get(name)] if name else store.all()
    return [migration_status(settings, migrations.get(s["_id"]), s) for s in states if s]


def render(status: dict[str, Any]) -> str:
    """Human-readable block for one migration."""
    lines = [f"{status['migration']} ({status['collection']}): {status['phase'] or 'new'}"
             + (" [paused]" if status["paused"] else "")]
    b = status.get("backfill")
    if b:
        pct = f" ({100 * b['scanned'] / b['total']:.0f}%)" if b.get("total") else ""
        eta = "" if b["done"] else f", ETA {format_duration(b.get('eta_seconds'))}"
        lines.append(f"  backfill: {b['scanned']:,}/{b.get('total') or 0:,}{pct}"
                     + (" done" if b["done"] else eta))
    c = status["counts"]
    lines.append("  events: produced {produced:,} (skipped {skipped:,} already migrated), "
                 "consumed {consumed:,}; documents: updated "
                 "{updated:,}, deleted {deleted:,}, unchanged {unchanged:,}, failed {failed:,}"
                 .format(**c))
    lag = status.get("lag")
    if lag is not None:
        parts = ", ".join(f"p{p}={v['lag']}" for p, v in lag["partitions"].items())
        lines.append(f"  lag: {lag['total']:,} events" + (f" ({parts})" if parts else ""))
    t = status.get("tail")
    if t:
        age = t.get("seconds_since_heartbeat")
        lines.append("  tailer: " + (f"last checkpoint {age:.0f}s ago" if age is not None
                                     else "armed, not started"))
        recovery = t.get("last_recovery")
        if recovery:
            lines.append(f"  history lost and recovered {t.get('recoveries', 1)}x, last at "
                         f"{recovery.get('at')}: capture re-armed, backfill again "
                         f"({recovery.get('backfill')})")
    h = status.get("history")
    if h and "unknown" in h:
        lines.append(f"  change history: window unknown ({h['unknown']})")
    elif h:
        age = h.get("resume_point_age_seconds")
        lines.append(f"  change history: the server keeps {format_duration(h['window_seconds'])}"
                     + (f"; resume point {format_duration(age)} old, runway "
                        f"{format_duration(max(0.0, h['runway_seconds']))}"
                        if age is not None else ""))
        for warning in h["warnings"]:
            lines.append(f"  WARNING: {warning}")
    if status.get("failure"):
        lines.append(f"  failed: {status['failure'].get('reason')}")
    stopped = status.get("stopped") or {}
    for component, record in stopped.items():
        document = f" on document {record['id']!r}" if record.get("id") is not None else ""
        lines.append(f"  {component} STOPPED{document}: {record.get('error')}")
    for component, record in (status.get("stalled") or {}).items():
        lines.append(f"  {component} STALLED: {record.get('error')}")
    err = status.get("last_error")
    if err and err.get("component") not in stopped:
        lines.append(f"  last error: {err.get('id')!r}: {err.get('error')}")
    if status.get("completed_at"):
        lines.append(f"  cut over at {status['completed_at']}")
    return "\n".join(lines)
