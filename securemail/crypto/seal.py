"""AES-256-GCM sealing for the portal: one random key per message, never stored.

Wire format of a sealed blob (what the store keeps and the browser receives)::

    version (1 byte, 0x01) || nonce (12 bytes) || ciphertext || GCM tag (16 bytes)

The associated data binds the blob to its portal id, the original Message-ID
and the recipient, so a blob moved to another row (or a row edited to point
at another recipient) fails to open. The browser rebuilds the same bytes with
:func:`associated_data`'s documented layout.

>>> key = new_key()
>>> aad = associated_data("p1", "<m@x>", "c@example.com")
>>> open_sealed(seal(b"hello", key, aad=aad), key, aad=aad)
b'hello'
"""

from __future__ import annotations

import base64
import binascii
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "SealError",
    "associated_data",
    "decode_key",
    "encode_key",
    "new_key",
    "open_sealed",
    "seal",
]

VERSION = 1
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96-bit random nonce; a key is used exactly once, so no reuse
TAG_BYTES = 16


class SealError(Exception):
    """A sealed blob could not be opened. Deliberately says nothing about why."""

    def __init__(self) -> None:
        super().__init__("sealed message cannot be opened")


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def associated_data(portal_id: str, message_id: str, recipient: str) -> bytes:
    """``securemail-portal-v1`` NUL id NUL message-id NUL recipient, UTF-8."""
    return "\x00".join(("securemail-portal-v1", portal_id, message_id, recipient)).encode()


def seal(plaintext: bytes, key: bytes, *, aad: bytes) -> bytes:
    if len(key) != KEY_BYTES:
        raise ValueError("portal keys are 32 bytes")
    nonce = secrets.token_bytes(NONCE_BYTES)
    return bytes([VERSION]) + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(blob: bytes, key: bytes, *, aad: bytes) -> bytes:
    """Decrypt and authenticate ``blob``; any tampering raises :class:`SealError`."""
    if len(key) != KEY_BYTES or len(blob) < 1 + NONCE_BYTES + TAG_BYTES or blob[0] != VERSION:
        raise SealError()
    nonce, body = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
    try:
        return AESGCM(key).decrypt(nonce, body, aad)
    except InvalidTag:
        raise SealError() from None


def encode_key(key: bytes) -> str:
    """URL-safe base64 without padding: what goes after ``#`` in the link."""
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode("ascii")


def decode_key(text: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise SealError() from None
    if len(key) != KEY_BYTES:
        raise SealError()
    return key
