"""S/MIME output opened by real OpenSSL (``openssl cms -decrypt``, ``openssl smime -decrypt``)."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import pkcs7

from securemail.crypto import smime
from securemail.errors import RenderError
from securemail.keys import Keyring
from securemail.store.sqlite import open_database
from tests.integration.crypto_fixtures import (
    SmimeIdentity,
    attachments,
    body_of,
    corpus,
    parsed,
    smime_identity,
)

NOW = dt.datetime.now(dt.UTC)
CORPUS = corpus()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> tuple[SmimeIdentity, Path]:
    ident = smime_identity("client-smime@mail.example", rsa_bits=3072)
    folder = tmp_path_factory.mktemp("smime")
    (folder / "cert.pem").write_bytes(ident.cert_pem)
    (folder / "key.pem").write_bytes(ident.key_pem)
    return ident, folder


@pytest.fixture(scope="module")
def keyring(client: tuple[SmimeIdentity, Path],
            tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    ring = Keyring(open_database(tmp_path_factory.mktemp("store") / "keys.db"))
    ring.import_file(client[1] / "cert.pem", NOW)
    return ring


def _openssl_decrypt(tool: str, message: bytes, folder: Path) -> bytes:
    path = folder / "message.eml"
    path.write_bytes(message)
    proc = subprocess.run(["openssl", tool, "-decrypt", "-binary", "-in", str(path),
                           "-recip", str(folder / "cert.pem"), "-inkey", str(folder / "key.pem")],
                          capture_output=True, timeout=60, check=True)
    return proc.stdout


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_openssl_cms_opens_every_corpus_message(client: tuple[SmimeIdentity, Path],
                                                keyring: Keyring, name: str) -> None:
    raw = CORPUS[name]
    certs = keyring.smime_certs("client-smime@mail.example", NOW)
    assert len(certs) == 1

    out = smime.render_smime(raw, certs)

    assert b"\n" not in out.replace(b"\r\n", b"")
    outer = parsed(out)
    assert outer.get_content_type() == "application/pkcs7-mime"
    assert outer.get_param("smime-type") == "enveloped-data"
    assert outer.get_param("name") == "smime.p7m"
    assert outer.get_filename() == "smime.p7m"
    assert outer["Subject"] == "..."
    inner = _openssl_decrypt("cms", out, client[1])
    assert body_of(inner) == body_of(raw)
    assert attachments(inner) == attachments(raw)
    entity, original = parsed(inner), parsed(raw)
    for field in ("Subject", "From", "To", "Cc", "Date", "Message-ID"):
        assert entity[field] == original[field]
    assert entity.get_param("hp") == "cipher"


def test_openssl_smime_opens_it_too_and_content_is_aes256(
        client: tuple[SmimeIdentity, Path], keyring: Keyring) -> None:
    out = smime.render_smime(CORPUS["utf8"],
                             keyring.smime_certs("client-smime@mail.example", NOW))
    assert body_of(_openssl_decrypt("smime", out, client[1])) == body_of(CORPUS["utf8"])
    assert "séance".encode() not in out and b"Rendez" not in out
    (client[1] / "m.eml").write_bytes(out)
    info = subprocess.run(["openssl", "cms", "-cmsout", "-print", "-in",
                           str(client[1] / "m.eml")], capture_output=True, check=True,
                          timeout=60).stdout
    assert b"aes-256-cbc" in info.lower()


def test_ec_certificate_is_a_render_error_not_plaintext() -> None:
    ec_cert = smime_identity("ec@mail.example", use_ec=True).cert
    with pytest.raises(RenderError):
        smime.render_smime(CORPUS["dots"], [ec_cert])


def test_library_error_becomes_render_error(keyring: Keyring,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("Your diagnosis leaked")

    monkeypatch.setattr(pkcs7.PKCS7EnvelopeBuilder, "encrypt", boom)
    with pytest.raises(RenderError) as caught:
        smime.render_smime(CORPUS["utf8"], keyring.smime_certs("client-smime@mail.example", NOW))
    assert "diagnosis" not in str(caught.value)


def test_no_certificate_is_a_render_error() -> None:
    with pytest.raises(RenderError):
        smime.render_smime(CORPUS["dots"], [])
