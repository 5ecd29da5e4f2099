"""OpenPGP through PGPy, behind a small interface: the only module that imports pgpy.

Three jobs:

* read public keys and judge them (:func:`parse_public_keys`,
  :meth:`PgpKey.problem`, :meth:`PgpKey.recipient`), with time passed in;
* encrypt bytes to one or more recipients (:func:`encrypt`);
* build an RFC 3156 PGP/MIME message with RFC 9788 header protection
  (:func:`render_pgp_mime`).

PGPy is fast only when called carefully: we hand it bytes (``format='b'``,
no compression, so CRLF survives and nothing is re-encoded) and write the
ASCII armor ourselves with stdlib base64. PGPy's own armor computes CRC24 bit
by bit in Python (~100x slower); the CRC line is optional (RFC 9580 6.1) and
we leave it out.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.utils import CryptographyDeprecationWarning

from securemail.crypto import KeyProblem
from securemail.crypto.openpgp_packets import (
    ArmorError,
    armor,
    armor_parts,
    dearmor,
    seipd,
    split_packets,
)
from securemail.errors import ConfigError, RenderError
from securemail.protect import protect


def _quiet_pgpy() -> None:
    """Filter PGPy's known warnings, and only those.

    PGPy 0.6 touches ciphers that `cryptography` moved to `decrepit` (TripleDES,
    Camellia, CFB mode, ...) on every call, and warns when our AES-256 is not in
    a key's stated preferences. Both are known and harmless here. Called before
    each use: a caller's ``warnings.catch_warnings()`` (pytest wraps every test
    in one) drops filters that were added inside it.
    """
    if _PROBE in warnings.filters[:3]:
        return
    warnings.filterwarnings("ignore", message="Selected compression algorithm not in key pref")
    warnings.filterwarnings("ignore", message="Selected symmetric algorithm not in key pref")
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning,
                            module=r"pgpy(\.|$)")


_PROBE = ("ignore", None, CryptographyDeprecationWarning, re.compile(r"pgpy(\.|$)"), 0)
_quiet_pgpy()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pgpy
    from pgpy.constants import (
        EllipticCurveOID,
        HashAlgorithm,
        KeyFlags,
        PubKeyAlgorithm,
        SignatureType,
        SymmetricKeyAlgorithm,
    )
    from pgpy.packet.packets import PKESessionKeyV3

__all__ = [
    "KeyProblem",
    "PgpKey",
    "PgpRecipient",
    "Revocation",
    "apply_revocation",
    "armor",
    "encrypt",
    "load_archive_key",
    "parse_public_keys",
    "read_openpgp",
    "render_pgp_mime",
]

MIN_RSA_BITS = 2048
_RSA = {PubKeyAlgorithm.RSAEncryptOrSign, PubKeyAlgorithm.RSAEncrypt, PubKeyAlgorithm.RSASign}
_OBSOLETE_ALGORITHMS = {
    PubKeyAlgorithm.DSA: "DSA",
    PubKeyAlgorithm.ElGamal: "ElGamal",
    PubKeyAlgorithm.FormerlyElGamalEncryptOrSign: "ElGamal",
}
_OBSOLETE_HASHES = {HashAlgorithm.MD5, HashAlgorithm.SHA1, HashAlgorithm.RIPEMD160}
_ENCRYPT_FLAGS = {KeyFlags.EncryptCommunications, KeyFlags.EncryptStorage}
# What PGPy can encrypt a session key to (RSA, and ECDH on the curves below).
_ENCRYPTING = {PubKeyAlgorithm.RSAEncryptOrSign, PubKeyAlgorithm.ECDH}
_ELLIPTIC = {PubKeyAlgorithm.ECDH, PubKeyAlgorithm.ECDSA, PubKeyAlgorithm.EdDSA}
# Curves PGPy 0.6 can verify and encrypt with on the cryptography we run on. Its
# Brainpool curves cannot be used (they fail inside PGPy), so they are refused by name.
_CURVES = {EllipticCurveOID.Curve25519, EllipticCurveOID.Ed25519, EllipticCurveOID.NIST_P256,
           EllipticCurveOID.NIST_P384, EllipticCurveOID.NIST_P521, EllipticCurveOID.SECP256K1}
_ALGORITHM_NAMES = {PubKeyAlgorithm.EdDSA: "Ed25519", PubKeyAlgorithm.ECDH: "ECDH",
                    PubKeyAlgorithm.ECDSA: "ECDSA"}


@dataclass(frozen=True, slots=True)
class PgpRecipient:
    """One key to encrypt to *now*: the primary fingerprint and the chosen (sub)key."""

    fingerprint: str
    key_id: str
    handle: Any = field(repr=False, compare=False)  # the pgpy (sub)key
    # A pgpy subkey reaches its primary through a weak reference, so the
    # primary must stay alive as long as the subkey is used.
    owner: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class _EncryptionKey:
    key_id: str
    usable_from: dt.datetime
    usable_until: dt.datetime | None  # None: no expiry
    handle: Any = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class PgpKey:
    """A public key as read, with the facts the key store keeps about it."""

    fingerprint: str  # primary key, 40 upper-case hex digits
    addresses: tuple[str, ...]  # e-mail addresses of self-signed, unrevoked user ids
    algorithm: str  # e.g. "Ed25519/ECDH-Curve25519", "RSA-3072/RSA-3072"; "RSA-3072" alone:
    # the primary key encrypts and no subkey does
    created: dt.datetime
    expires: dt.datetime | None  # primary key expiry
    binary: bytes = field(repr=False)  # transferable public key, binary packets
    revoked: bool = False
    refusal: str = ""  # a reason found while reading that no time can cure
    encryption_keys: tuple[_EncryptionKey, ...] = ()
    subkey_refusal: str = ""  # why no subkey qualifies, when none does
    handle: Any = field(default=None, repr=False, compare=False)  # the pgpy primary key
    # Newest signature the owner made on this key (self-signature, binding or
    # revocation): which of two copies of the same key is the more recent word.
    signed_at: dt.datetime | None = None
    # Fingerprints (primary or subkey) with a verified revocation by the owner.
    revoked_keys: frozenset[str] = frozenset()

    @property
    def usable_from(self) -> dt.datetime:
        """When the first encryption (sub)key became usable."""
        return min((k.usable_from for k in self.encryption_keys), default=self.created)

    @property
    def usable_until(self) -> dt.datetime | None:
        """When the last encryption (sub)key stops being usable (None: never)."""
        ends = [_earliest(k.usable_until, self.expires) for k in self.encryption_keys]
        return None if not ends or None in ends else max(e for e in ends if e is not None)

    def problem(self, now: dt.datetime) -> str | None:
        """Why this key cannot be used at ``now`` (one line), or None."""
        if self.revoked:
            return f"OpenPGP key {self.fingerprint} is revoked"
        if self.refusal:
            return f"OpenPGP key {self.fingerprint}: {self.refusal}"
        if self.expires is not None and self.expires <= now:
            return f"OpenPGP key {self.fingerprint} expired on {self.expires:%Y-%m-%d}"
        if not self.encryption_keys:
            return f"OpenPGP key {self.fingerprint}: {self.subkey_refusal}"
        if self.recipient(now) is None:
            if all(k.usable_from > now for k in self.encryption_keys):
                start = min(k.usable_from for k in self.encryption_keys)
                return (f"OpenPGP key {self.fingerprint}: its encryption subkey is not valid "
                        f"before {start:%Y-%m-%d %H:%M} UTC (check the clock)")
            until = self.usable_until
            when = f" on {until:%Y-%m-%d}" if until else ""
            return f"OpenPGP key {self.fingerprint}: its encryption subkey expired{when}"
        return None

    def recipient(self, now: dt.datetime) -> PgpRecipient | None:
        """The newest encryption (sub)key valid at ``now``, or None."""
        if self.revoked or self.refusal or (self.expires is not None and self.expires <= now):
            return None
        valid = [k for k in self.encryption_keys if k.usable_from <= now
                 and (k.usable_until is None or now < k.usable_until)]
        if not valid:
            return None
        best = max(valid, key=lambda k: k.usable_from)
        return PgpRecipient(self.fingerprint, best.key_id, best.handle, self.handle)


def _earliest(a: dt.datetime | None, b: dt.datetime | None) -> dt.datetime | None:
    return b if a is None else a if b is None else min(a, b)


# ------------------------------------------------------------------ reading keys


def parse_public_keys(data: bytes) -> list[PgpKey]:
    """Every primary key in ``data`` (armored or binary). Raises KeyProblem.

    Every armored block counts (``cat a.asc b.asc``), and so does every key of
    a binary file: a file is read whole or refused, never in part.
    """
    keys, revocations = read_openpgp(data)
    if revocations and not keys:
        raise KeyProblem(revocations[0].describe())
    if revocations:
        raise KeyProblem("holds a revocation certificate beside public keys: import the "
                         "revocation certificate on its own")
    return keys


@dataclass(frozen=True, slots=True)
class Revocation:
    """A key revocation signature without its key: a revocation certificate, as
    ``gpg --gen-revoke`` writes it (and as gpg keeps in ``openpgp-revocs.d``)."""

    key_id: str  # 16 upper-case hex digits of the revoked primary key
    fingerprint: str  # its 40 hex digits, "" when the signature names only the key id
    handle: Any = field(repr=False, compare=False)  # the pgpy signature

    def names(self, fingerprint: str) -> bool:
        """Whether this revocation is about the key with ``fingerprint``."""
        return fingerprint == self.fingerprint if self.fingerprint else \
            fingerprint.endswith(self.key_id)

    def describe(self) -> str:
        return (f"this is a revocation certificate for OpenPGP key "
                f"{self.fingerprint or self.key_id}, not a public key: import it with "
                "`securemail keys import` to revoke that key where it is stored")


def read_openpgp(data: bytes) -> tuple[list[PgpKey], list[Revocation]]:
    """The public keys and the lone key revocations (revocation certificates) in ``data``.

    ``data`` is armored (any number of blocks, trailing whitespace on lines
    allowed) or binary (any number of keys, one after the other). Raises
    KeyProblem for anything else: a secret key, an encrypted message, damaged
    or unknown packets.
    """
    _quiet_pgpy()
    if b"PRIVATE KEY BLOCK" in data:
        raise KeyProblem("this is a secret key: export and import the public key only")
    binary = _binary(data)
    try:
        packets = split_packets(binary)
    except ValueError:
        raise KeyProblem("not a readable OpenPGP public key") from None
    groups: list[list[bytes]] = []
    loose: list[bytes] = []
    for tag, packet in packets:
        if tag in (_TAG_SECRET_KEY, _TAG_SECRET_SUBKEY):
            raise KeyProblem("this is a secret key: export and import the public key only")
        if tag == _TAG_PUBLIC_KEY:
            groups.append([packet])
        elif tag == _TAG_MARKER:
            continue  # RFC 9580 5.8: ignored
        elif groups:
            groups[-1].append(packet)
        elif tag == _TAG_SIGNATURE:
            loose.append(packet)
        else:
            raise KeyProblem("not a readable OpenPGP public key")
    if not groups and not loose:
        raise KeyProblem("not a readable OpenPGP public key")
    return [_read_key(_load_key(b"".join(g))) for g in groups], [_read_revocation(p)
                                                                 for p in loose]


_TAG_SIGNATURE, _TAG_SECRET_KEY, _TAG_PUBLIC_KEY, _TAG_SECRET_SUBKEY, _TAG_MARKER = 2, 5, 6, 7, 10
_SAFETY_COLON = re.compile(rb"^:-----BEGIN PGP PUBLIC KEY BLOCK-----", re.MULTILINE)


def _binary(data: bytes) -> bytes:
    """The packets of ``data``: every armored block decoded and joined, or ``data`` itself."""
    if b"-----BEGIN PGP" not in data:
        return data
    try:
        blocks = dearmor(data)
    except ArmorError as exc:
        raise KeyProblem(str(exc)) from None
    if not blocks and _SAFETY_COLON.search(data):
        raise KeyProblem("this is a revocation certificate from GnuPG, still disabled by the "
                         'colon gpg puts before "-----BEGIN": remove that colon only if the '
                         "key's owner asked you to revoke it, then import the file again")
    if not blocks:
        raise KeyProblem("not a readable OpenPGP public key (no complete armored block)")
    for kind, _ in blocks:
        if kind == "MESSAGE":
            raise KeyProblem("this is an encrypted OpenPGP message, not a public key")
        if kind not in ("PUBLIC KEY BLOCK", "SIGNATURE"):
            raise KeyProblem(f'holds an armored "{kind}", not a public key')
    return b"".join(binary for _, binary in blocks)


def _load_key(binary: bytes) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            key, _ = pgpy.PGPKey.from_blob(binary)
    except Exception:  # noqa: BLE001 - PGPy raises many types for bad input
        raise KeyProblem("not a readable OpenPGP public key") from None
    if not key.is_public:
        raise KeyProblem("this is a secret key: export and import the public key only")
    return key


def _read_revocation(packet: bytes) -> Revocation:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sig = pgpy.PGPSignature.from_blob(packet)
            kind, key_id = sig.type, str(sig.signer or "").upper()
            fingerprint = str(sig.signer_fingerprint or "").replace(" ", "").upper()
    except Exception:  # noqa: BLE001 - PGPy raises many types for bad input
        raise KeyProblem("not a readable OpenPGP public key") from None
    if kind != SignatureType.KeyRevocation or not re.fullmatch(r"[0-9A-F]{16}", key_id):
        raise KeyProblem("holds an OpenPGP signature, not a public key")
    return Revocation(key_id, fingerprint, sig)


def apply_revocation(key: PgpKey, revocation: Revocation) -> PgpKey | None:
    """``key`` with ``revocation`` added, or None if the owner's key did not sign it."""
    if not revocation.names(key.fingerprint) or not _verifies(key.handle, key.handle,
                                                              revocation.handle):
        return None
    handle = _load_key(key.binary)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handle |= revocation.handle
    return _read_key(handle)


