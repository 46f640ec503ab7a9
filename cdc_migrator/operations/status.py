"""What ``status`` shows: phase, backfill progress with ETA, counts, lag, last error, the
runway of the server's change history, and the code in force with the code each member runs."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from pymongo import MongoClient

from ..base import logs, topics
from ..base.progress import format_duration
from ..base.settings import Settings
from ..base.topology import ShardConnector
from ..core.fingerprint import fingerprint, short
from ..core.state import CONSUMER_SILENT_AFTER, MigrationState, Phase, TailState
from ..migration import Migration
from . import runway, sharing
from .revert import old_shape_note

#: What ``status`` shows of a migration's backfill ranges (None before any were planned), by
#: migration name: given by the caller, since the ranges are the backfill's.
RangesOf = Callable[[str], "dict[str, Any] | None"]
#: The group's lag of a migration, measured by a caller that keeps its own Kafka client (None:
#: it could not be measured now).
LagOf = Callable[[Migration], "topics.Lag | None"]


def _timestamp_seconds(ts: Any) -> float | None:
    return float(ts.time) if ts is not None and hasattr(ts, "time") else None


def ready_for_cutover(state: MigrationState, lag_total: int) -> bool:
    """The one rule of the "ready for cutover" phase, measured rather than stored: the
    backfill finished, the group has no backlog, and the tailer runs (a fresh heartbeat) or
    stopped cleanly after its last checkpoint (``cutover`` then catches up by itself); and no
    member holds (runs other code than the code in force)."""
    if state.phase is not Phase.CATCHING_UP or lag_total or state.code.holding():
        return False
    tail = state.tail
    stopped_cleanly = tail.heartbeat is not None and tail.stopped_at is not None \
        and tail.stopped_at >= tail.heartbeat and "tailer" not in state.stopped
    return tail.running or stopped_cleanly


def migration_status(settings: Settings, migration: Migration | None,
                     state: MigrationState, *, ranges_of: RangesOf | None = None,
                     lag_of: LagOf | None = None,
                     client: MongoClient | None = None) -> dict[str, Any]:
    """A JSON-friendly status of one migration, lag and group members measured now from the
    broker; with ``ranges_of``, the backfill's ranges too. ``lag_of`` and ``client`` (for the
    change history's window) stand in for the settings' clients; with ``lag_of``, the group's
    members are not described (that would take a Kafka client of the settings')."""
    backfill, tail = state.backfill, state.tail
    status: dict[str, Any] = {
        "migration": state.name,
        "collection": state.collection,
        "phase": state.phase.label if state.phase else None,
        "paused": state.paused,
        "counts": state.counts.as_dict(),
        # Produced events by what caused them: the documents' own writes and scans, and
        # changes to the collections the migration depends on.
        "events": {"own": state.counts.produced - state.counts.dependency,
                   "dependency": state.counts.dependency},
        "last_error": _masked(state.last_error),
        "failure": _readable(state.failure),
        # The pieces that stopped on an error (until they run again), and why.
        "stopped": {component: _masked(record) for component, record in state.stopped.items()},
        # Pieces running but making no progress where there is work (the consumer watchdog).
        "stalled": {component: _masked(record) for component, record in state.stalled.items()},
        "completed_at": state.completed_at,
        "reverted_at": state.reverted_at,
    }
    if state.phase is Phase.REVERTED:
        # A revert recorded before it said (an older version's) installed no validator.
        old_shape = state.old_shape or {"schema": None, "enforced": False}
        status["old_shape"] = {**old_shape, "note": old_shape_note(old_shape)}
    if backfill is not None:
        started = backfill.started_at or state.created_at
        eta = None
        if started and backfill.total and not backfill.done and backfill.scanned:
            elapsed = (dt.datetime.now(dt.UTC) - _aware(started)).total_seconds()
            eta = (backfill.total - backfill.scanned) / (backfill.scanned / elapsed) \
                if elapsed > 0 else None
        status["backfill"] = {"scanned": backfill.scanned, "total": backfill.total,
                              "total_estimate": backfill.estimate,
                              "done": backfill.done, "eta_seconds": eta,
                              "ranges": ranges_of(state.name) if ranges_of else None}
    status["throttle"] = sharing.throttle_status(state)
    status["code"] = code_status(settings, migration, state)
    if state.apply is not None:
        status["apply"] = {"done": state.apply.done}
    if state.armed:
        position = _timestamp_seconds(tail.last_event_time)
        status["tail"] = {
            "armed": True,
            "seconds_since_heartbeat": round(time.time() - tail.heartbeat, 1)
            if tail.heartbeat else None,
            "last_event_age_seconds": round(time.time() - position, 1) if position else None,
            "recoveries": tail.recoveries,
            "last_recovery": _readable(tail.last_recovery),
        }
        if state.phase is not Phase.CUT_OVER:
            status["history"] = _history(client or settings.db.client, settings.client_for,
                                         tail, status.get("backfill"))
    if migration is not None and (state.armed or backfill is not None):
        lag = lag_of(migration) if lag_of is not None else topics.group_lag(
            settings, settings.topic(migration.collection), settings.group(migration.name))
        if lag is not None:
            status["lag"] = lag.as_dict()
            if ready_for_cutover(state, lag.total):
                status["phase"] = Phase.READY.label
        if lag_of is None:  # `status` itself: a caller with its own clients asks no more
            status["group"] = _group(settings, migration, state)
    return status


def _group(settings: Settings, migration: Migration, state: MigrationState) -> dict[str, Any]:
    """The consumer group's members, and those silent: a consumer that reported itself alive
    (``consumers`` of the state) and stopped, yet is still a member. Killed without
    ``--instance-id``, it keeps its partitions until its session times out: nothing consumes
    them meanwhile, and cutover waits for them."""
    members = topics.group_description(settings, settings.group(migration.name),
                                       settings.topic(migration.collection))
    silent = []
    for member in members:
        at = state.consumers.get(member.member_id)
        if at is not None and time.time() - at >= CONSUMER_SILENT_AFTER:
            silent.append({"member_id": member.member_id, "host": member.host,
                           "instance_id": member.instance_id,
                           "partitions": member.partitions,
                           "silent_seconds": round(time.time() - at, 1),
                           "session_timeout_seconds": topics.CONSUMER_SESSION_TIMEOUT_MS / 1000})
    return {"members": len(members), "silent": silent}


def code_status(settings: Settings, migration: Migration | None,
                state: MigrationState) -> dict[str, Any]:
    """The code in force, the code in the transforms directory (``loaded``), whether they
    differ (and the migration was cut over: edited since), and each live member's code."""
    code = state.code
    loaded = fingerprint(migration, settings.schemas) if migration is not None else None
    differs = None not in (loaded, code.fingerprint) and loaded != code.fingerprint
    return {
        "fingerprint": code.fingerprint, "since": code.since, "loaded": loaded,
        "differs": differs, "edited_after_cutover": differs and state.phase is Phase.CUT_OVER,
        "members": [{"member": name, "component": m.component, "fingerprint": m.fingerprint,
                     "holding": m.holding, "host": m.host,
                     "seconds_since_report": round(time.time() - m.at, 1)}
                    for name, m in sorted(code.live_members().items())],
    }


def _history(client: MongoClient, connect: ShardConnector, tail: TailState,
             backfill: dict[str, Any] | None) -> dict[str, Any]:
    """The runway of the tailer's resume point in the server's change history (through
    mongos, each shard's, ``connect`` reaching its members)."""
    window, unknown = runway.cluster_window(client, connect)
    if window is None:
        return {"unknown": unknown}
    position = tail.position_time
    if position is None and tail.resume_token is None:
        position = _timestamp_seconds(tail.armed_at)  # not started: it starts there
    eta = (backfill or {}).get("eta_seconds")
    return runway.assess(window, position, eta if not (backfill or {}).get("done") else None)


def _code_lines(status: dict[str, Any]) -> list[str]:
    code = status.get("code") or {}
    if not code.get("fingerprint") and not code.get("members"):
        return []
    name = status["migration"]
    lines = [f"  code: fingerprint {short(code.get('fingerprint'))} in force"
             + (f" since {code['since']}" if code.get("since") else "")]
    if code.get("members"):
        lines.append("  members: " + "; ".join(
            f"{m['member']} {short(m['fingerprint'])}" + (" HOLDING" if m["holding"] else "")
            for m in code["members"]))
    loaded = short(code.get("loaded"))
    if code.get("edited_after_cutover"):
        lines.append(f"  EDITED AFTER CUTOVER: the code here has fingerprint {loaded}; {name} "
                     f"was cut over with {short(code['fingerprint'])}, and its cutover "
                     "proved that code only: put the change in a new migration")
    elif code.get("differs"):
        lines.append(f"  WARNING: the code here has fingerprint {loaded}, not the code in "
                     f"force: members running it hold; `cdc-migrator accept {name}` takes it "
                     "(and backfills again), or roll it back")
    return lines


def _masked(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """An error record whose message cannot show a secret."""
    if not record:
        return record
    return {**record, "error": logs.mask(str(record.get("error") or ""))}


def _silent_lines(group: dict[str, Any] | None) -> list[str]:
    """Why the group's partitions of silent members wait (and cutover with them)."""
    lines = []
    for m in (group or {}).get("silent", []):
        held = ", ".join(f"p{p}" for p in m["partitions"]) or "no partition now"
        how = (f"restart it as --instance-id {m['instance_id']} to take them back at once"
               if m["instance_id"] else "a consumer killed without --instance-id")
        lines.append(
            f"  consumer {m['member_id']} on {m['host']} silent for {m['silent_seconds']:.0f}s "
            f"but still in the group, holding {held}: {how}; the broker gives its partitions "
            f"to the others when its session times out ({m['session_timeout_seconds']:g} s "
            "after its last heartbeat). Until then they are not consumed, and cutover waits.")
    return lines


def _readable(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """A record whose reason is text: a reason an older version stored with the driver's raw
    reply after it (", full error: RawBSONDocument(b'...')") is shown without it."""
    if not record or not isinstance(record.get("reason"), str):
        return record
    return {**record, "reason": logs.mask(record["reason"].split(", full error:")[0])}


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def all_status(settings: Settings, migrations: dict[str, Migration],
               name: str | None = None, *,
               ranges_of: RangesOf | None = None) -> list[dict[str, Any]]:
    store = settings.store
    states = [store.get(name)] if name else store.all()
    return [migration_status(settings, migrations.get(s.name), s, ranges_of=ranges_of)
            for s in states if s]


def _backfill_lines(b: dict[str, Any] | None) -> list[str]:
    """The backfill's progress; a total estimated (a sample, a sharded cluster's metadata)
    says so."""
    if not b:
        return []
    pct = f" ({100 * b['scanned'] / b['total']:.0f}%)" if b.get("total") else ""
    eta = "" if b["done"] else f", ETA {format_duration(b.get('eta_seconds'))}"
    about = "~" if b.get("total_estimate") else ""
    lines = [f"  backfill: {b['scanned']:,}/{about}{b.get('total') or 0:,}{pct}"
             + (" done" if b["done"] else eta)]
    if b.get("total_estimate"):
        lines.append(f"  backfill total: an estimate ({b['total_estimate']})")
    return lines


def render(status: dict[str, Any]) -> str:
    """Human-readable block for one migration."""
    lines = [f"{status['migration']} ({status['collection']}): {status['phase'] or 'new'}"
             + (" [paused]" if status["paused"] else "")]
    lines += _backfill_lines(status.get("backfill"))
    lines += sharing.render_lines(status)
    lines += _code_lines(status)
    c = status["counts"]
    lines.append("  events: produced {produced:,} (skipped {skipped:,} already migrated), "
                 "consumed {consumed:,}; documents: updated "
                 "{updated:,}, deleted {deleted:,}, unchanged {unchanged:,}, failed {failed:,}"
                 .format(**c))
    if c.get("dependency"):
        lines.append(f"  dependency events: {c['dependency']:,} of those produced (changes to "
                     f"depends_on collections), {c['produced'] - c['dependency']:,} the "
                     "documents' own")
    lag = status.get("lag")
    if lag is not None:
        parts = ", ".join(f"p{p}={v['lag']}" for p, v in lag["partitions"].items())
        lines.append(f"  lag: {lag['total']:,} events" + (f" ({parts})" if parts else ""))
    lines += _silent_lines(status.get("group"))
    lines += _capture_lines(status)
    lines += _problem_lines(status)
    if status.get("completed_at"):
        lines.append(f"  cut over at {status['completed_at']}")
    if status.get("reverted_at"):
        lines.append(f"  reverted at {status['reverted_at']} (its reverse run: "
                     f"{status['migration']}-revert)")
    if status.get("old_shape"):
        lines.append(f"  old shape: {status['old_shape']['note']}")
    return "\n".join(lines)


def _capture_lines(status: dict[str, Any]) -> list[str]:
    """The tailer's lines of :func:`render`: its checkpoint, its recoveries, the runway of
    its resume point in the change history."""
    lines = []
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
        keeps = f"each of the {h['shards']} shards keeps at least" if h.get("shards") \
            else "the server keeps"
        lines.append(f"  change history: {keeps} {format_duration(h['window_seconds'])}"
                     + (f"; resume point {format_duration(age)} old, runway "
                        f"{format_duration(max(0.0, h['runway_seconds']))}"
                        if age is not None else ""))
        for warning in h["warnings"]:
            lines.append(f"  WARNING: {warning}")
    return lines


def _problem_lines(status: dict[str, Any]) -> list[str]:
    """What went wrong, for :func:`render`: the failure, the pieces stopped or stalled, and
    the last error when no stopped piece says it already."""
    lines = []
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
    return lines
