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
import secrets

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from securemail.protect import wrap_base64

try:  # OpenPGP's CFB lives in `decrepit` from cryptography 47 on
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB  # type: ignore[assignment]

__all__ = ["MARKER_PACKET", "armor", "armor_parts", "packet_header", "padded_length", "seipd"]


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
