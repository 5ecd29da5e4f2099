"""Fixes from new-user trial 44 of ``securemail keys import``.

1. A dual-key S/MIME bundle (a signing certificate without keyEncipherment and
   an encryption certificate for the same address, in a ``.p7b`` or the ``.p7s``
   of a signed mail) imports the encryption certificate and names the signing
   one as skipped; a file with no certificate that can encrypt says so.
2. A PKCS#12 file, with or without a private key, is named as such, with the
   ``openssl pkcs12`` command that takes the certificate out (never parsed).
3. ``skipped certificate`` lines write ``emailAddress=``, not the bare OID.
4. An old-style single RSA key ([SCE], no subkey) is listed as ``RSA-2048``.

Every key and certificate is made here, at test time.
"""

from __future__ import annotations

import datetime as dt
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securemail.crypto.smime import certificate_fingerprint
from securemail.errors import InputError
from securemail.keys import Keyring
from securemail.store.sqlite import open_database
from tests.integration.crypto_fixtures import Gpg

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)
DANA = "dana@clients.example"


@pytest.fixture
def ring(tmp_path: Path) -> Iterator[Keyring]:
    keyring = Keyring(open_database(tmp_path / "keys.db"))
    yield keyring
    keyring.close()


class Pki:
    """A throw-away CA issuing RSA certificates as a corporate PKI does."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test CA Inc"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "Test Email CA")])
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number())
                     .not_valid_before(NOW - DAY).not_valid_after(NOW + 3650 * DAY)
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                    critical=True)
                     .sign(self.key, hashes.SHA256()))

    def issue(self, cn: str, address: str, *, encrypt: bool, days: int = 730
              ) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        """``/CN=cn/emailAddress=address``, as ``openssl req -subj`` writes it; key usage
        digitalSignature+nonRepudiation (signing) or keyEncipherment (encryption)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                             x509.NameAttribute(NameOID.EMAIL_ADDRESS, address)])
        start = NOW - DAY if days > 0 else NOW - 400 * DAY
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(NOW + days * DAY)
                .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(address)]),
                               critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                               critical=False)
                .add_extension(x509.KeyUsage(
                    digital_signature=not encrypt, content_commitment=not encrypt,
                    key_encipherment=encrypt, data_encipherment=False, key_agreement=False,
                    key_cert_sign=False, crl_sign=False, encipher_only=False,
                    decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        return cert, key


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def _p7b(*certs: x509.Certificate) -> bytes:
    return pkcs7.serialize_certificates(list(certs), serialization.Encoding.PEM)


def _p7s(signer: x509.Certificate, key: rsa.RSAPrivateKey, *more: x509.Certificate) -> bytes:
    """The detached signature of a signed mail, carrying ``more`` beside the signer."""
    builder = (pkcs7.PKCS7SignatureBuilder().set_data(b"Content-Type: text/plain\r\n\r\nhi\r\n")
               .add_signer(signer, key, hashes.SHA256()))
    for cert in more:
        builder = builder.add_certificate(cert)
    return builder.sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature])


def _refusal(ring: Keyring, path: Path) -> str:
    with pytest.raises(InputError) as caught:
        ring.import_report(path, NOW)
    return str(caught.value)


# ------------------------------------------------------- 1. dual-key S/MIME


@pytest.mark.parametrize("form", ["p7b", "p7s"])
def test_a_dual_key_bundle_imports_the_encryption_certificate(
        pki: Pki, ring: Keyring, tmp_path: Path, form: str) -> None:
    sign, sign_key = pki.issue("Dana Dual (sign)", DANA, encrypt=False)
    enc, _ = pki.issue("Dana Dual (enc)", DANA, encrypt=True)
    path = tmp_path / f"dana.{form}"
    path.write_bytes(_p7b(sign, enc, pki.cert) if form == "p7b"
                     else _p7s(sign, sign_key, enc, pki.cert))

    report = ring.import_report(path, NOW)

    assert [k.fingerprint for k in report.imported] == [certificate_fingerprint(enc)]
    assert report.imported[0].addresses == (DANA,)
    assert ring.smime_certs(DANA, NOW) == [enc]
    # (the CA's line may name either certificate it issued: a PKCS#7 SET OF is sorted)
    [signing] = [line for line in report.skipped
                 if line.startswith(f"skipped certificate emailAddress={DANA},CN=Dana Dual (sign)")]
    assert signing == (f"skipped certificate emailAddress={DANA},CN=Dana Dual (sign) (key usage "
                       "does not allow encryption, a signing certificate; certificate "
                       f"{certificate_fingerprint(enc)[-16:]} in this file encrypts for {DANA})")
    assert any(line.startswith("skipped certificate CN=Test Email CA") for line in report.skipped)
    assert len(report.skipped) == 2


