"""Helpers for downstream tests: build messages, capture what the relay sends.

>>> from securemail.testing import build_message, capturing_relay
>>> raw = build_message(sender="dr@riverside.example", to=["jane@mail.example"],
...                     subject="Next session", body="See you Tuesday.")
>>> relay, sent = capturing_relay("securemail.toml")            # doctest: +SKIP
>>> relay.send_sync(raw)                                         # doctest: +SKIP
>>> sent[0].rcpt_tos                                             # doctest: +SKIP
('jane@mail.example',)
"""

from __future__ import annotations

import email.utils
import os
from collections.abc import Sequence
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8

from securemail.relay import Relay, load
from securemail.transport import MemoryTransport, SentMessage

__all__ = ["MemoryTransport", "SentMessage", "build_message", "capturing_relay"]


def build_message(
    *,
    sender: str,
    to: Sequence[str] = (),
    cc: Sequence[str] = (),
    bcc: Sequence[str] = (),
    subject: str = "Message",
    body: str = "Hello.",
    html: str | None = None,
    attachments: Sequence[tuple[str, str, bytes]] = (),
    headers: dict[str, str] | None = None,
    message_id: str | None = None,
) -> bytes:
    """A well-formed RFC 5322 message (CRLF) as bytes.

    ``attachments`` are ``(filename, "type/subtype", data)``.
    """
    msg = EmailMessage()
    msg["From"] = sender
    if to:
        msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    if bcc:
        msg["Bcc"] = ", ".join(bcc)
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = message_id or email.utils.make_msgid(domain="test.securemail.invalid")
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for filename, ctype, data in attachments:
        maintype, _, subtype = ctype.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    everyone = [sender, *to, *cc, *bcc]
    return msg.as_bytes(policy=SMTPUTF8 if any(not a.isascii() for a in everyone) else SMTP)


def capturing_relay(config_path: str | os.PathLike[str]) -> tuple[Relay, list[SentMessage]]:
    """A relay from your config whose upstream is an in-memory capture."""
    transport = MemoryTransport()
    return load(config_path, transport=transport), transport.sent
