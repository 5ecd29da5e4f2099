"""Is the whole message already encrypted? Judged on structure *and* payload.

Headers alone prove nothing: a ``multipart/encrypted`` wrapper around a
garbage body is ``none``. We check that the payload really is an OpenPGP
encrypted message (public/symmetric-key session key packets followed by one
encrypted data packet) or a CMS EnvelopedData/AuthEnvelopedData, without
decrypting anything and without importing a crypto library.
"""

from __future__ import annotations

import base64
import binascii
import re
from email.message import Message

from securemail.model import Encryption

__all__ = [
    "claims_encryption",
    "encryption_state",
    "is_cms_enveloped",
    "is_openpgp_encrypted",
    "looks_random",
]

_ARMOR = re.compile(
    rb"\A\s*-----BEGIN PGP MESSAGE-----\r?\n"
    rb"(?P<headers>(?:[A-Za-z][A-Za-z0-9-]*: [^\r\n]*\r?\n)*)"
    rb"\r?\n"
    rb"(?P<body>[A-Za-z0-9+/=\r\n \t]+?)"
    rb"(?:\r?\n=(?P<crc>[A-Za-z0-9+/]{4}))?"
    rb"\s*-----END PGP MESSAGE-----\s*\Z"
)
_ESK_TAGS = {1, 3}  # public-key / symmetric-key encrypted session key
_LEGACY_DATA_TAG = 9  # SED without integrity protection: still encrypted


def dearmor(text: bytes) -> bytes | None:
    m = _ARMOR.match(text)
    if not m:
        return None
    try:
        return base64.b64decode(re.sub(rb"\s+", b"", m.group("body")), validate=True)
    except (binascii.Error, ValueError):
        return None


def _packets(data: bytes) -> list[tuple[int, bytes]] | None:
    """(tag, first bytes of the body) of each OpenPGP packet; None if the
    framing is broken or a packet has an indeterminate length (old format)."""
    packets: list[tuple[int, bytes]] = []
    i = 0
    n = len(data)
    while i < n:
        first = data[i]
        if not first & 0x80:
            return None
        if first & 0x40:  # new format
            tag = first & 0x3F
            i += 1
            body_start = -1
            while True:  # partial body lengths chain until a definite length
                if i >= n:
                    return None
                o = data[i]
                if o < 192:
                    length, i = o, i + 1
                    partial = False
                elif o < 224:
                    if i + 1 >= n:
                        return None
                    length, i = ((o - 192) << 8) + data[i + 1] + 192, i + 2
                    partial = False
                elif o == 255:
                    if i + 4 >= n:
                        return None
                    length, i = int.from_bytes(data[i + 1 : i + 5], "big"), i + 5
                    partial = False
                else:
                    length, i = 1 << (o & 0x1F), i + 1
                    partial = True
                if body_start < 0:
                    body_start = i
                i += length
                if i > n:
                    return None
                if not partial:
                    break
            # Partial chunks interleave length octets; a sample from the first is enough.
            packets.append((tag, data[body_start : min(i, body_start + _SAMPLE)]))
        else:  # old format
            tag = (first >> 2) & 0x0F
            ltype = first & 0x03
            i += 1
            if ltype == 3:  # indeterminate length: a place to hide anything
                return None
            size = (1, 2, 4)[ltype]
            if i + size > n:
                return None
            length = int.from_bytes(data[i : i + size], "big")
            body = data[i + size : i + size + length]
            i += size + length
            if i > n:
                return None
            packets.append((tag, body[:_SAMPLE]))
    return packets


_SAMPLE = 4096
_PRINTABLE = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}


def looks_random(sample: bytes) -> bool:
    """Ciphertext is ~38% printable bytes; text is ~100%. Wrapping clear text in
    encrypted-packet framing therefore does not pass as encrypted."""
    if len(sample) < 16:
        return False
    printable = sum(1 for b in sample if b in _PRINTABLE)
    return printable / len(sample) < 0.75


def is_openpgp_encrypted(data: bytes) -> bool:
    """Binary OpenPGP: session key packet(s), then one encrypted data packet whose
    body has a valid version and looks like ciphertext."""
    packets = _packets(data)
    if not packets or len(packets) < 2:
        return False
    *esks, (tag, body) = packets
    for esk_tag, esk in esks:
        if esk_tag == 1 and (len(esk) < 10 or esk[0] not in (3, 6)):
            return False  # PKESK: version, key id / fingerprint, algorithm, session key
        if esk_tag == 3 and (len(esk) < 4 or esk[0] not in (4, 5, 6)):
            return False
        if esk_tag not in _ESK_TAGS:
            return False
    if tag == 18:  # SEIPD: version 1 (CFB + MDC) or 2 (AEAD)
        return len(body) >= 30 and body[0] in (1, 2) and looks_random(body[1:])
    if tag == 20:  # GnuPG's OCB packet
        return len(body) >= 20 and body[0] == 1 and looks_random(body[4:])
    if tag == _LEGACY_DATA_TAG:
        return len(body) >= 20 and looks_random(body)
    return False


