"""The audit tables in the SQLite store: append transactions and reads.

This is the storage seam: everything SQL lives here, so a PostgreSQL backend
can replace it with the same functions. Chain logic (what a record contains,
how it is hashed and signed) lives in ``chain.py`` and ``log.py``.

Tables:
- ``audit_records``: the chain. ``body`` is the record's canonical JSON (the
  exact bytes that were hashed); ``kind`` and ``at`` are copies for queries
  and are checked against ``body`` by the verifier.
- ``audit_head``: one row, the latest record's seq and hash signed with the
  audit key, updated in the same transaction as every append. It is what
  reveals a tail cut off the store after its last checkpoint.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from securemail.audit.chain import GENESIS_HASH
from securemail.errors import StoreError
from securemail.store.sqlite import describe_fault, ensure_schema, rollback_quietly

__all__ = [
    "DDL", "Head", "StoredRecord", "advance_head", "has_audit_tables", "head", "iter_records",
    "prepare", "transaction",
]

DDL = """
CREATE TABLE IF NOT EXISTS audit_records (
    seq       INTEGER PRIMARY KEY,
    kind      TEXT NOT NULL,
    at        TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL,
    body      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_records_at ON audit_records (at);
CREATE INDEX IF NOT EXISTS audit_records_kind ON audit_records (kind, at);
CREATE TABLE IF NOT EXISTS audit_head (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    seq                 INTEGER NOT NULL,
    hash                TEXT NOT NULL,
    signature           TEXT NOT NULL,
    last_checkpoint_seq INTEGER NOT NULL,
    last_checkpoint_at  TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Head:
    seq: int  # 0 for an empty store
    hash: str
    signature: str
    last_checkpoint_seq: int
    last_checkpoint_at: str


@dataclass(frozen=True, slots=True)
class StoredRecord:
    seq: int
    kind: str
    at: str
    prev_hash: str
    hash: str
    body: str


def prepare(conn: sqlite3.Connection) -> None:
    ensure_schema(conn, DDL)


def has_audit_tables(conn: sqlite3.Connection) -> bool:
    """Whether the audit tables exist (read commands check, they never create them)."""
    found = {r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        " AND name IN ('audit_records', 'audit_head')")}
    return found == {"audit_records", "audit_head"}


class transaction:  # noqa: N801 - used like a function: ``with transaction(conn):``
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: takes the write lock before reading the
    head, so two processes can never append after the same record (no fork)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"audit: cannot lock the store ({describe_fault(exc)})") from None
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return
            except sqlite3.Error as err:
                rollback_quietly(self.conn, "ROLLBACK")
                raise StoreError(f"audit: commit failed ({describe_fault(err)})") from None
        rollback_quietly(self.conn, "ROLLBACK")  # the error that brought us here stays


def head(conn: sqlite3.Connection) -> Head:
    row = conn.execute(
        "SELECT seq, hash, signature, last_checkpoint_seq, last_checkpoint_at"
        " FROM audit_head WHERE id = 1"
    ).fetchone()
    if row is None:
        return Head(0, GENESIS_HASH, "", 0, "")
    return Head(int(row[0]), str(row[1]), str(row[2]), int(row[3]), str(row[4]))


def insert(conn: sqlite3.Connection, rows: list[tuple[int, str, str, str, str, str]]) -> None:
    conn.executemany(
        "INSERT INTO audit_records (seq, kind, at, prev_hash, hash, body) VALUES (?,?,?,?,?,?)",
        rows,
    )


def set_head(conn: sqlite3.Connection, new: Head) -> None:
    conn.execute(
        "INSERT INTO audit_head (id, seq, hash, signature, last_checkpoint_seq,"
        " last_checkpoint_at) VALUES (1,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET"
        " seq=excluded.seq, hash=excluded.hash, signature=excluded.signature,"
        " last_checkpoint_seq=excluded.last_checkpoint_seq,"
        " last_checkpoint_at=excluded.last_checkpoint_at",
        (new.seq, new.hash, new.signature, new.last_checkpoint_seq, new.last_checkpoint_at),
    )


def advance_head(conn: sqlite3.Connection, expected: Head, new: Head) -> bool:
    """Move the head from ``expected`` to ``new``; False (nothing changed) when the
    stored head is no longer ``expected`` (another writer appended, or a
    transaction that set it was rolled back)."""
    cursor = conn.execute(
        "UPDATE audit_head SET seq=?, hash=?, signature=?, last_checkpoint_seq=?,"
        " last_checkpoint_at=? WHERE id = 1 AND seq = ? AND hash = ?",
        (new.seq, new.hash, new.signature, new.last_checkpoint_seq, new.last_checkpoint_at,
         expected.seq, expected.hash),
    )
    return cursor.rowcount == 1


