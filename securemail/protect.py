"""RFC 9788 header protection: what goes inside the ciphertext, what stays outside.

The inner entity (the Cryptographic Payload) is the original message's body,
byte for byte, under the original header section: the real Subject, From,
To, Cc, Date, Message-ID, Reply-To and every other field except Bcc and trace
fields. Its Content-Type gains ``hp="cipher"`` (RFC 9788) and
``protected-headers="v1"`` (what Thunderbird and other clients of the older
draft look for), and ``HP-Outer`` fields record what the outside shows.

The outer header section carries only what delivery and threading need
(From, Sender, To, Cc, Date, Message-ID, Reply-To, In-Reply-To, References)
and a neutral ``Subject: ...``. Any other field (an ``X-`` header an
application added, Keywords, Comments) could carry client details, so it
stays inside only.
"""

from __future__ import annotations

import functools
import re
import struct
from itertools import chain

__all__ = ["OBSCURED_SUBJECT", "crlf", "protect", "split_header", "wrap_base64"]

OBSCURED_SUBJECT = b"..."

_OUTER = {"from", "sender", "to", "cc", "date", "message-id", "reply-to", "in-reply-to",
          "references"}
# Never inside either: Bcc would reveal blind recipients to the others; trace
# and signature fields describe the original transport, not the content.
_DROPPED = {"bcc", "resent-bcc", "received", "return-path", "dkim-signature"}
_STRUCTURAL = {"mime-version"}
_HEADER_END = re.compile(rb"\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")
_FIELD_NAME = re.compile(rb"[!-9;-~]+")  # RFC 5322 2.2: printable ASCII except ":"


def split_header(raw: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """(fields as (lower-case name, raw bytes with CRLF folding), body). ValueError if bad."""
    if raw.startswith((b"\r\n", b"\n")):
        return [], raw[2 if raw.startswith(b"\r\n") else 1:]
    end = _HEADER_END.search(raw)
    head, body = (raw[: end.start() + 1], raw[end.end():]) if end else (raw, b"")
    fields: list[tuple[str, list[bytes]]] = []
    for line in _LINE_END.split(head):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise ValueError("header section starts with a continuation line")
            fields[-1][1].append(line)
            continue
        if not fields and line.startswith(b"From "):
            continue  # an mbox envelope line, not a header field
        name, colon, _ = line.partition(b":")
        name = name.rstrip(b" \t")  # RFC 5322 4.5.3 obsolete "Name :" form
        if not colon or not _FIELD_NAME.fullmatch(name):
            raise ValueError("malformed header line")
        fields.append((name.decode("ascii").lower(), [line]))
    return [(name, b"\r\n".join(lines) + b"\r\n") for name, lines in fields], body


def crlf(data: bytes) -> bytes:
    """Canonical CRLF line endings; returns ``data`` itself when already canonical."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return _LINE_END.sub(b"\r\n", data)


def protect(raw: bytes) -> tuple[bytes, bytes]:
    """(inner entity to encrypt, outer header fields without MIME fields), both CRLF."""
    fields, body = split_header(raw)
    outer: list[bytes] = []
    inner: list[bytes] = []
    content: list[bytes] = []
    for name, value in fields:
        if name in _DROPPED or name.startswith("arc-"):
            continue
        if name.startswith("content-"):
            content.append(_mark_protected(value) if name == "content-type" else value)
            continue
        if name in _STRUCTURAL:
            continue
        inner.append(value)
        if name in _OUTER:
            outer.append(value)
    outer.append(b"Subject: " + OBSCURED_SUBJECT + b"\r\n")
    if not any(v[:13].lower() == b"content-type:" for v in content):
        content.insert(0, _mark_protected(b"Content-Type: text/plain" + _charset_of(body)
                                          + b"\r\n"))
    hp_outer = [b"HP-Outer: " + v for v in outer]
    entity = b"".join([*content, *inner, *hp_outer, b"\r\n", crlf(body)])
    return entity, b"".join(outer)


def _charset_of(body: bytes) -> bytes:
    """The charset parameter for a body that had no Content-Type: only what the
    bytes prove. 8-bit text that is not UTF-8 (Latin-1 from an old program) gets
    none, so the reader's client guesses as it would have for the original,
    instead of being told "utf-8" and showing replacement characters."""
    if body.isascii():
        return b"; charset=us-ascii"
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return b""
    return b"; charset=utf-8"


def _mark_protected(content_type: bytes) -> bytes:
    """The Content-Type field with ``hp="cipher"`` set (replacing any ``hp``) and
    ``protected-headers="v1"`` added unless the field already has that parameter.

    Parameters are read as parameters (quoted strings and comments may hold
    ";"), not searched as text: an original ``hp="clear"`` must not stay beside
    the new value, and an empty parameter (``charset=utf-8;``) is dropped
    rather than doubled into ``;;``.
    """
    name, _, value = content_type.rstrip(b"\r\n").partition(b":")
    media_type, *params = _split_params(_UNFOLD.sub(b"", value))
    kept = [p for p in params if p and _param_name(p) != b"hp"]
    added = [b'hp="cipher"']
    if not any(_param_name(p) == b"protected-headers" for p in kept):
        added.append(b'protected-headers="v1"')
    line = name + b": " + media_type
    out = []
    for param in kept:  # fold between parameters, as a mail program would
        if len(line) + 2 + len(param) > 78:
            out.append(line + b";")
            line = b" " + param
        else:
            line += b"; " + param
    out.append(line + b";")
    out.append(b" " + b"; ".join(added))
    return b"\r\n".join(out) + b"\r\n"


_UNFOLD = re.compile(rb"\r?\n(?=[ \t])")


def _split_params(value: bytes) -> list[bytes]:
    """``value`` cut at each ";" outside quoted strings and comments, parts stripped."""
    parts: list[bytes] = []
    start = depth = 0
    quoted = escaped = False
    for i, char in enumerate(value):
        if escaped:
            escaped = False
        elif char == 0x5C and (quoted or depth):  # backslash: quoted-pair
            escaped = True
        elif quoted:
            quoted = char != 0x22
        elif char == 0x22 and not depth:
            quoted = True
        elif char == 0x28:  # "("
            depth += 1
        elif char == 0x29 and depth:  # ")"
            depth -= 1
        elif char == 0x3B and not depth:  # ";"
            parts.append(value[start:i].strip(b" \t"))
            start = i + 1
    parts.append(value[start:].strip(b" \t"))
    return parts


def _param_name(param: bytes) -> bytes:
    """The parameter's name, lower-case, without an RFC 2231 ``*`` section or charset mark."""
    return param.partition(b"=")[0].strip(b" \t").partition(b"*")[0].lower()


def wrap_base64(encoded: bytes, width: int = 76) -> bytes:
    """Base64 text cut into ``width``-character lines, each ending in CRLF.

    Cut with a precompiled ``struct`` of 1024 lines at a time: twice as fast
    as slicing in a comprehension, which matters for multi-MiB attachments.
    """
    if not encoded:
        return b""
    block = _line_block(width)
    step = block.size
    full = len(encoded) // step * step
    lines = list(chain.from_iterable(block.iter_unpack(memoryview(encoded)[:full])))
    lines.extend([encoded[i:i + width] for i in range(full, len(encoded), width)])
    lines.append(b"")
    return b"\r\n".join(lines)


@functools.lru_cache(maxsize=8)
def _line_block(width: int) -> struct.Struct:
    return struct.Struct(f"{width}s" * 1024)
