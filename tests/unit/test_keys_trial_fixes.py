"""Fixes from the operator trial of ``securemail keys``, checked as the operator sees them.

1. A bundle no longer drops a self-signed (CA:TRUE) S/MIME certificate silently;
   CA certificates of a chain are still left out, and each one is named.
2. ``keys remove`` audits which key went (fingerprint, kind) and says whether
   a key was deleted or only lost one of its addresses.
3. ``keys list`` (table and ``--json``) says why a key is not usable.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securemail.cli.audit_cmd import commands as audit_commands
from securemail.cli.base import cli
from securemail.cli.keys_cmd import commands as keys_commands
from securemail.crypto.smime import certificate_fingerprint
from securemail.keys import Keyring
from securemail.store.sqlite import open_database
from tests.integration.crypto_fixtures import pgpy_secret_key, smime_identity
from tests.unit.test_audit_support import write_config

DAY = dt.timedelta(days=1)


def run(*args: str) -> tuple[int, str, str]:
    for command in [*keys_commands, *audit_commands]:
        if command.name not in cli.commands:
            cli.add_command(command)
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def listed(cfg: Path) -> dict[str, dict[str, Any]]:
    code, out, _ = run("keys", "list", "--json", "-c", str(cfg))
    assert code == 0
    return {k["fingerprint"]: k for k in json.loads(out)}


def key_records(cfg: Path) -> list[dict[str, Any]]:
    """key-import / key-remove records from ``securemail audit export`` (JSONL)."""
    code, out, err = run("audit", "export", "-c", str(cfg))
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()[1:]]  # line 1: the manifest
    return [r for r in records if r.get("kind") in ("key-import", "key-remove")]


def rsa_cert(subject: x509.Name, *, issuer: x509.Name | None = None,
             issuer_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None,
             ca: bool = False, emails: tuple[str, ...] = (), key_usage: bool = False,
             not_before: dt.datetime | None = None, days: int = 365,
             ) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """An RSA-2048 certificate; self-signed unless ``issuer``/``issuer_key`` are given."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    start = not_before or dt.datetime.now(dt.UTC) - DAY
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer or subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(start + days * DAY))
    if ca:  # what `openssl req -x509` writes by default
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                        critical=True)
    if emails:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(e) for e in emails]), critical=False)
    if key_usage:  # a CA's own: signs certificates, encrypts nothing
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    return builder.sign(issuer_key or key, hashes.SHA256()), key


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cn(common: str, email: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common)]
    if email:
        attrs.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    return x509.Name(attrs)


# ------------------------------------------------- 1. CA:TRUE leaf in a bundle


