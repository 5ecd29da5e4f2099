"""S/MIME (RFC 8551) through ``cryptography``: read and judge certificates, envelope messages.

Encryption is CMS EnvelopedData with AES-256-CBC and RSA key transport
(``PKCS7EnvelopeBuilder``; RSA is what that builder supports, and what
practically every S/MIME certificate in use holds). The content is the RFC
9788 protected entity from :mod:`securemail.protect`, encrypted as binary so
that its CRLF line endings and 8-bit bytes survive unchanged.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import shlex
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, PublicKeyAlgorithmOID

from securemail.crypto import KeyProblem
from securemail.errors import RenderError
from securemail.protect import protect, wrap_base64

__all__ = [
    "CertificateBundle",
    "SkippedCertificate",
    "certificate_addresses",
    "certificate_algorithm",
    "certificate_fingerprint",
    "certificate_problem",
    "is_pkcs12",
    "parse_certificates",
    "pkcs12_refusal",
    "render_smime",
    "set_aside_signing_certificates",
    "sort_certificates",
    "unencrypting_refusal",
]

MIN_RSA_BITS = 2048
_OBSOLETE_HASHES = (hashes.MD5, hashes.SHA1)


@dataclass(frozen=True, slots=True)
class SkippedCertificate:
    """A certificate of a bundle that was left out: CA chain, or the signing
    certificate of a dual-key pair (see :func:`set_aside_signing_certificates`)."""

    subject: str  # RFC 4514, e.g. "CN=Practice CA", "emailAddress=a@b.example,CN=A"
    fingerprint: str
    why: str  # e.g. "a CA certificate, no email address"

    def __str__(self) -> str:
        return f"skipped certificate {self.subject or self.fingerprint[-16:]} ({self.why})"


@dataclass(frozen=True, slots=True)
class CertificateBundle:
    """What :func:`sort_certificates` found in a file."""

    recipients: list[x509.Certificate]  # to be judged (and imported, if usable)
    skipped: list[SkippedCertificate] = field(default_factory=list)


def parse_certificates(data: bytes) -> list[x509.Certificate]:
    """The recipient certificates in ``data`` (see :func:`sort_certificates`)."""
    return sort_certificates(data).recipients


def sort_certificates(data: bytes) -> CertificateBundle:
    """Read PEM (one or more), DER, or a PKCS#7 bundle (``.p7b``, PEM or DER) and
    tell the recipients' certificates from the CA certificates that came along.

    A certificate is a recipient's unless it is a CA certificate (basicConstraints
    CA:TRUE) that is chain: one that issued another certificate of the file, that
    names no e-mail address, or whose key usage does not allow encryption. A
    self-signed S/MIME certificate (``openssl req -x509`` marks it CA:TRUE) with an
    e-mail address is a recipient's, in a bundle as alone. Every certificate left
    out is named in ``skipped``. A file of CA certificates only is judged (and
    refused) as it is. A PKCS#12 file or a PEM private key is refused unread.
    Raises KeyProblem.
    """
    if is_pkcs12(data):
        raise KeyProblem(pkcs12_refusal())
    if holds_private_key(data):
        raise KeyProblem(PRIVATE_KEY_REFUSAL)
    try:
        with warnings.catch_warnings():
            # `openssl crl2pkcs7` writes BER; cryptography reads it and says so
            # with a UserWarning that is no concern of the person importing.
            warnings.filterwarnings("ignore", message=".*BER", category=UserWarning)
            if b"-----BEGIN CERTIFICATE-----" in data:
                certs = x509.load_pem_x509_certificates(data)
            elif b"-----BEGIN PKCS7-----" in data:
                certs = pkcs7.load_pem_pkcs7_certificates(data)
            else:
                try:
                    certs = [x509.load_der_x509_certificate(data)]
                except ValueError:
                    certs = pkcs7.load_der_pkcs7_certificates(data)
    except ValueError:
        raise KeyProblem("not a readable PEM, DER or PKCS#7 certificate") from None
    recipients: list[x509.Certificate] = []
    skipped: list[SkippedCertificate] = []
    for cert in certs:
        why = _chain_reason(cert, certs)
        if why is None:
            recipients.append(cert)
        else:
            skipped.append(SkippedCertificate(_subject(cert), certificate_fingerprint(cert), why))
    if not recipients:  # only CA certificates: judged (and refused) as they are
        return CertificateBundle(list(certs))
    return CertificateBundle(recipients, skipped)


def _chain_reason(cert: x509.Certificate, bundle: Sequence[x509.Certificate]) -> str | None:
    """Why ``cert`` is a CA certificate of the chain rather than a recipient's, or None."""
    if not _is_ca(cert):
        return None
    issued = [c for c in bundle if c is not cert and c.issuer == cert.subject
              and c.subject != cert.subject]
    if issued:
        return f"a CA certificate, the issuer of {_subject(issued[0])}"
    if not certificate_addresses(cert):
        return "a CA certificate, no email address"
    if not _allows_key_encipherment(cert):
        return "a CA certificate whose key usage does not allow encryption"
    return None


