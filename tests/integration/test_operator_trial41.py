"""Operator trials 41/44, replayed: a full store, a second key for one address."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from securemail.deliveries import DeliveryLedger
from securemail.errors import StoreError
from securemail.in_flight import ThreadSafeLedger
from securemail.model import Status
from securemail.store.sqlite import describe_fault, open_database
from tests.integration.crypto_fixtures import pgpy_secret_key

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)


def securemail(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "securemail", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def test_a_second_key_for_an_address_is_pointed_out_at_import(tmp_path: Path) -> None:
    # A client's laptop was lost: the new key is imported, the old one still gets
    # every copy. Before, the import said nothing about the old key.
    (tmp_path / "securemail.toml").write_text('[storage]\nurl = "sqlite:store.db"\n')
    (tmp_path / "old.asc").write_bytes(pgpy_secret_key("Ed", "ed@mail.example")[0])
    (tmp_path / "new.asc").write_bytes(pgpy_secret_key("Ed", "ed@mail.example")[0])
    first = securemail("keys", "import", "old.asc", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "note:" not in first.stdout
    second = securemail("keys", "import", "new.asc", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    old_fpr = first.stdout.split()[2]
    assert (f"note: ed@mail.example now has 2 usable pgp keys; each copy is encrypted to all"
            f" of them. If {old_fpr} is an old or lost key, remove it:") in second.stdout


def _full_disk_ledger(tmp_path: Path) -> tuple[ThreadSafeLedger, sqlite3.Connection]:
    conn = open_database(tmp_path / "store.db")
    ledger = ThreadSafeLedger(conn)
    # The disk fills up: SQLite answers SQLITE_FULL (max_page_count is how
    # SQLite itself produces that error without a small filesystem).
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")
    return ledger, conn


def test_copies_the_full_store_cannot_note_are_kept_for_the_retry(tmp_path: Path,
                                                                  caplog) -> None:
    # Trial 41: the disk was full; upstream accepted a copy, neither the audit
    # log nor the ledger could note it, and the sender's retry sent it again.
    ledger, conn = _full_disk_ledger(tmp_path)
    digest = "ab" * 32
    with pytest.raises(StoreError) as caught:
        ledger.record(digest, {f"r{i}-{'x' * 200}@mail.example": Status.DELIVERED
                               for i in range(200)}, NOW, {"r1@mail.example": "p-1"})
    assert "disk full" in str(caught.value)
    assert "kept in this process's memory" in caplog.text
    assert "disk full" in caplog.text
    done = ledger.completed(digest)
    assert len(done) == 200 and set(done.values()) == {Status.DELIVERED}
    assert ledger.portal_ids(digest) == {"r1@mail.example": "p-1"}
    # Space again: the retry delivered the rest; forgetting clears both.
    conn.execute("PRAGMA max_page_count=1073741823")
    ledger.forget(digest)
    assert ledger.completed(digest) == {}


def test_a_ledger_that_cannot_forget_keeps_what_it_knows(tmp_path: Path) -> None:
    ledger, conn = _full_disk_ledger(tmp_path)
    digest = "cd" * 32
    with pytest.raises(StoreError):
        ledger.record(digest, {f"r{i}-{'y' * 200}@mail.example": Status.DELIVERED
                               for i in range(200)}, NOW)
    conn.execute("PRAGMA query_only=ON")  # the store turned read-only
    with pytest.raises(StoreError):  # the sender retries; that retry sends nothing again
        ledger.forget(digest)
    assert len(ledger.completed(digest, NOW)) == 200  # still remembered


def test_ledger_rows_past_any_retry_window_stop_counting(tmp_path: Path) -> None:
    # Review 47: a row that was never cleared made identical bytes sent again
    # much later count as delivered, for good.
    ledger = DeliveryLedger(open_database(tmp_path / "w.db"))
    digest = "ee" * 32
    ledger.record(digest, {"a@mail.example": Status.DELIVERED}, NOW, {"a@mail.example": "p-1"})
    assert ledger.completed(digest, NOW + dt.timedelta(days=6)) == {
        "a@mail.example": Status.DELIVERED}
    assert ledger.portal_ids(digest, NOW + dt.timedelta(days=6)) == {"a@mail.example": "p-1"}
    later = NOW + dt.timedelta(days=8)
    assert ledger.completed(digest, later) == {} and ledger.portal_ids(digest, later) == {}
    ledger.record("ff" * 32, {"b@mail.example": Status.DELIVERED}, later)  # clears old rows
    assert ledger.conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 1


def test_store_faults_name_what_the_store_lacks(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db")
    conn.execute("PRAGMA query_only=ON")
    with pytest.raises(sqlite3.Error) as caught:
        conn.execute("CREATE TABLE t (x)")
    assert describe_fault(caught.value) == "OperationalError: read-only"
    assert describe_fault(OSError(28, "No space left on device")) == "No space left on device"
    assert describe_fault(ValueError("secret text")) == "ValueError"
    ledger = DeliveryLedger(open_database(tmp_path / "y.db"))
    ledger.conn.execute("PRAGMA query_only=ON")
    with pytest.raises(StoreError, match=r"cannot write the delivery ledger \(.*read-only\)"):
        ledger.record("ef" * 32, {"a@mail.example": Status.DELIVERED}, NOW)


def test_a_full_disk_is_named_not_hidden_by_the_rollback(tmp_path: Path) -> None:
    # SQLite ends the transaction itself on SQLITE_FULL; the ROLLBACK that
    # followed raised "no transaction is active", and the operator read only
    # "cannot append (OperationalError)".
    from securemail.audit.store import transaction as audit_transaction
    from securemail.store.sqlite import transaction

    for n, opener in enumerate((audit_transaction, transaction)):
        conn = open_database(tmp_path / f"{n}.db")
        conn.execute("CREATE TABLE t (x TEXT)")
        conn.execute(f"PRAGMA max_page_count={conn.execute('PRAGMA page_count').fetchone()[0]}")
        with pytest.raises(sqlite3.Error) as caught, opener(conn):
            conn.executemany("INSERT INTO t VALUES (?)", [("z" * 500,) for _ in range(50)])
        assert describe_fault(caught.value) == "OperationalError: disk full", opener


async def test_group_commit_reports_a_full_disk(tmp_path: Path) -> None:
    import threading

    from securemail.store.group_commit import GroupCommitter

    conn = open_database(tmp_path / "g.db")
    conn.execute("CREATE TABLE t (x TEXT)")
    conn.execute(f"PRAGMA max_page_count={conn.execute('PRAGMA page_count').fetchone()[0]}")
    committer = GroupCommitter(conn, threading.Lock(), name="t", what="portal store")
    try:
        with pytest.raises(StoreError, match=r"disk full"):
            await committer.run(lambda c: c.executemany(
                "INSERT INTO t VALUES (?)", [("z" * 500,) for _ in range(50)]))
    finally:
        committer.close()


async def test_a_nearly_full_disk_defers_new_mail_before_anything_leaves(
        tmp_path: Path, caplog) -> None:
    import smtplib

    from securemail.disk_space import SpaceCheck
    from tests.integration.relay_support import message, run_relay, start_upstream, write_config

    upstream = await start_upstream()
    r = await run_relay(write_config(tmp_path, upstream_url=f"smtp://127.0.0.1:{upstream.port}"))
    free = {"bytes": 1 * 1024 * 1024}  # what statvfs would say: 1 MiB left
    relay = r.relay
    relay.space = SpaceCheck(relay._space_folders, lambda: 25 * 1024 * 1024,
                             measure=lambda _folder: free["bytes"],
                             clock=iter(range(1000)).__next__)  # a second passes per check
    raw = message(subject="rota")
    try:
        def send() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", r.port, timeout=30) as client:
                client.ehlo("client.test")
                client.mail("dr@riverside.example")
                client.rcpt("colleague@riverside.example")
                return client.data(raw)

        code, text = await asyncio.to_thread(send)
        assert (code, text[:5]) == (452, b"4.3.1"), text
        assert upstream.messages == []  # nothing left
        assert "new messages are deferred (452)" in caplog.text
        assert "1 MiB free, 25 MiB needed" in caplog.text
        store_dir = str(Path(relay.settings.storage.sqlite_path).resolve().parent)
        assert store_dir in caplog.text  # the folder at fault is named
        free["bytes"] = 10 * 1024 ** 3  # space again
        code, _ = await asyncio.to_thread(send)
        assert code == 250 and len(upstream.messages) == 1
    finally:
        await r.stop()
        await upstream.stop()


def _store_with_records(folder: Path) -> Path:
    """A config and store with a few message records, made by the real CLI."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "securemail.toml").write_text('[storage]\nurl = "sqlite:store.db"\n')
    (folder / "k.asc").write_bytes(pgpy_secret_key("Ed", "ed@mail.example")[0])
    done = securemail("keys", "import", "k.asc", cwd=folder)  # an audited admin change
    assert done.returncode == 0, done.stderr
    return folder / "securemail.toml"


