"""The pacer: work spaced to a rate that may change at any moment."""

from __future__ import annotations

import pytest

from cdc_migrator.base.pacing import Pacer


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_pacer_keeps_the_rate_and_follows_a_change_at_once():
    clock = FakeClock()
    pacer = Pacer(clock)

    def step(n: int, rate: float | None) -> None:  # as Throttle.spend: wait until paid
        pacer.add(n)
        while (wait := pacer.wait_needed(rate)) > 0:
            clock.now += wait

    for _ in range(10):  # 100 documents per step at 200/s: each step waits half a second
        step(100, 200)
    assert clock.now == pytest.approx(5.0)
    started = clock.now
    for _ in range(10):  # raised to 1,000/s: from the next step on
        step(100, 1000)
    assert clock.now - started == pytest.approx(1.0)
    started = clock.now
    step(10_000, None)  # off: no wait at all
    assert clock.now == started
    step(100, 100)
    started = clock.now
    clock.now += 10  # idle: at most a second of the rate is saved up
    step(300, 100)
    assert clock.now - started == pytest.approx(12.0)