def set_aside_signing_certificates(
        certs: Sequence[x509.Certificate], now: dt.datetime,
        normalise: Callable[[str], str | None] = str.lower,
) -> tuple[list[x509.Certificate], list[SkippedCertificate]]:
    """Dual-key S/MIME: leave out the signing certificate beside the encryption one.

    Many PKIs give a person two certificates for one address: one whose key
    usage allows signing only (no keyEncipherment, keyAgreement or
    dataEncipherment) and one for encryption; a ``.p7b`` or the ``.p7s`` of a
    signed mail carries both. A signing-only certificate is left out (and
    named) when another certificate of ``certs`` is usable at ``now`` for one
    of its addresses (compared as ``normalise`` gives them; None: not an
    address). Every other certificate is kept, to be judged: a file whose
    certificates are all signing-only is refused (see :func:`unencrypting_refusal`).
    """
    def addresses(cert: x509.Certificate) -> set[str]:
        return {a for a in map(normalise, certificate_addresses(cert)) if a}

    usable = [c for c in certs if certificate_problem(c, now) is None]
    kept: list[x509.Certificate] = []
    skipped: list[SkippedCertificate] = []
    for cert in certs:
        mine = addresses(cert) if _signing_only(cert) else set()
        partner = next((u for u in usable if u is not cert and addresses(u) & mine), None)
        if partner is None:
            kept.append(cert)
            continue
        shared = sorted(addresses(partner) & mine)
        skipped.append(SkippedCertificate(
            _subject(cert), certificate_fingerprint(cert),
            "key usage does not allow encryption, a signing certificate; certificate "
            f"{certificate_fingerprint(partner)[-16:]} in this file encrypts for "
            f"{', '.join(shared)}"))
    return kept, skipped


def unencrypting_refusal(certs: Sequence[x509.Certificate], problem: str) -> str:
    """``problem`` (why ``certs`` were refused), saying so first when none of them
    can encrypt: say, a signing certificate sent instead of the encryption one."""
    if not certs or not all(_signing_only(c) for c in certs):
        return problem
    return (f"no certificate in this file can encrypt: {problem}; ask the recipient for "
            "their encryption certificate (some people have one for signing and another "
            "for encryption)")


# OpenSSL, GnuPG and most CAs write it so; cryptography's rfc4514_string() would
# give the bare OID 1.2.840.113549.1.9.1 (RFC 4514 names no key for it).
_NAME_KEYS = {NameOID.EMAIL_ADDRESS: "emailAddress"}


