"""Bytes -> a bounded, strictly parsed view of a message.

Never raises on bad input: a message past a limit, or an address header that
Python's parsers read ambiguously (the CVE-2023-27043 family), comes back with
``malformed`` set, and the policy blocks it. The original bytes are kept
untouched for pass-through.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
import unicodedata
from dataclasses import dataclass
from email import errors
from email.header import decode_header, make_header
from email.message import Message

from securemail.config import LimitSettings
from securemail.directory import AddressError, normalise_address

__all__ = [
    "ADDRESS_HEADERS", "MessageView", "loose_recipients", "parse_address_list", "parse_message",
    "strip_header", "utf8_header",
]

ADDRESS_HEADERS = ("from", "sender", "reply-to", "to", "cc", "bcc")
HEADER_END = re.compile(rb"\r?\n\r?\n")
_MBOX_FROM_LINE = re.compile(rb"(?i)from[ \t]")
# A header value made only of plain "addr" or "Name <addr>" items can skip the
# slow RFC 5322 parser; anything else (quotes, comments, groups, encoded words,
# a period in a name) goes through both parsers, which must agree.
_PLAIN_ADDR = r"[^<>()\",;:\\\s@]+@[A-Za-z0-9.-]+"
_SIMPLE_ITEM = rf"\s*(?:[A-Za-z0-9 _'-]*<{_PLAIN_ADDR}>|{_PLAIN_ADDR})\s*"
_SIMPLE_LIST = re.compile(rf"{_SIMPLE_ITEM}(?:,{_SIMPLE_ITEM})*")
_ADDR_IN_ITEM = re.compile(r"<([^<>]+)>\s*$|^\s*([^<>\s]+)\s*$")


@dataclass(frozen=True, slots=True)
class MessageView:
    raw: bytes
    message: Message | None
    message_id: str = ""
    headers: dict[str, tuple[str, ...]] | None = None  # normalised addresses per header
    subject: str = ""  # decoded; for the detectors only, never logged
    malformed: str | None = None  # "malformed-message" | "malformed-address"
    malformed_detail: str = ""  # which limit or header; never content

    def addresses(self, *names: str) -> tuple[str, ...]:
        if self.headers is None:
            return ()
        out: list[str] = []
        for n in names:
            out.extend(self.headers.get(n, ()))
        return tuple(out)


# "=?utf-8?q?j=C3=BCrgen?=@example.com": an encoded word in a local part or
# domain, which RFC 2047 section 5 forbids (Python's SMTP policy writes it).
_ENCODED_IN_ADDRESS = re.compile(r"=\?[^?\s]+\?[bqBQ]\?[^?\s]*\?=@|@[^\s,>]*=\?[^?\s]+\?[bqBQ]\?")


def _bad(raw: bytes, kind: str, detail: str, message: Message | None = None) -> MessageView:
    return MessageView(raw=raw, message=message, malformed=kind, malformed_detail=detail,
                       message_id=_message_id(message) if message is not None else "")


def _message_id(message: Message) -> str:
    try:
        value = " ".join(str(message.get("message-id", "")).split())
    except Exception:  # noqa: BLE001 - an undecodable header: no id rather than a crash
        return ""
    if "\r" in value or "\n" in value or len(value) > 998:
        return ""
    return value


def parse_message(raw: bytes, limits: LimitSettings) -> MessageView:
    """Parse ``raw`` within ``limits``; see the module docstring."""
    if len(raw) > limits.max_message_bytes:
        return _bad(raw, "malformed-message", f"message exceeds {limits.max_message_bytes} bytes")
    end = HEADER_END.search(raw, 0, limits.max_header_bytes + 4)
    header_len = end.start() if end else len(raw)
    if header_len > limits.max_header_bytes:
        return _bad(raw, "malformed-message",
                    f"header block exceeds {limits.max_header_bytes} bytes")
    if _MBOX_FROM_LINE.match(raw):
        # "From x" or "From : x" as the first line: mail programs read an
        # obsolete From header (RFC 5322 4.5.1 allows space before the colon);
        # Python's parser and dkimpy skip it as an mbox envelope line. Never
        # part of SMTP data: refuse rather than let two readings differ.
        return _bad(raw, "malformed-message",
                    'the first header line is an mbox "From " line or "From :"')
    try:
        message = _parse_mime(raw, end)
    except Exception:  # noqa: BLE001 - any parser fault is a malformed message
        return _bad(raw, "malformed-message", "the MIME structure cannot be parsed")
    problem = _check_structure(message, limits)
    if problem:
        return _bad(raw, "malformed-message", problem, message)
    headers: dict[str, tuple[str, ...]] = {}
    raw_headers: dict[str, list[str]] = {}
    for key, value in message.raw_items():  # undecoded: keeps 8-bit (SMTPUTF8) bytes
        raw_headers.setdefault(key.lower(), []).append(value)
    for name in _SINGLETONS:
        if len(raw_headers.get(name, ())) > 1:
            # Which copy counts is up to each reader: the scanner must not see a
            # different Subject or body encoding than the recipient's mail program.
            return _bad(raw, "malformed-message", f"more than one {name.title()} header",
                        message)
    if not raw_headers.get("from"):
        return _bad(raw, "malformed-message", "the message has no From header", message)
    for name in ADDRESS_HEADERS:
        values = raw_headers.get(name, [])
        if len(values) > 1 and name in ("from", "sender", "to", "cc", "reply-to"):
            return _bad(raw, "malformed-address", f"more than one {name.title()} header", message)
        found: list[str] = []
        for value in values:
            try:
                found.extend(parse_address_list(utf8_header(value)))
            except AddressError:
                hint = (" (an RFC 2047 encoded word inside an address: write a non-ASCII"
                        " address in UTF-8, e.g. with Python's email.policy.SMTPUTF8)"
                        if _ENCODED_IN_ADDRESS.search(value) else
                        " (put a display name holding a comma or other special character"
                        " in double quotes)")
                return _bad(raw, "malformed-address",
                            f"{name.title()} header cannot be parsed unambiguously{hint}",
                            message)
        headers[name] = tuple(found)
    return MessageView(raw=raw, message=message, message_id=_message_id(message),
                       headers=headers,
                       subject=_decode_subject(message))


def _parse_mime(raw: bytes, header_end: re.Match[bytes] | None) -> Message:
    """``email.message_from_bytes``, with a fast path for single-part messages.

    The stdlib feed parser reads the body line by line in Python, which is most
    of the cost of parsing. A message whose top-level type is not multipart/*
    or message/* has no structure below the headers, so only the header block
    goes through the parser and the body becomes the payload exactly as the
    feed parser would store it (ASCII with surrogateescape, line ends kept).
    """
    if header_end is not None:
        head = email.message_from_bytes(raw[: header_end.start()] + b"\r\n")
        if head.get_content_maintype() not in ("multipart", "message") and not head.defects:
            head.set_payload(raw[header_end.end():].decode("ascii", "surrogateescape"))
            return head
    return email.message_from_bytes(raw)


_SINGLETONS = ("subject", "content-type", "content-transfer-encoding", "mime-version")
# Defects after which the parser's view of headers or parts may differ from a mail
# program's (e.g. "X-Mailer : app" ends the header block early for Python, so the
# real Content-Type would be read as body): such a message is not scanned reliably.
_UNSAFE_DEFECTS = (
    errors.MissingHeaderBodySeparatorDefect,
    errors.FirstHeaderLineIsContinuationDefect,
    errors.StartBoundaryNotFoundDefect,
    errors.NoBoundaryInMultipartDefect,
    errors.MultipartInvariantViolationDefect,
    errors.MisplacedEnvelopeHeaderDefect,
)


def _check_structure(message: Message, limits: LimitSettings) -> str:
    """Walk the MIME tree without recursion; report the first limit crossed or
    the first defect that makes the structure ambiguous."""
    count = 0
    stack: list[tuple[Message, int]] = [(message, 1)]
    while stack:
        part, depth = stack.pop()
        if any(isinstance(d, _UNSAFE_DEFECTS) for d in part.defects):
            return "the header or MIME structure is ambiguous"
        count += 1
        if count > limits.max_parts:
            return f"more than {limits.max_parts} MIME parts"
        if depth > limits.max_mime_depth:
            return f"MIME nesting deeper than {limits.max_mime_depth}"
        if part.is_multipart():
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend((p, depth + 1) for p in payload if isinstance(p, Message))
    return ""


def parse_address_list(value: str) -> list[str]:
    """Strictly parse one address header value into normalised addr-specs.

    Raises AddressError when the value has CR/LF, when Python's RFC 5322 parser
    reports any defect other than a UTF-8 local part (RFC 6532), when it and
    ``email.utils.getaddresses`` disagree, or when a UTF-8 address could be
    read two ways (see ``_addr_spec``). The fast path for plain lists and the
    full parse give the same result for every value both can take.
    """
    unfolded = re.sub(r"\r?\n[ \t]", " ", value)
    if "\r" in unfolded or "\n" in unfolded or "\x00" in unfolded:
        raise AddressError("CR, LF or NUL in an address header")
    if not unfolded.strip():
        return []
    if _SIMPLE_LIST.fullmatch(unfolded):
        return _parse_simple(unfolded)
    return _parse_full(unfolded)


def _parse_simple(unfolded: str) -> list[str]:
    """The fast path: ``unfolded`` matches ``_SIMPLE_LIST``."""
    out = []
    for item in unfolded.split(","):
        m = _ADDR_IN_ITEM.search(item)
        if m is None:
            raise AddressError("unreadable address")
        out.append(_addr_spec(m.group(1) or m.group(2)))
    return out


# RFC 6532 allows UTF-8 in local parts; Python's parser flags it as a defect but
# reads the address the same way as without it. Every other defect is fatal,
# except the one below.
_TOLERATED_DEFECTS = (errors.NonASCIILocalPartDefect,)
# A period in an unquoted display name ("Dr. J. Doe <j@x>", "Smith Jr. <s@x>")
# is RFC 5322's obs-phrase, which receivers must accept (section 4.1): the
# address is still delimited by "<>", so nothing is ambiguous. Python's parser
# reports it, only inside a display name, with these two texts.
_OBS_PHRASE = frozenset({"period in 'phrase'", "comment found without atom"})


def _tolerated(defect: Exception) -> bool:
    return isinstance(defect, _TOLERATED_DEFECTS) or (
        isinstance(defect, errors.ObsoleteHeaderDefect) and str(defect) in _OBS_PHRASE)


def _parse_full(unfolded: str) -> list[str]:
    """Both stdlib parsers; they must agree and the strict one must see no defect."""
    try:
        header = email.policy.default.header_factory("to", unfolded)
    except Exception:  # noqa: BLE001 - the stdlib parser crashes on some inputs ("0@")
        # It crashes on a display name ending in "." right before "<" ("Smith
        # Jr.<s@x>"): a space there is only folding white space, so retry once
        # with one (outside quotes and comments; both parsers read the same text).
        spaced = _space_before_angle(unfolded)
        if spaced == unfolded:
            raise AddressError("address header cannot be parsed") from None
        return _parse_full(spaced)
    if not all(_tolerated(d) for d in header.defects):  # type: ignore[attr-defined]
        raise AddressError("address header has defects")
    strict = []
    for addr in header.addresses:  # type: ignore[attr-defined]
        if any(c in str(addr.display_name) for c in "\r\n\x00"):
            raise AddressError("control character in a display name")
        if not addr.username or not addr.domain:
            raise AddressError("incomplete address")
        strict.append(_addr_spec(f"{addr.username}@{addr.domain}"))
    loose = []
    try:
        pairs = email.utils.getaddresses([unfolded])
    except Exception:  # noqa: BLE001
        raise AddressError("address header cannot be parsed") from None
    for _name, spec in pairs:
        if spec:
            try:
                loose.append(_addr_spec(spec))
            except AddressError:
                loose.append(spec)
    if sorted(strict) != sorted(loose):
        raise AddressError("address parsers disagree")
    return strict


def _space_before_angle(value: str) -> str:
    """``value`` with a space between a "." and a following "<", outside quoted
    strings and comments (RFC 5322: white space there changes nothing)."""
    out: list[str] = []
    quoted = escaped = False
    depth = 0
    for c in value:
        if escaped:
            escaped = False
        elif c == "\\" and (quoted or depth):
            escaped = True
        elif c == '"' and not depth:
            quoted = not quoted
        elif not quoted and c == "(":
            depth += 1
        elif not quoted and c == ")" and depth:
            depth -= 1
        elif c == "<" and not quoted and not depth and out and out[-1] == ".":
            out.append(" ")
        out.append(c)
    return "".join(out)


def _addr_spec(spec: str) -> str:
    """``normalise_address`` for a header address, after the UTF-8 checks.

    An ASCII address is only normalised. A UTF-8 (RFC 6531/6532) one must also
    be readable one way only, or it is rejected rather than guessed at:

    * local part: NFC, and no non-ASCII control, format (e.g. bidi, zero-width),
      unassigned, private-use or separator character, nor one whose compatibility
      form holds ASCII punctuation (a full-width "@" or "<" reads as the ASCII
      one to anything that applies NFKC);
    * domain: NFC, and its IDNA A-label must decode back to the same U-label.
      This rejects the IDNA 2003/2008 deviations ("faß" is "fass" for one and
      "xn--fa-hia" for the other), full-width dots, and other mappings a
      resolver or the next MTA may apply differently.

    The result is ``normalise_address(spec)``: the domain in lower-case A-label
    form, so "bücher.example" and "xn--bcher-kva.example" compare equal.
    """
    if not spec.isascii():
        local, at, domain = spec.rpartition("@")
        if at and not local.isascii():
            _check_utf8_local(local)
        if at and not domain.isascii():
            _check_u_label_domain(domain)
    return normalise_address(spec)


def _check_utf8_local(local: str) -> None:
    if not unicodedata.is_normalized("NFC", local):
        raise AddressError("UTF-8 local part is not in NFC form")
    for c in local:
        if c.isascii():
            continue
        if unicodedata.category(c)[0] in "CZ":
            raise AddressError("invisible, control or space character in a local part")
        if any(k.isascii() and not k.isalnum() for k in unicodedata.normalize("NFKC", c)):
            raise AddressError("look-alike of an ASCII delimiter in a local part")


def _check_u_label_domain(domain: str) -> None:
    if not unicodedata.is_normalized("NFC", domain):
        raise AddressError("IDN domain is not in NFC form")
    try:
        back = domain.encode("idna").decode("idna")
    except (UnicodeError, ValueError):
        raise AddressError("invalid IDN domain") from None
    # Per character: str.lower() of a whole word turns a final "Σ" into "ς",
    # which IDNA (like RFC 5890 case mapping) reads as "σ".
    if back.lower() != "".join(c.lower() for c in domain):
        raise AddressError("IDN domain does not round-trip through its A-label")


def loose_recipients(message: Message, headers: tuple[str, ...] = ("to", "cc", "bcc")
                     ) -> list[str]:
    """The addresses in ``headers`` of a message that failed strict parsing, read
    as ``email.utils.getaddresses`` does, unnormalised: for reports only, never
    for routing. 8-bit (SMTPUTF8) header bytes are decoded as UTF-8, and only
    bytes that are not UTF-8 become U+FFFD."""
    values = [utf8_header(v, lossy=True) for k, v in message.raw_items()
              if k.lower() in headers]
    try:
        pairs = email.utils.getaddresses(values)
    except Exception:  # noqa: BLE001 - reporting only
        return []
    return list(dict.fromkeys(a for _, a in pairs if a))


def utf8_header(value: object, *, lossy: bool = False) -> str:
    """Header text; raw 8-bit bytes (SMTPUTF8 mail) must be valid UTF-8, unless
    ``lossy``, where bytes that are not become U+FFFD."""
    text = str(value)
    if not text.isascii() and any("\udc80" <= c <= "\udcff" for c in text):
        try:
            return text.encode("ascii", "surrogateescape").decode(
                "utf-8", "replace" if lossy else "strict")
        except UnicodeError:
            raise AddressError("8-bit address header is not UTF-8") from None
    return text


def _decode_subject(message: Message) -> str:
    values = header_texts(message, "subject")
    return values[0] if values else ""


def header_texts(message: Message, name: str) -> list[str]:
    """Every ``name`` header's text as a mail program shows it: raw 8-bit bytes
    read as UTF-8 (what SMTPUTF8 mail and Python's ``policy.SMTPUTF8`` write;
    any other byte becomes U+FFFD), RFC 2047 encoded words decoded.

    Read from the raw values: ``Message.get`` turns 8-bit bytes into U+FFFD.
    """
    return [decode_header_text(v) for k, v in message.raw_items() if k.lower() == name]


def decode_header_text(value: object) -> str:
    """One header value (raw, as ``Message.raw_items`` gives it) as shown."""
    text = utf8_header(value, lossy=True)
    if "=?" not in text:
        return text
    for decode in (_legacy_decoded, _modern_decoded):  # the second reads raw UTF-8 too
        try:
            return decode(text)
        except Exception:  # noqa: BLE001, S112 - undecodable: try the next, then the raw text
            continue
    return text


def _legacy_decoded(text: str) -> str:
    return str(make_header(decode_header(text)))


def _modern_decoded(text: str) -> str:
    return str(email.policy.default.header_factory("subject", text))


def strip_header(raw: bytes, name: str) -> bytes:
    """Remove every occurrence of header ``name`` (with folded lines), bytes-exact
    elsewhere. Used for the practice's restricted-class marker."""
    end = HEADER_END.search(raw)
    head, body = (raw[: end.start()], raw[end.start():]) if end else (raw, b"")
    lines = re.split(rb"(?<=\n)", head)
    out: list[bytes] = []
    skipping = False
    target = name.lower().encode("ascii") + b":"
    for line in lines:
        if skipping and line[:1] in (b" ", b"\t"):
            continue
        skipping = line.lower().startswith(target)
        if not skipping:
            out.append(line)
    kept = b"".join(out)
    if end and kept.endswith(b"\n"):
        # The last header line was removed; the separator already starts with
        # the line ending that closes the (new) last line.
        kept = kept[:-2] if kept.endswith(b"\r\n") else kept[:-1]
    return kept + body
