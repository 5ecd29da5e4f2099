"""GroupCommitter: concurrent writes share commits; one bad job fails alone."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from securemail.errors import StoreError
from securemail.store.group_commit import GroupCommitter
from securemail.store.sqlite import open_database


def _store(tmp_path: Path) -> tuple[sqlite3.Connection, list[str]]:
    conn = open_database(tmp_path / "s.db")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    begun: list[str] = []
    conn.set_trace_callback(lambda sql: begun.append(sql) if sql.startswith("BEGIN") else None)
    return conn, begun


def _rows(tmp_path: Path) -> list[tuple[int, str]]:
    fresh = sqlite3.connect(tmp_path / "s.db")  # another connection: sees only what committed
    try:
        return fresh.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    finally:
        fresh.close()


def test_concurrent_writes_are_committed_together_and_durable_on_return(tmp_path: Path) -> None:
    conn, begun = _store(tmp_path)
    committer = GroupCommitter(conn, threading.Lock(), name="test", what="test store")

    async def write(i: int) -> None:
        await committer.run(lambda c: c.execute("INSERT INTO t VALUES (?, ?)", (i, f"v{i}")))
        assert (i, f"v{i}") in _rows(tmp_path)  # committed before run() returned

    async def burst() -> None:
        await asyncio.gather(*(write(i) for i in range(200)))

    asyncio.run(burst())
    committer.close()
    assert len(_rows(tmp_path)) == 200
    assert len(begun) < 100, f"{len(begun)} transactions for 200 concurrent writes"


def test_a_failing_job_fails_alone(tmp_path: Path) -> None:
    conn, _ = _store(tmp_path)
    committer = GroupCommitter(conn, threading.Lock(), name="test", what="test store")

    async def main() -> list[object]:
        jobs = [committer.run(lambda c: c.execute("INSERT INTO t VALUES (1, 'a')")),
                committer.run(lambda c: c.execute("INSERT INTO t VALUES (1, 'duplicate')")),
                committer.run(lambda c: c.execute("INSERT INTO t VALUES (2, 'b')"))]
        return list(await asyncio.gather(*jobs, return_exceptions=True))

    results = asyncio.run(main())
    committer.close()
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], StoreError)
    assert "IntegrityError" in str(results[1]) and "duplicate" not in str(results[1])
    assert _rows(tmp_path) == [(1, "a"), (2, "b")]


def test_closed_committer_refuses_work(tmp_path: Path) -> None:
    conn, _ = _store(tmp_path)
    committer = GroupCommitter(conn, threading.Lock(), name="test", what="test store")
    committer.close()
    with pytest.raises(StoreError, match="test store: closed"):
        asyncio.run(committer.run(lambda c: None))
    assert _rows(tmp_path) == []
