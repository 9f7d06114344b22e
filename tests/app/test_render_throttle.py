"""Explore's render throttle on a fake clock: drawing stays a bounded share of the run, however slow a draw.

The old throttle took its time stamp before drawing, so once a draw outlasted the interval every
event was due and the page fell ever further behind the run (454 s on the page for 8.6 s of FK
steering on digits, issue 22).
"""

from __future__ import annotations

from app.ui.explore import RenderThrottle


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(draw_cost: float, event_every: float, run_seconds: float, share: float = 0.2) -> tuple[int, float]:
    """Events every ``event_every`` s for ``run_seconds``; each due event is drawn at ``draw_cost``.
    Returns (draws, seconds spent drawing)."""
    clock = FakeClock()
    throttle = RenderThrottle(0.3, share=share, clock=clock)
    draws = 0
    while clock.now < run_seconds:
        clock.now += event_every
        if throttle.due():
            started = clock.now
            clock.now += draw_cost
            throttle.drawn(started)
            draws += 1
    return draws, throttle.spent


def test_cheap_draws_follow_the_interval():
    draws, _ = simulate(draw_cost=0.01, event_every=0.01, run_seconds=30)
    assert 90 <= draws <= 100  # one per 0.31 s: the interval counts from the end of the draw


def test_costly_draws_stay_under_their_share_of_the_run():
    draws, spent = simulate(draw_cost=3.0, event_every=0.05, run_seconds=120)
    clock_total = 120 + 3.0  # at most one draw past the end
    assert spent <= 0.2 * clock_total + 3.0  # share 0.2, plus the draw that was under way
    assert draws >= 5  # still live: a snapshot every ~15 s


def test_interval_zero_draws_every_event():
    clock = FakeClock()
    throttle = RenderThrottle(0.0, clock=clock)
    for _ in range(5):
        assert throttle.due()
        throttle.drawn(clock.now)