def _read_key(key: Any) -> PgpKey:
    fingerprint = _fingerprint(key)
    refusal = _algorithm_refusal(key, "key")
    revoked = any(True for _ in _sigs(key, SignatureType.KeyRevocation, key))
    addresses: list[str] = []
    best_selfsig = None
    weak = ""
    for uid in key.userids:
        sig = uid.selfsig
        email = uid.email or _bare_address(uid)
        if sig is None or not email or _revoked_uid(key, uid) or not _verifies(key, uid, sig):
            continue
        if sig.hash_algorithm in _OBSOLETE_HASHES:  # skip this user id, keep the others
            weak = f"its user id is signed with obsolete {sig.hash_algorithm.name}"
            continue
        addresses.append(email)
        if best_selfsig is None or sig.created > best_selfsig.created:
            best_selfsig = sig
    if not addresses and not refusal:
        refusal = weak or "no self-signed user id with an e-mail address"
    expires = None
    if best_selfsig is not None and best_selfsig.key_expiration is not None:
        expires = key.created + best_selfsig.key_expiration
    enc, subkey_refusal = _encryption_keys(key, best_selfsig)
    # "primary/encryption subkey(s)"; a key that encrypts with its primary key
    # alone (old-style [SCE], no subkey) is named once: "RSA-3072", not "RSA-3072/RSA-3072".
    sub_names = sorted({_algorithm_name(k.handle) for k in enc if k.handle is not key})
    algorithm = "/".join([_algorithm_name(key), *sub_names])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        binary = bytes(key)
    return PgpKey(fingerprint, tuple(dict.fromkeys(addresses)), algorithm, key.created, expires,
                  binary, revoked, refusal, tuple(enc), subkey_refusal, key,
                  signed_at=_newest_own_signature(key), revoked_keys=_revoked_keys(key))


