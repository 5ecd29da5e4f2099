"""Notification and code emails for portal recipients (Jinja2, text + HTML).

Neither message carries the original Subject, any content, or a client
name; both say who sent them and how to check they are genuine. No tracking
pixels, no remote images.
"""

from __future__ import annotations

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
    """Header and envelope From: ``portal.notify_from``, else the original sender."""
    return settings.portal.notify_from or sender


def _display_name(settings: Settings) -> str:
    return settings.portal.sender_name or settings.practice.name


def _context(settings: Settings, sender: str, now: datetime) -> dict[str, object]:
    return {
        "practice": settings.practice.name,
        "phone": settings.practice.phone,
        "website": settings.practice.website,
        "sender": sender,
        "portal_origin": "{0.scheme}://{0.netloc}".format(urlsplit(settings.portal.base_url)),
        "year": now.year,
    }


def _message(settings: Settings, *, sender: str, recipient: str, subject: str,
             template: str, context: dict[str, object], now: datetime) -> bytes:
    frm = from_address(settings, sender)
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = Address(display_name=_display_name(settings), addr_spec=frm)
    msg["To"] = recipient
    msg["Subject"] = subject
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain=frm.rpartition("@")[2] or None)
    # Keeps vacation auto-replies from answering a machine-made message.
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(_env.get_template(f"{template}.txt").render(context),
                    cte="quoted-printable")
    msg.add_alternative(_env.get_template(f"{template}.html").render(context), subtype="html",
                        cte="quoted-printable")
    return msg.as_bytes(policy=policy.SMTP)


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
