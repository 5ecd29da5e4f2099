"""Body lines longer than SMTP allows, re-encoded before the message is signed.

RFC 5322 limits a line to 998 octets. Apps that write a whole HTML page on
one line (PHP ``mail()``, report generators) send longer ones, and the
servers after us break them: Postfix inserts ``CRLF SP`` past
``smtp_line_length_limit`` (998), others wrap or refuse. A break inserted
after we DKIM-signed the message changes its body, and the signature fails
at the recipient. So, before signing, each part whose lines are too long and
whose transfer encoding keeps lines as they are (7bit, 8bit, binary or none)
is re-encoded: text as quoted-printable, anything else as base64. What the
recipient's mail program shows is the same; only the wire form changes.

A message with a ``multipart/signed`` part or an attached message anywhere is
left alone: the message is written anew from its parts, which would change
bytes a signature (or the attached message's DKIM) covers, and a server that
keeps long lines may still deliver it intact. Otherwise headers keep their
values (``MIME-Version: 1.0`` is added when missing).
"""

from __future__ import annotations

import email
import email.encoders
import email.message
import email.policy
import quopri
from email.generator import BytesGenerator
from io import BytesIO
from typing import Final

__all__ = ["MAX_LINE", "has_long_lines", "wrap_long_lines"]

MAX_LINE: Final = 998  # octets, without the CRLF (RFC 5322 2.1.1)
_KEEPS_LINES: Final = ("", "7bit", "8bit", "binary")
_POLICY: Final = email.policy.compat32.clone(linesep="\r\n")


def has_long_lines(data: bytes) -> bool:
    """Whether the body of ``data`` has a line longer than :data:`MAX_LINE`."""
    end = data.find(b"\r\n\r\n")
    body = data[end + 4:] if end >= 0 else b""
    if len(body) <= MAX_LINE:
        return False
    return max(map(len, body.split(b"\n"))) > MAX_LINE + 1  # +1: the CR of CRLF


def wrap_long_lines(data: bytes) -> bytes:
    """``data`` with every part whose lines are too long re-encoded (see the
    module docstring); ``data`` itself, byte for byte, when no line is."""
    if not has_long_lines(data):
        return data
    message = email.message_from_bytes(data, policy=_POLICY)
    if any(part.get_content_type() == "multipart/signed" or part.get_content_maintype()
           == "message" for part in message.walk()):
        # The message is written anew from its parts, and a signed part or an
        # attached message must keep every byte (its signature, its DKIM):
        # left as sent, as a message with such a line always was.
        return data
    if not _reencode(message):
        return data
    if "MIME-Version" not in message:
        # Without it, a mail program may show the quoted-printable as it is.
        message["MIME-Version"] = "1.0"
    out = BytesIO()
    # maxheaderlen=0: headers are written as they came, never folded anew.
    BytesGenerator(out, mangle_from_=False, maxheaderlen=0, policy=_POLICY).flatten(message)
    return out.getvalue()


def _reencode(part: email.message.Message) -> bool:
    """Re-encode the leaves under ``part`` that need it; whether any did."""
    if part.get_content_type() == "multipart/signed":
        return False
    if part.is_multipart():
        changed = False
        for sub in part.get_payload():
            if isinstance(sub, email.message.Message):
                changed = _reencode(sub) or changed
        return changed
    payload = part.get_payload()
    if not isinstance(payload, str) or not _too_long(payload):
        return False
    if str(part.get("Content-Transfer-Encoding", "")).strip().lower() not in _KEEPS_LINES:
        return False  # quoted-printable or base64 with long lines: broken, left as sent
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        return False
    del part["Content-Transfer-Encoding"]
    if part.get_content_maintype() == "text":
        # Spaces stay readable (quotetabs=False); trailing ones are encoded.
        part.set_payload(quopri.encodestring(raw).decode("ascii"))
        part["Content-Transfer-Encoding"] = "quoted-printable"
    else:
        part.set_payload(raw)
        email.encoders.encode_base64(part)
    return True


def _too_long(payload: str) -> bool:
    return any(len(line.rstrip("\r")) > MAX_LINE for line in payload.split("\n"))
