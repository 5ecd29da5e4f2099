"""Counters for ``/metrics`` (Prometheus text format).

Kept in memory per process; Prometheus scrapes and keeps history.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["MessageRecord", "Metrics"]

OUTCOMES = ("delivered", "blocked", "malformed", "deferred", "refused", "rejected")
ACTIONS = ("deliver", "encrypt-pgp", "encrypt-smime", "portal", "block")
# /readyz turns 503 after this many transactions in a row were deferred (4xx).
READY_DEFERRAL_STREAK = 5
READY_QUIET_SECONDS = 300.0
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """What one SMTP transaction did: enough for the counters, nothing personal."""

    reply_code: int
    seconds: float
    outcome: str  # delivered | blocked | malformed | deferred | refused | rejected
    actions: tuple[str, ...] = ()  # one policy action per recipient


@dataclass
class Metrics:
    messages: Counter[str] = field(default_factory=Counter)  # by outcome
    actions: Counter[str] = field(default_factory=Counter)  # per recipient, by action
    deferrals: int = 0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_sum: float = 0.0
    latency_count: int = 0
    connections: int = 0
    deferral_streak: int = 0  # transactions answered 4xx since the last 2xx/5xx
    last_deferral: float = 0.0  # time.monotonic() of the last 4xx

    def observe(self, record: MessageRecord) -> None:
        self.messages[record.outcome] += 1
        for action in record.actions:
            self.actions[action] += 1
        if 400 <= record.reply_code < 500:
            self.deferrals += 1
            self.deferral_streak += 1
            self.last_deferral = time.monotonic()
        else:
            self.deferral_streak = 0
        self.latency_sum += record.seconds
        self.latency_count += 1
        for i, bound in enumerate(LATENCY_BUCKETS):
            if record.seconds <= bound:
                self.latency_buckets[i] += 1

    def not_ready(self, now: float | None = None) -> str:
        """Why mail is not getting through ("" when it is): for ``/readyz``.
        A streak with no deferral for READY_QUIET_SECONDS no longer counts (no
        traffic to prove recovery; a probe must not keep an instance out)."""
        quiet = (now if now is not None else time.monotonic()) - self.last_deferral
        if self.deferral_streak >= READY_DEFERRAL_STREAK and quiet < READY_QUIET_SECONDS:
            return (f"deferring: the last {self.deferral_streak} messages were answered 4xx"
                    " (upstream down or refusing? the log's message lines name the cause)")
        return ""

    def render(self) -> str:
        lines: list[str] = []
        # Every label value is present from the start (at 0): a rate() or an
        # alert on "blocked" works before the first block.
        outcomes = {o: 0 for o in OUTCOMES} | dict(self.messages)
        actions = {a: 0 for a in ACTIONS} | dict(self.actions)
        lines += _counter("securemail_messages_total", "SMTP transactions by outcome.",
                          "outcome", outcomes.items())
        lines += _counter("securemail_recipients_total", "Recipients by policy action.",
                          "action", actions.items())
        lines += ["# HELP securemail_deferral_streak Transactions answered 4xx in a row"
                  " (0 after any 2xx or 5xx).",
                  "# TYPE securemail_deferral_streak gauge",
                  f"securemail_deferral_streak {self.deferral_streak}"]
        lines += ["# HELP securemail_deferrals_total Transactions answered 4xx.",
                  "# TYPE securemail_deferrals_total counter",
                  f"securemail_deferrals_total {self.deferrals}"]
        lines += ["# HELP securemail_connections Open SMTP connections.",
                  "# TYPE securemail_connections gauge",
                  f"securemail_connections {self.connections}"]
        name = "securemail_message_seconds"
        lines += [f"# HELP {name} Time from end of DATA to the reply.",
                  f"# TYPE {name} histogram"]
        for bound, count in zip(LATENCY_BUCKETS, self.latency_buckets, strict=True):
            lines.append(f'{name}_bucket{{le="{bound}"}} {count}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.latency_count}')
        lines.append(f"{name}_sum {self.latency_sum:.6f}")
        lines.append(f"{name}_count {self.latency_count}")
        return "\n".join(lines) + "\n"


def _counter(name: str, help_text: str, label: str,
             items: Iterable[tuple[str, int]]) -> list[str]:
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
    out += [f'{name}{{{label}="{key}"}} {value}' for key, value in sorted(items)]
    return out