def test_a_self_signed_ca_true_certificate_is_imported_from_a_bundle_too(
        tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    smrsa = smime_identity("sam@mail.example").cert
    smder, _ = rsa_cert(cn("Dee Example"), ca=True, emails=("dee@mail.example",))
    (tmp_path / "smder.pem").write_bytes(pem(smder))
    (tmp_path / "two.pem").write_bytes(pem(smrsa) + pem(smder))

    # Alone, the CA:TRUE certificate is accepted ...
    code, out, err = run("keys", "import", "-c", str(cfg), str(tmp_path / "smder.pem"))
    assert code == 0, err
    assert f"imported smime {certificate_fingerprint(smder)}" in out
    run("keys", "remove", "-c", str(cfg), certificate_fingerprint(smder))

    # ... and so it is from a bundle, beside the other certificate.
    code, out, err = run("keys", "import", "-c", str(cfg), str(tmp_path / "two.pem"))
    assert code == 0, err
    assert out.count("imported smime ") == 2, out
    assert "skipped" not in out and err == ""
    stored = listed(cfg)
    assert {certificate_fingerprint(smrsa), certificate_fingerprint(smder)} <= stored.keys()
    assert stored[certificate_fingerprint(smder)]["addresses"] == ["dee@mail.example"]
    assert stored[certificate_fingerprint(smder)]["usable"] is True


def test_a_ca_certificate_of_the_chain_is_skipped_and_named(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    leaf = smime_identity("sam@mail.example").cert
    ca, _ = rsa_cert(cn("Practice CA"), ca=True, key_usage=True)
    (tmp_path / "chain.pem").write_bytes(pem(leaf) + pem(ca))
    code, out, err = run("keys", "import", "-c", str(cfg), str(tmp_path / "chain.pem"))
    assert code == 0, err
    assert out.count("imported smime ") == 1
    assert (f"{tmp_path / 'chain.pem'}: skipped certificate CN=Practice CA "
            "(a CA certificate, no email address)") in out
    assert list(listed(cfg)) == [certificate_fingerprint(leaf)]


def test_a_ca_with_an_email_address_that_issued_the_recipient_stays_chain(
        tmp_path: Path) -> None:
    """Old CAs put an emailAddress in their subject: they still are no recipient."""
    cfg = write_config(tmp_path)
    root, root_key = rsa_cert(cn("Root CA", "root@ca.example"), ca=True, key_usage=True)
    sub, sub_key = rsa_cert(cn("Sub CA", "ca@ca.example"), issuer=root.subject,
                            issuer_key=root_key, ca=True)
    leaf, _ = rsa_cert(cn("Sam"), issuer=sub.subject, issuer_key=sub_key,
                       emails=("sam@mail.example",))
    (tmp_path / "chain.pem").write_bytes(pem(leaf) + pem(sub) + pem(root))
    code, out, err = run("keys", "import", "-c", str(cfg), str(tmp_path / "chain.pem"))
    assert code == 0, err
    assert f"imported smime {certificate_fingerprint(leaf)}" in out
    assert out.count("imported smime ") == 1
    assert "skipped certificate" in out and "Sub CA" in out and "Root CA" in out
    assert "the issuer of CN=Sam" in out
    assert list(listed(cfg)) == [certificate_fingerprint(leaf)]


# ----------------------------------------------- 2. what `keys remove` records


def test_removing_a_key_by_fingerprint_audits_which_key_went(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    sam = smime_identity("sam@mail.example").cert
    fpr = certificate_fingerprint(sam)
    (tmp_path / "sam.pem").write_bytes(pem(sam))
    assert run("keys", "import", "-c", str(cfg), str(tmp_path / "sam.pem"))[0] == 0
    code, out, _ = run("keys", "remove", "-c", str(cfg), fpr[-16:])
    assert code == 0
    assert f"removed key {fpr} (smime) for sam@mail.example" in out
    removed = key_records(cfg)[-1]
    assert removed["kind"] == "key-remove"
    assert removed["fingerprint"] == fpr and removed["key_kind"] == "smime"
    assert removed["address"] == "sam@mail.example" and removed["reason_code"] == "removed"
    assert removed["count"] == 1


def test_removing_an_address_names_the_key_it_deleted(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    public, _ = pgpy_secret_key("Pat", "pat@mail.example")
    (tmp_path / "pat.asc").write_bytes(public)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run("keys", "import", "-c", str(cfg), str(tmp_path / "pat.asc"))[0] == 0
    [fpr] = listed(cfg)
    code, out, _ = run("keys", "remove", "-c", str(cfg), "Pat@Mail.Example")
    assert code == 0
    assert f"removed key {fpr} (pgp) for pat@mail.example" in out
    imported, removed = key_records(cfg)
    assert imported["kind"] == "key-import" and removed["kind"] == "key-remove"
    assert removed["fingerprint"] == fpr and removed["key_kind"] == "pgp"
    assert removed["reason_code"] == "removed" and removed["address"] == "pat@mail.example"
    assert listed(cfg) == {}


def test_removing_one_of_several_addresses_says_the_key_is_kept(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    both, _ = rsa_cert(cn("Jane"), emails=("jane@mail.example", "other@elsewhere.test"))
    fpr = certificate_fingerprint(both)
    (tmp_path / "jane.pem").write_bytes(pem(both))
    assert run("keys", "import", "-c", str(cfg), str(tmp_path / "jane.pem"))[0] == 0

    code, out, _ = run("keys", "remove", "-c", str(cfg), "other@elsewhere.test")
    assert code == 0
    assert (f"detached other@elsewhere.test from key {fpr} (smime), which is still used "
            "for jane@mail.example") in out
    assert "removed 1 key" not in out
    assert listed(cfg)[fpr]["addresses"] == ["jane@mail.example"]
    detached = key_records(cfg)[-1]
    assert detached["fingerprint"] == fpr and detached["key_kind"] == "smime"
    assert detached["reason_code"] == "address-detached"
    assert detached["address"] == "other@elsewhere.test" and detached["count"] == 0

    code, out, _ = run("keys", "remove", "-c", str(cfg), "jane@mail.example")
    assert code == 0 and f"removed key {fpr} (smime) for jane@mail.example" in out
    removed = key_records(cfg)[-1]
    assert (removed["fingerprint"], removed["reason_code"], removed["count"]) == (
        fpr, "removed", 1)
    assert listed(cfg) == {}


def test_a_key_withdrawn_by_reimport_is_audited_with_its_kind(tmp_path: Path) -> None:
    from tests.unit.test_key_withdrawal import _subkey_revoked_copy

    cfg = write_config(tmp_path)
    before, after = _subkey_revoked_copy()
    (tmp_path / "rita.asc").write_bytes(before)
    (tmp_path / "rita-revoked.asc").write_bytes(after)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run("keys", "import", "-c", str(cfg), str(tmp_path / "rita.asc"))[0] == 0
        assert run("keys", "import", "-c", str(cfg), str(tmp_path / "rita-revoked.asc"))[0] == 2
    imported, withdrawn = key_records(cfg)
    assert withdrawn["reason_code"] == "withdrawn-by-reimport"
    assert withdrawn["fingerprint"] == imported["fingerprint"]
    assert withdrawn["key_kind"] == "pgp"


# ---------------------------------------------- 3. why a key is not usable


def test_a_certificate_not_valid_yet_is_listed_with_the_reason(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    start = dt.datetime.combine(dt.date.today() + 400 * DAY, dt.time(), dt.UTC)
    future, _ = rsa_cert(cn("Fay"), emails=("fay@mail.example",), not_before=start)
    fpr = certificate_fingerprint(future)
    (tmp_path / "fay.pem").write_bytes(pem(future))
    code, out, _ = run("keys", "import", "-c", str(cfg), str(tmp_path / "fay.pem"))
    assert code == 0 and f"not valid until {start:%Y-%m-%d}" in out

    code, out, _ = run("keys", "list", "-c", str(cfg))
    assert code == 0 and f"NOT usable (not valid until {start:%Y-%m-%d})" in out
    entry = listed(cfg)[fpr]
    assert entry["usable"] is False
    assert entry["reason"] == f"not valid until {start:%Y-%m-%d}"


def test_a_usable_key_has_no_reason_in_json(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    (tmp_path / "sam.pem").write_bytes(smime_identity("sam@mail.example").cert_pem)
    assert run("keys", "import", "-c", str(cfg), str(tmp_path / "sam.pem"))[0] == 0
    [entry] = listed(cfg).values()
    assert entry["usable"] is True and entry["reason"] is None


def test_an_expired_key_is_listed_with_its_expiry(tmp_path: Path) -> None:
    ring = Keyring(open_database(tmp_path / "keys.db"))
    ident = smime_identity("sam@mail.example", eku=ExtendedKeyUsageOID.EMAIL_PROTECTION)
    (tmp_path / "sam.pem").write_bytes(ident.cert_pem)
    ring.import_file(tmp_path / "sam.pem", dt.datetime.now(dt.UTC))
    [info] = ring.list(dt.datetime.now(dt.UTC) + 400 * DAY)
    end = ident.cert.not_valid_after_utc
    assert info.usable is False
    assert info.reason == f"expired on {end:%Y-%m-%d %H:%M} UTC"
    assert info.as_json()["reason"] == info.reason


def test_a_key_import_records_the_files_full_path(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # "pat.asc" on record says nothing years later about which file it was.
    cfg = write_config(tmp_path)
    public, _ = pgpy_secret_key("Pat", "pat@mail.example")
    (tmp_path / "pat.asc").write_bytes(public)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run("keys", "import", "-c", str(cfg), "pat.asc")[0] == 0
    [imported] = key_records(cfg)
    assert imported["file"] == str(tmp_path.resolve() / "pat.asc")