def test_the_skipped_signing_certificate_is_printed_by_keys_import(pki: Pki,
                                                                   tmp_path: Path) -> None:
    sign, _ = pki.issue("Dana Dual (sign)", DANA, encrypt=False)
    enc, _ = pki.issue("Dana Dual (enc)", DANA, encrypt=True)
    (tmp_path / "securemail.toml").write_text('[storage]\nurl = "sqlite:store.db"\n')
    (tmp_path / "dana.p7b").write_bytes(_p7b(sign, enc, pki.cert))
    done = subprocess.run([sys.executable, "-m", "securemail", "keys", "import", "dana.p7b"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert f"imported smime {certificate_fingerprint(enc)}" in done.stdout
    assert (f"dana.p7b: skipped certificate emailAddress={DANA},CN=Dana Dual (sign) (key usage "
            "does not allow encryption") in done.stdout
    assert done.stderr == ""


def test_a_file_of_signing_certificates_only_says_none_can_encrypt(
        pki: Pki, ring: Keyring, tmp_path: Path) -> None:
    sign, sign_key = pki.issue("Dana Dual (sign)", DANA, encrypt=False)
    other, _ = pki.issue("Dana (old signing)", DANA, encrypt=False)
    for name, data in [("sign.pem", sign.public_bytes(serialization.Encoding.PEM)),
                       ("signed.p7s", _p7s(sign, sign_key, pki.cert)),
                       ("two.p7b", _p7b(sign, other, pki.cert))]:
        path = tmp_path / name
        path.write_bytes(data)
        message = _refusal(ring, path)
        assert message.startswith(f"{path}: no certificate in this file can encrypt: "
                                  f"certificate {certificate_fingerprint(sign)[-16:]} key usage "
                                  "does not allow encryption (keyEncipherment)"), message
        assert message.endswith("ask the recipient for their encryption certificate (some "
                                "people have one for signing and another for encryption)")
    assert ring.list(NOW) == []


def test_a_signing_certificate_is_not_skipped_for_an_unusable_partner(
        pki: Pki, ring: Keyring, tmp_path: Path) -> None:
    """The encryption certificate expired: nothing usable, the file is refused whole."""
    sign, _ = pki.issue("Dana Dual (sign)", DANA, encrypt=False)
    expired, _ = pki.issue("Dana Dual (enc)", DANA, encrypt=True, days=-1)
    path = tmp_path / "dana.p7b"
    path.write_bytes(_p7b(sign, expired, pki.cert))
    message = _refusal(ring, path)
    assert f"certificate {certificate_fingerprint(sign)[-16:]} key usage" in message
    assert f"certificate {certificate_fingerprint(expired)[-16:]} expired on" in message
    assert "no certificate in this file can encrypt" not in message  # one of them can
    assert ring.list(NOW) == []


def test_a_signing_certificate_for_another_address_still_refuses_the_file(
        pki: Pki, ring: Keyring, tmp_path: Path) -> None:
    sign, _ = pki.issue("Sam (sign)", "sam@clients.example", encrypt=False)
    enc, _ = pki.issue("Dana Dual (enc)", DANA, encrypt=True)
    path = tmp_path / "mixed.p7b"
    path.write_bytes(_p7b(sign, enc))
    message = _refusal(ring, path)
    assert message == (f"{path}: certificate {certificate_fingerprint(sign)[-16:]} key usage "
                       "does not allow encryption (keyEncipherment)")
    assert ring.list(NOW) == []


# ------------------------------------------------------------ 2. PKCS#12


def _pkcs12_refusal(path: Path) -> str:
    return (f"{path}: this is a PKCS#12 (.p12/.pfx) file, which may hold a private key and is "
            "not imported: get the certificate out with `openssl pkcs12 -in "
            f"{shlex.quote(str(path))} -nokeys -out cert.pem` (add -legacy if OpenSSL says "
            "unsupported) and import cert.pem")


@pytest.mark.parametrize("with_key", [False, True])
def test_a_pkcs12_file_is_named_with_the_command_to_get_the_certificate(
        pki: Pki, ring: Keyring, tmp_path: Path, with_key: bool) -> None:
    cert, key = pki.issue("Dana", DANA, encrypt=True)
    path = tmp_path / "dana certificate.p12"  # a space: the command quotes the name
    path.write_bytes(pkcs12.serialize_key_and_certificates(
        b"dana", key if with_key else None, cert, [pki.cert], serialization.NoEncryption()))
    assert _refusal(ring, path) == _pkcs12_refusal(path)
    assert ring.list(NOW) == []


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_the_command_given_for_a_certificate_only_pkcs12_works(
        pki: Pki, ring: Keyring, tmp_path: Path) -> None:
    """``openssl pkcs12 -export -nokeys`` writes no localKeyID, so ``-clcerts``
    would write an empty file; the command given takes the certificate out."""
    cert, _ = pki.issue("Dana", DANA, encrypt=True)
    (tmp_path / "dana.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca.pem").write_bytes(pki.cert.public_bytes(serialization.Encoding.PEM))
    subprocess.run(["openssl", "pkcs12", "-export", "-nokeys", "-in", "dana.pem",
                    "-certfile", "ca.pem", "-passout", "pass:", "-out", "dana.p12"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=60)
    message = _refusal(ring, tmp_path / "dana.p12")
    assert "PKCS#12 (.p12/.pfx)" in message
    command = message.split("`")[1]
    subprocess.run([*shlex.split(command), "-passin", "pass:"], cwd=tmp_path, check=True,
                   capture_output=True, timeout=60)
    report = ring.import_report(tmp_path / "cert.pem", NOW)
    assert [k.fingerprint for k in report.imported] == [certificate_fingerprint(cert)]


def test_a_pem_private_key_keeps_its_own_message(pki: Pki, ring: Keyring,
                                                 tmp_path: Path) -> None:
    _, key = pki.issue("Dana", DANA, encrypt=True)
    path = tmp_path / "dana.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    assert _refusal(ring, path) == (f"{path}: this file holds a private key (or PKCS#12 "
                                    "bundle): import the recipient's certificate only")


# ---------------------------------------------------- 3. emailAddress= by name


def test_a_skipped_ca_names_the_leaf_with_email_address(pki: Pki, ring: Keyring,
                                                       tmp_path: Path) -> None:
    cert, _ = pki.issue("smime-chain user", DANA, encrypt=True)
    path = tmp_path / "chain.p7b"
    path.write_bytes(_p7b(cert, pki.cert))
    report = ring.import_report(path, NOW)
    assert report.skipped == (
        "skipped certificate CN=Test Email CA,O=Test CA Inc (a CA certificate, the issuer of "
        f"emailAddress={DANA},CN=smime-chain user)",)
    assert "1.2.840.113549.1.9.1" not in report.skipped[0]


# ------------------------------------------------- 4. a single [SCE] RSA key


@pytest.fixture(scope="module")
def gpg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gpg]:
    if shutil.which("gpg") is None:
        pytest.skip("needs gpg")
    g = Gpg.create(tmp_path_factory.mktemp("gnupg"))
    yield g
    g.close()


def test_a_single_rsa_key_used_for_everything_is_named_once(gpg: Gpg, ring: Keyring,
                                                            tmp_path: Path) -> None:
    old = gpg.gen("Old Style <sce@clients.example>", "rsa2048", "sign,encr,cert", "2y")
    new = gpg.gen("New Style <sub@clients.example>", "rsa2048", "sign,cert", "2y")
    gpg.add_subkey(new, "rsa2048", "encr", "2y")
    (tmp_path / "old.asc").write_bytes(gpg.export(old))
    (tmp_path / "new.asc").write_bytes(gpg.export(new))
    now = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)  # after gpg made the keys

    [imported] = ring.import_report(tmp_path / "old.asc", now).imported
    assert imported.algorithm == "RSA-2048"
    [imported] = ring.import_report(tmp_path / "new.asc", now).imported
    assert imported.algorithm == "RSA-2048/RSA-2048"  # a primary and its subkey
    assert {k.fingerprint: k.algorithm for k in ring.list(now)} == {
        old: "RSA-2048", new: "RSA-2048/RSA-2048"}
    assert ring.pgp_keys("sce@clients.example", now)  # still used for encryption
