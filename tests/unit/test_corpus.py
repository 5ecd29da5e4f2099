"""Real-world message shapes, and encrypted samples made by real tools at test time."""

from __future__ import annotations

import email
import tomllib
import warnings
from pathlib import Path

import pytest

from securemail.config import load_settings
from securemail.model import Encryption
from securemail.parse import parse_message
from tests.unit.policy_helpers import verdict_for
from tests.unit.test_encryption_state import (
    _cert,
    gpg_armor,
    openssl_smime_message,
    pgp_mime,
    state,
)

CORPUS = Path(__file__).parent.parent / "corpus"
EXPECTED = tomllib.loads((CORPUS / "expected.toml").read_text(encoding="utf-8"))
CPYTHON_DATA = Path(email.__file__).parent.parent / "test" / "test_email" / "data"


def envelope(settings, raw: bytes, spec: dict) -> tuple[str, list[str]]:
    view = parse_message(raw, settings.limits)
    sender = spec.get("from") or (view.addresses("from") or [""])[0]
    rcpts = spec.get("to") or list(dict.fromkeys(view.addresses("to", "cc", "bcc")))
    return sender, rcpts


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_message(name: str, config_path: Path) -> None:
    spec = EXPECTED[name]
    settings = load_settings(config_path)
    raw = (CORPUS / name).read_bytes()
    sender, rcpts = envelope(settings, raw, spec)
    v = verdict_for(settings, raw, sender, rcpts)
    assert {d.address: d.action.value for d in v.decisions} == spec["actions"]
    for addr, rules in spec.get("rules", {}).items():
        assert list(v.decision_for(addr).rules) == rules
    for addr, source in spec.get("sources", {}).items():
        assert v.decision_for(addr).source.value == source
    if "phi" in spec:
        assert v.phi is spec["phi"]


def test_gpg_and_openssl_outputs_are_delivered_as_already_encrypted(
        config_path: Path, tmp_path: Path) -> None:
    settings = load_settings(config_path)
    samples = [
        pgp_mime(gpg_armor(tmp_path, b"Content-Type: text/plain\r\n\r\nDx F32.1\r\n"),
                 "dr.lee@riverside.example", "mom@mail.example"),
        openssl_smime_message(tmp_path).replace(b"To: jane@mail.example",
                                                b"To: mom@mail.example"),
    ]
    for raw in samples:
        v = verdict_for(settings, raw, "dr.lee@riverside.example", ["mom@mail.example"])
        assert v.encrypted
        assert [d.rules for d in v.decisions] == [("already-encrypted",)]


def test_library_outputs_are_recognised(tmp_path: Path) -> None:
    """PGPy and cryptography's PKCS#7 builder, as other practice software would use them."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import pkcs7

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgpy
        from pgpy.constants import KeyFlags, PubKeyAlgorithm

        key = pgpy.PGPKey.new(PubKeyAlgorithm.RSAEncryptOrSign, 2048)
        key.add_uid(pgpy.PGPUID.new("Jane", email="jane@mail.example"),
                    usage={KeyFlags.EncryptCommunications, KeyFlags.Sign})
        armored = str(key.pubkey.encrypt(pgpy.PGPMessage.new(b"hello", file=True))).encode()
    assert state(pgp_mime(armored)) is Encryption.PGP_MIME

    cert = x509.load_pem_x509_certificate(_cert(tmp_path)[0].read_bytes())
    smime = (pkcs7.PKCS7EnvelopeBuilder().set_data(b"Content-Type: text/plain\r\n\r\nhi\r\n")
             .add_recipient(cert).encrypt(pkcs7.serialization.Encoding.SMIME, []))
    raw = b"From: a@b.example\r\nTo: c@d.example\r\n" + smime
    assert state(raw) is Encryption.SMIME


@pytest.mark.skipif(not CPYTHON_DATA.is_dir(), reason="this Python ships no test_email data")
def test_cpython_test_email_messages_never_raise(config_path: Path) -> None:
    settings = load_settings(config_path)
    files = sorted(CPYTHON_DATA.glob("msg_*.txt"))
    assert len(files) > 40
    for f in files:
        raw = f.read_bytes()
        sender, rcpts = envelope(settings, raw, {})
        v = verdict_for(settings, raw, sender or "x@y.example", rcpts or ["someone@x.example"])
        assert v.decisions, f.name
