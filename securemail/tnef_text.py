"""The text of an Outlook ``winmail.dat`` (TNEF, ``application/ms-tnef``).

When Outlook sends a message in "Rich Text" format, or through some Exchange
set-ups, the body and every attachment travel packed in one TNEF part
(MS-OXTNEF). Mail clients other than Outlook show it as an opaque
``winmail.dat``; the recipient's tools unpack it. What is read here:

- the message's own attributes: the plain body (``attBody``) and every
  string property (subject, body, names), the compressed RTF body
  (``PR_RTF_COMPRESSED``, MS-OXRTFCP) without its control words, and an
  HTML body without its tags;
- each attachment, by its file name and bytes, as any document inside an
  archive is read (:func:`securemail.documents.member_text`): a PDF or Word
  file inside, a text file by its name, an attached message (TNEF again).

A file whose structure is cut short or has a property type we do not know is
:class:`~securemail.documents.Unreadable`, so the caller treats it as
possibly PHI (fail closed). Checksums are not checked: a wrong one does not
hide text, and recipients' tools read such files too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from securemail.documents import TNEF_SIGNATURE, Unreadable, member_text, rtf_text, spend
from securemail.table_text import html_with_labels

__all__ = ["decompress_rtf", "tnef_text"]

# Attribute ids (the low 16 bits; the high 16 are the attribute's type).
_ATT_SUBJECT, _ATT_BODY, _ATT_ATTACH_DATA, _ATT_ATTACH_TITLE = 0x8004, 0x800C, 0x800F, 0x8010
_ATT_ATTACH_RENDDATA, _ATT_MAPI_PROPS, _ATT_ATTACHMENT = 0x9002, 0x9003, 0x9005

# MAPI property ids and types (MS-OXCDATA 2.11.1).
_PR_BODY, _PR_RTF_COMPRESSED, _PR_HTML = 0x1000, 0x1009, 0x1013
_PR_ATTACH_DATA, _PR_ATTACH_FILENAME, _PR_ATTACH_LONG_FILENAME = 0x3701, 0x3704, 0x3707
_PT_STRING8, _PT_UNICODE, _PT_BINARY, _PT_OBJECT = 0x001E, 0x001F, 0x0102, 0x000D
_MV_FLAG: Final = 0x1000
_FIXED_SIZES: Final = {  # bytes each value takes in a TNEF property stream (padded to 4)
    0x0001: 4, 0x0002: 4, 0x0003: 4, 0x0004: 4, 0x0005: 8, 0x0006: 8, 0x0007: 8,
    0x000A: 4, 0x000B: 4, 0x0014: 8, 0x0040: 8, 0x0048: 16,
}
_MAX_ITEMS: Final = 100_000  # properties or values claimed by one count: more is damage


@dataclass
class _Attachment:
    title: str = ""
    long_name: str = ""
    data: list[bytes] = field(default_factory=list)


def tnef_text(payload: bytes, limit: int, depth: int) -> str:
    """The text of a TNEF file (see the module docstring); raises Unreadable."""
    if not payload.startswith(TNEF_SIGNATURE):
        raise Unreadable("not a TNEF file")
    reader = _Reader(payload, 6)  # signature, then a 2-byte legacy key
    texts: list[str] = []
    attachments: list[_Attachment] = []
    while reader.left():
        level = reader.take(1)[0]
        attr_id = reader.u32() & 0xFFFF
        data = reader.take(reader.u32())
        reader.take(2)  # checksum
        if level not in (1, 2):
            raise Unreadable("the TNEF file is damaged (unknown attribute level)")
        if attr_id == _ATT_ATTACH_RENDDATA or (level == 2 and not attachments):
            attachments.append(_Attachment())
        if attr_id in (_ATT_BODY, _ATT_SUBJECT):
            texts.append(_cstring(data))
        elif attr_id == _ATT_ATTACH_TITLE:
            attachments[-1].title = _cstring(data)
        elif attr_id == _ATT_ATTACH_DATA:
            attachments[-1].data.append(data)
        elif attr_id in (_ATT_MAPI_PROPS, _ATT_ATTACHMENT):
            target = attachments[-1] if attr_id == _ATT_ATTACHMENT and attachments else None
            texts.extend(_properties(data, limit, depth, target))
    for attachment in attachments:
        name = attachment.long_name or attachment.title
        if not attachment.long_name:  # a long name is among the property strings already
            texts.append(name)
        texts.extend(member_text(name, data, limit, depth + 1) for data in attachment.data)
    return "\n".join(t for t in texts if t)


def _properties(block: bytes, limit: int, depth: int, attachment: _Attachment | None) -> list[str]:
    """The text in one MAPI property stream (MS-OXTNEF 2.1.3.4)."""
    reader = _Reader(block, 0)
    texts: list[str] = []
    for _ in range(reader.count()):
        prop_type, prop_id = struct.unpack("<HH", reader.take(4))
        if prop_id >= 0x8000:  # a named property: its GUID and name or number come first
            reader.take(16)
            if reader.u32() == 1:
                reader.padded(reader.u32())
            else:
                reader.take(4)
        base = prop_type & ~_MV_FLAG
        many = prop_type & _MV_FLAG or base in (_PT_STRING8, _PT_UNICODE, _PT_BINARY, _PT_OBJECT)
        for _ in range(reader.count() if many else 1):
            if base in _FIXED_SIZES:
                reader.take(_FIXED_SIZES[base])
                continue
            if base not in (_PT_STRING8, _PT_UNICODE, _PT_BINARY, _PT_OBJECT):
                raise Unreadable("the TNEF file has a property of a type that is not read")
            value = reader.padded(reader.u32())
            if base in (_PT_STRING8, _PT_UNICODE):
                text = _cstring(value) if base == _PT_STRING8 else _cstring16(value)
                if attachment is not None and prop_id == _PR_ATTACH_LONG_FILENAME:
                    attachment.long_name = text
                elif attachment is not None and prop_id == _PR_ATTACH_FILENAME:
                    attachment.title = attachment.title or text
                texts.append(text)
            elif prop_id == _PR_RTF_COMPRESSED:
                texts.append(rtf_text(decompress_rtf(value)))
            elif prop_id == _PR_HTML:
                texts.append(html_with_labels(value.decode("utf-8", "replace"), limit))
            elif prop_id == _PR_ATTACH_DATA and attachment is not None:
                # PT_OBJECT: a 16-byte interface id, then the object (an attached
                # message is TNEF itself); PT_BINARY: the file's bytes.
                data = value[16:] if base == _PT_OBJECT else value
                attachment.data.append(data)
    return texts


class _Reader:
    """Little-endian fields read from ``data``; running out is damage (Unreadable)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, size: int) -> bytes:
        if size > self.left():
            raise Unreadable("the TNEF file is cut short")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def u32(self) -> int:
        value: int = struct.unpack("<I", self.take(4))[0]
        return value

    def count(self) -> int:
        value = self.u32()
        if value > _MAX_ITEMS or value > self.left():
            raise Unreadable("the TNEF file is damaged (impossible count)")
        return value

    def padded(self, size: int) -> bytes:
        value = self.take(size)
        self.take(-size % 4)
        return value