# A user id that is nothing but an address, "addr@example.org" or "<addr@example.org>"
# (what `gpg --quick-gen-key addr@example.org` writes): PGPy reads it as a name with
# no e-mail. Only this exact shape counts; anything with spaces, quotes, comments or
# a second "@" is not guessed at.
_ALNUM = r"A-Za-z0-9\u0080-\U0010FFFF"
_ATOM = rf"[{_ALNUM}!#$%&'*+/=?^_`{{|}}~\-]+"
_LABEL = rf"[{_ALNUM}](?:[{_ALNUM}\-]*[{_ALNUM}])?"
_ADDR_SPEC = rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*"
_BARE_ADDRESS = re.compile(rf"(?P<plain>{_ADDR_SPEC})|<(?P<angled>{_ADDR_SPEC})>")


def _bare_address(uid: Any) -> str:
    """The address of a user id that is only an address (see above), or ""."""
    if uid.email or uid.comment or not isinstance(uid.name, str):
        return ""
    found = _BARE_ADDRESS.fullmatch(uid.name)
    return (found.group("plain") or found.group("angled")) if found else ""


def _encryption_keys(key: Any, primary_sig: Any) -> tuple[list[_EncryptionKey], str]:
    found: list[_EncryptionKey] = []
    reason = "no encryption-capable (sub)key"
    if primary_sig is not None and _ENCRYPT_FLAGS & set(primary_sig.key_flags or ()):
        if not _algorithm_refusal(key, "key") and key.key_algorithm in _ENCRYPTING:
            found.append(_EncryptionKey(str(key.fingerprint.keyid), key.created, None, key))
    for sub in key.subkeys.values():
        binding = max(_sigs(sub, SignatureType.Subkey_Binding, key),
                      key=lambda s: s.created, default=None)
        if binding is None or not _ENCRYPT_FLAGS & set(binding.key_flags or ()):
            continue
        if any(True for _ in _sigs(sub, SignatureType.SubkeyRevocation, key)):
            reason = "its encryption subkey is revoked"
            continue
        bad = _algorithm_refusal(sub, "encryption subkey")
        if not bad and sub.key_algorithm not in _ENCRYPTING:
            bad = f"encryption subkey uses {_algorithm_name(sub)}, which cannot encrypt"
        if not bad and binding.hash_algorithm in _OBSOLETE_HASHES:
            bad = f"encryption subkey is bound with obsolete {binding.hash_algorithm.name}"
        if not bad and not _verifies(key, sub, binding):
            bad = "encryption subkey has a bad binding signature"
        if bad:
            reason = bad
            continue
        until = sub.created + binding.key_expiration if binding.key_expiration else None
        found.append(_EncryptionKey(str(sub.fingerprint.keyid), sub.created, until, sub))
    return found, reason


