"""What goes inside a seal, and the message a secure reply becomes.

The sealed plaintext is UTF-8 JSON, built by the server from the original
MIME *before* sealing, so the browser never has to parse MIME::

    {"v": 1,
     "subject": str, "from": str, "to": str, "cc": str, "date": str,  # display only
     "text": str | null,          # first text/plain body (older readers)
     "html": str | null,          # first text/html body (older readers)
     "parts": [{"type": "text/plain" | "text/html", "content": str}],
                                  # every body part, in order (html shown sandboxed)
     "attachments": [{"name": str, "type": str, "size": int, "data": base64}]}

Every inline text/plain or text/html part is a body part (one version of
each ``multipart/alternative`` group); every other leaf part (and each
attached ``message/rfc822``, as ``.eml``: its bytes as attached, see
:func:`_original_messages`) is an attachment, except images an
HTML part refers to as ``cid:``: those are written into that part as
``data:`` URLs (bounded in size) and not listed. ``html`` (for older
readers) is left as the message has it. Text (bodies, Subject, names in
From/To/Cc, attachment names) is decoded as mail programs decode it
(:func:`_decode`): iso-8859-1 and us-ascii labels as windows-1252, 8-bit bytes
under no usable label as UTF-8, else windows-1252.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import mimetypes
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from email import errors, policy
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, BytesParser
from email.utils import format_datetime, make_msgid
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

from securemail.directory import AddressError
from securemail.parse import parse_address_list, utf8_header

__all__ = ["Attachment", "build_reply", "original_addresses", "original_reply",
           "sealed_document", "sealed_plaintext"]

FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Attachment:
    name: str
    content_type: str
    data: bytes


def _one_address(msg: Message, name: str) -> tuple[str, str]:
    """``(address, display name)`` of the single address in header ``name``,
    strictly parsed; ``("", "")`` if the field is missing, repeated, holds
    several addresses or does not parse."""
    # Raw values: 8-bit (SMTPUTF8) bytes stay escaped for utf8_header to decode
    # (get_all would hand back a Header that turned each such byte into U+FFFD).
    values = [v for k, v in msg.raw_items() if k.lower() == name.lower()]
    if len(values) != 1:
        return "", ""
    try:
        text = utf8_header(values[0])
        addresses = parse_address_list(text)
    except (AddressError, ValueError, LookupError):
        return "", ""
    if len(addresses) != 1:
        return "", ""
    return addresses[0], _display_name(text, addresses[0])


MAX_DISPLAY_NAME = 100  # characters


def _display_name(value: str, address: str) -> str:
    """The display name of a one-address header value, decoded, made plain
    (no control, format or invisible characters, one space between words);
    "" if it has none, holds "@", "<" or ">", or the lenient parse sees another
    address."""
    try:
        # Unfolded first: a long or non-ASCII From is folded over lines, and the
        # header parser refuses CR/LF inside address parts.
        header = policy.default.header_factory("reply-to", re.sub(r"\r?\n(?=[ \t])", "", value))
        found = list(getattr(header, "addresses", ()))
    except (ValueError, LookupError, TypeError, AttributeError, IndexError):
        return ""
    if len(found) != 1 or str(found[0].addr_spec).lower() != address.lower():
        return ""
    shown = _plain(str(found[0].display_name or ""))[:MAX_DISPLAY_NAME].strip()
    # A name that looks like an address ("Dr Rivera <dr@practice>" <collect@evil>)
    # would tell the client their reply goes somewhere it does not: no name.
    return "" if any(c in shown for c in "@<>") else shown


def original_addresses(raw: bytes, envelope_sender: str) -> tuple[str, str]:
    """``(author, reply_to)`` of an original message, for the notice and replies.

    ``author`` is the ``From`` address (else the envelope sender): whom the
    notice names as sender. ``reply_to`` is where the client's answer goes:
    ``Reply-To``, else ``From``, else the envelope sender (never by itself: a
    VERP or bounce address would get the client's reply); "" if none is usable.
    """
    author, reply_to, _ = original_reply(raw, envelope_sender)
    return author, reply_to


def original_reply(raw: bytes, envelope_sender: str) -> tuple[str, str, str]:
    """:func:`original_addresses` and the display name of ``reply_to`` ("" if none)."""
    headers = BytesHeaderParser(policy=policy.compat32).parsebytes(raw)
    author, author_name = _one_address(headers, "From")
    reply_to, reply_name = _one_address(headers, "Reply-To")
    if not reply_to:
        reply_to, reply_name = author or envelope_sender, author_name
    return author or envelope_sender, reply_to, reply_name


MAX_NAME = 200  # characters

# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt; the same
# ranges from Unicode 14 to 16): characters a renderer shows as nothing at all
# (combining grapheme joiner, variation selectors, Hangul fillers, Mongolian
# free variation selectors, tags...). Python's unicodedata has no such property.
_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
_INVISIBLE = re.compile("[" + "".join(
    f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in _DEFAULT_IGNORABLE) + "]")
# Characters shown as blank space: whitespace of every kind, and the braille
# blank (U+2800, a symbol, not a space, to Unicode).
_BLANK_RUN = re.compile(r"[\s\u2800]+")


def _plain(text: str) -> str:
    """``text`` without control, format, surrogate, line/paragraph separator or
    default-ignorable characters, every run of blank characters one space."""
    text = _INVISIBLE.sub("", text)
    text = "".join(c for c in text
                   if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zl", "Zp"))
    return _BLANK_RUN.sub(" ", text).strip()


def _safe_name(name: str, fallback: str) -> str:
    # Keep the last path component, drop control characters; browsers sanitise
    # further, but a name like "../../x" must never reach a download dialog.
    # Format characters (Cf: bidi overrides and isolates, zero-width joiners...)
    # and every other invisible character go too: "invoice\u202Efdp.exe" would
    # show as "invoiceexe.pdf". A run of blanks becomes one space, so blank
    # padding cannot push the real extension out of sight
    # ("results.pdf" + 150 fillers + ".exe").
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _plain(name)
    if not name or name in (".", ".."):
        return fallback
    if len(name) > MAX_NAME:
        # Shorten the stem, keep the extension: it says what opens the file.
        stem, dot, ext = name.rpartition(".")
        if dot and stem and 0 < len(ext) <= 16:
            name = stem[:MAX_NAME - len(ext) - 1].rstrip() + "." + ext
        else:
            name = name[:MAX_NAME]
    return name


# Text as a mail program shows it. Mail programs and browsers (the WHATWG
# Encoding standard) read the labels iso-8859-1, latin1 and us-ascii as
# windows-1252 (Outlook writes its curly quotes, dashes and euro sign as
# 0x80-0x9F and labels the text iso-8859-1); a missing or ASCII label over 8-bit
# bytes is UTF-8 when the bytes are valid UTF-8, else windows-1252. Python reads
# each label literally, which loses those characters or shows U+FFFD.
_GUESS = ""  # codec for "no usable label": strict UTF-8, else windows-1252
# WHATWG reads these labels as a superset (the C1 range 0x80-0x9F holds text).
_SUPERSETS = {"iso8859-1": "cp1252", "iso8859-9": "cp1254",
              "iso8859-11": "cp874", "tis-620": "cp874"}
# WHATWG labels Python does not know (besides "x-" prefixed ones, read without it).
_LABELS = {"iso88591": "cp1252", "iso88599": "cp1254", "iso885911": "cp874",
           "windows-874": "cp874", "unicode-1-1-utf-8": "utf-8"}
# Python codecs that are no character set of mail.
_NOT_CHARSETS = frozenset({"unicode-escape", "raw-unicode-escape", "undefined", "idna",
                           "punycode"})
_SINGLE_BYTE = frozenset(_SUPERSETS.values())
# A byte a single-byte table leaves undefined: in 0x80-0x9F the C1 control of that
# value (as WHATWG does), else U+FFFD.
_UNDEFINED_BYTE = {0xDC00 + b: (b if b < 0xA0 else 0xFFFD) for b in range(0x80, 0x100)}


def _python_codec(label: str) -> str | None:
    try:
        return codecs.lookup(label).name
    except (LookupError, ValueError, TypeError):
        return None


@lru_cache(maxsize=256)
def _codec(label: str | None) -> str:
    """The codec that reads text labelled ``label`` as mail programs do;
    ``_GUESS`` for no label, an ASCII label or one Python does not know."""
    name = (label or "").strip().strip('"').lower()
    if not name or len(name) > 64:
        return _GUESS
    if name in _LABELS:
        return _LABELS[name]
    for candidate in (name, name[2:] if name.startswith("x-") else ""):
        if not candidate:
            continue
        try:
            info = codecs.lookup(candidate)
        except (LookupError, ValueError, TypeError):
            continue
        if (info.name in _NOT_CHARSETS or info.name == "ascii"
                or not getattr(info, "_is_text_encoding", True)):  # base64, rot13...
            return _GUESS
        return _SUPERSETS.get(info.name, info.name)
    return _GUESS


def _decode(data: bytes, label: str | None) -> str:
    """``data`` as text, read as a mail program reads text labelled ``label``."""
    codec = _codec(label)
    if codec == _GUESS:
        if data.isascii():
            return data.decode("ascii")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            codec = "cp1252"
    if codec in _SINGLE_BYTE:
        return data.decode(codec, "surrogateescape").translate(_UNDEFINED_BYTE)
    try:
        return data.decode(codec, "replace")
    except (LookupError, UnicodeError, ValueError, TypeError):
        return _decode(data, None)


def _text_of(part: Message) -> str:
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    text = _decode(data, part.get_content_charset())
    # Wire line ends (CRLF) would show as doubled lines in some views.
    return text.replace("\r\n", "\n")


# RFC 2047 encoded word: =?charset[*language]?B|Q?text?= (text: printable
# ASCII without "?"; spaces are tolerated, as the email package does).
_ENCODED_WORD = re.compile(r"=\?([!->@-~]+)\?([bBqQ])\?([ !->@-~]*)\?=")


def _word_bytes(encoding: str, text: str) -> bytes | None:
    try:
        if encoding in "qQ":
            return binascii.a2b_qp(text.encode("ascii"), header=True)
        data = re.sub(r"[^A-Za-z0-9+/]", "", text)
        return binascii.a2b_base64((data + "=" * (-len(data) % 4)).encode("ascii"))
    except (binascii.Error, UnicodeError, ValueError):
        return None


def _recoded(value: str) -> str:
    """A raw header value (unfolded) as the email package's header parser must
    see it to show what a mail program shows: raw 8-bit bytes read as by
    :func:`_decode` (UTF-8, else windows-1252), and each run of encoded words
    whose charset label :func:`_decode` reads otherwise than Python (iso-8859-1,
    us-ascii, unknown labels...) written again as one UTF-8 encoded word.
    Adjacent words in one charset are decoded together: a sender may split a
    character over two. Everything else is left as it is."""
    if any("\udc80" <= c <= "\udcff" for c in value):
        value = _decode(value.encode("utf-8", "surrogateescape"), None)
    if "=?" not in value:
        return value
    words = list(_ENCODED_WORD.finditer(value))
    out: list[str] = []
    done = 0  # value[:done] is in out
    i = 0
    while i < len(words):
        label = words[i].group(1).split("*", 1)[0].lower()
        j = i + 1
        while (j < len(words) and words[j].group(1).split("*", 1)[0].lower() == label
               and not value[words[j - 1].end():words[j].start()].strip(" \t")):
            j += 1
        if _codec(label) != _python_codec(label):
            chunks = [_word_bytes(w.group(2), w.group(3)) for w in words[i:j]]
            if all(c is not None for c in chunks):
                text = _decode(b"".join(c for c in chunks if c is not None), label)
                encoded = base64.b64encode(text.encode("utf-8", "replace")).decode("ascii")
                out.append(value[done:words[i].start()])
                out.append(f"=?utf-8?b?{encoded}?=")
                done = words[j - 1].end()
        i = j
    out.append(value[done:])
    return "".join(out)


def _unfolded(value: str) -> str:
    # As the email package's policy.default reads a field: line breaks removed.
    return value.replace("\r", "").replace("\n", "")


def _header(msg: Message, name: str) -> Any:
    """The first ``name`` field, parsed as ``msg.get(name)`` parses it but with
    its text read as a mail program reads it (see :func:`_recoded`); ``None``
    if there is none."""
    for key, value in msg.raw_items():
        if key.lower() == name.lower():
            return policy.default.header_factory(key, _recoded(_unfolded(str(value))))
    return None


def _filename(part: Message) -> str:
    """``part.get_filename()``, with the charsets read as :func:`_decode` reads
    them (encoded words and RFC 2231 ``filename*=charset''...`` values)."""
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        raw = next((str(v) for k, v in part.raw_items() if k.lower() == header), None)
        if raw is None:
            continue
        holder = Message()  # compat32: RFC 2231 sections joined, bytes left undecoded
        holder[header] = _recoded(_unfolded(raw))
        try:
            value = holder.get_param(param, None, header=header)
        except (ValueError, LookupError, TypeError, IndexError):  # e.g. a 5,000-digit section
            continue
        if value is None:
            continue
        if isinstance(value, tuple):
            charset, _, text = value
            try:
                name = _decode(text.encode("latin-1"), charset or None)
            except UnicodeEncodeError:  # not %-escaped bytes: already text
                name = text
        else:
            name = str(policy.default.header_factory("subject", value))
        return name.strip()
    return ""


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


_BODY_TYPES = ("text/plain", "text/html")


def _is_body(part: Message) -> bool:
    return (part.get_content_type() in _BODY_TYPES
            and part.get_content_disposition() != "attachment")


def _shown(part: Message, bodies: list[Message], files: list[Message]) -> None:
    """Sort the tree under ``part`` into bodies (shown, in order) and attachments.

    Every inline text part is a body, wherever it sits (a mixed message may hold
    several, as Apple Mail's [html, pdf, html] does). Of a
    ``multipart/alternative`` group one version is shown, the richest one we
    can show (the last, per RFC 2046); the other text versions are the same
    content again and are dropped, anything else in the group is attached.
    """
    ctype = part.get_content_type()
    if ctype == "message/rfc822":
        files.append(part)
        return
    if part.is_multipart():
        subs = [p for p in part.get_payload() if isinstance(p, Message)]
        if ctype != "multipart/alternative":
            for sub in subs:
                _shown(sub, bodies, files)
            return
        showable = [p for p in subs if _is_body(p) or
                    (p.is_multipart() and p.get_content_type() != "multipart/alternative")]
        chosen = next((p for p in reversed(showable)
                       if p.get_content_type() in ("text/html", "multipart/related")), None)
        chosen = chosen or (showable[-1] if showable else None)
        for sub in subs:
            if sub is chosen:
                _shown(sub, bodies, files)
            elif not (_is_body(sub) or sub in showable):
                files.extend(_leaves(sub))
        return
    (bodies if _is_body(part) else files).append(part)


def _shown_addresses(msg: Message, name: str) -> str:
    """An address field as a mail program shows it: ``Name <addr>, addr``
    (decoded, display names unquoted); the raw text if it does not parse."""
    value = _header(msg, name)
    if value is None:
        return ""
    try:
        addresses = getattr(value, "addresses", None)
        defects = [d for d in getattr(value, "defects", ())
                   if not isinstance(d, errors.ObsoleteHeaderDefect)]  # "Dr. Rivera" is fine
        if addresses and not defects:
            return ", ".join(f"{a.display_name} <{a.addr_spec}>" if a.display_name
                             else a.addr_spec for a in addresses)
    except (ValueError, LookupError, AttributeError, IndexError):
        pass
    return str(value)


MAX_INLINE_IMAGES = 5 * 1024 * 1024  # bytes of images written into one message's HTML
_CID_REF = re.compile(r"(?<![\w.-])cid:([^\s\"'<>)]+)", re.IGNORECASE)


def _content_id(part: Message) -> str:
    value = str(part.get("Content-ID", "") or "").strip()
    return value[1:-1].strip() if value.startswith("<") and value.endswith(">") else value


def _inline_cid_images(parts: list[dict[str, str]], files: list[Message]) -> list[Message]:
    """Write the images an HTML body refers to as ``cid:`` (RFC 2392, e.g. a
    logo in a ``multipart/related``) into it as ``data:`` URLs, which the
    sandboxed frame may show; returns the parts used, which are then not listed
    as attachments. At most ``MAX_INLINE_IMAGES`` bytes of ``data:`` URLs in
    all, every reference counted (one image referred to a thousand times must
    not make the sealed copy a thousand times its size): an image past that
    stays an attachment, and a reference past it shows nothing, as before."""
    by_cid: dict[str, Message] = {}
    for part in files:
        cid = _content_id(part)
        if cid and part.get_content_maintype() == "image" and not part.is_multipart():
            by_cid.setdefault(cid, part)
            by_cid.setdefault(cid.lower(), part)
    if not by_cid:
        return []
    used: list[Message] = []
    urls: dict[int, str] = {}
    budget = MAX_INLINE_IMAGES

    def data_url(match: re.Match[str]) -> str:
        nonlocal budget
        cid = unquote(match.group(1))
        part = by_cid.get(cid) or by_cid.get(cid.lower())
        if part is None:
            return match.group(0)
        url = urls.get(id(part))
        if url is None:
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            ctype = re.sub(r"[^\w.+/-]", "", part.get_content_type())
            url = f"data:{ctype};base64,{base64.b64encode(data).decode('ascii')}"
        if len(url) > budget:
            return match.group(0)
        budget -= len(url)
        if id(part) not in urls:
            urls[id(part)] = url
            used.append(part)
        return url

    for body in parts:
        if body["type"] == "text/html":
            body["content"] = _CID_REF.sub(data_url, body["content"])
    return used


# An attached message (message/rfc822) is handed to the client as the bytes the
# sender attached, not as the email package writes it again (re-folded fields,
# re-encoded words, other boundaries): its own DKIM signature and its value as
# evidence depend on every byte. The email package keeps no offsets, so the part
# is found again in the raw message: down the multipart boundaries from the top
# (as the email package splits them), its body is what follows its own fields.
# The bytes found are used only if they parse to exactly what the email package
# read there; else (or past MAX_NESTING) the attachment is rebuilt as before.
MAX_NESTING = 16  # multipart levels searched above an attached message
_HEADER_END = re.compile(rb"\n\r?\n")
_IDENTITY_CTE = ("", "7bit", "8bit", "binary")


def _body_start(raw: bytes, start: int, end: int) -> int:
    """Where the body of the entity ``raw[start:end]`` begins: after the first
    empty line; ``end`` if there is none."""
    if raw.startswith(b"\n", start) or raw.startswith(b"\r\n", start):
        return min(end, start + (1 if raw[start] == 0x0A else 2))
    found = _HEADER_END.search(raw, start, end)
    return found.end() if found else end


def _sections(raw: bytes, start: int, end: int, boundary: str) -> list[tuple[int, int]] | None:
    """``(start, end)`` of each body part of the multipart body ``raw[start:end]``
    (RFC 2046: the line break before a delimiter line belongs to the delimiter);
    ``None`` if the boundary cannot be looked for in bytes."""
    try:
        mark = boundary.encode("ascii", "surrogateescape")
    except UnicodeError:
        return None
    # A delimiter line as the email package matches one: "--boundary", "--" after
    # it on the last one, then blanks. ^ matches only at line starts (and start
    # is one), so each line is tried once: linear.
    delimiter = re.compile(rb"^--" + re.escape(mark) + rb"(--)?[ \t]*\r?$", re.MULTILINE)
    sections: list[tuple[int, int]] = []
    opened = -1
    for found in delimiter.finditer(raw, start, end):
        if opened >= 0:
            stop = found.start()
            if stop > opened:
                stop -= 1  # "\n"
                if stop > opened and raw[stop - 1] == 0x0D:
                    stop -= 1
            sections.append((opened, stop))
        if found.group(1):  # the close delimiter: the rest is epilogue
            return sections
        opened = min(end, found.end() + 1)  # past the "\n"
    if opened >= 0:
        # No close delimiter: the last part runs to the end, less the line break
        # that ends it (which the email package drops too).
        stop = end
        if stop > opened and raw[stop - 1] == 0x0A:
            stop -= 2 if stop - 1 > opened and raw[stop - 2] == 0x0D else 1
        sections.append((opened, stop))
    return sections


def _same_tree(a: Message, b: Message) -> bool:
    """Whether two parsed messages hold the same fields, bodies and structure,
    as read from the wire (raw field values, undecoded bodies)."""
    pairs = [(a, b)]
    while pairs:
        x, y = pairs.pop()
        # No epilogue (None) and an empty one differ only in how the message
        # ends: the email package reads a multipart closed right before the
        # outer delimiter's line break as the one, alone as the other.
        if (x.get_unixfrom() != y.get_unixfrom() or x.preamble != y.preamble
                or (x.epilogue or "") != (y.epilogue or "")
                or list(x.raw_items()) != list(y.raw_items())):
            return False
        # The stored payload: get_payload() would decode 8-bit text lossily.
        px, py = getattr(x, "_payload", None), getattr(y, "_payload", None)
        if isinstance(px, list) and isinstance(py, list):
            if len(px) != len(py):
                return False
            pairs.extend((m, n) for m, n in zip(px, py, strict=True)
                         if isinstance(m, Message) and isinstance(n, Message))
        elif isinstance(px, list) or isinstance(py, list) or px != py:
            return False
    return True


def _original_messages(raw: bytes, msg: Message, attached: list[Message]) -> dict[int, bytes]:
    """The bytes, as sent, of each attached message in ``attached`` (parts of
    ``msg``, parsed from ``raw``) that is found unambiguously, by ``id`` of its
    part."""
    if not attached:
        return {}
    wanted = {id(p) for p in attached}
    on_path: set[int] = set()  # the attached parts and the multiparts holding them

    def mark(part: Message, depth: int) -> bool:
        held = id(part) in wanted
        if (not held and depth < MAX_NESTING and part.get_content_maintype() == "multipart"
                and part.is_multipart()):
            for sub in part.get_payload():
                held = (isinstance(sub, Message) and mark(sub, depth + 1)) or held
        if held:
            on_path.add(id(part))
        return held

    found: dict[int, bytes] = {}
    try:
        mark(msg, 0)
        todo: list[tuple[int, int, Message]] = [(0, len(raw), msg)]
        while todo:
            start, end, part = todo.pop()
            body = _body_start(raw, start, end)
            if id(part) in wanted:
                inner = part.get_payload()
                cte = str(part.get("Content-Transfer-Encoding", "") or "").strip().lower()
                if (cte not in _IDENTITY_CTE or not isinstance(inner, list) or len(inner) != 1
                        or not isinstance(inner[0], Message)):
                    continue
                candidate = raw[body:end]
                if _same_tree(inner[0], BytesParser(policy=policy.default).parsebytes(candidate)):
                    found[id(part)] = candidate
                continue
            boundary = part.get_boundary()
            subs = part.get_payload()
            if boundary is None or not isinstance(subs, list):
                continue
            sections = _sections(raw, body, end, boundary)
            if sections is None or len(sections) != len(subs):
                continue  # split otherwise than the email package did: not found
            todo.extend((s, e, sub) for sub, (s, e) in zip(subs, sections, strict=True)
                        if isinstance(sub, Message) and id(sub) in on_path)
    except (ValueError, LookupError, TypeError, IndexError, RecursionError, errors.MessageError):
        return found  # crafted beyond reading: the rest is rebuilt
    return found


def sealed_plaintext(raw: bytes) -> bytes:
    """The JSON document described in the module docstring, as UTF-8 bytes."""
    return sealed_document(raw)[0]


def sealed_document(raw: bytes) -> tuple[bytes, int]:
    """:func:`sealed_plaintext` and how many attachments it lists."""
    msg = BytesParser(_class=_ReadOnlyMessage, policy=policy.default).parsebytes(raw)
    bodies: list[Message] = []
    files: list[Message] = []
    _shown(msg, bodies, files)
    parts = [{"type": p.get_content_type(), "content": _text_of(p)} for p in bodies]
    inlined = _inline_cid_images(parts, files)
    files = [f for f in files if not any(f is used for used in inlined)]
    text_part = msg.get_body(preferencelist=("plain",))
    html_part = msg.get_body(preferencelist=("html",))
    attachments: list[dict[str, object]] = []
    originals = _original_messages(raw, msg, [f for f in files
                                              if f.get_content_type() == "message/rfc822"])
    for part in files:
        n = len(attachments) + 1
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            inner = part.get_payload()
            data = originals.get(id(part))
            if data is None:  # not found unambiguously in the raw message: rebuilt
                data = (inner[0].as_bytes(policy=policy.SMTP)
                        if isinstance(inner, list) and inner and isinstance(inner[0], Message)
                        else b"")
            name = _safe_name(_filename(part), f"message-{n}.eml")
        else:
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            ext = mimetypes.guess_extension(ctype) or ".bin"
            name = _safe_name(_filename(part), f"attachment-{n}{ext}")
        attachments.append({"name": name, "type": ctype, "size": len(data),
                            "data": base64.b64encode(data).decode("ascii")})
    doc = {
        "v": FORMAT_VERSION,
        "subject": str(_header(msg, "Subject") or ""),
        "from": _shown_addresses(msg, "From"),
        "to": _shown_addresses(msg, "To"),
        "cc": _shown_addresses(msg, "Cc"),
        "date": str(msg.get("Date", "")),
        # For readers of the first format: the first plain and html bodies.
        "text": _text_of(text_part) if text_part is not None else None,
        "html": _text_of(html_part) if html_part is not None else None,
        "parts": parts,
        "attachments": attachments,
    }
    return (json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
            len(attachments))


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
        maintype, _, subtype = attachment.content_type.lower().partition("/")
        # A browser's multipart/* or message/* (an attached .eml is message/rfc822)
        # cannot be a leaf carrying base64 bytes: that is invalid MIME the relay
        # rejects. The bytes go as they are; the file name says what they are.
        if (not subtype or not re.fullmatch(r"[\w.+-]+", maintype + subtype)
                or maintype in ("multipart", "message")):
            maintype, subtype = "application", "octet-stream"
        msg.add_attachment(attachment.data, maintype=maintype, subtype=subtype,
                           filename=_safe_name(attachment.name, "attachment.bin"))
    return msg.as_bytes(policy=policy.SMTP)
