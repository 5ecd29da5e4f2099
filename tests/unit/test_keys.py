"""The key store: what gets in, what is refused (one line naming the file), expiry, CLI."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from securemail.cli.base import cli
from securemail.cli.keys_cmd import commands
from securemail.errors import InputError
from securemail.keys import ImportedKey, Keyring
from securemail.store.sqlite import open_database
from tests.integration.crypto_fixtures import Gpg, pgpy_secret_key, smime_identity

# A minute ahead: keys made during the tests must already exist at NOW.
# Taken at collection; gpg makes keys later in the run, so NOW must lie after every
# key's creation time however long the suite runs before these tests.
NOW = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
YEAR = dt.timedelta(days=365)


@pytest.fixture(scope="module")
def gpg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gpg]:
    g = Gpg.create(tmp_path_factory.mktemp("gnupg") / "home")
    ed = g.gen("Alice <Alice@Example.ORG>", "ed25519", "cert", "1y")
    g.add_subkey(ed, "cv25519", "encr", "1y")
    g.run("--quick-add-uid", ed, "Alice Work <alice@work.example>")
    g.gen("Signer <signer@example.org>", "rsa3072", "cert")  # no encryption subkey
    g.gen("Small <small@example.org>", "rsa1024", "default")
    weak_sub = g.gen("Weak Sub <weaksub@example.org>", "ed25519", "cert")
    g.add_subkey(weak_sub, "rsa1024", "encr")
    g.gen("Old <old@example.org>", "dsa2048", "default")
    g.run("--cert-digest-algo", "SHA1", "--quick-gen-key", "Sha <sha1@example.org>",
          "ed25519", "cert", "never")
    g.add_subkey(g.fingerprint("sha1@example.org"), "cv25519", "encr")
    revoked = g.gen("Gone <gone@example.org>", "future-default", "default")
    (g.home / "gone-before.asc").write_bytes(g.export(revoked))
    g.revoke(revoked)
    for who in ("alice@example.org", "signer", "small", "weaksub", "old", "sha1", "gone"):
        (g.home / f"{who.split('@')[0]}.asc").write_bytes(g.export(g.fingerprint(who)))
    yield g
    g.close()


@pytest.fixture
def ring(tmp_path: Path) -> Keyring:
    return Keyring(open_database(tmp_path / "keys.db"))


def test_gpg_key_indexes_every_user_id_normalised(gpg: Gpg, ring: Keyring) -> None:
    [key] = ring.import_file(gpg.home / "alice.asc", NOW)
    assert key.kind == "pgp" and key.algorithm == "Ed25519/ECDH-Curve25519"
    assert set(key.addresses) == {"alice@example.org", "alice@work.example"}
    assert ring.usable_kinds("alice@example.org", NOW) == {"pgp"}
    assert ring.usable_kinds("alice@work.example", NOW) == {"pgp"}
    assert ring.usable_kinds("bob@example.org", NOW) == frozenset()
    [recipient] = ring.pgp_keys("alice@example.org", NOW)
    assert recipient.fingerprint == key.fingerprint
    assert recipient.key_id != key.fingerprint[-16:]  # the cv25519 subkey, not the primary


def test_key_stops_being_used_at_its_expiry(gpg: Gpg, ring: Keyring) -> None:
    [key] = ring.import_file(gpg.home / "alice.asc", NOW)
    assert key.expires is not None and NOW + 300 * dt.timedelta(days=1) < key.expires
    just_before = key.expires - dt.timedelta(seconds=1)
    assert ring.usable_kinds("alice@example.org", just_before) == {"pgp"}
    assert ring.usable_kinds("alice@example.org", key.expires) == frozenset()
    assert ring.pgp_keys("alice@example.org", key.expires) == []
    [info] = ring.list(key.expires)
    assert info.usable is False and info.expires == key.expires.replace(microsecond=0)


def test_pgpy_made_key_imports(tmp_path: Path, ring: Keyring) -> None:
    public, _ = pgpy_secret_key("Pat", "pat@mail.example")
    (tmp_path / "pat.asc").write_bytes(public)
    [key] = ring.import_file(tmp_path / "pat.asc", NOW)
    assert key.addresses == ("pat@mail.example",) and key.expires is None
    assert ring.usable_kinds("pat@mail.example", NOW + 50 * YEAR) == {"pgp"}


@pytest.mark.parametrize(("file", "reason"), [
    ("signer.asc", "no encryption-capable (sub)key"),
    ("small.asc", "key is RSA-1024 (at least 2048 bits needed)"),
    ("weaksub.asc", "encryption subkey is RSA-1024"),
    ("old.asc", "obsolete algorithm DSA"),
    ("sha1.asc", "user id is signed with obsolete SHA1"),
    ("gone.asc", "is revoked"),
])
def test_unusable_pgp_keys_are_refused_with_one_line(gpg: Gpg, ring: Keyring, file: str,
                                                     reason: str) -> None:
    with pytest.raises(InputError) as caught:
        ring.import_file(gpg.home / file, NOW)
    message = str(caught.value)
    assert message.startswith(f"{gpg.home / file}: ") and reason in message
    assert "\n" not in message
    assert ring.list(NOW) == []


def test_expired_key_is_refused(gpg: Gpg, ring: Keyring) -> None:
    with pytest.raises(InputError, match=r"alice\.asc: OpenPGP key [0-9A-F]{40} expired on"):
        ring.import_file(gpg.home / "alice.asc", NOW + 2 * YEAR)


def test_revocation_imported_later_removes_the_stored_key(gpg: Gpg, ring: Keyring) -> None:
    ring.import_file(gpg.home / "gone-before.asc", NOW)
    assert ring.usable_kinds("gone@example.org", NOW) == {"pgp"}
    with pytest.raises(InputError, match="revoked .the stored copy was removed"):
        ring.import_file(gpg.home / "gone.asc", NOW)
    assert ring.usable_kinds("gone@example.org", NOW) == frozenset()


def test_secret_keys_and_garbage_are_refused(gpg: Gpg, ring: Keyring, tmp_path: Path) -> None:
    secret = tmp_path / "secret.asc"
    secret.write_bytes(gpg.run("--armor", "--export-secret-keys",
                               gpg.fingerprint("alice@example.org")).stdout)
    with pytest.raises(InputError, match="secret key"):
        ring.import_file(secret, NOW)
    junk = tmp_path / "junk.txt"
    junk.write_bytes(b"hello")
    with pytest.raises(InputError, match="junk.txt: neither an OpenPGP public key nor"):
        ring.import_file(junk, NOW)
    with pytest.raises(InputError, match="missing.asc: cannot read"):
        ring.import_file(tmp_path / "missing.asc", NOW)
    assert ring.list(NOW) == []


def test_a_file_is_all_or_nothing(gpg: Gpg, ring: Keyring, tmp_path: Path) -> None:
    both = tmp_path / "both.asc"
    both.write_bytes(gpg.run("--armor", "--export", gpg.fingerprint("alice@example.org"),
                             gpg.fingerprint("signer@example.org")).stdout)
    with pytest.raises(InputError, match="no encryption-capable"):
        ring.import_file(both, NOW)
    assert ring.list(NOW) == []


def test_reimport_updates_instead_of_duplicating(gpg: Gpg, ring: Keyring) -> None:
    [first] = ring.import_file(gpg.home / "alice.asc", NOW)
    [again] = ring.import_file(gpg.home / "alice.asc", NOW)
    assert not first.replaced and again.replaced
    assert len(ring.list(NOW)) == 1


# ----------------------------------------------------------------- S/MIME


def test_smime_certificate_pem_and_der(ring: Keyring, tmp_path: Path) -> None:
    ident = smime_identity("Sam@Mail.Example")
    (tmp_path / "sam.pem").write_bytes(ident.cert_pem)
    [key] = ring.import_file(tmp_path / "sam.pem", NOW)
    assert key.kind == "smime" and key.addresses == ("sam@mail.example",)
    assert key.algorithm == "RSA-2048" and len(key.fingerprint) == 64
    assert ring.usable_kinds("sam@mail.example", NOW) == {"smime"}
    assert ring.smime_certs("sam@mail.example", NOW) == [ident.cert]
    # The same certificate as DER is the same key.
    (tmp_path / "sam.der").write_bytes(ident.cert.public_bytes(serialization.Encoding.DER))
    [again] = ring.import_file(tmp_path / "sam.der", NOW)
    assert again.replaced and again.fingerprint == key.fingerprint
    assert key.expires is not None
    assert ring.usable_kinds("sam@mail.example", key.expires) == frozenset()


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"eku": ExtendedKeyUsageOID.SERVER_AUTH}, "not valid for e-mail protection"),
    # No extendedKeyUsage at all is no restriction (RFC 8550 4.4.4): see test_keys_trial.
    ({"rsa_bits": 1024}, "is RSA-1024 (at least 2048 bits needed)"),
    ({"use_ec": True}, "needs an RSA certificate"),
    ({"days": 1}, "expired on"),
])
def test_unusable_certificates_are_refused(ring: Keyring, tmp_path: Path,
                                           kwargs: dict[str, object], reason: str) -> None:
    ident = smime_identity("x@mail.example", **kwargs)  # type: ignore[arg-type]
    path = tmp_path / "x.pem"
    path.write_bytes(ident.cert_pem)
    with pytest.raises(InputError) as caught:
        ring.import_file(path, NOW + dt.timedelta(days=2))
    assert str(caught.value).startswith(f"{path}: certificate ") and reason in str(caught.value)
    assert ring.list(NOW) == []


def test_private_key_in_pem_is_refused(ring: Keyring, tmp_path: Path) -> None:
    ident = smime_identity("x@mail.example")
    path = tmp_path / "bundle.pem"
    path.write_bytes(ident.cert_pem + ident.key_pem)
    with pytest.raises(InputError, match="private key"):
        ring.import_file(path, NOW)


# ----------------------------------------------------------------- remove


def test_remove_by_address_detaches_only_that_address(gpg: Gpg, ring: Keyring) -> None:
    [key] = ring.import_file(gpg.home / "alice.asc", NOW)
    assert ring.remove("Alice@Work.Example") == 1
    assert ring.usable_kinds("alice@work.example", NOW) == frozenset()
    assert ring.usable_kinds("alice@example.org", NOW) == {"pgp"}
    assert ring.remove("alice@example.org") == 1
    assert ring.list(NOW) == []  # no address left: the key is gone
    assert ring.remove("alice@example.org") == 0


def test_remove_by_fingerprint_or_long_key_id(gpg: Gpg, ring: Keyring) -> None:
    [key] = ring.import_file(gpg.home / "alice.asc", NOW)
    spaced = " ".join(key.fingerprint[i:i + 4] for i in range(0, 40, 4)).lower()
    assert ring.remove(spaced) == 1
    ring.import_file(gpg.home / "alice.asc", NOW)
    assert ring.remove(key.fingerprint[-16:]) == 1
    assert ring.list(NOW) == []
    with pytest.raises(InputError, match="neither an address nor a key fingerprint"):
        ring.remove("ABCD")


# ----------------------------------------------------------------- CLI


def run(*args: str) -> tuple[int, str, str]:
    from securemail.cli.audit_cmd import commands as audit_commands

    for command in [*commands, *audit_commands]:
        if command.name not in cli.commands:
            cli.add_command(command)
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cli_import_list_remove(gpg: Gpg, tmp_path: Path) -> None:
    config = tmp_path / "securemail.toml"
    config.write_text('[practice]\nname = "P"\ndomains = ["riverside.example"]\n\n'
                      '[storage]\nurl = "sqlite:data/securemail.db"\n')
    sam = smime_identity("sam@mail.example")
    (tmp_path / "sam.pem").write_bytes(sam.cert_pem)

    code, out, err = run("keys", "import", "-c", str(config), str(gpg.home / "alice.asc"),
                         str(gpg.home / "signer.asc"), str(tmp_path / "sam.pem"))
    assert code == 2  # signer.asc refused; the other two imported
    assert "signer.asc: OpenPGP key" in err and err.count("\n") == 1
    assert out.count("imported ") == 2

    code, out, _ = run("keys", "list", "--json", "-c", str(config))
    assert code == 0
    listed = {k["kind"]: k for k in json.loads(out)}
    assert listed["pgp"]["addresses"] == ["alice@example.org", "alice@work.example"]
    assert listed["pgp"]["usable"] is True and listed["pgp"]["expires"]
    assert listed["smime"]["addresses"] == ["sam@mail.example"]
    assert listed["smime"]["algorithm"] == "RSA-2048"

    code, out, _ = run("keys", "remove", "-c", str(config), listed["smime"]["fingerprint"])
    assert code == 0 and "removed 1 key" in out
    # Compliance can see when each key came in and went (fingerprints, never key material).
    code, out, _ = run("audit", "export", "-c", str(config))
    records = [json.loads(line) for line in out.splitlines()
               if listed["smime"]["fingerprint"] in line]
    assert code == 0 and len(records) == 2
    assert "key-import" in json.dumps(records[0]) and "key-remove" in json.dumps(records[1])
    assert records[0]["address"] == "sam@mail.example"
    code, _, err = run("keys", "remove", "-c", str(config), "nobody@mail.example")
    assert code == 1 and "no stored key matches" in err
    code, out, _ = run("keys", "list", "-c", str(config))
    assert code == 0 and "alice@example.org" in out and "sam@" not in out


@pytest.fixture(scope="module")
def alice_ring(gpg: Gpg, tmp_path_factory: pytest.TempPathFactory) -> tuple[Keyring, ImportedKey]:
    ring = Keyring(open_database(tmp_path_factory.mktemp("ring") / "keys.db"))
    [key] = ring.import_file(gpg.home / "alice.asc", NOW)
    return ring, key


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(min_value=-3 * 365 * 86400, max_value=3 * 365 * 86400))
def test_usable_exactly_inside_the_key_window(alice_ring: tuple[Keyring, ImportedKey],
                                              offset: int) -> None:
    ring, key = alice_ring
    assert key.expires is not None
    when = NOW + dt.timedelta(seconds=offset)
    created = key.expires - YEAR  # gpg "1y" = 365 days from creation
    assume(abs(when - created) > dt.timedelta(seconds=5))  # subkey made a moment later
    inside = created <= when < key.expires
    assert (ring.usable_kinds("alice@example.org", when) == {"pgp"}) is inside
    assert bool(ring.pgp_keys("alice@example.org", when)) is inside
