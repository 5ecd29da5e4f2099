"""Key import edge cases: every armored block, revocations that
stay final, bare-address user ids, pasted armor, revocation certificates, 0x ids."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from securemail.errors import InputError
from securemail.keys import Keyring, KeyWithdrawn
from securemail.store.sqlite import open_database
from tests.integration.crypto_fixtures import Gpg

# Taken at collection; gpg makes keys later in the run, so NOW must lie after every
# key's creation time however long the suite runs before these tests.
NOW = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)

# The key store's tables as they were before revocations were recorded.
OLD_SCHEMA = """
CREATE TABLE keyring_keys (
    fingerprint  TEXT PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('pgp', 'smime')),
    material     BLOB NOT NULL, algorithm TEXT NOT NULL, usable_from INTEGER NOT NULL,
    usable_until INTEGER, imported_at INTEGER NOT NULL);
CREATE TABLE keyring_addresses (
    address TEXT NOT NULL,
    fingerprint TEXT NOT NULL REFERENCES keyring_keys(fingerprint) ON DELETE CASCADE,
    PRIMARY KEY (address, fingerprint));
"""


@pytest.fixture(scope="module")
def gpg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gpg]:
    g = Gpg.create(tmp_path_factory.mktemp("gnupg") / "home")
    h = g.home
    a = g.gen("A <a@client.example>", "future-default")
    (h / "a.asc").write_bytes(g.export(a))
    for who in ("b", "c"):
        fpr = g.gen(f"{who.upper()} <{who}@client.example>", "future-default")
        (h / f"{who}-before.asc").write_bytes(g.export(fpr))
        g.revoke(fpr)
        (h / f"{who}-revoked.asc").write_bytes(g.export(fpr))
    # A revocation certificate, as gpg keeps it (with its safety colon) and as sent.
    r = g.gen("R <r@client.example>", "future-default")
    (h / "r.asc").write_bytes(g.export(r))
    disabled = (h / "openpgp-revocs.d" / f"{r}.rev").read_bytes()
    (h / "r-revocs-d.rev").write_bytes(disabled)
    (h / "r-revocation.asc").write_bytes(disabled.replace(b":-----BEGIN", b"-----BEGIN"))
    # A key whose newest encryption subkey its owner revoked (lost laptop).
    s = g.gen("S <s@client.example>", "ed25519", "sign")
    g.add_subkey(s, "cv25519", "encr")
    time.sleep(1.1)  # the RSA subkey is the newer one, the one encryption would pick
    g.add_subkey(s, "rsa3072", "encr")
    (h / "s-old.asc").write_bytes(g.export(s))
    time.sleep(1.1)  # the revocation is signed after the old copy's newest signature
    g.run("--command-fd", "0", "--edit-key", s,
          input=b"key 2\nrevkey\ny\n0\n\ny\nsave\n")
    (h / "s-subkey-revoked.asc").write_bytes(g.export(s))
    g.gen("bare@client.example", "future-default")
    (h / "bare.asc").write_bytes(g.export(g.fingerprint("bare@client.example")))
    g.gen("<angle@client.example>", "future-default")
    (h / "angle.asc").write_bytes(g.export(g.fingerprint("angle@client.example")))
    yield g
    g.close()


@pytest.fixture
def ring(tmp_path: Path) -> Keyring:
    return Keyring(open_database(tmp_path / "keys.db"))


def _cat(tmp_path: Path, name: str, *parts: Path) -> Path:
    out = tmp_path / name
    out.write_bytes(b"".join(p.read_bytes() for p in parts))
    return out


def _subkey_ids(gpg: Gpg, address: str) -> list[str]:
    """Key ids of the subkeys of ``address``'s key, in gpg's order."""
    out = gpg.run("--with-colons", "--list-keys", address).stdout.decode()
    return [line.split(":")[4] for line in out.splitlines() if line.startswith("sub")]


# ------------------------------------------------- 1: every armored block is read


def test_every_armored_block_of_a_file_is_imported(gpg: Gpg, ring: Keyring,
                                                   tmp_path: Path) -> None:
    both = _cat(tmp_path, "both.asc", gpg.home / "a.asc", gpg.home / "bare.asc")
    imported = ring.import_file(both, NOW)
    assert sorted(a for k in imported for a in k.addresses) == ["a@client.example",
                                                                 "bare@client.example"]


def test_a_revoked_key_in_a_second_block_is_not_dropped(gpg: Gpg, ring: Keyring,
                                                        tmp_path: Path) -> None:
    ring.import_file(gpg.home / "b-before.asc", NOW)
    assert ring.usable_kinds("b@client.example", NOW) == {"pgp"}
    both = _cat(tmp_path, "a-plus-b.asc", gpg.home / "a.asc", gpg.home / "b-revoked.asc")
    with pytest.raises(KeyWithdrawn, match="is revoked .the stored copy was removed.$"):
        ring.import_file(both, NOW)
    assert ring.usable_kinds("b@client.example", NOW) == frozenset()
    assert ring.list(NOW) == []  # all or nothing: A, in the same file, is not imported


def test_every_revocation_in_a_file_is_applied(gpg: Gpg, ring: Keyring, tmp_path: Path) -> None:
    ring.import_file(gpg.home / "b-before.asc", NOW)
    ring.import_file(gpg.home / "c-before.asc", NOW)
    both = _cat(tmp_path, "bc.asc", gpg.home / "b-revoked.asc", gpg.home / "c-revoked.asc")
    with pytest.raises(KeyWithdrawn) as caught:
        ring.import_file(both, NOW)
    assert len(caught.value.removed) == 2 and ring.list(NOW) == []


def test_binary_concatenated_keys_are_all_read(gpg: Gpg, ring: Keyring, tmp_path: Path) -> None:
    binary = tmp_path / "two.gpg"
    binary.write_bytes(gpg.run("--export", "a@client.example", "r@client.example").stdout)
    assert binary.read_bytes()[:1] != b"-"
    assert len(ring.import_file(binary, NOW)) == 2


# ------------------------------------------- 2: older copies never undo a revocation


def test_an_older_copy_does_not_undo_a_subkey_revocation(gpg: Gpg, ring: Keyring) -> None:
    cv25519, rsa = _subkey_ids(gpg, "s@client.example")
    ring.import_file(gpg.home / "s-subkey-revoked.asc", NOW)
    [chosen] = ring.pgp_keys("s@client.example", NOW)
    assert chosen.key_id == cv25519
    with pytest.raises(InputError, match=r"an older copy: the stored copy, signed .* is newer "
                       r"and was kept\)$") as caught:
        ring.import_file(gpg.home / "s-old.asc", NOW)
    assert not isinstance(caught.value, KeyWithdrawn)
    [chosen] = ring.pgp_keys("s@client.example", NOW)
    assert chosen.key_id == cv25519 and chosen.key_id != rsa  # never the revoked subkey


def test_a_revoked_key_does_not_come_back_with_an_older_copy(gpg: Gpg, ring: Keyring) -> None:
    ring.import_file(gpg.home / "b-before.asc", NOW)
    with pytest.raises(KeyWithdrawn):
        ring.import_file(gpg.home / "b-revoked.asc", NOW)
    with pytest.raises(InputError, match=r"b-before\.asc: OpenPGP key [0-9A-F]{40} was revoked,"
                       " and a revocation is final: this is an older copy; ask the owner"):
        ring.import_file(gpg.home / "b-before.asc", NOW)
    assert ring.usable_kinds("b@client.example", NOW) == frozenset()
    assert ring.list(NOW) == []


def test_a_subkey_revocation_is_final_after_the_key_was_removed(gpg: Gpg, ring: Keyring,
                                                                tmp_path: Path) -> None:
    ring.import_file(gpg.home / "s-subkey-revoked.asc", NOW)
    [fpr] = [k.fingerprint for k in ring.list(NOW)]
    assert ring.remove(fpr) == 1
    _, rsa = _subkey_ids(gpg, "s@client.example")
    with pytest.raises(InputError, match=f"predates the revocation of its subkey [0-9A-F]*{rsa}"):
        ring.import_file(gpg.home / "s-old.asc", NOW)
    assert ring.list(NOW) == []


def test_revocations_are_remembered_by_a_store_made_before_they_were(gpg: Gpg,
                                                                     tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
    conn = open_database(path)
    Keyring(conn).import_file(gpg.home / "b-before.asc", NOW)
    with pytest.raises(KeyWithdrawn):
        Keyring(conn).import_file(gpg.home / "b-revoked.asc", NOW)
    conn.close()
    ring = Keyring(open_database(path))  # a later run: nothing kept in memory
    with pytest.raises(InputError, match="a revocation is final"):
        ring.import_file(gpg.home / "b-before.asc", NOW)


# ------------------------------------------------------- 3: bare-address user ids


@pytest.mark.parametrize(("file", "address"), [("bare.asc", "bare@client.example"),
                                                ("angle.asc", "angle@client.example")])
def test_a_user_id_that_is_only_an_address_is_indexed(gpg: Gpg, ring: Keyring, file: str,
                                                       address: str) -> None:
    [key] = ring.import_file(gpg.home / file, NOW)
    assert key.addresses == (address,)
    assert ring.usable_kinds(address, NOW) == {"pgp"}


@pytest.mark.parametrize(("name", "expected"), [
    ("bare@client.example", "bare@client.example"),
    ("<angle@client.example>", "angle@client.example"),
    ("first.last+tag@sub.client.example", "first.last+tag@sub.client.example"),
    ("jörg@bücher.example", "jörg@bücher.example"),
    ("Bare bare@client.example", ""),
    ("<angle@client.example", ""),
    ("angle@client.example>", ""),
    ('"quoted"@client.example', ""),
    ("a@b@client.example", ""),
    ("a..b@client.example", ""),
    ("@client.example", ""),
    ("bare@", ""),
    ("bare@client.example ", ""),
    ("<<x@client.example>>", ""),
])
def test_only_an_exact_address_is_taken_from_a_user_id(name: str, expected: str) -> None:
    from securemail.crypto.pgp import _bare_address

    assert _bare_address(SimpleNamespace(name=name, email="", comment="")) == expected
    assert _bare_address(SimpleNamespace(name=name, email="", comment="work")) == ""


# --------------------------------------------------- 4: armor pasted with whitespace


def test_armor_with_trailing_whitespace_is_read(gpg: Gpg, ring: Keyring, tmp_path: Path) -> None:
    pasted = tmp_path / "pasted.asc"
    pasted.write_bytes(b"\r\n".join(line + b" \t  " for line in
                                    (gpg.home / "a.asc").read_bytes().splitlines()))
    [key] = ring.import_file(pasted, NOW)
    assert key.addresses == ("a@client.example",)


def test_damaged_armor_is_refused_by_its_checksum(gpg: Gpg, ring: Keyring,
                                                  tmp_path: Path) -> None:
    lines = (gpg.home / "a.asc").read_bytes().splitlines()
    row = next(i for i, line in enumerate(lines) if len(line) == 64)
    lines[row] = lines[row][:10] + (b"A" if lines[row][10:11] != b"A" else b"B") + lines[row][11:]
    damaged = tmp_path / "damaged.asc"
    damaged.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(InputError, match=r"damaged\.asc: .* is damaged \(its checksum"):
        ring.import_file(damaged, NOW)


# ------------------------------------------------------- 8: revocation certificates


def test_a_revocation_certificate_revokes_the_stored_key_for_good(gpg: Gpg, ring: Keyring
                                                                  ) -> None:
    [key] = ring.import_file(gpg.home / "r.asc", NOW)
    with pytest.raises(KeyWithdrawn, match="is revoked by this revocation certificate "
                       r"\(the stored copy was removed\)") as caught:
        ring.import_file(gpg.home / "r-revocation.asc", NOW)
    assert caught.value.requested and caught.value.removed == (key.fingerprint,)
    assert ring.usable_kinds("r@client.example", NOW) == frozenset()
    with pytest.raises(InputError, match="a revocation is final"):
        ring.import_file(gpg.home / "r.asc", NOW)


def test_a_revocation_certificate_for_an_unknown_key_changes_nothing(gpg: Gpg,
                                                                     ring: Keyring) -> None:
    ring.import_file(gpg.home / "a.asc", NOW)
    with pytest.raises(InputError, match="a revocation certificate for OpenPGP key [0-9A-F]{40},"
                       " which is not stored here: nothing was changed") as caught:
        ring.import_file(gpg.home / "r-revocation.asc", NOW)
    assert not isinstance(caught.value, KeyWithdrawn)
    assert len(ring.list(NOW)) == 1


def test_gpgs_disabled_revocation_certificate_is_named(gpg: Gpg, ring: Keyring) -> None:
    ring.import_file(gpg.home / "r.asc", NOW)
    with pytest.raises(InputError, match=r"r-revocs-d\.rev: this is a revocation certificate "
                       "from GnuPG, still disabled by the colon"):
        ring.import_file(gpg.home / "r-revocs-d.rev", NOW)
    assert ring.usable_kinds("r@client.example", NOW) == {"pgp"}


def test_the_cli_applies_a_revocation_certificate(gpg: Gpg, tmp_path: Path) -> None:
    from securemail.cli.keys_cmd import keys_group
    from tests.unit.test_audit_support import write_config

    cfg = write_config(tmp_path)
    runner = CliRunner()
    ok = runner.invoke(keys_group, ["import", str(gpg.home / "r.asc"), "-c", str(cfg)])
    assert ok.exit_code == 0, ok.output
    result = runner.invoke(keys_group, ["import", str(gpg.home / "r-revocation.asc"),
                                        "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "is revoked by this revocation certificate (the stored copy was removed)" \
        in result.stdout
    with sqlite3.connect(tmp_path / "store.db") as db:
        bodies = [json.loads(b) for (b,) in db.execute(
            "SELECT body FROM audit_records WHERE kind = 'key-remove'")]
    assert [b["reason_code"] for b in bodies] == ["revocation-certificate"]
    listed = runner.invoke(keys_group, ["list", "-c", str(cfg)])
    assert "no keys stored" in listed.output


# ------------------------------------------------------------------ 9: 0x key ids


def test_remove_accepts_a_0x_key_id(gpg: Gpg, ring: Keyring) -> None:
    [key] = ring.import_file(gpg.home / "a.asc", NOW)
    assert ring.remove("0x" + key.fingerprint[-16:].lower()) == 1
    ring.import_file(gpg.home / "a.asc", NOW)
    assert ring.remove("0X" + key.fingerprint) == 1
    with pytest.raises(InputError, match="neither an address nor a key fingerprint"):
        ring.remove("0x")


def test_a_file_of_many_armored_blocks_is_read_in_linear_time(ring: Keyring,
                                                                tmp_path: Path) -> None:
    # Each block read once (it used to re-split the rest of the file per block:
    # about 15 s for this one).
    path = tmp_path / "many.asc"
    path.write_bytes(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n"
                     b"-----END PGP PUBLIC KEY BLOCK-----\n" * 20000)
    started = time.monotonic()
    with pytest.raises(InputError):
        ring.import_file(path, NOW)
    assert time.monotonic() - started < 5


def test_a_file_far_larger_than_any_key_is_refused_unread(ring: Keyring, tmp_path: Path) -> None:
    path = tmp_path / "backup.tar"
    with path.open("wb") as f:
        f.truncate(17 * 1024 * 1024)
    with pytest.raises(InputError, match=r"backup\.tar: larger than 16 MiB"):
        ring.import_file(path, NOW)
