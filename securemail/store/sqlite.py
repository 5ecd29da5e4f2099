"""The embedded SQLite store: one file, WAL journal, durable commits.

Each module that keeps state (directory, keys, audit, portal, deliveries) owns
its tables and creates them with ``CREATE TABLE IF NOT EXISTS`` through
:func:`ensure_schema`; this module only opens connections the same way
everywhere.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from securemail.errors import StoreError

__all__ = [
    "describe_fault", "ensure_schema", "on_read_only_filesystem", "open_database",
    "open_for_reading", "rollback_quietly", "transaction",
]


# SQLite's result codes as an operator reads them; the codes are SQLite's own
# words, never data. Anything else is named by its class.
_FAULTS = {
    "SQLITE_FULL": "disk full",
    "SQLITE_READONLY": "read-only",
    "SQLITE_BUSY": "locked by another process",
    "SQLITE_LOCKED": "locked",
    "SQLITE_IOERR": "I/O error",
    "SQLITE_CORRUPT": "the file is damaged",
    "SQLITE_NOTADB": "not an SQLite database",
    "SQLITE_CANTOPEN": "cannot open the file",
    "SQLITE_PERM": "permission denied",
    "SQLITE_AUTH": "permission denied",
}


def describe_fault(exc: BaseException) -> str:
    """A short, content-free cause for an operator: "disk full", "read-only",
    "OperationalError"..."""
    name = getattr(exc, "sqlite_errorname", None)
    if isinstance(name, str):
        for code, words in _FAULTS.items():
            if name == code or name.startswith(code + "_"):
                return f"{type(exc).__name__}: {words}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def open_database(path: str | Path, *, timeout: float = 30.0) -> sqlite3.Connection:
    """Open (creating if needed) the store at ``path``.

    ``synchronous=FULL`` in WAL mode makes every commit durable (fsync of the
    WAL) before ``commit()`` returns: the relay answers 250 only after that.
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{p.parent}: cannot create the store's folder ({exc.strerror})") \
            from None
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _connect(p, timeout)
        except sqlite3.OperationalError as exc:
            # Switching a new file to WAL while another process does the same can
            # report "locked" without SQLite's busy handler ever waiting: retry.
            if "locked" not in str(exc) and "busy" not in str(exc) \
                    or time.monotonic() > deadline:
                raise StoreError(f"{p}: cannot open the store ({describe_fault(exc)})") \
                    from None
            time.sleep(0.02)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{p}: cannot open the store ({describe_fault(exc)})") from None


def on_read_only_filesystem(path: str | Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def open_for_reading(path: str | Path, *, timeout: float = 30.0) -> sqlite3.Connection:
    """Open an existing store only to read it: nothing is created or changed,
    so a backup or a snapshot on read-only media can be verified and exported.

    On read-only media SQLite cannot make the WAL's shared-memory index; when
    the ``-wal`` file holds nothing, the store is then read as immutable (nobody
    can be writing to it). Records still only in a ``-wal`` file there cannot be
    read that way: the error says to copy the folder to writable disk first.
    """
    p = Path(path).resolve()
    uri = "file:" + urllib.parse.quote(str(p)) + "?mode=ro"
    try:
        return _reader(uri, timeout)
    except sqlite3.Error as exc:
        wal = p.with_name(p.name + "-wal")
        if not on_read_only_filesystem(p):
            raise StoreError(f"{p}: cannot open the store ({describe_fault(exc)})") from None
        if wal.exists() and wal.stat().st_size > 0:
            raise StoreError(
                f"{p}: on read-only media, and its {wal.name} file holds records not yet"
                " in the main file, which SQLite can only read with write access: copy"
                " the folder (with its -wal and -shm files) to writable disk and run"
                " this there") from None
    try:
        return _reader(uri + "&immutable=1", timeout)
    except sqlite3.Error as exc:
        raise StoreError(f"{p}: cannot open the store ({describe_fault(exc)})") from None


def _reader(uri: str, timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens it for real
    except BaseException:
        conn.close()
        raise
    return conn


def _connect(p: Path, timeout: float) -> sqlite3.Connection:
    # Owner-only from the first byte (it holds addresses and audit records);
    # SQLite gives the -wal and -shm files the same mode. Only a file we create
    # here (O_EXCL: a new inode no SQLite connection holds) is opened and closed
    # by us: closing any descriptor of a file drops this process's POSIX locks
    # on it, SQLite's included.
    with contextlib.suppress(FileExistsError):  # the real file (a symlinked store too)
        os.close(os.open(os.path.realpath(p), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    conn = sqlite3.connect(p, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def ensure_schema(conn: sqlite3.Connection, ddl: str) -> None:
    """Run ``CREATE ... IF NOT EXISTS`` statements (idempotent).

    Inside an open transaction the statements join it (``executescript`` would
    commit it first), cut where SQLite itself sees a statement end.
    """
    try:
        if conn.in_transaction:
            for statement in _statements(ddl):
                conn.execute(statement)
        else:
            conn.executescript(ddl)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot create tables ({describe_fault(exc)})") from None


def _statements(script: str) -> Iterator[str]:
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip():
        yield pending


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (durable on return), rollback on error.

    Inside a transaction already open on ``conn`` this is a savepoint: its
    writes commit with the outer transaction (an admin change and its audit
    record, together), and an error undoes only its own part.
    """
    if conn.in_transaction:
        conn.execute("SAVEPOINT nested")
        try:
            yield conn
        except BaseException:
            rollback_quietly(conn, "ROLLBACK TO nested", "RELEASE nested")
            raise
        conn.execute("RELEASE nested")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        rollback_quietly(conn, "ROLLBACK")
        raise
    conn.execute("COMMIT")


def rollback_quietly(conn: sqlite3.Connection, *statements: str) -> None:
    """Roll back after an error, which stays the error raised: SQLite ends the
    transaction itself on some faults (a full disk, an I/O error), and the
    "no transaction is active" of a second rollback must not hide why."""
    if not conn.in_transaction:
        return
    for statement in statements:
        with contextlib.suppress(sqlite3.Error):
            conn.execute(statement)
