"""Encryption edge cases: the archive key in `config check`,
Content-Type parameters inside the ciphertext, and S/MIME files people really have."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from securemail.crypto import pgp
from securemail.crypto.smime import render_smime
from securemail.errors import InputError
from securemail.keys import Keyring
from securemail.store.sqlite import open_database
from tests.integration.crypto_fixtures import Gpg, smime_identity

NOW = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def gpg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gpg]:
    g = Gpg.create(tmp_path_factory.mktemp("gnupg") / "home")
    client = g.gen("Client <client@mail.example>", "future-default")
    (g.home / "client.asc").write_bytes(g.export(client))
    signer = g.gen("Archive <archive@riverside.example>", "ed25519", "sign")
    (g.home / "signing-only.asc").write_bytes(g.export(signer))
    yield g
    g.close()


@pytest.fixture
def ring(tmp_path: Path) -> Keyring:
    return Keyring(open_database(tmp_path / "keys.db"))


# ---------------------------------------------- 5: `config check` and the archive key


def _config_check(tmp_path: Path, archive: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "securemail.toml"
    cfg.write_text('[practice]\ndomains = ["riverside.example"]\n'
                   '[storage]\nurl = "sqlite:data/securemail.db"\n'
                   f'[encryption]\narchive_key_file = "{archive}"\n')
    return subprocess.run([sys.executable, "-m", "securemail", "config", "check", "-c",
                           str(cfg)], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])


def test_config_check_refuses_a_missing_archive_key(tmp_path: Path) -> None:
    r = _config_check(tmp_path, "does-not-exist.asc")
    assert r.returncode == 2, r.stdout
    # FILE: key: problem, the key file named in the problem.
    cfg = tmp_path / "securemail.toml"
    assert f"{cfg}: encryption.archive_key_file: {tmp_path / 'does-not-exist.asc'}: cannot read" \
        in r.stderr
    assert "\n" not in r.stderr.strip()


def test_config_check_refuses_a_signing_only_archive_key(gpg: Gpg, tmp_path: Path) -> None:
    r = _config_check(tmp_path, str(gpg.home / "signing-only.asc"))
    assert r.returncode == 2, r.stdout
    assert "securemail.toml: encryption.archive_key_file: " in r.stderr
    assert "signing-only.asc: OpenPGP key" in r.stderr
    assert "no encryption-capable (sub)key" in r.stderr


def test_config_check_accepts_a_usable_archive_key(gpg: Gpg, tmp_path: Path) -> None:
    r = _config_check(tmp_path, str(gpg.home / "client.asc"))
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "data").exists()


# --------------------------------------- 6: Content-Type parameters of the inner entity


def _message(content_type: str) -> bytes:
    return (f"From: reed@riverside.example\r\nTo: client@mail.example\r\nSubject: Befund\r\n"
            f"Content-Type: {content_type}\r\n\r\nHello\r\n").encode()


@pytest.mark.parametrize("content_type", [
    'text/plain; charset=utf-8; protected-headers="v1"; hp="clear"',
    "text/plain; charset=utf-8;",
    'text/plain;\r\n charset="utf-8";\r\n x-note="protected-headers";',
    'text/plain; HP="clear"; charset=utf-8',
])
def test_the_decrypted_entity_has_each_parameter_once(gpg: Gpg, ring: Keyring,
                                                      content_type: str) -> None:
    ring.import_file(gpg.home / "client.asc", NOW)
    out = pgp.render_pgp_mime(_message(content_type), ring.pgp_keys("client@mail.example", NOW))
    armored = out[out.index(b"-----BEGIN PGP MESSAGE-----"):]
    inner = gpg.decrypt(armored)
    header = inner.split(b"\r\n\r\n", 1)[0]
    field = next(f for f in header.replace(b"\r\n ", b" ").split(b"\r\n")
                 if f.lower().startswith(b"content-type:"))
    assert b";;" not in field.replace(b" ", b"") and not field.rstrip().endswith(b";")
    names = [p.split(b"=")[0].strip().lower() for p in field.split(b";")[1:]]
    assert sorted(names) == sorted(set(names))  # no parameter twice
    entity = email.message_from_bytes(inner, policy=email.policy.default)
    assert entity.get_content_type() == "text/plain"
    assert entity.get_param("hp") == "cipher"
    assert entity.get_param("protected-headers") == "v1"
    assert entity.get_param("charset") == "utf-8"
    assert entity.get_content().splitlines() == ["Hello"]


# ------------------------------------------------------------ 7: S/MIME files


def _openssl(*args: str, input: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *args], input=input, capture_output=True, check=True,
                          timeout=60).stdout


def test_a_p7b_from_openssl_imports_without_a_warning(ring: Keyring, tmp_path: Path) -> None:
    # openssl keeps the certificates in the order given; out of DER SET order,
    # cryptography must fall back to BER (and warns that it does).
    pems = sorted((smime_identity(f"{who}@mail.example").cert_pem for who in ("sam", "kim")),
                  key=lambda pem: x509.load_pem_x509_certificate(pem).public_bytes(
                      serialization.Encoding.DER), reverse=True)
    args = []
    for i, pem in enumerate(pems):
        (tmp_path / f"{i}.pem").write_bytes(pem)
        args += ["-certfile", str(tmp_path / f"{i}.pem")]
    p7b = tmp_path / "bundle.p7b"
    p7b.write_bytes(_openssl("crl2pkcs7", "-nocrl", *args))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning would reach the person importing
        imported = ring.import_file(p7b, NOW)
    assert sorted(a for k in imported for a in k.addresses) == ["kim@mail.example",
                                                                 "sam@mail.example"]
    # `keys import` in a fresh process prints nothing but its result.
    cfg = tmp_path / "securemail.toml"
    cfg.write_text('[practice]\ndomains = ["riverside.example"]\n'
                   '[storage]\nurl = "sqlite:data/securemail.db"\n')
    r = subprocess.run([sys.executable, "-m", "securemail", "keys", "import", "-c", str(cfg),
                        str(p7b)], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0 and r.stderr == "", r.stderr


@pytest.mark.parametrize("kind", ["pem-key", "rsa-key", "p12", "p12-no-password"])
def test_a_private_key_file_is_named_as_such(ring: Keyring, tmp_path: Path, kind: str) -> None:
    ident = smime_identity("sam@mail.example")
    key = serialization.load_pem_private_key(ident.key_pem, None)
    if kind == "pem-key":
        data = ident.key_pem
    elif kind == "rsa-key":
        data = key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())
    else:
        encryption = (serialization.NoEncryption() if kind == "p12-no-password"
                      else serialization.BestAvailableEncryption(b"pw"))
        data = pkcs12.serialize_key_and_certificates(b"sam", key, ident.cert,  # type: ignore[arg-type]
                                                     None, encryption)
    path = tmp_path / "sam.bin"
    path.write_bytes(data)
    with pytest.raises(InputError) as caught:
        ring.import_file(path, NOW)
    if kind.startswith("p12"):  # named as what it is, with how to get the certificate out
        from securemail.crypto.smime import pkcs12_refusal

        assert str(caught.value) == f"{path}: {pkcs12_refusal(str(path))}"
        assert "openssl pkcs12 -in" in str(caught.value)
    else:
        assert str(caught.value) == (f"{path}: this file holds a private key (or PKCS#12"
                                     " bundle): import the recipient's certificate only")


@pytest.mark.parametrize("eku", [None, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE])
def test_certificates_without_an_email_restriction_are_used(
        ring: Keyring, tmp_path: Path, eku: x509.ObjectIdentifier | None) -> None:
    """RFC 8550 4.4.4: no extendedKeyUsage, or anyExtendedKeyUsage, allows e-mail."""
    ident = smime_identity("sam@mail.example", eku=eku)
    (tmp_path / "sam.pem").write_bytes(ident.cert_pem)
    [imported] = ring.import_file(tmp_path / "sam.pem", NOW)
    assert ring.usable_kinds("sam@mail.example", NOW) == {"smime"}
    out = render_smime(_message("text/plain; charset=utf-8"),
                       ring.smime_certs("sam@mail.example", NOW))
    (tmp_path / "key.pem").write_bytes(ident.key_pem)
    plain = _openssl("cms", "-decrypt", "-inkey", str(tmp_path / "key.pem"),
                     "-recip", str(tmp_path / "sam.pem"), input=out)
    assert plain.endswith(b"\r\n\r\nHello\r\n") and b"Subject: Befund" in plain
    assert imported.fingerprint


def test_a_certificate_for_other_purposes_only_is_still_refused(ring: Keyring,
                                                                tmp_path: Path) -> None:
    ident = smime_identity("sam@mail.example", eku=ExtendedKeyUsageOID.SERVER_AUTH)
    (tmp_path / "tls.pem").write_bytes(ident.cert_pem)
    with pytest.raises(InputError, match="not valid for e-mail protection"):
        ring.import_file(tmp_path / "tls.pem", NOW)


# ---------------------------------------------- 9: one way to name a certificate


def test_a_refused_certificate_is_named_as_keys_remove_takes_it(ring: Keyring,
                                                                tmp_path: Path) -> None:
    from securemail.crypto.smime import certificate_fingerprint

    expired = smime_identity("old@mail.example", days=1)
    (tmp_path / "old.pem").write_bytes(expired.cert_pem)
    with pytest.raises(InputError) as caught:
        ring.import_file(tmp_path / "old.pem", NOW + dt.timedelta(days=2))
    named = str(caught.value).split(": certificate ", 1)[1].split()[0]
    assert named == certificate_fingerprint(expired.cert)[-16:]
    # ... which is the form `keys remove` takes.
    ident = smime_identity("sam@mail.example")
    (tmp_path / "sam.pem").write_bytes(ident.cert_pem)
    ring.import_file(tmp_path / "sam.pem", NOW)
    assert ring.remove(certificate_fingerprint(ident.cert)[-16:]) == 1
