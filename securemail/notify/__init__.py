"""Notification and code emails for portal recipients (Jinja2, text + HTML).

Neither message carries the original Subject, any content, or a client
name; both say who sent them and how to check they are genuine. No tracking
pixels, no remote images.
"""

from __future__ import annotations

import binascii
import functools
import re
import secrets
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from urllib.parse import urlsplit

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from securemail.config import Settings

__all__ = ["code_message", "from_address", "notification_message"]

_env = Environment(
    loader=PackageLoader("securemail.notify", "templates"),
    autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
)


def from_address(settings: Settings, sender: str) -> str:
    """Header and envelope From: ``portal.notify_from``, else the original sender,
    else (an original with no usable sender at all, e.g. ``MAIL FROM:<>`` and no
    ``From``) the postmaster of the practice's first domain, which RFC 5321
    requires to exist; "" only if the practice has no domain."""
    if settings.portal.notify_from or sender:
        return settings.portal.notify_from or sender
    domains = settings.practice.domains
    return f"postmaster@{domains[0]}" if domains else ""


def _display_name(settings: Settings) -> str:
    return settings.portal.sender_name or settings.practice.name


def _context(settings: Settings, sender: str, now: datetime) -> dict[str, object]:
    return {
        "practice": settings.practice.name,
        "phone": settings.practice.phone,
        "website": settings.practice.website,
        "sender": sender or settings.practice.name,
        "portal_origin": "{0.scheme}://{0.netloc}".format(urlsplit(settings.portal.base_url)),
        "year": now.year,
    }


def _message(settings: Settings, *, sender: str, recipient: str, subject: str,
             template: str, context: dict[str, object], now: datetime) -> bytes:
    """multipart/alternative (text, HTML), quoted-printable, CRLF.

    Assembled from bytes: only the From, To and Subject fields go through the
    email package (cached), which costs ~1 ms a message when it builds the
    whole thing. A test holds the result to what ``EmailMessage`` would give.
    """
    frm = from_address(settings, sender)
    boundary = b"==securemail_" + secrets.token_hex(12).encode()
    text = _env.get_template(f"{template}.txt").render(context)
    html = _env.get_template(f"{template}.html").render(context)
    return b"".join((
        _header_fields(_display_name(settings), frm, subject),
        _to_field(recipient),
        b"Date: ", format_datetime(now).encode(), b"\r\n",
        b"Message-ID: ", make_msgid(domain=frm.rpartition("@")[2] or None).encode(), b"\r\n",
        # Keeps vacation auto-replies from answering a machine-made message.
        b"Auto-Submitted: auto-generated\r\n",
        b"MIME-Version: 1.0\r\n",
        b'Content-Type: multipart/alternative;\r\n boundary="', boundary, b'"\r\n',
        b"\r\n",
        _part(boundary, b"text/plain", text),
        _part(boundary, b"text/html", html),
        b"--", boundary, b"--\r\n",
    ))


def _part(boundary: bytes, content_type: bytes, content: str) -> bytes:
    body = content.replace("\r\n", "\n").encode("utf-8")
    if not body.endswith(b"\n"):
        body += b"\n"
    encoded = binascii.b2a_qp(body, istext=True).replace(b"\n", b"\r\n")
    # The CRLF before the next boundary belongs to the boundary, not to the body.
    return (b"--" + boundary + b"\r\nContent-Type: " + content_type
            + b'; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
            + encoded + b"\r\n")


@functools.lru_cache(maxsize=256)
def _header_fields(display_name: str, frm: str, subject: str) -> bytes:
    """``From:`` and ``Subject:`` as the email package encodes and folds them."""
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = Address(display_name=display_name, addr_spec=frm)
    msg["Subject"] = subject
    return msg.as_bytes(policy=policy.SMTP).split(b"\r\n\r\n", 1)[0] + b"\r\n"


_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+")


# An internationalised address (RFC 6532): no white space, specials or controls.
_UTF8_ADDRESS = re.compile(r'[^\s<>()\[\],;:"\\@\x00-\x1f\x7f]+@[^\s<>()\[\],;:"\\@\x00-\x1f\x7f]+')


def _to_field(recipient: str) -> bytes:
    if _PLAIN_ADDRESS.fullmatch(recipient) and len(recipient) < 900:
        return b"To: " + recipient.encode("ascii") + b"\r\n"
    if _UTF8_ADDRESS.fullmatch(recipient) and len(recipient.encode("utf-8")) < 900:
        # Raw UTF-8 (RFC 6532), as the envelope needs SMTPUTF8 for it anyway:
        # an encoded word is not allowed inside an address (RFC 2047 section 5).
        return b"To: " + recipient.encode("utf-8") + b"\r\n"
    msg = EmailMessage(policy=policy.SMTP)  # anything else: the email package decides
    msg["To"] = recipient
    return msg.as_bytes(policy=policy.SMTP).split(b"\r\n\r\n", 1)[0] + b"\r\n"


def notification_message(settings: Settings, *, url: str, expires: datetime, sender: str,
                         recipient: str, now: datetime) -> bytes:
    """The message a portal recipient gets instead of the original."""
    ctx = _context(settings, sender, now) | {
        "url": url,
        "expires": expires.strftime("%d %B %Y"),
    }
    subject = f"Secure message from {settings.practice.name}"
    return _message(settings, sender=sender, recipient=recipient, subject=subject,
                    template="notification", context=ctx, now=now)


def code_message(settings: Settings, *, code: str, minutes: int, sender: str, recipient: str,
                 now: datetime) -> bytes:
    """The one-time code email; the code is the only variable content."""
    ctx = _context(settings, sender, now) | {"code": code, "minutes": minutes}
    subject = f"Your code for {settings.practice.name} secure messages"
    return _message(settings, sender=sender, recipient=recipient, subject=subject,
                    template="code", context=ctx, now=now)
