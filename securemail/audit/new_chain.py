"""Start a new chain when the signing key is lost (or rotated on purpose).

A store whose key is gone cannot be extended: a stand-in key would make every
later checkpoint fail verification, so the relay refuses to start. This moves
the old chain, unchanged, into an archive file beside the store (it still
verifies offline with the old public key) and starts a new chain in the store,
signed with the key now at ``[audit] signing_key_file`` (a new one is made if
there is none). The new chain's first record, ``chain-start``, names where the
old one ended (its last seq, head hash and signer), so the two are tied
together on the record. The rest of the store (directory, keys, portal,
delivery ledger) is untouched.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securemail.audit import store
from securemail.audit.chain import ensure_signing_key, key_id
from securemail.audit.log import Chainer, exclusive_writer_lock, last_signer, signing_key_path
from securemail.audit.records import event_fields, format_time
from securemail.config import Settings
from securemail.errors import InputError
from securemail.store.sqlite import open_database, transaction

__all__ = ["NewChain", "start_new_chain"]

REASONS = ("lost-key", "rotation")


@dataclass(frozen=True, slots=True)
class NewChain:
    archive: Path
    archived_records: int
    previous_seq: int
    previous_signer: str
    signer: str


def start_new_chain(settings: Settings, *, reason: str, now: datetime) -> NewChain:
    """Archive the store's chain and start a new one. Refused while any other
    securemail process has the audit log open (a running relay would go on
    signing with the key it holds)."""
    if reason not in REASONS:
        raise InputError(f"reason must be one of {', '.join(REASONS)}")
    db = settings.storage.sqlite_path
    if not db.is_file():
        raise InputError(f"{db}: no store here (storage.url in {settings.path})")
    archive = db.parent / f"audit-archive-{now:%Y%m%dT%H%M%SZ}.db"
    if archive.exists():
        raise InputError(f"{archive} already exists; try again in a second")
    with exclusive_writer_lock(db):
        key_path = signing_key_path(settings)
        key = ensure_signing_key(key_path)  # before anything moves
        _give_to_store_owner(key_path, db)
        conn = open_database(db)
        try:
            return _archive_and_restart(settings, conn, archive, key, reason, now)
        finally:
            conn.close()


def _archive_and_restart(settings: Settings, conn: sqlite3.Connection, archive: Path,
                         key: Ed25519PrivateKey, reason: str, now: datetime) -> NewChain:
    db = settings.storage.sqlite_path
    chainer = Chainer(key, settings.audit.checkpoint_every, settings.audit.checkpoint_seconds)
    at = format_time(now)
    # One write transaction on the store from the head we archive to the new
    # chain's first record: nothing can be appended in between.
    with transaction(conn):
        if not store.has_audit_tables(conn) or store.head(conn).seq == 0:
            raise InputError(f"{db}: no audit records: there is no chain to archive")
        head = store.head(conn)
        previous_signer = last_signer(conn, head)
        copied = _copy_to(archive, conn, db)  # committed in the archive file first
        conn.execute("DELETE FROM audit_records")
        conn.execute("DELETE FROM audit_head")
        # The consent on record went to the archive: the next start or reload
        # records the consent in force again, in the new chain.
        conn.execute("DROP TABLE IF EXISTS consent_recorded")
        chainer.append(conn, [(event_fields("chain-start", {
            "previous_seq": head.seq, "previous_hash": head.hash,
            "previous_signer": previous_signer, "file": archive.name,
            "reason_code": reason, "actor": "cli"}), at)])
        chainer.checkpoint(conn, at, "chain-start")
    return NewChain(archive, copied, head.seq, previous_signer, key_id(key.public_key()))


def _copy_to(archive: Path, conn: sqlite3.Connection, db: Path) -> int:
    """Copy the audit tables (read inside the caller's transaction) into a new
    file, committed there before the store changes; check it holds them all."""
    fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    _give_to_store_owner(archive, db)
    target = open_database(archive)
    try:
        store.prepare(target)
        with transaction(target):
            rows = conn.execute("SELECT seq, kind, at, prev_hash, hash, body FROM audit_records"
                                " ORDER BY seq")
            while batch := rows.fetchmany(1000):
                target.executemany("INSERT INTO audit_records VALUES (?,?,?,?,?,?)", batch)
            target.executemany("INSERT INTO audit_head VALUES (?,?,?,?,?,?)",
                               conn.execute("SELECT id, seq, hash, signature, last_checkpoint_seq,"
                                            " last_checkpoint_at FROM audit_head").fetchall())
        count = int(target.execute("SELECT COUNT(*) FROM audit_records").fetchone()[0])
    finally:
        target.close()
    expected = int(conn.execute("SELECT COUNT(*) FROM audit_records").fetchone()[0])
    if count != expected:
        raise InputError(f"{archive}: the copy holds {count} of {expected} records; nothing"
                         " was changed in the store")
    return count


def _give_to_store_owner(path: Path, db: Path) -> None:
    """Run as root for a service user: the files we make belong to the store's owner."""
    if os.geteuid() == 0:
        st = db.stat()
        os.chown(path, st.st_uid, st.st_gid)
