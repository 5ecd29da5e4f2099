"""The key that signs a store's chain: never silently replaced once records exist."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from securemail.audit import AuditLog, signing_key_path, store, verify_store
from securemail.audit.chain import ensure_signing_key, key_id
from securemail.audit.log import _STOP
from securemail.config import load_settings
from securemail.errors import ConfigError
from tests.unit.test_audit_support import T0, make_settings, record_messages, write_config


def _used_store(tmp_path: Path, *, checkpointed: bool = True) -> Path:
    settings = make_settings(tmp_path)
    audit = AuditLog.open(settings)
    record_messages(audit, 3)
    if checkpointed:
        audit.close(T0)  # writes the final checkpoint
    else:  # the writer stops as in a crash: records and signed head, no checkpoint
        audit._queue.put(_STOP)
        audit._thread.join()
        for conn in audit._owns:
            conn.close()
        with sqlite3.connect(settings.storage.sqlite_path) as conn:
            h = store.head(conn)
        assert h.seq > 0 and h.last_checkpoint_seq == 0
    return signing_key_path(settings)


@pytest.mark.parametrize("checkpointed", [True, False])
def test_a_missing_key_is_not_regenerated_for_a_store_with_records(
        tmp_path: Path, checkpointed: bool) -> None:
    key = _used_store(tmp_path, checkpointed=checkpointed)
    key.rename(tmp_path / "backup.key")
    with pytest.raises(ConfigError) as info:
        AuditLog.open(make_settings(tmp_path))
    assert info.value.file == str(key)
    assert "missing" in str(info.value) and "restore" in str(info.value)
    assert not key.exists()  # no stand-in key was written
    # Putting the key back is all it takes: the chain goes on and verifies.
    (tmp_path / "backup.key").rename(key)
    audit = AuditLog.open(make_settings(tmp_path))
    record_messages(audit, 1)
    assert verify_store(audit.conn, audit.public_key).ok
    audit.close(T0)


def test_another_installations_key_is_refused_for_a_store_without_checkpoints(
        tmp_path: Path) -> None:
    key = _used_store(tmp_path, checkpointed=False)  # judged by the head's signature
    shutil.copy(_other_key(tmp_path), key)
    with pytest.raises(ConfigError) as info:
        AuditLog.open(make_settings(tmp_path))
    assert "did not sign" in str(info.value)


def _other_key(tmp_path: Path) -> Path:
    other = tmp_path / "other" / "audit-signing.key"
    ensure_signing_key(other)
    return other


def test_another_installations_key_is_refused_naming_both_key_ids(tmp_path: Path) -> None:
    key = _used_store(tmp_path)
    original = key_id(ensure_signing_key(key).public_key())
    other = tmp_path / "other" / "audit-signing.key"
    stranger = key_id(ensure_signing_key(other).public_key())
    shutil.copy(other, key)
    with pytest.raises(ConfigError) as info:
        AuditLog.open(make_settings(tmp_path))
    assert stranger in str(info.value) and original in str(info.value)


def test_a_new_store_still_gets_a_new_key(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    audit = AuditLog.open(settings)
    assert signing_key_path(settings).exists()
    audit.close(T0)


def test_cli_writers_exit_2_and_leave_the_store_alone(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    audit = AuditLog.open(load_settings(cfg))
    record_messages(audit, 2)
    audit.close(T0)
    key = signing_key_path(load_settings(cfg))
    key.unlink()
    contacts = tmp_path / "dir.toml"
    contacts.write_text('[[clients]]\nid = "c-9"\naddresses = ["pat@mail.example"]\n')
    result = subprocess.run([sys.executable, "-m", "securemail", "directory", "import", "-c",
                             str(cfg), str(contacts)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert str(key) in result.stderr and "Traceback" not in result.stderr
    assert not key.exists()


def test_a_lost_key_is_recovered_by_starting_a_new_chain(tmp_path: Path) -> None:
    # The documented way out when the key is gone for good: the old chain is
    # archived unchanged (it verifies with the old public key), the store
    # starts a new chain whose first record names where the old one ended.
    from securemail.audit import load_signing_key
    from securemail.audit.new_chain import start_new_chain

    key = _used_store(tmp_path)
    old_public = load_signing_key(key).public_key()
    settings = make_settings(tmp_path)
    with sqlite3.connect(settings.storage.sqlite_path) as conn:
        old_head = store.head(conn)
    key.unlink()  # lost
    with pytest.raises(ConfigError):
        AuditLog.open(settings)
    result = start_new_chain(settings, reason="lost-key", now=T0)
    assert result.previous_seq == old_head.seq and result.archived_records == old_head.seq
    archive = sqlite3.connect(result.archive)
    assert verify_store(archive, old_public).ok  # the old chain, as it was
    archive.close()
    assert oct(result.archive.stat().st_mode & 0o777) == "0o600"
    audit = AuditLog.open(settings)  # the relay starts again
    record_messages(audit, 1)
    assert verify_store(audit.conn, audit.public_key).ok
    first = audit.conn.execute("SELECT kind, body FROM audit_records ORDER BY seq").fetchone()
    audit.close(T0)
    assert first[0] == "chain-start"
    body = json.loads(first[1])
    assert (body["previous_seq"], body["previous_hash"]) == (old_head.seq, old_head.hash)
    assert body["previous_signer"] == key_id(old_public) and body["reason_code"] == "lost-key"
    assert result.signer != key_id(old_public)


def test_new_chain_refuses_a_store_without_records(tmp_path: Path) -> None:
    from securemail.audit.new_chain import start_new_chain
    from securemail.errors import InputError

    AuditLog.open(make_settings(tmp_path)).close(T0)  # a checkpoint-less, empty store
    with pytest.raises(InputError):
        start_new_chain(make_settings(tmp_path), reason="rotation", now=T0)


def test_new_chain_is_refused_while_a_writer_has_the_log_open(tmp_path: Path) -> None:
    # A running relay would go on appending, signing with the key it holds:
    # records would fall between the archive and the new chain.
    from securemail.audit.log import exclusive_writer_lock
    from securemail.audit.new_chain import start_new_chain
    from securemail.errors import InputError, StoreError

    _used_store(tmp_path)
    settings = make_settings(tmp_path)
    running = AuditLog.open(settings)
    try:
        with pytest.raises(InputError, match="stop it first"):
            start_new_chain(settings, reason="rotation", now=T0)
    finally:
        running.close(T0)
    with sqlite3.connect(settings.storage.sqlite_path) as conn:
        assert store.head(conn).seq > 0  # nothing was moved
    # And while new-chain holds the store, a relay cannot start appending.
    with exclusive_writer_lock(settings.storage.sqlite_path), pytest.raises(StoreError):
        AuditLog.open(settings)


def test_opening_and_closing_a_second_log_keeps_sqlites_locks(tmp_path: Path) -> None:
    # Closing any descriptor of the store file would drop all of this process's
    # POSIX locks on it, SQLite's included: another process could then delete a
    # WAL that the first log still commits to. The writers' lock is a separate file.
    import os
    import subprocess
    import sys

    settings = make_settings(tmp_path)
    first = AuditLog.open(settings)
    record_messages(first, 1)
    AuditLog.open(settings).close(T0)  # a second log in the same process
    db = settings.storage.sqlite_path
    # Another process opens and closes the store: with our locks intact it must
    # not see itself as the last connection (which checkpoints and removes the WAL).
    subprocess.run([sys.executable, "-c", f"import sqlite3; c = sqlite3.connect({str(db)!r});"
                    " c.execute('SELECT COUNT(*) FROM audit_records').fetchone(); c.close()"],
                   check=True, timeout=60)
    assert os.path.exists(f"{db}-wal")
    record_messages(first, 2, start=T0)
    first.close(T0)
    with sqlite3.connect(db) as conn:
        kinds = [r[0] for r in conn.execute("SELECT kind FROM audit_records")]
    assert kinds.count("message") == 6  # 3 messages x 2 recipients: none lost


def test_the_writers_lock_is_one_per_store_whatever_path_names_it(tmp_path: Path) -> None:
    from securemail.audit.log import exclusive_writer_lock
    from securemail.errors import InputError

    settings = make_settings(tmp_path)  # the store at tmp_path/store.db
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "store.db").symlink_to(settings.storage.sqlite_path)
    running = AuditLog.open(settings)
    try:
        with pytest.raises(InputError), exclusive_writer_lock(tmp_path / "link" / "store.db"):
            pass
    finally:
        running.close(T0)
