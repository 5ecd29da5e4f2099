"""/metrics with relay.workers > 1: each worker's counters, published in
shared memory, are added to the main process's."""

from __future__ import annotations

import os

from securemail.metrics import READY_DEFERRAL_STREAK, MessageRecord, Metrics, WorkerSlots


def test_a_forked_workers_counters_reach_the_main_process() -> None:
    slots = WorkerSlots(2)
    main = Metrics()
    main.observe(MessageRecord(250, 0.02, "delivered", ("deliver",)))
    pid = os.fork()
    if pid == 0:  # a worker, as `securemail serve` forks it
        status = 1
        try:
            worker = Metrics(slot=slots.slot(1))
            worker.opened()
            for _ in range(3):
                worker.observe(MessageRecord(250, 0.2, "delivered", ("portal", "deliver")))
            worker.observe(MessageRecord(550, 0.004, "blocked", ("block",)))
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    text = main.with_workers(slots).render()
    assert 'securemail_messages_total{outcome="delivered"} 4' in text
    assert 'securemail_messages_total{outcome="blocked"} 1' in text
    assert 'securemail_recipients_total{action="deliver"} 4' in text
    assert 'securemail_recipients_total{action="portal"} 3' in text
    assert "securemail_connections 1" in text
    assert "securemail_message_seconds_count 5" in text
    assert 'securemail_message_seconds_bucket{le="0.005"} 1' in text
    assert 'securemail_message_seconds_bucket{le="0.25"} 5' in text
    assert "securemail_message_seconds_sum 0.624000" in text
    # The main process's own counters are not changed by adding the workers'.
    assert 'securemail_messages_total{outcome="delivered"} 1' in main.render()


def test_readyz_sees_a_worker_that_keeps_deferring() -> None:
    slots = WorkerSlots(1)
    main, worker = Metrics(), Metrics(slot=slots.slot(0))
    main.observe(MessageRecord(250, 0.01, "delivered"))
    for _ in range(READY_DEFERRAL_STREAK):
        worker.observe(MessageRecord(451, 0.01, "deferred"))
    assert main.not_ready() == ""
    assert "the last 5 messages were answered 4xx" in main.with_workers(slots).not_ready()
    worker.observe(MessageRecord(250, 0.01, "delivered"))
    assert main.with_workers(slots).not_ready() == ""
