"""The live throttle: the rate shared by the live workers, holds on exceeded bounds."""

from __future__ import annotations

import time

import pytest

from cdc_migrator.base.topology import Lag
from cdc_migrator.core import throttle as throttling
from cdc_migrator.errors import Refused

NAME = "price_total"


def test_the_rate_is_shared_by_the_live_workers():
    assert throttling.share(None, 1, 4) is None
    assert throttling.share(1000, 1, 4) == 250
    assert throttling.share(1000, 2, 6) == pytest.approx(333.33, abs=0.01)  # 2 of 6 partitions
    assert throttling.share(1000, 1, 0) == 1000  # the count lags behind: never above the rate
    assert throttling.share(1000, 0, 6) == 1000  # holds nothing, does nothing


class StateOfThrottle:
    """The three operations of StateStore a Throttle uses, in memory (pure logic test)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.members: dict[str, dict] = {}
        self.holds: list[dict] = []
        self.unknown: list[dict | None] = []

    def get(self, name):
        from cdc_migrator.core.state import MigrationState, ThrottleState

        until = max((h["until"] for h in self.holds), default=None)
        auto = {**self.holds[-1], "until": until} if self.holds else None
        return MigrationState(name=name, throttle=ThrottleState(
            rate=self.rate, auto=auto,
            members={m: (v["at"], v["weight"]) for m, v in self.members.items()}))

    def report_member(self, name, member, weight, forget=()):
        self.members[member] = {"at": time.time(), "weight": weight}
        for gone in forget:
            self.members.pop(gone, None)

    def record_auto_throttle(self, name, record):
        self.holds.append(record)

    def record_lag_unknown(self, name, record):
        self.unknown.append(record)


def test_consumers_share_the_rate_by_the_partitions_they_hold():
    store = StateOfThrottle(rate=600)
    consumers = [throttling.Throttle(store, NAME, member=f"c{i}", bounds=throttling.Bounds(),
                                     weight=lambda w=w: w, members=True)
                 for i, w in enumerate((1, 2, 3))]
    for consumer in consumers * 2:  # the second round sees every member's report
        consumer._polled = float("-inf")
        consumer._refresh()
    assert [c.rate for c in consumers] == [100, 200, 300]
    store.members["c2"]["at"] = time.time() - 60  # c2 stopped reporting: the others share
    for consumer in consumers[:2]:
        consumer._polled = float("-inf")
        consumer._refresh()
    assert [c.rate for c in consumers[:2]] == [200, 400] and "c2" not in store.members


def test_a_slow_bulk_write_holds_every_worker_for_a_while():
    store = StateOfThrottle(rate=None)
    worker = throttling.Throttle(store, NAME, member="w", bounds=throttling.Bounds(
        max_write_latency=50))
    worker.note_write(0.020)
    worker._refresh()
    assert worker.holding is None and not store.holds
    worker.note_write(0.250)
    worker._polled = float("-inf")
    worker._refresh()
    assert store.holds[0]["bound"] == "write latency" and store.holds[0]["value"] == 250
    assert worker.holding is not None
    assert "write latency 250.0 ms > 50 ms (seen by w)" == throttling.describe_hold(
        store.holds[0])


REFUSED = Lag(unknown="replSetGetStatus refused (13 Unauthorized: not authorized)",
              fix="grant the user the clusterMonitor role (on admin)")


def _bounded(store: StateOfThrottle, readings: list[Lag], on_unknown: str) -> throttling.Throttle:
    return throttling.Throttle(store, NAME, member="w", lag=lambda: readings[0],
                               bounds=throttling.Bounds(max_replication_lag=5,
                                                        on_lag_unknown=on_unknown))


def test_a_lag_that_cannot_be_read_refuses_with_the_fix_unless_told_to_run():
    with pytest.raises(Refused) as refused:
        _bounded(StateOfThrottle(rate=None), [REFUSED], "fail")._refresh()
    assert str(refused.value) == (
        "--max-replication-lag: the replication lag cannot be read: replSetGetStatus refused "
        "(13 Unauthorized: not authorized); grant the user the clusterMonitor role (on admin), "
        "or run with --on-lag-unknown run to go on without the bound (`status` shows the lag "
        "as unknown)")
    assert throttling.check_lag_readable(throttling.Bounds(), lambda: REFUSED) is None
    with pytest.raises(Refused):
        throttling.check_lag_readable(throttling.Bounds(max_replication_lag=5), lambda: REFUSED)


def test_running_with_the_lag_unknown_records_why_once_and_forgets_it_when_known_again():
    store = StateOfThrottle(rate=None)
    readings = [REFUSED]
    worker = _bounded(store, readings, "run")
    for _ in range(3):
        worker._polled = float("-inf")
        worker._refresh()
    assert worker.holding is None and not store.holds
    assert [r["reason"] for r in store.unknown] == [REFUSED.unknown]  # once, not each poll
    assert store.unknown[0]["fix"] == REFUSED.fix and store.unknown[0]["by"] == "w"
    readings[0] = Lag(seconds=12.0)
    worker._polled = float("-inf")
    worker._refresh()
    assert store.unknown[-1] is None and store.holds[0]["value"] == 12.0