def _newest_own_signature(key: Any) -> dt.datetime | None:
    keyid = key.fingerprint.keyid
    subjects = [key, *key.userids, *key.subkeys.values()]
    return max((s.created for subject in subjects for s in subject._signatures
                if s.signer == keyid), default=None)


def _revoked_keys(key: Any) -> frozenset[str]:
    """Fingerprints of the primary key and subkeys with a revocation the owner signed.

    Verified, because the key store keeps these for good ("a revocation is
    final"). An unverifiable revocation still refuses the copy it came in.
    """
    found = set()
    if any(_verifies(key, key, s) for s in _sigs(key, SignatureType.KeyRevocation, key)):
        found.add(_fingerprint(key))
    found.update(_fingerprint(sub) for sub in key.subkeys.values()
                 if any(_verifies(key, sub, s)
                        for s in _sigs(sub, SignatureType.SubkeyRevocation, key)))
    return frozenset(found)


def _fingerprint(key: Any) -> str:
    return str(key.fingerprint).replace(" ", "").upper()


def _sigs(subject: Any, kind: Any, primary: Any) -> list[Any]:
    keyid = primary.fingerprint.keyid
    return [s for s in subject._signatures if s.type == kind and s.signer == keyid]


def _revoked_uid(key: Any, uid: Any) -> bool:
    keyid = key.fingerprint.keyid
    return any(s.type == SignatureType.CertRevocation and s.signer == keyid
               for s in uid._signatures)


