"""OpenPGP packets we write ourselves: SEIPD v1 around literal data, and ASCII armor.

PGPy encrypts the session key to each recipient (:mod:`securemail.crypto.pgp`);
the bulk of the work — encrypting the data and armoring the result — is done
here with ``cryptography`` and the standard library, because PGPy copies the
data through several bytearrays and computes its armor checksum bit by bit in
Python. The formats are RFC 9580's; GnuPG opens every output in the tests.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from securemail.protect import wrap_base64

try:  # OpenPGP's CFB lives in `decrepit` from cryptography 47 on
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB  # type: ignore[assignment]

__all__ = ["MARKER_PACKET", "ArmorError", "armor", "armor_parts", "crc24", "dearmor",
           "packet_header", "padded_length", "seipd", "split_packets"]


def seipd(data: bytes, session_key: bytes) -> list[bytes]:
    """Symmetrically Encrypted Integrity Protected Data (version 1) around a literal packet."""
    prefix = secrets.token_bytes(16)
    prefix += prefix[-2:]
    # Literal data: format 'b', no file name, date 0 (RFC 9580 5.9 allows both).
    literal_head = packet_header(11, 6 + len(data)) + b"b\x00\x00\x00\x00\x00"
    mdc_head = b"\xd3\x14"
    mdc = hashlib.sha1(prefix)  # noqa: S324 - the MDC is SHA-1 by definition (RFC 9580 5.13.1)
    for part in (literal_head, data, mdc_head):
        mdc.update(part)
    encryptor = Cipher(algorithms.AES(session_key), CFB(bytes(16))).encryptor()
    body = [encryptor.update(prefix), encryptor.update(literal_head), encryptor.update(data),
            encryptor.update(mdc_head), encryptor.update(mdc.digest()), encryptor.finalize()]
    return [packet_header(18, 1 + sum(map(len, body))), b"\x01", *body]


def packet_header(tag: int, length: int) -> bytes:
    """OpenPGP packet header, current format, shortest length encoding (RFC 9580 4.2.1)."""
    if length < 192:
        return bytes([0xC0 | tag, length])
    if length < 8384:
        rest = length - 192
        return bytes([0xC0 | tag, (rest >> 8) + 192, rest & 0xFF])
    return bytes([0xC0 | tag, 0xFF]) + length.to_bytes(4, "big")


def armor(binary: bytes) -> bytes:
    """ASCII armor for a PGP MESSAGE, CRLF lines, without the optional CRC24 line."""
    return b"".join(armor_parts(binary))


def armor_parts(binary: bytes) -> list[bytes]:
    """:func:`armor` as pieces, so the caller joins the whole message with one copy."""
    return [b"-----BEGIN PGP MESSAGE-----\r\n\r\n",
            wrap_base64(base64.b64encode(padded_length(binary)), 64),
            b"-----END PGP MESSAGE-----\r\n"]


MARKER_PACKET = b"\xa8\x03PGP"  # RFC 9580 5.8: readers MUST ignore it


def padded_length(binary: bytes) -> bytes:
    """Keep the length off a multiple of 3, so the base64 ends in ``=`` padding.

    Without a CRC line, GnuPG 2.2 finds the end of the armored data only at
    ``=``: when the base64 has no padding it reads the END line as data and
    fails. Rather than computing CRC24 (slow in Python), we re-encode the first
    packet's header in the legacy format, which every OpenPGP reader accepts
    and which is 1 or 2 octets longer (RFC 9580 4.2.2).
    """
    if len(binary) % 3 or len(binary) < 2:
        return binary
    ctb, first = binary[0], binary[1]
    tag = ctb & 0x3F
    if ctb & 0xC0 == 0xC0 and tag < 16:
        legacy_2, legacy_4 = 0x80 | tag << 2 | 1, 0x80 | tag << 2 | 2
        if first < 192:
            return bytes([legacy_2]) + first.to_bytes(2, "big") + binary[2:]
        if first < 224:
            length = ((first - 192) << 8) + binary[2] + 192
            return bytes([legacy_4]) + length.to_bytes(4, "big") + binary[3:]
    return MARKER_PACKET + binary


# ------------------------------------------------------------------ reading

_ARMOR_BEGIN = re.compile(rb"^-----BEGIN PGP ([A-Z0-9 ,/]+)-----[ \t]*\r?$", re.MULTILINE)
_CRC24_INIT, _CRC24_POLY = 0xB704CE, 0x1864CFB


class ArmorError(ValueError):
    """Armored text we cannot read; ``str()`` says what is wrong in plain words."""


def dearmor(data: bytes) -> list[tuple[str, bytes]]:
    """Every ASCII-armored block in ``data``, in order, as (block type, binary).

    ``cat a.asc b.asc`` gives two blocks; text around them is ignored as
    GnuPG ignores it. Trailing spaces and tabs on a line (mail programs and
    web pages add them when a key is pasted) are not part of the armor and are
    dropped (RFC 9580 6.2: trailing whitespace is ignored). A CRC24 line, when
    present, must match. Raises :class:`ArmorError`.
    """
    blocks: list[tuple[str, bytes]] = []
    pos = 0
    while (begin := _ARMOR_BEGIN.search(data, pos)) is not None:
        kind = begin.group(1).decode("ascii")
        end_line = re.compile(rb"^-----END PGP " + re.escape(begin.group(1))
                              + rb"-----[ \t]*\r?$", re.MULTILINE)
        end = end_line.search(data, begin.end())
        if end is None:
            raise ArmorError(f'the armored block "BEGIN PGP {kind}" has no END line')
        # Each block is read once, from its BEGIN to its END: linear in the file.
        lines = data[begin.end():end.start()].split(b"\n")[1:]  # [0]: the BEGIN line's end
        body = [line.rstrip(b" \t\r") for line in lines]
        blocks.append((kind, _decode_armor_body(body, kind)))
        pos = end.end()
    return blocks


def _decode_armor_body(lines: list[bytes], kind: str) -> bytes:
    # Armor header fields ("Version: ...", "Comment: ...") up to the blank line.
    # Base64 never holds ":", so a first line with one starts the headers.
    if lines and b":" in lines[0]:
        try:
            lines = lines[lines.index(b"") + 1:]
        except ValueError:
            raise ArmorError(f'the armored block "BEGIN PGP {kind}" has no blank line '
                             "after its header lines") from None
    crc = None
    data_lines = [line.strip() for line in lines if line.strip()]
    if data_lines and data_lines[-1].startswith(b"=") and len(data_lines[-1]) == 5:
        crc = data_lines.pop()[1:]
    try:
        binary = base64.b64decode(b"".join(data_lines), validate=True)
        expected = base64.b64decode(crc, validate=True) if crc is not None else None
    except ValueError:
        raise ArmorError(f'the armored block "BEGIN PGP {kind}" is damaged (not base64)'
                         ) from None
    if expected is not None and expected != crc24(binary).to_bytes(3, "big"):
        raise ArmorError(f'the armored block "BEGIN PGP {kind}" is damaged '
                         "(its checksum does not match)")
    return binary


def _crc24_table() -> list[int]:
    table = []
    for octet in range(256):
        crc = octet << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= _CRC24_POLY
        table.append(crc & 0xFFFFFF)
    return table


_CRC24_TABLE = _crc24_table()


def crc24(data: bytes) -> int:
    """The armor checksum (RFC 9580 6.1), a byte at a time from a table."""
    crc = _CRC24_INIT
    table = _CRC24_TABLE
    for octet in data:
        crc = ((crc << 8) & 0xFFFFFF) ^ table[(crc >> 16) ^ octet]
    return crc


def split_packets(binary: bytes) -> list[tuple[int, bytes]]:
    """The packets of ``binary`` as (tag, the packet's bytes with its header).

    Only definite lengths: the packets of keys and signatures never use
    partial or indeterminate lengths. Raises ValueError on anything else.
    """
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(binary):
        ctb = binary[pos]
        if not ctb & 0x80:
            raise ValueError("not an OpenPGP packet")
        if ctb & 0x40:  # current format (RFC 9580 4.2.1)
            tag = ctb & 0x3F
            first = _octet(binary, pos + 1)
            if first < 192:
                head, length = 2, first
            elif first < 224:
                head, length = 3, ((first - 192) << 8) + _octet(binary, pos + 2) + 192
            elif first == 255:
                head, length = 6, int.from_bytes(_octets(binary, pos + 2, 4), "big")
            else:
                raise ValueError("partial body lengths are not used in keys")
        else:  # legacy format (RFC 9580 4.2.2)
            tag, kind = (ctb >> 2) & 0x0F, ctb & 0x03
            if kind == 3:
                raise ValueError("indeterminate lengths are not used in keys")
            size = 1 << kind
            head, length = 1 + size, int.from_bytes(_octets(binary, pos + 1, size), "big")
        end = pos + head + length
        if end > len(binary):
            raise ValueError("truncated packet")
        out.append((tag, binary[pos:end]))
        pos = end
    return out


def _octet(binary: bytes, pos: int) -> int:
    if pos >= len(binary):
        raise ValueError("truncated packet header")
    return binary[pos]


def _octets(binary: bytes, pos: int, count: int) -> bytes:
    if pos + count > len(binary):
        raise ValueError("truncated packet header")
    return binary[pos:pos + count]
