"""SQL for the portal's three tables; no policy, no crypto.

Times are stored as fixed-width UTC text (``2026-01-02T03:04:05.000006Z``) so
that SQL string comparison orders them correctly.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from securemail.errors import StoreError
from securemail.store.group_commit import GroupCommitter
from securemail.store.sqlite import describe_fault, ensure_schema, open_database, rollback_quietly

__all__ = ["PortalRow", "PortalStore", "ts"]

# How long a statement waits for another writer (SQLite busy_timeout), in seconds.
BUSY_TIMEOUT = 30.0

DDL = """
CREATE TABLE IF NOT EXISTS portal_messages (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL DEFAULT 'message',  -- message | reply
    parent_id    TEXT,
    message_id   TEXT NOT NULL,
    sender       TEXT NOT NULL,
    recipient    TEXT NOT NULL,
    reply_to     TEXT,              -- where a reply goes; '' = nowhere; NULL (old rows) = sender
    reply_name   TEXT,              -- its display name, shown to the client; NULL: none known
    mail_from    TEXT,              -- envelope sender (for the audit); NULL in old rows = sender
    attachments  INTEGER,           -- how many (range-checks "downloaded"); NULL in old rows
    created      TEXT NOT NULL,
    expires      TEXT NOT NULL,
    revoked      TEXT,
    locked       TEXT,
    purged       TEXT,
    opened       TEXT,
    expiry_noted TEXT,              -- when the audit log got this message's "expired" event
    failed_codes INTEGER NOT NULL DEFAULT 0,
    size         INTEGER NOT NULL,
    ciphertext   BLOB
);
CREATE INDEX IF NOT EXISTS portal_messages_expires ON portal_messages (expires);
CREATE TABLE IF NOT EXISTS portal_codes (
    portal_id TEXT NOT NULL REFERENCES portal_messages (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    created   TEXT NOT NULL,
    expires   TEXT NOT NULL,
    used      TEXT,              -- when it stopped working: used, replaced, or locked out
    consumed  TEXT,              -- when it opened the message (never "stale" after that)
    undelivered TEXT             -- when its channel failed: it may never have arrived
);
CREATE INDEX IF NOT EXISTS portal_codes_id ON portal_codes (portal_id, created);
CREATE TABLE IF NOT EXISTS portal_sessions (
    token_hash TEXT PRIMARY KEY,
    portal_id  TEXT NOT NULL REFERENCES portal_messages (id) ON DELETE CASCADE,
    created    TEXT NOT NULL,
    expires    TEXT NOT NULL
);
"""

_COLUMNS = (
    "id, kind, parent_id, message_id, sender, recipient, created, expires, revoked, "
    "locked, purged, opened, failed_codes, size, reply_to, attachments, reply_name, mail_from"
)


def _insert(conn: sqlite3.Connection, row: tuple[object, ...]) -> None:
    conn.execute(
        "INSERT INTO portal_messages (id, kind, parent_id, message_id, sender, "
        "recipient, created, expires, size, ciphertext, reply_to, attachments, reply_name, "
        "mail_from) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", row)


def _file_of(conn: sqlite3.Connection) -> str:
    row = conn.execute("PRAGMA database_list").fetchone()
    return str(row[2]) if row is not None and row[2] else ""


def ts(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("portal times must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class PortalRow:
    """Metadata of one sealed message; never its content or key."""

    id: str
    kind: str
    parent_id: str | None
    message_id: str
    sender: str
    recipient: str
    created: datetime
    expires: datetime
    revoked: datetime | None
    locked: datetime | None
    purged: datetime | None
    opened: datetime | None
    failed_codes: int
    size: int
    reply_to: str | None = None  # None: a row from before the column (reply to sender)
    attachments: int | None = None  # None: a row from before the column
    reply_name: str | None = None  # display name of the reply address, when it has one
    mail_from: str | None = None  # envelope sender; None: a row from before the column

    @property
    def envelope_sender(self) -> str:
        """The envelope sender (what the audit's ``mail_from`` means everywhere);
        rows sealed before it was kept have only ``sender``."""
        return self.sender if self.mail_from is None else self.mail_from

    @property
    def reply_address(self) -> str:
        """Where the recipient's reply goes; "" when nowhere (no usable address)."""
        return self.sender if self.reply_to is None else self.reply_to

    def state(self, now: datetime) -> str:
        """``revoked`` | ``expired`` | ``purged`` | ``locked`` | ``active``."""
        if self.revoked:
            return "revoked"
        if now >= self.expires:
            return "expired"
        if self.purged:
            return "purged"
        if self.locked:
            return "locked"
        return "active"


def _row(r: tuple[object, ...]) -> PortalRow:
    (id_, kind, parent, mid, sender, rcpt, created, expires, revoked, locked, purged,
     opened, failed, size, reply_to, attachments, reply_name, mail_from) = r
    return PortalRow(
        id=str(id_), kind=str(kind), parent_id=parent if isinstance(parent, str) else None,
        message_id=str(mid), sender=str(sender), recipient=str(rcpt),
        created=_dt(str(created)) or datetime.min, expires=_dt(str(expires)) or datetime.min,
        revoked=_dt(revoked if isinstance(revoked, str) else None),
        locked=_dt(locked if isinstance(locked, str) else None),
        purged=_dt(purged if isinstance(purged, str) else None),
        opened=_dt(opened if isinstance(opened, str) else None),
        failed_codes=int(str(failed)), size=int(str(size)),
        reply_to=reply_to if isinstance(reply_to, str) else None,
        attachments=attachments if isinstance(attachments, int) else None,
        reply_name=reply_name if isinstance(reply_name, str) else None,
        mail_from=mail_from if isinstance(mail_from, str) else None,
    )


class PortalStore:
    """Thread-safe access to the portal tables.

    The web app runs its store work in worker threads while the relay's event
    loop keeps using the connection it passed in (directory, keys) and calls
    the portal too (``notified_event``, ``revoke``). A statement waiting for
    the write lock (another process writing, up to ``busy_timeout``) holds its
    connection's mutex, so every other thread's statement on that connection
    would wait with it, the event loop's included. So a store on a file keeps
    two connections of its own, opened on first use: one for write
    transactions, one writer at a time (``_tx``), and one for single reads
    (``_read``), which never wait for a writer (WAL). An in-memory store (tests)
    has only the connection it was given, used under one lock.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._lock = threading.RLock()  # the given connection (an in-memory store)
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._committer: GroupCommitter | None = None
        ensure_schema(conn, DDL)
        columns = {r[1] for r in conn.execute("PRAGMA table_info(portal_messages)")}
        if "expiry_noted" not in columns:  # a store made by an earlier release
            conn.execute("ALTER TABLE portal_messages ADD COLUMN expiry_noted TEXT")
        for column, kind in (("reply_to", "TEXT"), ("attachments", "INTEGER"),
                             ("reply_name", "TEXT"), ("mail_from", "TEXT")):
            if column not in columns:
                conn.execute(f"ALTER TABLE portal_messages ADD COLUMN {column} {kind}")
        code_columns = {r[1] for r in conn.execute("PRAGMA table_info(portal_codes)")}
        for column in ("consumed", "undelivered"):
            if column not in code_columns:
                conn.execute(f"ALTER TABLE portal_codes ADD COLUMN {column} TEXT")
        self._file = _file_of(conn)

    def close(self) -> None:
        """Stop the group-commit writer (after committing what it holds) and
        close the store's own connections (opened again if it is used later)."""
        if self._committer is not None:
            self._committer.close()
            self._committer = None
        with self._write_lock:
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.close()
        with self._read_lock:
            reader, self._reader = self._reader, None
            if reader is not None:
                reader.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        lock = self._write_lock if self._file else self._lock
        with lock:
            try:
                if not self._file:
                    conn = self.conn
                elif self._writer is None:
                    conn = self._writer = open_database(self._file, timeout=BUSY_TIMEOUT)
                else:
                    conn = self._writer
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    rollback_quietly(conn, "ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"portal store failed ({describe_fault(exc)})") from None

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A single read statement: no write lock taken (a ``BEGIN IMMEDIATE`` here
        would queue behind every audit and seal commit)."""
        lock = self._read_lock if self._file else self._lock
        with lock:
            if not self._file:
                conn = self.conn
            elif self._reader is None:
                conn = self._reader = open_database(self._file, timeout=BUSY_TIMEOUT)
            else:
                conn = self._reader
            try:
                yield conn
            except sqlite3.Error as exc:
                raise StoreError(f"portal store failed ({describe_fault(exc)})") from None

    # ------------------------------------------------------------ messages

    def insert(self, *, id: str, kind: str, parent_id: str | None, message_id: str,
               sender: str, recipient: str, created: datetime, expires: datetime,
               ciphertext: bytes, reply_to: str | None = None,
               attachments: int | None = None, reply_name: str | None = None,
               mail_from: str | None = None) -> None:
        row = (id, kind, parent_id, message_id, sender, recipient, ts(created), ts(expires),
               len(ciphertext), ciphertext, reply_to, attachments, reply_name, mail_from)
        with self._tx() as c:
            _insert(c, row)

    async def insert_async(self, *, id: str, kind: str, parent_id: str | None, message_id: str,
                           sender: str, recipient: str, created: datetime, expires: datetime,
                           ciphertext: bytes, reply_to: str | None = None,
                           attachments: int | None = None, reply_name: str | None = None,
                           mail_from: str | None = None) -> None:
        """:meth:`insert` for the event loop: committed together with other
        messages' rows (group commit); returns once the row is on disk."""
        row = (id, kind, parent_id, message_id, sender, recipient, ts(created), ts(expires),
               len(ciphertext), ciphertext, reply_to, attachments, reply_name, mail_from)
        if self._committer is None:
            file = _file_of(self.conn)
            if not file:  # an in-memory store (tests): no second connection can see it
                with self._tx() as c:
                    _insert(c, row)
                return
            # Its own connection: a transaction on the shared one would take in
            # whatever else the event loop runs on it meanwhile.
            self._committer = GroupCommitter(open_database(file), threading.Lock(),
                                             name="securemail-portal", what="portal store",
                                             owns_connection=True)
        await self._committer.run(lambda c: _insert(c, row))

    def get(self, id: str) -> PortalRow | None:
        with self._read() as c:
            r = c.execute(f"SELECT {_COLUMNS} FROM portal_messages WHERE id = ?",  # noqa: S608
                          (id,)).fetchone()
        return _row(r) if r else None

    def ciphertext(self, id: str) -> bytes | None:
        with self._read() as c:
            r = c.execute("SELECT ciphertext FROM portal_messages WHERE id = ?", (id,)).fetchone()
        return bytes(r[0]) if r and r[0] is not None else None

    def all(self) -> list[PortalRow]:
        with self._read() as c:
            rows = c.execute(
                f"SELECT {_COLUMNS} FROM portal_messages ORDER BY created, id"  # noqa: S608
            ).fetchall()
        return [_row(r) for r in rows]

    def mark(self, id: str, column: str, now: datetime, *, only_if_null: bool = True) -> bool:
        if column not in ("revoked", "locked", "opened", "purged", "expiry_noted"):
            raise ValueError(column)
        cond = f" AND {column} IS NULL" if only_if_null else ""
        with self._tx() as c:
            cur = c.execute(
                f"UPDATE portal_messages SET {column} = ? WHERE id = ?{cond}",  # noqa: S608
                (ts(now), id))
            if column in ("revoked", "purged") and cur.rowcount:
                # Nothing left to open: drop the ciphertext and any access.
                c.execute("UPDATE portal_messages SET ciphertext = NULL WHERE id = ?", (id,))
                c.execute("DELETE FROM portal_sessions WHERE portal_id = ?", (id,))
                c.execute("DELETE FROM portal_codes WHERE portal_id = ?", (id,))
        return cur.rowcount > 0

    def unlock(self, id: str) -> bool:
        with self._tx() as c:
            cur = c.execute(
                "UPDATE portal_messages SET locked = NULL, failed_codes = 0 "
                "WHERE id = ? AND locked IS NOT NULL AND revoked IS NULL AND purged IS NULL",
                (id,))
            c.execute("DELETE FROM portal_codes WHERE portal_id = ?", (id,))
        return cur.rowcount > 0

    def purgeable(self, now: datetime) -> list[str]:
        with self._tx() as c:
            rows = c.execute(
                "SELECT id FROM portal_messages WHERE purged IS NULL AND "
                "(expires <= ? OR revoked IS NOT NULL)", (ts(now),)).fetchall()
        return [str(r[0]) for r in rows]

    def delete_stale_access(self, now: datetime, *, codes_before: datetime) -> None:
        """Drop ended sessions, and codes that no longer work and were created
        before ``codes_before`` (the newer ones still tell "expired" from "wrong")."""
        with self._tx() as c:
            c.execute("DELETE FROM portal_sessions WHERE expires <= ?", (ts(now),))
            c.execute("DELETE FROM portal_codes WHERE expires <= ? AND created <= ?",
                      (ts(now), ts(codes_before)))

    # --------------------------------------------------------------- codes

    def add_code(self, id: str, code_hash: str, now: datetime, expires: datetime) -> int:
        """Store a new code (it replaces the older ones); its rowid."""
        with self._tx() as c:
            # A new code replaces the old ones: only the latest code works.
            c.execute("UPDATE portal_codes SET used = ? WHERE portal_id = ? AND used IS NULL",
                      (ts(now), id))
            cur = c.execute("INSERT INTO portal_codes (portal_id, code_hash, created, expires) "
                            "VALUES (?,?,?,?)", (id, code_hash, ts(now), ts(expires)))
        return int(cur.lastrowid or 0)

    def code_undelivered(self, rowid: int, now: datetime) -> None:
        """The channel failed to deliver this code: it must not be announced as sent."""
        with self._tx() as c:
            c.execute("UPDATE portal_codes SET undelivered = ? WHERE rowid = ?", (ts(now), rowid))

    def newest_code(self, id: str) -> tuple[datetime, datetime, bool] | None:
        """``(created, expires, delivered)`` of the newest code issued for ``id``
        (whether or not it was used since: see ``PortalService.code_sent``)."""
        with self._read() as c:
            r = c.execute("SELECT created, expires, undelivered FROM portal_codes "
                          "WHERE portal_id = ? ORDER BY rowid DESC LIMIT 1", (id,)).fetchone()
        if not r:
            return None
        created, expires = _dt(str(r[0])), _dt(str(r[1]))
        assert created is not None and expires is not None
        return created, expires, r[2] is None

    def codes_since(self, id: str, since: datetime) -> int:
        with self._tx() as c:
            r = c.execute("SELECT COUNT(*) FROM portal_codes WHERE portal_id = ? AND created > ?",
                          (id, ts(since))).fetchone()
        return int(r[0])

    def live_code_hashes(self, id: str, now: datetime) -> list[tuple[int, str]]:
        with self._tx() as c:
            rows = c.execute(
                "SELECT rowid, code_hash FROM portal_codes WHERE portal_id = ? AND used IS NULL "
                "AND expires > ?", (id, ts(now))).fetchall()
        return [(int(r[0]), str(r[1])) for r in rows]

    def stale_code_hashes(self, id: str, now: datetime, since: datetime,
                          limit: int) -> list[str]:
        """Codes once issued for ``id`` that stopped working without being used:
        replaced by a newer code, or expired unused; the newest ``limit`` created
        after ``since``. A code that opened the message is never here, even
        once a newer code replaced it."""
        with self._tx() as c:
            rows = c.execute(
                "SELECT code_hash FROM portal_codes AS c WHERE portal_id = ? AND created > ? "
                "AND consumed IS NULL "
                "AND (EXISTS (SELECT 1 FROM portal_codes AS n WHERE n.portal_id = c.portal_id "
                "             AND n.rowid > c.rowid) "
                "     OR (used IS NULL AND expires <= ?)) "
                "ORDER BY rowid DESC LIMIT ?",
                (id, ts(since), ts(now), limit)).fetchall()
        return [str(r[0]) for r in rows]

    def consumed_code_hashes(self, id: str, since: datetime, limit: int) -> list[str]:
        """Codes that opened ``id`` (the newest ``limit`` created after ``since``)."""
        with self._tx() as c:
            rows = c.execute(
                "SELECT code_hash FROM portal_codes WHERE portal_id = ? AND created > ? "
                "AND consumed IS NOT NULL ORDER BY rowid DESC LIMIT ?",
                (id, ts(since), limit)).fetchall()
        return [str(r[0]) for r in rows]

    def use_code(self, rowid: int, now: datetime) -> bool:
        with self._tx() as c:
            cur = c.execute("UPDATE portal_codes SET used = ?, consumed = ? "
                            "WHERE rowid = ? AND used IS NULL", (ts(now), ts(now), rowid))
        return cur.rowcount == 1

    def fail_code(self, id: str, now: datetime, limit: int) -> int:
        """Count one wrong code; lock at ``limit``. Returns the new failure count."""
        with self._tx() as c:
            c.execute("UPDATE portal_messages SET failed_codes = failed_codes + 1 WHERE id = ?",
                      (id,))
            r = c.execute("SELECT failed_codes FROM portal_messages WHERE id = ?",
                          (id,)).fetchone()
            failed = int(r[0]) if r else limit
            if failed >= limit:
                c.execute("UPDATE portal_messages SET locked = COALESCE(locked, ?) WHERE id = ?",
                          (ts(now), id))
                c.execute("UPDATE portal_codes SET used = ? WHERE portal_id = ? AND used IS NULL",
                          (ts(now), id))
        return failed

    def reset_failures(self, id: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE portal_messages SET failed_codes = 0 WHERE id = ?", (id,))

    # ------------------------------------------------------------ sessions

    def add_session(self, token_hash: str, id: str, now: datetime, expires: datetime) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO portal_sessions (token_hash, portal_id, created, expires) "
                      "VALUES (?,?,?,?)", (token_hash, id, ts(now), ts(expires)))

    def session_for(self, token_hash: str, now: datetime) -> tuple[str, datetime,
                                                                   datetime] | None:
        """``(portal_id, created, expires)`` of a live session, else None."""
        with self._tx() as c:
            r = c.execute("SELECT portal_id, created, expires FROM portal_sessions "
                          "WHERE token_hash = ? AND expires > ?",
                          (token_hash, ts(now))).fetchone()
        if not r:
            return None
        created, expires = _dt(str(r[1])), _dt(str(r[2]))
        assert created is not None and expires is not None
        return str(r[0]), created, expires

    def end_session(self, token_hash: str) -> None:
        """Delete a session (signed out): its token opens nothing any more."""
        with self._tx() as c:
            c.execute("DELETE FROM portal_sessions WHERE token_hash = ?", (token_hash,))

    def extend_session(self, token_hash: str, now: datetime, expires: datetime) -> None:
        """Move a live session's end to ``expires`` (never earlier, never revive one)."""
        with self._tx() as c:
            c.execute("UPDATE portal_sessions SET expires = ? WHERE token_hash = ? "
                      "AND expires > ? AND expires < ?",
                      (ts(expires), token_hash, ts(now), ts(expires)))
