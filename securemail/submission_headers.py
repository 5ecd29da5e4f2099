"""What a submission server completes on a message it is the first to receive.

RFC 6409 section 8: a Message Submission Agent may add a missing ``Date:``
and ``Message-ID:`` (RFC 5322 requires the first; large mailbox providers
refuse mail without the second), and RFC 5321 section 4.4 says a
``Return-Path:`` is for the final delivery, never for the originator to set.
Mail clients send complete messages; scripts and practice apps often do not.

The Message-ID is derived from the SHA-256 of the bytes the client sent, so a
retry after a ``451`` gets the same id (the audit record and the portal see
one message, not two).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re

from securemail.parse import HEADER_END, strip_header

__all__ = ["complete_headers"]

_DATE = re.compile(rb"(?im)^date[ \t]*:")
_MESSAGE_ID = re.compile(rb"(?im)^message-id[ \t]*:")
_RETURN_PATH = re.compile(rb"(?im)^return-path[ \t]*:")


def complete_headers(raw: bytes, digest: str, hostname: str, now: dt.datetime) -> bytes:
    """``raw`` with a ``Date:`` and ``Message-ID:`` added where missing and any
    ``Return-Path:`` removed; unchanged (the same object) when none applies."""
    end = HEADER_END.search(raw)
    head = raw[: end.start()] if end else raw
    added = b""
    if not _DATE.search(head):
        added += b"Date: " + email.utils.format_datetime(now).encode("ascii") + b"\r\n"
    if not _MESSAGE_ID.search(head):
        added += f"Message-ID: <{digest[:32]}@{hostname}>\r\n".encode("ascii", "replace")
    if _RETURN_PATH.search(head):
        raw = strip_header(raw, "return-path")
    return added + raw if added else raw