def _cstring(data: bytes) -> str:
    """An 8-bit string attribute or property: Windows-1252, NUL-terminated."""
    return data.split(b"\x00", 1)[0].decode("cp1252", "replace")


def _cstring16(data: bytes) -> str:
    return data.decode("utf-16-le", "replace").split("\x00", 1)[0]


# MS-OXRTFCP: compressed RTF. The dictionary starts with this text.
_RTF_PREBUF: Final = (
    b"{\\rtf1\\ansi\\mac\\deff0\\deftab720{\\fonttbl;}{\\f0\\fnil \\froman \\fswiss \\fmodern"
    b" \\fscript \\fdecor MS Sans SerifSymbolArialTimes New RomanCourier{\\colortbl\\red0"
    b"\\green0\\blue0\r\n\\par \\pard\\plain\\f0\\fs20\\b\\i\\u\\tab\\tx"
)
_LZFU, _MELA = 0x75465A4C, 0x414C454D  # compressed, stored


def decompress_rtf(data: bytes) -> bytes:
    """The RTF inside a ``PR_RTF_COMPRESSED`` value (MS-OXRTFCP 2.1.3.1)."""
    if len(data) < 16:
        raise Unreadable("the TNEF file's RTF body is cut short")
    comp_size, raw_size, comp_type = struct.unpack("<III", data[:12])
    body = data[16:4 + comp_size] if comp_size >= 12 else b""
    if comp_type == _MELA:
        spend(raw_size)
        return data[16:16 + raw_size]
    if comp_type != _LZFU:
        raise Unreadable("the TNEF file's RTF body is in an unknown format")
    spend(raw_size)
    window = bytearray(4096)
    window[:len(_RTF_PREBUF)] = _RTF_PREBUF
    write = len(_RTF_PREBUF)
    out = bytearray()
    pos, end = 0, len(body)
    while pos < end:
        control = body[pos]
        pos += 1
        for bit in range(8):
            if pos >= end:
                break
            if not control >> bit & 1:
                byte = body[pos]
                pos += 1
                out.append(byte)
                window[write] = byte
                write = (write + 1) % 4096
                continue
            if pos + 2 > end:
                raise Unreadable("the TNEF file's RTF body is cut short")
            ref = body[pos] << 8 | body[pos + 1]
            pos += 2
            offset, length = ref >> 4, (ref & 0xF) + 2
            if offset == write:
                return bytes(out)  # the end marker
            for i in range(length):
                byte = window[(offset + i) % 4096]
                out.append(byte)
                window[write] = byte
                write = (write + 1) % 4096
            if len(out) > raw_size + 4096:
                raise Unreadable("the TNEF file's RTF body is larger than it says")
    return bytes(out)