def _subject(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string(_NAME_KEYS)
    except ValueError:  # an attribute that cannot be written as text
        return f"with fingerprint {certificate_fingerprint(cert)[-16:]}"


PRIVATE_KEY_REFUSAL = ("this file holds a private key (or PKCS#12 bundle): import the "
                       "recipient's certificate only")


def pkcs12_refusal(name: str = "FILE") -> str:
    """Why a PKCS#12 file (``name``) is refused, and how to get the certificate out.

    Never read here: it may hold a private key, which is never wanted. Without
    ``-clcerts``, because ``openssl pkcs12 -export -nokeys`` writes the
    certificate without the localKeyID that ``-clcerts`` selects by (it would
    write an empty file); the CA certificates that come along are skipped on import.
    """
    return (f"this is a PKCS#12 (.p12/.pfx) file, which may hold a private key and is not "
            f"imported: get the certificate out with `openssl pkcs12 -in {shlex.quote(name)} "
            "-nokeys -out cert.pem` (add -legacy if OpenSSL says unsupported) and import "
            "cert.pem")
_PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
# PKCS#12 (RFC 7292): SEQUENCE { INTEGER 3, SEQUENCE { OID pkcs7-data (1.2.840.113549.1.7.1)
_PKCS12 = re.compile(rb"\A\x30(?:[\x00-\x7f]|\x81.|\x82..|\x83...)\x02\x01\x03\x30"
                     rb"(?:[\x00-\x7f]|\x81.|\x82..|\x83...)\x06\x09\x2a\x86\x48\x86\xf7"
                     rb"\x0d\x01\x07\x01", re.DOTALL)


def holds_private_key(data: bytes) -> bool:
    """Whether ``data`` is (or contains) a PEM private key or is a PKCS#12 bundle."""
    return bool(_PEM_PRIVATE_KEY.search(data) or is_pkcs12(data))


def is_pkcs12(data: bytes) -> bool:
    """Whether ``data`` is a (DER) PKCS#12 file, with or without a private key in it."""
    return bool(_PKCS12.match(data.lstrip()))


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 over the DER certificate, 64 upper-case hex digits."""
    return cert.fingerprint(hashes.SHA256()).hex().upper()


def certificate_algorithm(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC ({key.curve.name})"
    return type(key).__name__.removeprefix("_").replace("PublicKey", "")


def certificate_addresses(cert: x509.Certificate) -> tuple[str, ...]:
    """Addresses from subjectAltName rfc822Name, then the subject's emailAddress."""
    found: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found.extend(san.get_values_for_type(x509.RFC822Name))
    except x509.ExtensionNotFound:
        pass
    for attr in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
        if isinstance(attr.value, str):
            found.append(attr.value)
    return tuple(dict.fromkeys(found))


def certificate_problem(cert: x509.Certificate, now: dt.datetime) -> str | None:
    """Why this certificate must not be used for encryption at ``now`` (one line), or None."""
    # The last 16 hex digits: what `securemail keys remove` takes (as for OpenPGP key ids).
    name = f"certificate {certificate_fingerprint(cert)[-16:]}"
    try:
        sig_hash = cert.signature_hash_algorithm
    except Exception:  # noqa: BLE001 - unknown signature algorithms are refused
        return f"{name} has an unsupported signature algorithm"
    if isinstance(sig_hash, _OBSOLETE_HASHES):
        return f"{name} is signed with obsolete {sig_hash.name.upper()}"
    if cert.public_key_algorithm_oid == PublicKeyAlgorithmOID.RSASSA_PSS:
        # cryptography reads an id-RSASSA-PSS key as a plain RSA key, and the envelope
        # would then use PKCS#1 v1.5 key transport that the recipient cannot decrypt.
        return (f"{name} holds an RSA-PSS key; RSA-PSS keys are for signatures only: "
                "ask for an rsaEncryption certificate")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return (f"{name} holds a key of type {certificate_algorithm(cert)}; "
                "S/MIME encryption here needs an RSA certificate")
    if cert.public_key_algorithm_oid != PublicKeyAlgorithmOID.RSAES_PKCS1_v1_5:
        return (f"{name} holds an RSA key of type {cert.public_key_algorithm_oid.dotted_string}; "
                "ask for an rsaEncryption certificate")
    if key.key_size < MIN_RSA_BITS:
        return f"{name} is RSA-{key.key_size} (at least {MIN_RSA_BITS} bits needed)"
    if not _allows_email_protection(cert):
        return f"{name} is not valid for e-mail protection (extendedKeyUsage emailProtection)"
    if not _allows_key_encipherment(cert):
        return f"{name} key usage does not allow encryption (keyEncipherment)"
    if cert.not_valid_after_utc <= now:
        return f"{name} expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    if not certificate_addresses(cert):
        return f"{name} names no e-mail address (subjectAltName rfc822Name or emailAddress)"
    return None


def _allows_email_protection(cert: x509.Certificate) -> bool:
    """RFC 8550 4.4.4: no extendedKeyUsage means no restriction, and
    anyExtendedKeyUsage allows e-mail too; a list without either refuses it."""
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return (ExtendedKeyUsageOID.EMAIL_PROTECTION in eku
            or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku)


def _signing_only(cert: x509.Certificate) -> bool:
    """Whether the key usage allows no kind of encryption at all (an ECDH
    certificate, keyAgreement, is not signing-only: it is refused for its key type)."""
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return not (usage.key_encipherment or usage.key_agreement or usage.data_encipherment)


def _allows_key_encipherment(cert: x509.Certificate) -> bool:
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True  # no KeyUsage extension: no restriction (RFC 5280 4.2.1.3)
    return usage.key_encipherment


def render_smime(raw: bytes, certs: Sequence[x509.Certificate]) -> bytes:
    """The whole outgoing message: S/MIME EnvelopedData (AES-256) around protected ``raw``.

    Raises RenderError on any failure; never returns anything in clear.
    """
    if not certs:
        raise RenderError("no S/MIME recipient")
    try:
        inner, outer_headers = protect(raw)
    except ValueError:
        raise RenderError("message cannot be protected") from None
    try:
        builder = pkcs7.PKCS7EnvelopeBuilder().set_data(inner)
        for cert in certs:
            builder = builder.add_recipient(cert)
        der = builder.set_content_encryption_algorithm(algorithms.AES256).encrypt(
            serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    except Exception:  # noqa: BLE001 - fail closed, say nothing about content
        raise RenderError("S/MIME encryption failed") from None
    return b"".join([
        outer_headers,
        b"MIME-Version: 1.0\r\n",
        b'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"\r\n',
        b"Content-Transfer-Encoding: base64\r\n",
        b'Content-Disposition: attachment; filename="smime.p7m"\r\n',
        b"Content-Description: S/MIME Encrypted Message\r\n",
        b"\r\n",
        wrap_base64(base64.b64encode(der), 76),
    ])