def _verifies(key: Any, subject: Any, sig: Any) -> bool:
    """Whether ``sig`` is a valid signature by ``key`` over ``subject``, at any time.

    This is the signature check of PGPy's ``key.verify`` without its judgement
    of the key: PGPy fails every signature of a key that is expired by the
    wall clock, which would turn "expired on DATE" into "no self-signed user
    id" and would hide a shortened expiry. Expiry and revocation are judged
    here, against the ``now`` passed in.
    """
    if sig.signer != key.fingerprint.keyid:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hash_algorithm = getattr(hashes, sig.hash_algorithm.name)()
            return key._key.verify(sig.hashdata(subject), sig.__sig__, hash_algorithm) is True
    except Exception:  # noqa: BLE001 - an unverifiable signature is a bad one
        return False


def _algorithm_refusal(key: Any, what: str) -> str:
    alg = key.key_algorithm
    if alg in _OBSOLETE_ALGORITHMS:
        return f"{what} uses obsolete algorithm {_OBSOLETE_ALGORITHMS[alg]}"
    if alg in _RSA and key.key_size < MIN_RSA_BITS:
        return f"{what} is RSA-{key.key_size} (at least {MIN_RSA_BITS} bits needed)"
    if alg not in _RSA and alg not in _ALGORITHM_NAMES:
        return f"{what} uses unsupported algorithm {getattr(alg, 'name', alg)}"
    if alg in _ELLIPTIC and key.key_size not in _CURVES:
        return f"{what} uses an elliptic curve we cannot use ({_curve_name(key.key_size)})"
    return ""


