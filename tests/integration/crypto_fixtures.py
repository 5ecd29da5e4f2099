"""Test keys made at test time (never committed) and a message corpus for interop tests.

Imported explicitly by the interop test modules (not a conftest):

* :class:`Gpg` drives a throw-away GNUPGHOME (``--batch --passphrase ''``);
* :func:`pgpy_secret_key` makes an Ed25519/Cv25519 key with PGPy itself;
* :func:`smime_identity` makes a CA-signed S/MIME certificate with ``cryptography``;
* :func:`corpus` builds the messages every renderer must carry unchanged.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import hashlib
import os
import subprocess
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Gpg:
    home: Path

    @classmethod
    def create(cls, home: Path) -> Gpg:
        home.mkdir(parents=True, exist_ok=True)
        home.chmod(0o700)
        return cls(home)

    def run(self, *args: str, input: bytes | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, "GNUPGHOME": str(self.home)}
        return subprocess.run(["gpg", "--batch", "--yes", "--pinentry-mode", "loopback",
                               "--passphrase", "", *args],
                              input=input, capture_output=True, env=env, check=check,
                              timeout=60)

    def close(self) -> None:
        """Stop the gpg-agent this home started."""
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], capture_output=True, timeout=30,
                       env={**os.environ, "GNUPGHOME": str(self.home)}, check=False)

    def gen(self, uid: str, algo: str, usage: str = "default", expire: str = "never") -> str:
        self.run("--quick-gen-key", uid, algo, usage, expire)
        return self.fingerprint(uid)

    def add_subkey(self, fpr: str, algo: str, usage: str, expire: str = "never") -> None:
        self.run("--quick-add-key", fpr, algo, usage, expire)

    def fingerprint(self, uid: str) -> str:
        out = self.run("--with-colons", "--list-keys", uid).stdout.decode()
        return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr"))

    def export(self, fpr: str) -> bytes:
        return self.run("--armor", "--export", fpr).stdout

    def revoke(self, fpr: str) -> None:
        """Apply the revocation certificate gpg stored when it made the key."""
        cert = (self.home / "openpgp-revocs.d" / f"{fpr}.rev").read_bytes()
        self.run("--import", input=cert.replace(b":-----BEGIN", b"-----BEGIN"))

    def decrypt(self, armored: bytes) -> bytes:
        return self.run("--decrypt", input=armored).stdout

    def recipients_of(self, armored: bytes) -> set[str]:
        """Key ids the message is encrypted to (from ``--list-packets``)."""
        out = self.run("--list-packets", input=armored, check=False).stdout.decode()
        return {line.split("keyid")[1].split()[0].upper() for line in out.splitlines()
                if line.startswith(":pubkey enc packet:")}


def pgpy_secret_key(name: str, address: str) -> tuple[bytes, bytes]:
    """(armored public key, armored unprotected secret key) made by PGPy."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgpy
        from pgpy.constants import (
            CompressionAlgorithm,
            EllipticCurveOID,
            HashAlgorithm,
            KeyFlags,
            PubKeyAlgorithm,
            SymmetricKeyAlgorithm,
        )

        key = pgpy.PGPKey.new(PubKeyAlgorithm.EdDSA, EllipticCurveOID.Ed25519)
        uid = pgpy.PGPUID.new(name, email=address)
        key.add_uid(uid, usage={KeyFlags.Sign, KeyFlags.Certify},
                    hashes=[HashAlgorithm.SHA256, HashAlgorithm.SHA512],
                    ciphers=[SymmetricKeyAlgorithm.AES256, SymmetricKeyAlgorithm.AES128],
                    compression=[CompressionAlgorithm.Uncompressed])
        sub = pgpy.PGPKey.new(PubKeyAlgorithm.ECDH, EllipticCurveOID.Curve25519)
        key.add_subkey(sub, usage={KeyFlags.EncryptCommunications, KeyFlags.EncryptStorage})
        return str(key.pubkey).encode(), str(key).encode()


