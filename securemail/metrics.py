"""Counters for ``/metrics`` (Prometheus text format).

Kept in memory per process; Prometheus scrapes and keeps history. With
``relay.workers > 1`` each worker also keeps its counters in a slot of a
shared memory region (:class:`WorkerSlots`, made before the workers are
forked), and the main process, which serves ``/metrics`` and ``/readyz``,
adds them to its own: one scrape sees every process's messages.
"""

from __future__ import annotations

import mmap
import struct
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["MessageRecord", "Metrics", "WorkerSlots"]

OUTCOMES = ("delivered", "blocked", "malformed", "deferred", "refused", "rejected")
ACTIONS = ("deliver", "encrypt-pgp", "encrypt-smime", "portal", "block")
REPLY_OUTCOMES = ("delivered", "blocked", "refused", "deferred")
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
    slot: memoryview | None = None  # where a worker publishes these (WorkerSlots)
    # Clients' portal replies, by outcome (the portal runs in the main process only).
    portal_replies: Counter[str] = field(default_factory=Counter)

    def opened(self) -> None:
        self.connections += 1
        self._publish()

    def closed(self) -> None:
        self.connections -= 1
        self._publish()

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
        self._publish()

    def portal_reply(self, outcome: str) -> None:
        """A client's reply from the portal went through the relay: delivered,
        blocked (by policy), refused (by upstream) or deferred."""
        self.portal_replies[outcome] += 1

    def with_workers(self, slots: WorkerSlots | None) -> Metrics:
        """These counters plus the workers' (``self`` when there are none)."""
        if slots is None:
            return self
        total = Metrics(Counter(self.messages), Counter(self.actions), self.deferrals,
                        list(self.latency_buckets), self.latency_sum, self.latency_count,
                        self.connections, self.deferral_streak, self.last_deferral,
                        portal_replies=Counter(self.portal_replies))
        for worker in slots.read():
            total.messages.update(worker.messages)
            total.actions.update(worker.actions)
            total.deferrals += worker.deferrals
            total.latency_buckets = [a + b for a, b in zip(total.latency_buckets,
                                                           worker.latency_buckets, strict=True)]
            total.latency_sum += worker.latency_sum
            total.latency_count += worker.latency_count
            total.connections += worker.connections
            # Ready only if every process gets mail through: the longest streak.
            if worker.deferral_streak > total.deferral_streak:
                total.deferral_streak = worker.deferral_streak
                total.last_deferral = worker.last_deferral
        return total

    def _publish(self) -> None:
        if self.slot is not None:
            _SLOT.pack_into(self.slot, 0, *(
                [float(self.messages[o]) for o in OUTCOMES]
                + [float(self.actions[a]) for a in ACTIONS]
                + [float(self.deferrals), self.latency_sum, float(self.latency_count),
                   float(self.connections), float(self.deferral_streak), self.last_deferral]
                + [float(b) for b in self.latency_buckets]))

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
        replies = {o: 0 for o in REPLY_OUTCOMES} | dict(self.portal_replies)
        lines += _counter("securemail_portal_replies_total",
                          "Clients' replies from the portal, by outcome.", "outcome",
                          replies.items())
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


# One worker's counters, as doubles (exact for counts up to 2**53).
_SLOT = struct.Struct(f"<{len(OUTCOMES) + len(ACTIONS) + 6 + len(LATENCY_BUCKETS)}d")


class WorkerSlots:
    """A shared memory region with one slot of counters per worker. Made
    before fork; a worker writes only its own slot (a reader may see one
    message half counted, never a wrong total afterwards)."""

    def __init__(self, workers: int) -> None:
        self._memory = mmap.mmap(-1, max(1, workers) * _SLOT.size)
        self.workers = workers

    def slot(self, index: int) -> memoryview:
        """Worker ``index``'s slot (0-based)."""
        if not 0 <= index < self.workers:
            raise IndexError(f"no worker slot {index}")
        return memoryview(self._memory)[index * _SLOT.size:(index + 1) * _SLOT.size]

    def read(self) -> list[Metrics]:
        out = []
        for index in range(self.workers):
            values = _SLOT.unpack_from(self._memory, index * _SLOT.size)
            n_o, n_a = len(OUTCOMES), len(ACTIONS)
            counts = values[n_o + n_a:n_o + n_a + 6]
            out.append(Metrics(
                Counter({o: int(v) for o, v in zip(OUTCOMES, values[:n_o], strict=True) if v}),
                Counter({a: int(v) for a, v in zip(ACTIONS, values[n_o:n_o + n_a], strict=True)
                         if v}),
                int(counts[0]), [int(v) for v in values[n_o + n_a + 6:]], counts[1],
                int(counts[2]), int(counts[3]), int(counts[4]), counts[5]))
        return out


def _counter(name: str, help_text: str, label: str,
             items: Iterable[tuple[str, int]]) -> list[str]:
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
    out += [f'{name}{{{label}="{key}"}} {value}' for key, value in sorted(items)]
    return out
