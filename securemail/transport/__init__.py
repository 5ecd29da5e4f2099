"""Where finished messages go: the ``Transport`` seam.

``SMTPTransport`` (upstream over aiosmtplib, TLS verified), ``MaildirTransport``
(the embedded demo's outbox) and ``MemoryTransport`` (tests) all take the
exact bytes to put on the wire and report, per recipient, what upstream said.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from securemail.model import TLSInfo

__all__ = ["DeliveryResult", "MemoryTransport", "SentMessage", "Transport"]


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What upstream did with one message.

    ``refused`` are permanent per-recipient refusals (5xx); ``deferred`` are
    temporary ones (4xx); ``accepted_reply`` is upstream's final reply to the
    message for the ``accepted`` recipients (``"250 2.0.0"``; None where there
    is no upstream server, e.g. a Maildir or in-memory transport). Replies are
    the reply code and enhanced code only (``"550 5.1.1"``), never upstream's
    free text.
    """

    accepted: tuple[str, ...]
    refused: Mapping[str, str] = field(default_factory=dict)
    deferred: Mapping[str, str] = field(default_factory=dict)
    tls: TLSInfo | None = None
    accepted_reply: str | None = None


@runtime_checkable
class Transport(Protocol):
    async def send(self, mail_from: str, rcpt_tos: Sequence[str], data: bytes) -> DeliveryResult:
        """Deliver ``data`` to ``rcpt_tos``. Raises ``UpstreamUnavailable`` when
        nothing could be handed over (down, no TLS, timeout, 4xx at MAIL/DATA)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SentMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes


class MemoryTransport:
    """Keeps every message in ``sent``; for tests and ``securemail.testing``."""

    def __init__(self) -> None:
        self.sent: list[SentMessage] = []

    async def send(self, mail_from: str, rcpt_tos: Sequence[str], data: bytes) -> DeliveryResult:
        self.sent.append(SentMessage(mail_from, tuple(rcpt_tos), data))
        return DeliveryResult(accepted=tuple(rcpt_tos))

    async def close(self) -> None:
        return None