def test_the_read_commands_change_nothing_in_the_store(tmp_path: Path) -> None:
    cfg = _store_with_records(tmp_path / "live")
    db = tmp_path / "live" / "store.db"
    before = db.read_bytes()
    for command in (("audit", "verify"), ("audit", "export"), ("audit", "report", "-o",
                                                                str(tmp_path / "r.html"))):
        done = securemail(*command, "-c", str(cfg), cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr)
    assert db.read_bytes() == before
    wal = db.with_name("store.db-wal")  # SQLite may make an empty one to read
    assert not wal.exists() or wal.stat().st_size == 0


@pytest.fixture
def read_only_mount(tmp_path: Path):
    """A tmpfs that can be remounted read-only (root only; skipped otherwise)."""
    import os
    import shutil

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a read-only filesystem")
    where = tmp_path / "media"
    where.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)],
                          capture_output=True, timeout=30, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount here: {made.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30,
                       check=False)


def test_a_backup_on_read_only_media_verifies_and_exports(tmp_path: Path,
                                                          read_only_mount: Path) -> None:
    # Trial 41: verify/export/report of a snapshot on read-only media exited 1
    # ("cannot open the store (OperationalError)"), which means "tampered".
    import shutil

    cfg = _store_with_records(tmp_path / "live")
    copy = read_only_mount / "backup"
    shutil.copytree(cfg.parent, copy)
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_mount)], check=True,
                   capture_output=True, timeout=30)
    verify = securemail("audit", "verify", "-c", str(copy / "securemail.toml"), cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr + verify.stdout
    export = securemail("audit", "export", "-c", str(copy / "securemail.toml"), cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    assert '"key-import"' in export.stdout
    check = securemail("config", "check", "-c", str(copy / "securemail.toml"), cwd=tmp_path)
    assert "mounted read-only" in check.stdout + check.stderr


def test_commands_in_the_demo_folder_say_where_its_config_is(tmp_path: Path) -> None:
    # Trial 41: `serve` found the demo's config, `audit verify` beside it said
    # only "securemail.toml: file not found".
    (tmp_path / "securemail-data").mkdir()
    (tmp_path / "securemail-data" / "securemail.toml").write_text("")
    done = securemail("audit", "verify", cwd=tmp_path)
    assert done.returncode == 2
    assert "-c securemail-data/securemail.toml" in done.stderr
    elsewhere = securemail("audit", "verify", cwd=tmp_path / "securemail-data")
    assert "securemail-data/securemail.toml" not in elsewhere.stderr


def test_config_check_points_out_a_store_others_can_read(tmp_path: Path) -> None:
    # Trial 41: a store made by an old version (0644) kept its mode after the
    # upgrade, while new stores are 0600.
    cfg = _store_with_records(tmp_path / "old")
    db = tmp_path / "old" / "store.db"
    assert securemail("config", "check", "-c", str(cfg), cwd=tmp_path).stdout.count(
        "can be read by other users") == 0
    db.chmod(0o644)
    done = securemail("config", "check", "-c", str(cfg), cwd=tmp_path)
    assert f"{db} can be read by other users (mode 644)" in done.stdout + done.stderr
    assert f"chmod 600 {db}" in done.stdout + done.stderr


def test_directory_import_points_out_entries_read_differently(tmp_path: Path) -> None:
    # Review 45: a partner's address that is also a client's, one-word names and
    # names two clients share were taken silently.
    (tmp_path / "securemail.toml").write_text(
        '[practice]\ndomains = ["riverside.example"]\n[storage]\nurl = "sqlite:store.db"\n')
    (tmp_path / "d.csv").write_text(
        "kind,id,name,addresses,domains,contacts,consent_granted,consent_warning,"
        "consent_expires,names\n"
        "client,c-1,,lee.md@gmail.example,,,,,,Lee Park\n"
        "client,c-2,,grace@mail.example,,,,,,Grace\n"
        "client,c-3,,m1@mail.example,,,,,,Maria Garcia\n"
        "client,c-4,,m2@mail.example,,,,,,maria  garcia\n"
        "partner,,Dr Lee Psychiatry,lee.md@gmail.example,,,,,,\n")
    done = securemail("directory", "import", "d.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stdout.splitlines() if line.startswith("note: ")]
    assert notes == [
        "note: lee.md@gmail.example is client c-1's address and also partner Dr Lee"
        " Psychiatry's: it is treated as the client's (only that client's mail may go to it)",
        "note: client c-2: the one-word name 'grace' can be any word, so it makes no message"
        " a client's; give the full name",
        "note: clients c-3, c-4 share the name 'maria garcia': a message naming it may go to"
        " either of them",
    ], done.stdout


def test_config_check_reads_a_store_whose_path_has_a_hash(tmp_path: Path) -> None:
    # Review 47: "file:{path}?mode=ro" unquoted: for ".../a#b/store.db" SQLite
    # opened ".../a" (creating an empty file) and the signing-key check passed.
    cfg = _store_with_records(tmp_path / "a#b")
    key = next((tmp_path / "a#b").glob("audit-signing*"))
    key.write_bytes(b"not a key")
    done = securemail("config", "check", "-c", str(cfg), cwd=tmp_path)
    assert done.returncode != 0, done.stdout
    assert not (tmp_path / "a").exists()
