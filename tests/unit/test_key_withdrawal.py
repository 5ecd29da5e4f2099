"""Withdrawing a key by re-importing it, and refusals that name the real problem."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from securemail.crypto.pgp import parse_public_keys
from securemail.errors import InputError
from securemail.keys import Keyring, KeyWithdrawn
from securemail.store.sqlite import open_database
from tests.integration.crypto_fixtures import Gpg, pgpy_secret_key, smime_identity

# Taken at collection; gpg makes keys later in the run, so NOW must lie after every
# key's creation time however long the suite runs before these tests.
NOW = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


@pytest.fixture
def ring(tmp_path: Path) -> Keyring:
    return Keyring(open_database(tmp_path / "keys.db"))


@pytest.fixture(scope="module")
def gpg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gpg]:
    g = Gpg.create(tmp_path_factory.mktemp("gnupg") / "home")
    # Shortened expiry: exported before and after "gpg --quick-set-expire ... 1d".
    shrink = g.gen("Shrink <shrink@example.org>", "ed25519", "cert")
    g.add_subkey(shrink, "cv25519", "encr")
    (g.home / "shrink-before.asc").write_bytes(g.export(shrink))
    time.sleep(1.1)  # a self-signature of the same second could not be told from the first
    g.run("--quick-set-expire", shrink, "1d")
    (g.home / "shrink-after.asc").write_bytes(g.export(shrink))
    # Extended expiry: the stored copy is newer than the file imported later.
    ext = g.gen("Ext <ext@example.org>", "ed25519", "cert", "1d")
    g.add_subkey(ext, "cv25519", "encr")
    (g.home / "ext-old.asc").write_bytes(g.export(ext))
    time.sleep(1.1)  # the same: "newer" is by signature time, in seconds
    g.run("--quick-set-expire", ext, "2y")
    (g.home / "ext-new.asc").write_bytes(g.export(ext))
    g.gen("Brain <brain@example.org>", "brainpoolP256r1", "default")
    (g.home / "brain.asc").write_bytes(g.export(g.fingerprint("brain@example.org")))
    yield g
    g.close()


def _subkey_revoked_copy() -> tuple[bytes, bytes]:
    """(public key, the same key after its owner revoked the encryption subkey)."""
    from pgpy import PGPKey
    from pgpy.constants import SignatureType

    public, secret = pgpy_secret_key("Rita", "rita@mail.example")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key, _ = PGPKey.from_blob(secret)
        sub = next(iter(key.subkeys.values()))
        sub |= key.revoke(sub, sigtype=SignatureType.SubkeyRevocation)
        return public, str(key.pubkey).encode()


def test_revoking_the_encryption_subkey_removes_the_stored_copy(ring: Keyring,
                                                                tmp_path: Path) -> None:
    before, after = _subkey_revoked_copy()
    (tmp_path / "rita.asc").write_bytes(before)
    (tmp_path / "rita-revoked.asc").write_bytes(after)
    [key] = ring.import_file(tmp_path / "rita.asc", NOW)
    assert ring.usable_kinds("rita@mail.example", NOW) == {"pgp"}

    with pytest.raises(KeyWithdrawn) as caught:
        ring.import_file(tmp_path / "rita-revoked.asc", NOW)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'rita-revoked.asc'}: ")
    assert "its encryption subkey is revoked (the stored copy was removed)" in message
    assert caught.value.removed == (key.fingerprint,)
    assert isinstance(caught.value, InputError)  # the CLI still reports it and exits 2
    # Mail no longer goes to the revoked subkey: no usable key, nothing listed.
    assert ring.usable_kinds("rita@mail.example", NOW) == frozenset()
    assert ring.pgp_keys("rita@mail.example", NOW) == []
    assert ring.list(NOW) == []


def test_shortened_expiry_removes_the_stored_copy(gpg: Gpg, ring: Keyring) -> None:
    [key] = ring.import_file(gpg.home / "shrink-before.asc", NOW)
    later = NOW + 2 * DAY
    assert key.expires is None and ring.usable_kinds("shrink@example.org", later) == {"pgp"}
    with pytest.raises(KeyWithdrawn, match=r"shrink-after\.asc: OpenPGP key [0-9A-F]{40} "
                       r"expired on \d{4}-\d\d-\d\d \(the stored copy was removed\)"):
        ring.import_file(gpg.home / "shrink-after.asc", later)
    assert ring.usable_kinds("shrink@example.org", later) == frozenset()
    assert ring.list(later) == []


def test_an_older_copy_does_not_remove_a_newer_stored_key(gpg: Gpg, ring: Keyring) -> None:
    ring.import_file(gpg.home / "ext-new.asc", NOW)
    later = NOW + 2 * DAY
    with pytest.raises(InputError, match="expired on .* is newer and was kept") as caught:
        ring.import_file(gpg.home / "ext-old.asc", later)
    assert not isinstance(caught.value, KeyWithdrawn)
    assert ring.usable_kinds("ext@example.org", later) == {"pgp"}


def test_refusing_a_key_that_was_never_stored_removes_nothing(ring: Keyring,
                                                              tmp_path: Path) -> None:
    _, after = _subkey_revoked_copy()
    (tmp_path / "revoked.asc").write_bytes(after)
    with pytest.raises(InputError, match="its encryption subkey is revoked$") as caught:
        ring.import_file(tmp_path / "revoked.asc", NOW)
    assert not isinstance(caught.value, KeyWithdrawn)


def test_expired_key_is_refused_as_expired(gpg: Gpg, tmp_path: Path) -> None:
    """PGPy fails every signature of an expired key; the reason must still be the expiry."""
    [key] = parse_public_keys((gpg.home / "shrink-after.asc").read_bytes())
    assert key.expires is not None and key.addresses == ("shrink@example.org",)
    problem = key.problem(key.expires + DAY)
    assert problem == f"OpenPGP key {key.fingerprint} expired on {key.expires:%Y-%m-%d}"


def test_brainpool_key_is_refused_naming_the_curve(gpg: Gpg, ring: Keyring) -> None:
    with pytest.raises(InputError) as caught:
        ring.import_file(gpg.home / "brain.asc", NOW)
    assert "uses an elliptic curve we cannot use (brainpoolP256r1)" in str(caught.value)
    assert "self-signed user id" not in str(caught.value)
    assert ring.list(NOW) == []


# ----------------------------------------------------------------- S/MIME


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_rsa_pss_certificate_is_refused(ring: Keyring, tmp_path: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa-pss", "-pkeyopt", "rsa_keygen_bits:2048",
         "-nodes", "-keyout", str(tmp_path / "pss.key"), "-out", str(tmp_path / "pss.pem"),
         "-days", "30", "-subj", "/CN=pss/emailAddress=pss@mail.example",
         "-addext", "subjectAltName=email:pss@mail.example",
         "-addext", "extendedKeyUsage=emailProtection",
         "-addext", "keyUsage=critical,digitalSignature,keyEncipherment"],
        check=True, capture_output=True, timeout=60)
    cert = x509.load_pem_x509_certificate((tmp_path / "pss.pem").read_bytes())
    assert cert.public_key_algorithm_oid.dotted_string == "1.2.840.113549.1.1.10"
    with pytest.raises(InputError) as caught:
        ring.import_file(tmp_path / "pss.pem", NOW)
    assert "RSA-PSS keys are for signatures only" in str(caught.value)
    assert "ask for an rsaEncryption certificate" in str(caught.value)
    assert ring.usable_kinds("pss@mail.example", NOW) == frozenset()
    assert ring.list(NOW) == []


def test_ordinary_rsa_certificate_still_imports(ring: Keyring, tmp_path: Path) -> None:
    ident = smime_identity("sam@mail.example")
    (tmp_path / "sam.pem").write_bytes(ident.cert_pem)
    [key] = ring.import_file(tmp_path / "sam.pem", NOW)
    assert key.algorithm == "RSA-2048"
    assert ring.smime_certs("sam@mail.example", NOW) == [ident.cert]


def test_an_ec_certificate_is_refused_in_plain_words(ring: Keyring, tmp_path: Path) -> None:
    (tmp_path / "ec.pem").write_bytes(smime_identity("ec@mail.example", use_ec=True).cert_pem)
    with pytest.raises(InputError, match=r"holds a key of type EC \(secp256r1\); S/MIME "
                       r"encryption here needs an RSA certificate"):
        ring.import_file(tmp_path / "ec.pem", NOW)


def test_the_cli_audits_a_key_withdrawn_by_reimport(tmp_path: Path) -> None:
    import json
    import sqlite3

    from click.testing import CliRunner

    from securemail.cli.keys_cmd import keys_group
    from tests.unit.test_audit_support import write_config

    cfg = write_config(tmp_path)
    before, after = _subkey_revoked_copy()
    (tmp_path / "rita.asc").write_bytes(before)
    (tmp_path / "rita-revoked.asc").write_bytes(after)
    runner = CliRunner()
    assert runner.invoke(keys_group, ["import", str(tmp_path / "rita.asc"), "-c",
                                      str(cfg)]).exit_code == 0
    result = runner.invoke(keys_group, ["import", str(tmp_path / "rita-revoked.asc"), "-c",
                                        str(cfg)])
    assert result.exit_code == 2 and "the stored copy was removed" in result.output
    with sqlite3.connect(tmp_path / "store.db") as db:
        kinds = [json.loads(b) for (b,) in db.execute(
            "SELECT body FROM audit_records WHERE kind IN ('key-import', 'key-remove')"
            " ORDER BY seq")]
    assert [k["kind"] for k in kinds] == ["key-import", "key-remove"]
    assert kinds[1]["reason_code"] == "withdrawn-by-reimport"
    assert kinds[1]["fingerprint"] == kinds[0]["fingerprint"]


def _ca_certificate() -> x509.Certificate:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Practice CA")])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY).not_valid_after(now + 365 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))


@pytest.mark.parametrize("form", ["chain-pem", "p7b-pem", "p7b-der"])
def test_a_certificate_with_its_ca_imports_the_recipient_certificate(
        ring: Keyring, tmp_path: Path, form: str) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

    ident = smime_identity("sam@mail.example")
    ca = _ca_certificate()
    data = {"chain-pem": ident.cert_pem + ca.public_bytes(Encoding.PEM),
            "p7b-pem": pkcs7.serialize_certificates([ident.cert, ca], Encoding.PEM),
            "p7b-der": pkcs7.serialize_certificates([ident.cert, ca], Encoding.DER)}[form]
    (tmp_path / "sam.bundle").write_bytes(data)
    [key] = ring.import_file(tmp_path / "sam.bundle", NOW)
    assert key.addresses == ("sam@mail.example",)
    assert ring.smime_certs("sam@mail.example", NOW) == [ident.cert]
