"""Encryption state is judged on structure and payload, using real tools' output."""

from __future__ import annotations

import datetime as dt
import email
import subprocess
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from securemail.encryption_state import encryption_state
from securemail.model import Encryption


def _gpg_home(tmp_path: Path) -> Path:
    home = tmp_path / "gnupg"
    if not home.exists():
        home.mkdir(mode=0o700)
        subprocess.run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "",
                        "--quick-gen-key", "Jane <jane@mail.example>", "ed25519", "default", "1y"],
                       check=True, capture_output=True)
        subprocess.run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "",
                        "--quick-add-key", _fpr(home), "cv25519", "encr", "1y"],
                       check=True, capture_output=True)
        # Encrypting needs only the public key: stop the agent keygen started.
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                       check=False, capture_output=True)
    return home


def _fpr(home: Path) -> str:
    out = subprocess.run(["gpg", "--homedir", str(home), "--with-colons", "--list-keys"],
                         check=True, capture_output=True, text=True).stdout
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr"))


def gpg_armor(tmp_path: Path, data: bytes) -> bytes:
    home = _gpg_home(tmp_path)
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--trust-model", "always",
                           "--armor", "--encrypt", "-r", "jane@mail.example"],
                          input=data, check=True, capture_output=True).stdout


def gpg_encrypted_message(tmp_path: Path, sender: str, to: str) -> bytes:
    """RFC 3156 PGP/MIME built around real gpg output."""
    armored = gpg_armor(tmp_path, b"Content-Type: text/plain\r\n\r\nsecret\r\n")
    return pgp_mime(armored, sender, to)


def pgp_mime(armored: bytes, sender: str = "a@b.example", to: str = "c@d.example") -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: ...\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; '
        'boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n"
        "--b1\r\nContent-Type: application/octet-stream; name=encrypted.asc\r\n\r\n"
    ).encode() + armored.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n") + b"\r\n--b1--\r\n"


def _cert(tmp_path: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Jane")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name("jane@mail.example")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def openssl_smime_message(tmp_path: Path) -> bytes:
    cert, _ = _cert(tmp_path)
    inner = b"Content-Type: text/plain\r\n\r\nsecret\r\n"
    out = subprocess.run(["openssl", "smime", "-encrypt", "-aes256", "-from", "a@b.example",
                          "-to", "jane@mail.example", "-subject", "...", str(cert)],
                         input=inner, check=True, capture_output=True).stdout
    return out


def state(raw: bytes) -> Encryption:
    return encryption_state(email.message_from_bytes(raw))


def test_gpg_pgp_mime_is_encrypted(tmp_path: Path) -> None:
    assert state(gpg_encrypted_message(tmp_path, "a@b.example", "jane@mail.example")) \
        is Encryption.PGP_MIME


def test_gpg_inline_armor_is_encrypted(tmp_path: Path) -> None:
    armored = gpg_armor(tmp_path, b"secret note")
    raw = b"From: a@b.example\r\nTo: c@d.example\r\nSubject: x\r\n\r\n" + armored
    assert state(raw) is Encryption.PGP_INLINE


def test_inline_armor_with_clear_text_around_is_not_encrypted(tmp_path: Path) -> None:
    armored = gpg_armor(tmp_path, b"secret note")
    raw = (b"From: a@b.example\r\nTo: c@d.example\r\nSubject: x\r\n\r\n"
           b"Diagnosis F32.1 for Jane, details below\r\n" + armored)
    assert state(raw) is Encryption.NONE


def test_inline_armor_with_clear_attachment_is_not_encrypted(tmp_path: Path) -> None:
    armored = gpg_armor(tmp_path, b"secret note")
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@b.example", "c@d.example", "x"
    msg.set_content(armored.decode())
    msg.add_attachment(b"clear PHI", maintype="application", subtype="pdf", filename="r.pdf")
    assert state(msg.as_bytes(policy=SMTP)) is Encryption.NONE


def test_openssl_smime_is_encrypted(tmp_path: Path) -> None:
    assert state(openssl_smime_message(tmp_path)) is Encryption.SMIME


def test_pgp_mime_headers_around_garbage_are_not_encrypted() -> None:
    fake = (b"-----BEGIN PGP MESSAGE-----\n\nSGVsbG8sIHRoaXMgaXMganVzdCBjbGVhciB0ZXh0Lg==\n"
            b"-----END PGP MESSAGE-----\n")
    assert state(pgp_mime(fake)) is Encryption.NONE


def test_pgp_mime_with_one_part_is_not_encrypted(tmp_path: Path) -> None:
    raw = pgp_mime(gpg_armor(tmp_path, b"x"))
    raw = raw.replace(b"--b1\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n",
                      b"")
    assert state(raw) is Encryption.NONE


def test_smime_headers_around_garbage_are_not_encrypted() -> None:
    raw = (b"From: a@b.example\r\nTo: c@d.example\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"\r\n'
           b"Content-Transfer-Encoding: base64\r\n\r\nTm90IGEgQ01TIG1lc3NhZ2UgYXQgYWxs\r\n")
    assert state(raw) is Encryption.NONE


def test_smime_signed_only_is_not_encrypted(tmp_path: Path) -> None:
    cert, key = _cert(tmp_path)
    signed = subprocess.run(["openssl", "smime", "-sign", "-signer", str(cert), "-inkey", str(key),
                             "-nodetach", "-outform", "SMIME"],
                            input=b"Content-Type: text/plain\r\n\r\nhi\r\n", check=True,
                            capture_output=True).stdout
    raw = b"From: a@b.example\r\nTo: c@d.example\r\n" + signed
    assert state(raw) is Encryption.NONE


def test_multipart_signed_is_not_encrypted() -> None:
    raw = (b"From: a@b.example\r\nTo: c@d.example\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/signed; protocol="application/pgp-signature"; '
           b'micalg=pgp-sha256; boundary="s"\r\n\r\n--s\r\nContent-Type: text/plain\r\n\r\n'
           b"Diagnosis F32.1\r\n--s\r\nContent-Type: application/pgp-signature\r\n\r\n"
           b"-----BEGIN PGP SIGNATURE-----\r\n\r\nAAAA\r\n-----END PGP SIGNATURE-----\r\n--s--\r\n")
    assert state(raw) is Encryption.NONE


def test_partly_encrypted_message_is_not_encrypted(tmp_path: Path) -> None:
    encrypted_part = pgp_mime(gpg_armor(tmp_path, b"x")).split(b"\r\n\r\n", 1)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@b.example", "c@d.example", "x"
    msg.set_content("Clear text about the client")
    inner = email.message_from_bytes(b"\r\n\r\n".join(encrypted_part))
    msg.add_attachment(inner)
    assert state(msg.as_bytes(policy=SMTP)) is Encryption.NONE


@pytest.mark.parametrize("body", [b"", b"\x00" * 100, b"\xc1\xff\xff\xff\xff\xff"])
def test_truncated_packets_are_not_encrypted(body: bytes) -> None:
    from securemail.encryption_state import is_openpgp_encrypted

    assert not is_openpgp_encrypted(body)