@dataclass
class SmimeIdentity:
    cert: x509.Certificate
    cert_pem: bytes
    key_pem: bytes


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def smime_identity(address: str, *, eku: x509.ObjectIdentifier | None =
                   ExtendedKeyUsageOID.EMAIL_PROTECTION, rsa_bits: int = 2048,
                   use_ec: bool = False, days: int = 365,
                   now: dt.datetime | None = None) -> SmimeIdentity:
    """A recipient certificate signed by a throw-away CA."""
    now = now or dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        ec.generate_private_key(ec.SECP256R1()) if use_ec
        else rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits))
    builder = (x509.CertificateBuilder()
               .subject_name(_name(address)).issuer_name(_name("Test CA"))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1))
               .not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(address)]),
                              critical=False)
               .add_extension(x509.KeyUsage(
                   digital_signature=True, content_commitment=False,
                   key_encipherment=not use_ec, data_encipherment=False,
                   key_agreement=use_ec, key_cert_sign=False, crl_sign=False,
                   encipher_only=False, decipher_only=False), critical=True))
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return SmimeIdentity(cert, cert.public_bytes(serialization.Encoding.PEM), key_pem)


# ---------------------------------------------------------------------- corpus

ATTACHMENT = bytes(range(256)) * 64  # every byte value: a binary file


def _message(subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Dr. Reed <reed@riverside.example>"
    msg["To"] = "Client <client@mail.example>"
    msg["Cc"] = "Other <other@mail.example>"
    msg["Subject"] = subject
    msg["Date"] = "Sat, 28 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = f"<{hashlib.sha256(subject.encode()).hexdigest()[:16]}@riverside.example>"
    msg["X-Practice-Client"] = "c-1001"
    return msg


def corpus() -> dict[str, bytes]:
    """name -> raw CRLF message bytes."""
    out: dict[str, bytes] = {}

    m = _message("Your results and invoice")
    m.set_content("Please find attached your results.\n")
    m.add_attachment(ATTACHMENT, maintype="application", subtype="pdf", filename="results.pdf")
    m.add_attachment(b"date,amount\n2026-11-01,120\n", maintype="text", subtype="csv",
                     filename="invoice.csv")
    out["multipart"] = m.as_bytes(policy=email.policy.SMTP)

    m = _message("Rendez-vous confirmé — Zoë")
    m.set_content("Bonjour Zoë,\nvotre séance est confirmée. 日本語も大丈夫です。\n",
                  cte="8bit")
    out["utf8"] = m.as_bytes(policy=email.policy.SMTPUTF8)

    m = _message("Long lines")
    m.set_content("A" * 5000 + "\n" + "word " * 400 + "\n", cte="8bit")
    out["long_lines"] = m.as_bytes(policy=email.policy.SMTP.clone(max_line_length=None))

    m = _message("Dots")
    m.set_content(".\n..\n.leading dot\nmiddle\n. \n", cte="8bit")
    out["dots"] = m.as_bytes(policy=email.policy.SMTP)

    m = _message("Large scan")
    m.set_content("A large scan is attached.\n")
    m.add_attachment(os.urandom(5 * 1024 * 1024), maintype="application",
                     subtype="octet-stream", filename="scan.bin")
    out["big"] = m.as_bytes(policy=email.policy.SMTP)
    return out


def attachments(raw: bytes) -> dict[str, bytes]:
    """filename -> decoded bytes of every attachment in a message or entity."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    found: dict[str, bytes] = {}
    for part in msg.walk():
        payload = part.get_payload(decode=True)
        if part.get_filename() and isinstance(payload, bytes):
            found[part.get_filename() or ""] = payload
    return found


def body_of(raw: bytes) -> bytes:
    """Everything after the header section (the bytes that must survive unchanged)."""
    return raw.split(b"\r\n\r\n", 1)[1]


def header_of(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def parsed(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg
