"""Outlook ``winmail.dat`` (TNEF) files made at test time, per MS-OXTNEF.

What Outlook writes for a "Rich Text" message: the legacy attributes
(version, code page, message class, subject, ``attBody``), a MAPI property
stream with the compressed RTF body (MS-OXRTFCP), and per attachment
``attAttachRenddata``, ``attAttachTitle``, ``attAttachData`` and an
``attAttachment`` property stream with the long file name. The tests check
these files with Debian's ``tnef`` tool, so the maker is not only checked
against our own reader.
"""

from __future__ import annotations

import struct

SIGNATURE = b"\x78\x9f\x3e\x22"
RTF_PREBUF = (
    b"{\\rtf1\\ansi\\mac\\deff0\\deftab720{\\fonttbl;}{\\f0\\fnil \\froman \\fswiss \\fmodern"
    b" \\fscript \\fdecor MS Sans SerifSymbolArialTimes New RomanCourier{\\colortbl\\red0"
    b"\\green0\\blue0\r\n\\par \\pard\\plain\\f0\\fs20\\b\\i\\u\\tab\\tx"
)


def attribute(level: int, attr_id: int, data: bytes) -> bytes:
    return (bytes([level]) + struct.pack("<II", attr_id, len(data)) + data
            + struct.pack("<H", sum(data) & 0xFFFF))


def _padded(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 4)


def string_prop(prop_id: int, text: str, *, unicode: bool = False) -> bytes:
    data = (text.encode("utf-16-le") + b"\x00\x00") if unicode else text.encode("cp1252") + b"\0"
    return (struct.pack("<HHII", 0x001F if unicode else 0x001E, prop_id, 1, len(data))
            + _padded(data))


def binary_prop(prop_id: int, data: bytes) -> bytes:
    return struct.pack("<HHII", 0x0102, prop_id, 1, len(data)) + _padded(data)


def long_prop(prop_id: int, value: int) -> bytes:
    return struct.pack("<HHI", 0x0003, prop_id, value)


def named_bool_prop(lid: int, value: bool) -> bytes:
    """A named property (PSETID_Common, by number), as Outlook adds many of."""
    guid = bytes.fromhex("0820060000000000c000000000000046")
    return struct.pack("<HH", 0x000B, 0x8000) + guid + struct.pack("<III", 0, lid, int(value))


def props(*items: bytes) -> bytes:
    return struct.pack("<I", len(items)) + b"".join(items)


def compress_rtf(rtf: bytes) -> bytes:
    """LZFu compression (MS-OXRTFCP): greedy longest match in the 4 KiB window."""
    window = bytearray(4096)
    window[:len(RTF_PREBUF)] = RTF_PREBUF
    write = len(RTF_PREBUF)
    out = bytearray()
    pos = 0
    done = False
    while not done:
        control, chunk = 0, bytearray()
        for bit in range(8):
            if pos >= len(rtf):  # the end marker: a reference to the write position
                control |= 1 << bit
                chunk += struct.pack(">H", write << 4)
                done = True
                break
            best_len, best_off = 0, 0
            for off in range(4096):
                if off == write:
                    continue
                n = 0
                while (n < 17 and pos + n < len(rtf)
                       and window[(off + n) % 4096] == rtf[pos + n]
                       and (off + n) % 4096 != write):
                    n += 1
                if n > best_len:
                    best_len, best_off = n, off
            if best_len >= 2:
                control |= 1 << bit
                chunk += struct.pack(">H", best_off << 4 | (best_len - 2))
                taken = rtf[pos:pos + best_len]
            else:
                chunk.append(rtf[pos])
                taken = rtf[pos:pos + 1]
            for byte in taken:
                window[write] = byte
                write = (write + 1) % 4096
            pos += len(taken)
        out.append(control)
        out += chunk
    # CRC-32 as MS-OXRTFCP 3.1.3.2 defines it (no final xor), over the compressed bytes.
    crc = 0
    for byte in out:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return struct.pack("<IIII", len(out) + 12, len(rtf), 0x75465A4C, crc) + bytes(out)


def winmail_dat(*, subject: str = "", body: str = "", rtf: bytes = b"",
                attachments: tuple[tuple[str, bytes], ...] = ()) -> bytes:
    out = bytearray(SIGNATURE + struct.pack("<H", 0x0C31))
    out += attribute(1, 0x00089006, struct.pack("<I", 0x00010000))  # attTnefVersion
    out += attribute(1, 0x00069007, struct.pack("<II", 1252, 0))  # attOemCodepage
    out += attribute(1, 0x00078008, b"IPM.Microsoft Mail.Note\x00")  # attMessageClass
    if subject:
        out += attribute(1, 0x00018004, subject.encode("cp1252") + b"\x00")
    if body:
        out += attribute(1, 0x0002800C, body.encode("cp1252") + b"\x00")
    message_props = [long_prop(0x0E07, 1), named_bool_prop(0x8503, False)]
    if rtf:
        message_props.append(binary_prop(0x1009, compress_rtf(rtf)))
    out += attribute(1, 0x00069003, props(*message_props))
    for name, data in attachments:
        out += attribute(2, 0x00069002, struct.pack("<HIIII", 1, 0xFFFFFFFF, 0, 0, 0)[:14])
        out += attribute(2, 0x00018010, name.encode("cp1252") + b"\x00")
        out += attribute(2, 0x0006800F, data)
        out += attribute(2, 0x00069005, props(string_prop(0x3707, name, unicode=True),
                                               long_prop(0x3705, 1)))
    return bytes(out)
