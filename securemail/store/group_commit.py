"""Group commit for writes that the event loop must not wait on one fsync at a time.

A :class:`GroupCommitter` owns one writer thread. ``await committer.run(work)``
queues ``work(conn)``; the thread runs everything that queued up while the
previous commit was in flight inside one ``BEGIN IMMEDIATE ... COMMIT`` (one
fsync for the lot) and then wakes each caller. Every job runs in a savepoint
of its own, so one job's error fails that job only. "Done" always means "on
disk": a caller is woken only after the transaction holding its work has
committed.

The audit log has its own writer (records are chained across jobs); this one
serves independent rows such as sealed portal messages.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from securemail.errors import StoreError
from securemail.store.sqlite import describe_fault

__all__ = ["GroupCommitter"]

_STOP = object()


class _Job:
    __slots__ = ("error", "future", "loop", "work")

    def __init__(self, work: Callable[[sqlite3.Connection], None],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.work = work
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.error: BaseException | None = None


def _settle(jobs: list[_Job]) -> None:
    """Runs in the callers' loop: report each job's result."""
    for job in jobs:
        if job.future.done():  # the caller was cancelled meanwhile
            continue
        if job.error is None:
            job.future.set_result(None)
        else:
            job.future.set_exception(job.error)


def _notify(jobs: list[_Job]) -> None:
    """From the writer thread: one wake-up per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
    for job in jobs:
        by_loop.setdefault(job.loop, []).append(job)
    for loop, group in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, group)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass


class GroupCommitter:
    """Commits queued write jobs together from one background thread.

    ``lock`` is the lock that other users of ``conn`` hold around their own
    transactions (sqlite3 connections must not be used concurrently); best is a
    connection of its own (``owns_connection=True``: closed by :meth:`close`).
    """

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock | threading.Lock, *,
                 name: str, what: str, owns_connection: bool = False) -> None:
        self._conn = conn
        self._owns = owns_connection
        self._lock = lock
        self._what = what  # for error messages: "portal store"
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def run(self, work: Callable[[sqlite3.Connection], None]) -> None:
        """Run ``work(conn)`` in the next group transaction; returns once committed."""
        if self._closed:
            raise StoreError(f"{self._what}: closed")
        job = _Job(work, asyncio.get_running_loop())
        self._queue.put(job)
        await job.future

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        late: list[_Job] = []
        while True:  # a caller that raced with close: tell it, never leave it waiting
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Job):
                item.error = StoreError(f"{self._what}: closed")
                late.append(item)
        _notify(late)
        if self._owns:
            self._conn.close()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch: list[_Job] = [first]
            stop = False
            while True:  # everything that queued up while we were busy
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Job]) -> None:
        conn = self._conn
        try:
            with self._lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for job in batch:
                        conn.execute("SAVEPOINT job")
                        try:
                            job.work(conn)
                        except Exception as exc:  # noqa: BLE001 - fails this job only
                            if not conn.in_transaction:
                                # SQLite ended the whole transaction (a full disk, an
                                # I/O error): the batch fails with this error.
                                raise
                            conn.execute("ROLLBACK TO job")
                            job.error = StoreError(
                                f"{self._what} failed ({describe_fault(exc)})") if isinstance(
                                exc, sqlite3.Error) else exc
                        conn.execute("RELEASE job")
                    conn.execute("COMMIT")
                except BaseException:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:  # a failed COMMIT may have rolled back already
                        pass
                    raise
        except Exception as exc:  # noqa: BLE001 - the writer must outlive any one batch
            err = StoreError(f"{self._what} failed ({describe_fault(exc)})")
            for job in batch:
                job.error = job.error or err
        _notify(batch)
