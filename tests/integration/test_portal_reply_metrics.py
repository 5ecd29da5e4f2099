"""Clients' portal replies are counted on /metrics (they are not SMTP
transactions, so securemail_messages_total never saw them)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import securemail
from securemail.metrics import Metrics
from securemail.serve import portal_reply_sender
from securemail.testing import build_message
from securemail.transport import MemoryTransport


def count(metrics: Metrics, outcome: str) -> int:
    line = f'securemail_portal_replies_total{{outcome="{outcome}"}} '
    [value] = [ln[len(line):] for ln in metrics.render().splitlines() if ln.startswith(line)]
    return int(value)


async def test_delivered_and_blocked_replies_are_counted(make_config: Callable[..., Path]) -> None:
    relay = securemail.load(make_config(), transport=MemoryTransport())
    metrics = Metrics()
    send = portal_reply_sender(relay, metrics)
    assert {o: count(metrics, o) for o in ("delivered", "blocked", "refused", "deferred")} == {
        "delivered": 0, "blocked": 0, "refused": 0, "deferred": 0}  # present from the start
    try:
        ok = build_message(sender="dr@riverside.example", to=["nurse@riverside.example"],
                           subject="Re: notes", body="Thanks, see you Tuesday.")
        await send(ok, "dr@riverside.example", "nurse@riverside.example")
        phi = build_message(sender="dr@riverside.example", to=["x@other.example"],
                            subject="Re: notes", body="Jane Roe, diagnosis F32.1, MRN 12345678")
        with pytest.raises(securemail.Blocked):
            await send(phi, "dr@riverside.example", "x@other.example")
        assert (count(metrics, "delivered"), count(metrics, "blocked")) == (1, 1)
    finally:
        await relay.close()