def _curve_name(curve: Any) -> str:
    """``brainpoolP256r1`` for PGPy's curve OID enum (its cryptography curve's name)."""
    name = getattr(getattr(curve, "curve", None), "name", None)
    return str(name or getattr(curve, "name", None) or curve)


def _algorithm_name(key: Any) -> str:
    alg = key.key_algorithm
    if alg in _RSA:
        return f"RSA-{key.key_size}"
    if alg == PubKeyAlgorithm.ECDH:
        return f"ECDH-{getattr(key.key_size, 'name', key.key_size)}"
    return _ALGORITHM_NAMES.get(alg, getattr(alg, "name", str(alg)))


def load_archive_key(path: str | Path, config_file: str | None = None) -> PgpKey:
    """The practice's archive key (``[encryption] archive_key_file``); ConfigError if
    unusable: ``CONFIG: encryption.archive_key_file: KEY-FILE: problem`` when
    ``config_file`` is given (as every other config error reads), else
    ``KEY-FILE: encryption.archive_key_file: problem``."""

    def error(problem: str) -> ConfigError:
        if config_file is None:
            return ConfigError(str(path), "encryption.archive_key_file", problem)
        return ConfigError(config_file, "encryption.archive_key_file", f"{path}: {problem}")

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise error(f"cannot read ({exc.strerror or type(exc).__name__})") from None
    try:
        keys = parse_public_keys(data)
    except KeyProblem as exc:
        raise error(str(exc)) from None
    if len(keys) != 1:
        raise error("must hold exactly one key")
    problem = keys[0].problem(dt.datetime.now(dt.UTC))
    if problem:
        raise error(problem)
    return keys[0]


