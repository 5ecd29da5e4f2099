"""/readyz's judgement: a run of deferrals says "not ready", for a while."""

from __future__ import annotations

import time

from securemail.metrics import (
    READY_DEFERRAL_STREAK,
    READY_QUIET_SECONDS,
    MessageRecord,
    Metrics,
)


def test_a_deferral_streak_is_not_ready_until_a_success_or_a_quiet_spell() -> None:
    m = Metrics()
    for _ in range(READY_DEFERRAL_STREAK - 1):
        m.observe(MessageRecord(451, 0.01, "deferred"))
    assert m.not_ready() == ""  # a few deferrals happen
    m.observe(MessageRecord(451, 0.01, "deferred"))
    assert m.not_ready().startswith("deferring")
    later = time.monotonic() + READY_QUIET_SECONDS + 1
    assert m.not_ready(now=later) == ""  # nothing deferred for a while: no longer held out
    m.observe(MessageRecord(250, 0.01, "delivered", ("deliver",)))
    assert m.deferral_streak == 0 and m.not_ready() == ""
