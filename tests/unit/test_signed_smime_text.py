"""Opaque-signed S/MIME is clear text: its body is read by the PHI detectors.

`openssl smime -sign -nodetach` (and mail programs set to "opaque" signing)
put the whole MIME body inside a CMS SignedData structure, base64-encoded.
Anyone can read it; before, the detectors saw only base64 and a message with
a client's name and diagnosis went to an outsider in clear.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from securemail.cms_content import cms_content
from securemail.documents import Unreadable
from securemail.model import Action
from tests.unit.policy_helpers import verdict_for

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")

SENDER = "dr@riverside.example"
OUTSIDER = "colleague@other-clinic.example"
INNER = (b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
         b"Client Jane Roe, diagnosis F32.1, major depressive disorder.\r\n")


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("signer")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SENDER)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(SENDER)]), False)
            .sign(key, hashes.SHA256()))
    key_file, cert_file = folder / "key.pem", folder / "cert.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


def openssl_signed(signer: tuple[Path, Path], tmp_path: Path, *extra: str) -> bytes:
    key_file, cert_file = signer
    inner = tmp_path / "inner.txt"
    inner.write_bytes(INNER)
    out = subprocess.run(
        ["openssl", "smime", "-sign", "-nodetach", "-in", str(inner), "-signer",
         str(cert_file), "-inkey", str(key_file), "-from", SENDER, "-to", OUTSIDER,
         "-subject", "Letter", *extra],
        check=True, capture_output=True, timeout=60).stdout
    return out


@pytest.mark.parametrize("extra", [(), ("-stream",)], ids=["der", "ber-stream"])
def test_an_opaque_signed_message_with_phi_is_blocked_to_an_outsider(
        signer: tuple[Path, Path], tmp_path: Path, config_path: Path,
        extra: tuple[str, ...]) -> None:
    raw = openssl_signed(signer, tmp_path, *extra)
    # base64 inside ("Jane Roe": base64 has no space, its random bytes cannot spell it)
    assert b"application/x-pkcs7-mime" in raw and b"Jane Roe" not in raw
    verdict = verdict_for(config_path, raw, SENDER, [OUTSIDER])
    assert verdict.decisions[0].action is Action.BLOCK
    signals = {s.detector for s in verdict.facts.phi_signals} if verdict.facts else set()
    assert {"phi-client-name", "phi-icd10"} <= signals


def test_the_signed_content_is_exactly_what_openssl_verifies(
        signer: tuple[Path, Path], tmp_path: Path) -> None:
    import email

    raw = openssl_signed(signer, tmp_path, "-stream")
    part = email.message_from_bytes(raw)
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    signed = tmp_path / "signed.eml"
    signed.write_bytes(raw)
    verified = subprocess.run(["openssl", "smime", "-verify", "-noverify", "-in", str(signed)],
                              check=True, capture_output=True, timeout=60).stdout
    assert cms_content(payload) == verified


def test_an_encrypted_smime_attachment_is_not_unwrapped(signer: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    _, cert_file = signer
    inner = tmp_path / "inner.txt"
    inner.write_bytes(INNER)
    enveloped = subprocess.run(["openssl", "cms", "-encrypt", "-outform", "DER", "-in",
                                str(inner), "-aes256", str(cert_file)],
                               check=True, capture_output=True, timeout=60).stdout
    assert cms_content(enveloped) is None


@pytest.mark.parametrize("junk", [b"\x30\x80\x06\x09", b"\x30\x03\x02\x01\x01",
                                  b"not der at all", b"\x30\x84\xff\xff\xff\xff"])
def test_a_broken_signed_part_counts_as_unscanned(junk: bytes, config_path: Path) -> None:
    with pytest.raises(Unreadable):
        cms_content(junk)
    import base64

    raw = (f"From: {SENDER}\r\nTo: {OUTSIDER}\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
           "Content-Type: application/pkcs7-mime; smime-type=signed-data; name=smime.p7m\r\n"
           "Content-Transfer-Encoding: base64\r\n\r\n").encode() + base64.b64encode(junk)
    verdict = verdict_for(config_path, raw, SENDER, [OUTSIDER])
    assert verdict.decisions[0].action is Action.BLOCK
    assert verdict.facts is not None
    assert {s.detector for s in verdict.facts.phi_signals} == {"phi-unscanned"}