# ------------------------------------------------------------------ encrypting


def encrypt(data: bytes, recipients: Sequence[PgpRecipient]) -> bytes:
    """Binary OpenPGP message for all ``recipients``: one PKESK each, then SEIPD v1.

    PGPy encrypts the session key to each public key (the asymmetric part);
    the data packet is written here (RFC 9580 5.13.1: AES-256 in OpenPGP CFB
    with a zero IV, random prefix, SHA-1 MDC, binary literal data, no
    compression). Going through ``PGPMessage`` instead copies the data through
    several bytearrays and costs ~2x; the packet format is the same.
    """
    if not recipients:
        raise RenderError("no OpenPGP recipient")
    _quiet_pgpy()
    try:
        session_key = secrets.token_bytes(32)
        packets = [_pkesk(r, session_key) for r in recipients]
        packets.extend(seipd(data, session_key))
        del session_key
        return b"".join(packets)
    except Exception:  # noqa: BLE001 - fail closed, say nothing about content
        raise RenderError("OpenPGP encryption failed") from None


def _pkesk(recipient: PgpRecipient, session_key: bytes) -> bytes:
    key = recipient.handle
    if not key.is_public:
        raise RenderError("not a public key")
    packet = PKESessionKeyV3()
    packet.encrypter = bytearray(bytes.fromhex(str(key.fingerprint.keyid)))
    packet.pkalg = key.key_algorithm
    packet.encrypt_sk(key._key, SymmetricKeyAlgorithm.AES256, session_key)
    return bytes(packet)


def render_pgp_mime(raw: bytes, keys: Sequence[PgpRecipient],
                    archive_key: PgpKey | PgpRecipient | None = None, *,
                    now: dt.datetime | None = None) -> bytes:
    """The whole outgoing message: RFC 3156 PGP/MIME around RFC 9788 protected ``raw``.

    ``keys`` come from :meth:`securemail.keys.Keyring.pgp_keys` (already chosen
    for the current time); ``archive_key`` is added to the same ciphertext.
    Raises RenderError on any failure; never returns anything in clear.
    """
    recipients = list(keys)
    if not recipients:
        raise RenderError("no OpenPGP recipient")
    if isinstance(archive_key, PgpKey):
        chosen = archive_key.recipient(now or dt.datetime.now(dt.UTC))
        if chosen is None:
            raise RenderError("the archive key is no longer usable")
        recipients.append(chosen)
    elif archive_key is not None:
        recipients.append(archive_key)
    try:
        inner, outer_headers = protect(raw)
    except ValueError:
        raise RenderError("message cannot be protected") from None
    ciphertext = armor_parts(encrypt(inner, recipients))
    boundary = f"sm-pgp-{secrets.token_hex(12)}".encode()
    return b"".join([
        outer_headers,
        b"MIME-Version: 1.0\r\n",
        b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";\r\n',
        b' boundary="' + boundary + b'"\r\n',
        b"\r\n",
        b"This is an OpenPGP/MIME encrypted message (RFC 3156).\r\n",
        b"--" + boundary + b"\r\n",
        b"Content-Type: application/pgp-encrypted\r\n",
        b"Content-Description: PGP/MIME version identification\r\n",
        b"\r\n",
        b"Version: 1\r\n",
        b"\r\n",
        b"--" + boundary + b"\r\n",
        b'Content-Type: application/octet-stream; name="encrypted.asc"\r\n',
        b"Content-Description: OpenPGP encrypted message\r\n",
        b'Content-Disposition: inline; filename="encrypted.asc"\r\n',
        b"\r\n",
        *ciphertext,
        b"\r\n",
        b"--" + boundary + b"--\r\n",
    ])
