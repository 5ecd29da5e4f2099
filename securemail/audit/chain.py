"""The chain's primitives: canonical encoding, record hashes, Ed25519 signatures.

Canonical encoding of a record (documented in docs/compliance.md): the record as
a JSON object *without* its ``hash`` field, keys sorted by code point, no
whitespace (``","`` and ``":"`` separators), non-ASCII characters written as
UTF-8 (not ``\\u`` escapes), encoded as UTF-8. Values are strings, integers,
booleans, null or lists of strings; never floats, so the encoding is exact.
``hash`` is the lowercase hex SHA-256 of those bytes; because the object
contains ``seq`` and ``prev_hash``, each hash commits to the whole chain before
it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securemail.errors import InputError

__all__ = [
    "GENESIS_HASH",
    "Signer",
    "canonical",
    "canonical_object",
    "checkpoint_message",
    "ensure_signing_key",
    "export_message",
    "head_message",
    "key_id",
    "load_public_key",
    "load_signing_key",
    "prune_message",
    "public_key_pem",
    "record_hash",
    "sign",
    "signature_valid",
]

GENESIS_HASH = "0" * 64  # prev_hash of the very first record of a store

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical(record: Mapping[str, Any]) -> bytes:
    """The bytes that are hashed: sorted keys, no whitespace, UTF-8; ``hash`` left out.

    Byte for byte what ``json.dumps(body, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False).encode()`` gives (a property test holds orjson to that),
    so a verifier needs nothing but the standard library; orjson is ~8x faster.
    """
    body = {k: v for k, v in record.items() if k != "hash"} if "hash" in record else record
    return canonical_object(body)


def canonical_object(obj: Mapping[str, Any]) -> bytes:
    """The same encoding of every key of ``obj``: what each export line is, byte for byte."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # anything orjson will not take: the reference encoder decides
        return _ENCODER.encode(obj).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


# Each signed statement starts with its own label so that a signature made for
# one purpose can never be replayed as another.
def checkpoint_message(covers_seq: int, covers_hash: str) -> bytes:
    return f"securemail-audit-checkpoint-v1\n{covers_seq}\n{covers_hash}".encode()


def prune_message(first_seq: int, first_prev_hash: str, covers_seq: int, covers_hash: str) -> bytes:
    return (
        f"securemail-audit-prune-v1\n{first_seq}\n{first_prev_hash}\n{covers_seq}\n{covers_hash}"
    ).encode()


def head_message(seq: int, head_hash: str) -> bytes:
    return f"securemail-audit-head-v1\n{seq}\n{head_hash}".encode()


def export_message(manifest: Mapping[str, Any]) -> bytes:
    return b"securemail-audit-export-v1\n" + canonical(manifest)


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message)).decode("ascii")


_SELF_TEST: Final = b"securemail-audit-signer-self-test"


class Signer:
    """Ed25519 signatures with one key, prepared once: what the writer signs with.

    Ed25519 (RFC 8032) is deterministic: a key and a message have exactly one
    signature, whatever library computes it. When PyNaCl is installed,
    libsodium computes it (~19 us here, against ~31 us for OpenSSL 3.0 through
    ``cryptography``; the writer signs the head once per transaction); otherwise
    ``cryptography`` does. The two are checked against each other once, when
    the signer is made, and libsodium is used only if they agree byte for byte.
    """

    __slots__ = ("_sign", "key", "uses_libsodium")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key
        sodium = _sodium_signer(key)
        self.uses_libsodium = sodium is not None
        self._sign: Callable[[bytes], bytes] = sodium if sodium is not None else key.sign

    def sign(self, message: bytes) -> str:
        """Base64 of the 64-byte signature (what records and the head carry)."""
        return binascii.b2a_base64(self._sign(message), newline=False).decode("ascii")


def _sodium_signer(key: Ed25519PrivateKey) -> Callable[[bytes], bytes] | None:
    try:
        from nacl.bindings import crypto_sign, crypto_sign_seed_keypair
    except ImportError:  # optional: cryptography signs instead
        return None
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    secret = crypto_sign_seed_keypair(seed)[1]

    def sodium_sign(message: bytes) -> bytes:
        return crypto_sign(message, secret)[:64]  # signature || message: keep the signature

    return sodium_sign if sodium_sign(_SELF_TEST) == key.sign(_SELF_TEST) else None


def signature_valid(public_key: Ed25519PublicKey, signature: object, message: bytes) -> bool:
    if not isinstance(signature, str):
        return False
    try:
        raw = base64.b64decode(signature, validate=True)
        # Only the one canonical spelling: base64's unused padding bits could
        # otherwise be flipped without changing the decoded signature.
        if base64.b64encode(raw).decode("ascii") != signature:
            return False
        public_key.verify(raw, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short, stable name of a public key: first 16 hex digits of SHA-256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """A PEM public key (``audit public-key`` output), or a PEM private key file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the public key ({exc.strerror})") from None
    try:
        if b"PRIVATE KEY" in data:
            private = serialization.load_pem_private_key(data, password=None)
            if isinstance(private, Ed25519PrivateKey):
                return private.public_key()
        else:
            public = serialization.load_pem_public_key(data)
            if isinstance(public, Ed25519PublicKey):
                return public
    except ValueError:
        pass
    raise InputError(f"{path}: not an Ed25519 key in PEM format")


def ensure_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the audit signing key, generating it (mode 0600) if the file is missing.

    Several processes may start at once: the new key is written to a private
    temporary file and hard-linked into place, so exactly one key wins and no
    process ever reads a half-written file.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won the race; use its key
        finally:
            tmp.unlink()
    return load_signing_key(path)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the audit signing key; never creates one (read commands use this)."""
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise InputError(f"{path}: no audit signing key here (audit.signing_key_file; it is"
                         " created when the relay first starts)") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the audit signing key ({exc.strerror})") from None
    except ValueError:
        raise InputError(f"{path}: not a PEM private key (audit.signing_key_file)") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise InputError(f"{path}: the audit signing key must be Ed25519")
    return loaded