def is_armored_openpgp_encrypted(text: bytes) -> bool:
    data = dearmor(text)
    return data is not None and is_openpgp_encrypted(data)


_OID_ENVELOPED = bytes.fromhex("2a864886f70d010703")  # 1.2.840.113549.1.7.3
_OID_AUTH_ENVELOPED = bytes.fromhex("2a864886f70d0109100117")  # 1.2.840.113549.1.9.16.1.23


def _der_header(data: bytes, i: int) -> tuple[int, int, int | None] | None:
    """(tag, content offset, length or None for indefinite)."""
    if i + 2 > len(data):
        return None
    tag = data[i]
    o = data[i + 1]
    if o < 0x80:
        return tag, i + 2, o
    if o == 0x80:
        return tag, i + 2, None
    size = o & 0x7F
    if size > 4 or i + 2 + size > len(data):
        return None
    return tag, i + 2 + size, int.from_bytes(data[i + 2 : i + 2 + size], "big")


def is_cms_enveloped(der: bytes) -> bool:
    """ContentInfo { contentType = (auth)envelopedData, [0] { SEQUENCE { INTEGER ... } } }."""
    outer = _der_header(der, 0)
    if outer is None or outer[0] != 0x30:
        return False
    _, start, length = outer
    if length is not None and start + length != len(der):
        return False
    oid = _der_header(der, start)
    if oid is None or oid[0] != 0x06 or oid[2] is None:
        return False
    value = der[oid[1] : oid[1] + oid[2]]
    if value not in (_OID_ENVELOPED, _OID_AUTH_ENVELOPED):
        return False
    explicit = _der_header(der, oid[1] + oid[2])
    if explicit is None or explicit[0] != 0xA0:
        return False
    inner = _der_header(der, explicit[1])
    if inner is None or inner[0] != 0x30:
        return False
    version = _der_header(der, inner[1])
    if version is None or version[0] != 0x02:
        return False
    # The encrypted content comes last: it must look like ciphertext.
    tail = der[-min(_SAMPLE, max(16, len(der) // 3)):].rstrip(b"\x00")
    return looks_random(tail)


def _payload_bytes(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _leaves(message: Message) -> list[Message]:
    return [p for p in message.walk() if not p.is_multipart()]


def encryption_state(message: Message, content_type: str | None = None) -> Encryption:
    """How ``message`` is encrypted (``content_type``: its content type, when
    the caller has it already: read once per message on the policy's hot path)."""
    ctype = content_type or message.get_content_type()
    if ctype == "multipart/encrypted":
        return Encryption.PGP_MIME if _is_pgp_mime(message) else Encryption.NONE
    if ctype in ("application/pkcs7-mime", "application/x-pkcs7-mime"):
        smime_type = (message.get_param("smime-type") or "")
        if isinstance(smime_type, str) and smime_type.lower() in (
            "enveloped-data", "authenveloped-data"
        ) and is_cms_enveloped(_payload_bytes(message)):
            return Encryption.SMIME
        return Encryption.NONE
    leaves = _leaves(message) if message.is_multipart() else [message]
    if len(leaves) != 1:
        return Encryption.NONE
    leaf = leaves[0]
    if (ctype if leaf is message else leaf.get_content_type()) in ("text/plain",
                                                                   "application/pgp"):
        raw = leaf.get_payload()
        # Armor survives 7bit/8bit/quoted-printable unchanged: skip decoding clear text.
        maybe_armored = not isinstance(raw, str) or "BEGIN PGP MESSAGE" in raw or \
            str(leaf.get("content-transfer-encoding", "")).strip().lower() == "base64"
        if maybe_armored and leaf.get_content_disposition() != "attachment" and \
                is_armored_openpgp_encrypted(_payload_bytes(leaf)):
            return Encryption.PGP_INLINE
    return Encryption.NONE


def claims_encryption(message: Message, raw: bytes, content_type: str | None = None) -> bool:
    """The message says it is encrypted (whether or not it really is)."""
    ctype = content_type or message.get_content_type()
    if ctype == "multipart/encrypted":
        return True
    if ctype in ("application/pkcs7-mime", "application/x-pkcs7-mime"):
        smime_type = message.get_param("smime-type")
        return not (isinstance(smime_type, str) and smime_type.lower() in (
            "signed-data", "certs-only", "compressed-data"))
    return b"-----BEGIN PGP MESSAGE-----" in raw


def _is_pgp_mime(message: Message) -> bool:
    protocol = message.get_param("protocol")
    if not isinstance(protocol, str) or protocol.lower() != "application/pgp-encrypted":
        return False
    parts = message.get_payload()
    if not isinstance(parts, list) or len(parts) != 2:
        return False
    control, data = parts
    if not isinstance(control, Message) or not isinstance(data, Message):
        return False
    if control.get_content_type() != "application/pgp-encrypted":
        return False
    if b"version: 1" not in _payload_bytes(control).lower():
        return False
    if data.get_content_type() != "application/octet-stream":
        return False
    return is_armored_openpgp_encrypted(_payload_bytes(data))
