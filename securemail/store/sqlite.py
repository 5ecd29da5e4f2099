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
from collections.abc import Iterator
from pathlib import Path

from securemail.errors import StoreError

__all__ = ["ensure_schema", "open_database", "transaction"]


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
                raise StoreError(f"{p}: cannot open the store ({type(exc).__name__})") \
                    from None
            time.sleep(0.02)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{p}: cannot open the store ({type(exc).__name__})") from None


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
        raise StoreError(f"cannot create tables ({type(exc).__name__})") from None


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
            conn.execute("ROLLBACK TO nested")
            conn.execute("RELEASE nested")
            raise
        conn.execute("RELEASE nested")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
