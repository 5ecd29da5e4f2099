"""What goes inside a seal, and the message a secure reply becomes.

The sealed plaintext is UTF-8 JSON, built by the server from the original
MIME *before* sealing, so the browser never has to parse MIME::

    {"v": 1,
     "subject": str, "from": str, "to": str, "date": str,   # display only
     "text": str | null,          # first text/plain body
     "html": str | null,          # first text/html body (shown sandboxed)
     "attachments": [{"name": str, "type": str, "size": int, "data": base64}]}

Every other leaf part (and each attached ``message/rfc822``, as ``.eml``) is
an attachment.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import re
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import format_datetime, make_msgid
from typing import Any

__all__ = ["Attachment", "build_reply", "sealed_plaintext"]

FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Attachment:
    name: str
    content_type: str
    data: bytes


def _safe_name(name: str, fallback: str) -> str:
    # Keep the last path component, drop control characters; browsers sanitise
    # further, but a name like "../../x" must never reach a download dialog.
    name = re.sub(r"[\x00-\x1f\x7f]", "", name.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    return name[:200] if name and name not in (".", "..") else fallback


def _text_of(part: Message) -> str:
    text = ""
    if isinstance(part, EmailMessage):
        try:
            content = part.get_content()
            text = content if isinstance(content, str) else ""
        except (LookupError, ValueError, AssertionError):
            text = ""
    if not text:
        payload = part.get_payload(decode=True)
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    # Wire line ends (CRLF) would show as doubled lines in some views.
    return text.replace("\r\n", "\n")


def _leaves(part: Message) -> list[Message]:
    if part.get_content_type() == "message/rfc822":
        return [part]
    if part.is_multipart():
        out: list[Message] = []
        for sub in part.get_payload():
            if isinstance(sub, Message):
                out.extend(_leaves(sub))
        return out
    return [part]


_MISSING = object()


class _ReadOnlyMessage(EmailMessage):
    """An ``EmailMessage`` that parses each header field once.

    The email package parses a field again on every access, and reading one
    message for the portal asks for Content-Type about ten times (get_body,
    attachments, charset): most of the cost of sealing. Used only to read a
    parsed message, never to change one.
    """

    def get(self, name: str, failobj: Any = None) -> Any:
        cache: dict[str, Any] = self.__dict__.setdefault("_fields", {})
        key = name.lower()
        value = cache.get(key, _MISSING)
        if value is _MISSING:
            value = cache[key] = super().get(name, _MISSING)
        return failobj if value is _MISSING else value


def sealed_plaintext(raw: bytes) -> bytes:
    """The JSON document described in the module docstring, as UTF-8 bytes."""
    msg = BytesParser(_class=_ReadOnlyMessage, policy=policy.default).parsebytes(raw)
    text_part = msg.get_body(preferencelist=("plain",))
    html_part = msg.get_body(preferencelist=("html",))
    attachments: list[dict[str, object]] = []
    for part in _leaves(msg):
        if part is text_part or part is html_part:
            continue
        n = len(attachments) + 1
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            inner = part.get_payload()
            data = (inner[0].as_bytes(policy=policy.SMTP)
                    if isinstance(inner, list) and inner and isinstance(inner[0], Message)
                    else b"")
            name = _safe_name(part.get_filename() or "", f"message-{n}.eml")
        else:
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            ext = mimetypes.guess_extension(ctype) or ".bin"
            name = _safe_name(part.get_filename() or "", f"attachment-{n}{ext}")
        attachments.append({"name": name, "type": ctype, "size": len(data),
                            "data": base64.b64encode(data).decode("ascii")})
    doc = {
        "v": FORMAT_VERSION,
        "subject": str(msg.get("Subject", "")),
        "from": str(msg.get("From", "")),
        "to": str(msg.get("To", "")),
        "date": str(msg.get("Date", "")),
        "text": _text_of(text_part) if text_part is not None else None,
        "html": _text_of(html_part) if html_part is not None else None,
        "attachments": attachments,
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def build_reply(*, from_address: str, client: str, to: str, subject: str, body: str,
                in_reply_to: str, attachment: Attachment | None, now: datetime) -> bytes:
    """The reply as a staff member receives it (RFC 5322, CRLF).

    ``From`` is a practice address (``from_address``) with the client as
    display name and ``Reply-To``: a message "from" the client's own domain,
    signed with the practice's DKIM key, would fail DMARC at the staff mailbox.
    """
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = Address(display_name=f"{client} (secure portal reply)",
                          addr_spec=from_address)
    msg["Reply-To"] = client
    msg["To"] = to
    msg["Subject"] = subject.replace("\r", " ").replace("\n", " ")[:200] or "Secure reply"
    msg["Date"] = format_datetime(now)
    domain = from_address.rpartition("@")[2] or None
    msg["Message-ID"] = make_msgid(domain=domain)
    if in_reply_to.startswith("<") and in_reply_to.endswith(">"):
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg["X-Securemail-Portal-Reply"] = "yes"
    msg.set_content(body or "(no text)", cte="quoted-printable")
    if attachment is not None:
        maintype, _, subtype = attachment.content_type.partition("/")
        if not subtype or not re.fullmatch(r"[\w.+-]+", maintype + subtype):
            maintype, subtype = "application", "octet-stream"
        msg.add_attachment(attachment.data, maintype=maintype, subtype=subtype,
                           filename=_safe_name(attachment.name, "attachment.bin"))
    return msg.as_bytes(policy=policy.SMTP)
