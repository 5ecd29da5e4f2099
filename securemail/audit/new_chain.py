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

from securemail.audit import store
from securemail.audit.chain import ensure_signing_key, key_id
from securemail.audit.log import Chainer, last_signer, signing_key_path
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
    """Archive the store's chain and start a new one (stop the relay first)."""
    if reason not in REASONS:
        raise InputError(f"reason must be one of {', '.join(REASONS)}")
    db = settings.storage.sqlite_path
    if not db.is_file():
        raise InputError(f"{db}: no store here (storage.url in {settings.path})")
    archive = db.parent / f"audit-archive-{now:%Y%m%dT%H%M%SZ}.db"
    if archive.exists():
        raise InputError(f"{archive} already exists; try again in a second")
    conn = open_database(db)
    try:
        if not store.has_audit_tables(conn) or store.head(conn).seq == 0:
            raise InputError(f"{db}: no audit records: there is no chain to archive")
        head = store.head(conn)
        previous_signer = last_signer(conn, head)
        copied = _copy_to(archive, conn)
        key = ensure_signing_key(signing_key_path(settings))
        chainer = Chainer(key, settings.audit.checkpoint_every,
                          settings.audit.checkpoint_seconds)
        at = format_time(now)
        with transaction(conn):  # the old chain goes and the new one starts together
            conn.execute("DELETE FROM audit_records")
            conn.execute("DELETE FROM audit_head")
            chainer.append(conn, [(event_fields("chain-start", {
                "previous_seq": head.seq, "previous_hash": head.hash,
                "previous_signer": previous_signer, "file": archive.name,
                "reason_code": reason, "actor": "cli"}), at)])
            chainer.checkpoint(conn, at, "chain-start")
    finally:
        conn.close()
    return NewChain(archive, copied, head.seq, previous_signer, key_id(key.public_key()))


def _copy_to(archive: Path, conn: sqlite3.Connection) -> int:
    """Copy the audit tables into a new file and check it holds them all. Its
    own commit, before anything leaves the store: a crash in between leaves
    the store as it was (and a spare archive)."""
    fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    target = open_database(archive)
    try:
        store.prepare(target)
    finally:
        target.close()
    conn.execute("ATTACH DATABASE ? AS archive", (str(archive),))
    try:
        with transaction(conn):
            conn.execute("INSERT INTO archive.audit_records SELECT * FROM main.audit_records")
            conn.execute("INSERT INTO archive.audit_head SELECT * FROM main.audit_head")
        count = conn.execute("SELECT COUNT(*) FROM archive.audit_records").fetchone()[0]
        expected = conn.execute("SELECT COUNT(*) FROM main.audit_records").fetchone()[0]
    finally:
        conn.execute("DETACH DATABASE archive")
    if count != expected:
        raise InputError(f"{archive}: the copy holds {count} of {expected} records; nothing"
                         " was changed in the store")
    return int(count)