# What the rest of the store gets together with an audit record (a key
# import, a sealed portal message, a directory import): rows of these in a
# store whose audit log is empty mean the log was wiped.
_RECORDED_ROWS = (("keyring_keys", "key", "keys"), ("portal_messages", "portal message",
                                                    "portal messages"),
                  ("directory_entries", "imported directory entry",
                   "imported directory entries"))


@dataclass(frozen=True, slots=True)
class History:
    """What a store holds that was recorded in the audit log when it was made."""

    rows: int
    text: str  # "2 keys and 1 portal message"

    def __bool__(self) -> bool:
        return self.rows > 0


def recorded_history(conn: sqlite3.Connection) -> History:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    found, rows = [], 0
    for table, one, many in _RECORDED_ROWS:
        if table in tables:
            n = int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608
            if n:
                found.append(f"{n} {one if n == 1 else many}")
                rows += n
    return History(rows, " and ".join(filter(None, (", ".join(found[:-1]), found[-1])))
                   if found else "")


def iter_records(
    conn: sqlite3.Connection, *, first_seq: int = 0, last_seq: int | None = None,
    kinds: tuple[str, ...] = (),
) -> Iterator[StoredRecord]:
    sql = "SELECT seq, kind, at, prev_hash, hash, body FROM audit_records WHERE seq >= ?"
    args: list[Any] = [first_seq]
    if last_seq is not None:
        sql += " AND seq <= ?"
        args.append(last_seq)
    if kinds:
        sql += f" AND kind IN ({','.join('?' * len(kinds))})"
        args.extend(kinds)
    sql += " ORDER BY seq"
    for row in conn.execute(sql, args):
        yield StoredRecord(int(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]),
                           str(row[5]))


def seq_range(conn: sqlite3.Connection, since: str | None, until: str | None) -> tuple[int, int]:
    """First and last seq of the contiguous stretch from ``since`` to before ``until``."""
    lo = conn.execute(
        "SELECT MIN(seq) FROM audit_records WHERE at >= ?", (since or "",)
    ).fetchone()[0]
    hi = conn.execute(
        "SELECT MAX(seq) FROM audit_records WHERE at < ?", (until or "\uffff",)
    ).fetchone()[0]
    if lo is None or hi is None or hi < lo:
        return (0, -1)
    return (int(lo), int(hi))


def timed_outside(conn: sqlite3.Connection, since: str | None, until: str | None) -> int:
    """Records inside the stretch ``seq_range`` cuts that are timed outside the window."""
    lo, hi = seq_range(conn, since, until)
    if hi < lo:
        return 0
    row = conn.execute(
        "SELECT COUNT(*) FROM audit_records WHERE seq BETWEEN ? AND ?"
        " AND kind NOT IN ('checkpoint', 'prune') AND (at < ? OR at >= ?)",
        (lo, hi, since or "", until or "\uffff")).fetchone()
    return int(row[0])


def record_before(conn: sqlite3.Connection, seq: int) -> StoredRecord | None:
    found = list(iter_records(conn, first_seq=seq - 1, last_seq=seq - 1))
    return found[0] if found else None


def first_seq_at_or_after(conn: sqlite3.Connection, at: str) -> int | None:
    row = conn.execute("SELECT MIN(seq) FROM audit_records WHERE at >= ?", (at,)).fetchone()
    return None if row[0] is None else int(row[0])


def delete_before(conn: sqlite3.Connection, seq: int) -> int:
    return conn.execute("DELETE FROM audit_records WHERE seq < ?", (seq,)).rowcount


def bounds(conn: sqlite3.Connection) -> tuple[int | None, int | None]:
    row = conn.execute("SELECT MIN(seq), MAX(seq) FROM audit_records").fetchone()
    return (row[0], row[1])


def last_prune(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """The body of the latest prune record (its ``cutoff``: records timed before it
    are gone; ``deleted``; ``first_seq``; ``at``), None if the store was never pruned."""
    row = conn.execute("SELECT body FROM audit_records WHERE kind = 'prune'"
                       " ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        return None
    try:
        body = json.loads(row[0])
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def pruned_note(conn: sqlite3.Connection, since: str | None) -> str:
    """Why a window starting at ``since`` (None: the beginning) holds no records
    before the last prune's cutoff; "" when it does not reach back that far."""
    prune = last_prune(conn)
    if prune is None:
        return ""
    cutoff = str(prune.get("cutoff", ""))
    if since is not None and cutoff and since >= cutoff:
        return ""
    return (f"records timed before {cutoff} were pruned on {prune.get('at', '?')} under the"
            f" retention policy (the last prune deleted {prune.get('deleted', '?')} record(s));"
            f" what is here starts at record {prune.get('first_seq', '?')}")
