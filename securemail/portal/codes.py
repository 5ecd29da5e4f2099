"""One-time codes and the channels that deliver them.

A channel is anything with an async ``deliver``; email (through the upstream
transport, DKIM-signed) is the default. A webhook channel hands the code to
an SMS gateway or similar; more channels plug in the same way.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import Protocol, runtime_checkable

from securemail.config import Settings
from securemail.errors import UpstreamUnavailable
from securemail.notify import code_message, from_address
from securemail.transport import Transport

__all__ = [
    "CODE_DIGITS",
    "CODE_MINUTES",
    "CodeChannel",
    "EmailCodeChannel",
    "WebhookCodeChannel",
    "new_code",
]

CODE_DIGITS = 6  # with 5 tries before a lock, a guess succeeds with p = 5e-6
CODE_MINUTES = 10


def new_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


class Signer(Protocol):
    def sign(self, message: bytes) -> bytes: ...


@runtime_checkable
class CodeChannel(Protocol):
    """Delivers a one-time code to a recipient. Raises on failure."""

    name: str

    async def deliver(self, *, recipient: str, sender: str, code: str, now: datetime) -> None:
        ...


class EmailCodeChannel:
    """Emails the code to the recipient through the upstream transport."""

    name = "email"

    def __init__(self, settings: Settings, transport: Transport,
                 signer: Signer | None = None) -> None:
        self.settings = settings
        self.transport = transport
        self.signer = signer

    async def deliver(self, *, recipient: str, sender: str, code: str, now: datetime) -> None:
        raw = code_message(self.settings, code=code, minutes=CODE_MINUTES, sender=sender,
                           recipient=recipient, now=now)
        if self.signer is not None:
            raw = self.signer.sign(raw)
        result = await self.transport.send(from_address(self.settings, sender), [recipient], raw)
        if recipient not in result.accepted:
            raise UpstreamUnavailable("upstream did not accept the code email")


class WebhookCodeChannel:
    """POSTs ``{"recipient", "code", "minutes"}`` as JSON to an HTTPS endpoint.

    ``post`` is injectable so tests (and gateways needing auth headers) can
    replace the stdlib call.
    """

    name = "webhook"

    def __init__(self, url: str, *, timeout: float = 10.0,
                 post: Callable[[str, bytes], None] | None = None) -> None:
        if not url.startswith("https://"):
            raise ValueError("webhook code channel needs an https:// URL")
        self.url = url
        self.timeout = timeout
        self._post = post or self._urllib_post

    def _urllib_post(self, url: str, body: bytes) -> None:
        req = urllib.request.Request(url, data=body, method="POST",  # noqa: S310 (https only)
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 (https only)
            if resp.status >= 300:
                raise UpstreamUnavailable(f"code webhook answered {resp.status}")

    async def deliver(self, *, recipient: str, sender: str, code: str, now: datetime) -> None:
        body = json.dumps({"recipient": recipient, "code": code,
                           "minutes": CODE_MINUTES}).encode()
        await asyncio.to_thread(self._post, self.url, body)
