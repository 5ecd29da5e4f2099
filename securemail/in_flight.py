"""Messages being processed, on any event loop or thread, and the delivery
ledger they share.

:class:`InFlight` runs the pipeline shielded from its caller's cancellation,
on whichever event loop the caller uses; :class:`ThreadSafeLedger` keeps the
delivery ledger's transactions from interleaving across threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import hashlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from securemail.deliveries import DeliveryLedger
from securemail.errors import StoreError, TemporaryFailure
from securemail.model import Outcome, Status

__all__ = ["InFlight", "ThreadSafeLedger"]

log = logging.getLogger("securemail.message")

CLOSING = ("the relay was closed while this message was being processed: retry the same"
           " bytes (copies upstream accepted are not sent again)")


# Copies upstream accepted that the store could not note (a full disk): kept
# in memory, so that the sender's retry to this process does not send them
# again. Bounded; the oldest go first.
UNRECORDED_LIMIT = 10_000


class ThreadSafeLedger:
    """The delivery ledger on a connection of its own, one thread at a time:
    relay threads must not interleave transactions on one sqlite3 connection.

    When the store cannot take a record (disk full, read-only), what upstream
    accepted is kept in this process's memory instead and still counts for
    :meth:`completed`: the caller gets its error (451), and the retry sends
    only what is missing."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._ledger = DeliveryLedger(conn)
        self._lock = threading.Lock()
        self._unrecorded: dict[str, tuple[dict[str, Status], dict[str, str]]] = {}

    def completed(self, digest: str, now: dt.datetime | None = None) -> dict[str, Status]:
        with self._lock:
            kept = self._unrecorded.get(digest)
            try:
                found = self._ledger.completed(digest, now)
            except StoreError:
                if kept is None:
                    raise
                found = {}
            return {**found, **kept[0]} if kept else found

    def portal_ids(self, digest: str, now: dt.datetime | None = None) -> dict[str, str]:
        with self._lock:
            kept = self._unrecorded.get(digest)
            try:
                found = self._ledger.portal_ids(digest, now)
            except StoreError:
                if kept is None:
                    raise
                found = {}
            return {**found, **kept[1]} if kept else found

    def record(self, digest: str, statuses: Mapping[str, Status], now: dt.datetime,
               portal_ids: Mapping[str, str] | None = None) -> None:
        with self._lock:
            try:
                self._ledger.record(digest, statuses, now, portal_ids)
            except StoreError as exc:
                if statuses:
                    self._keep(digest, statuses, portal_ids or {}, exc)
                raise

    def forget(self, digest: str) -> None:
        """After a retry succeeded. If the store cannot clear the rows, this
        raises (the sender retries, and the rows that remain make that retry
        send nothing again); the memory entry stays until the rows go."""
        with self._lock:
            self._ledger.forget(digest)
            self._unrecorded.pop(digest, None)

    def _keep(self, digest: str, statuses: Mapping[str, Status],
              portal_ids: Mapping[str, str], exc: StoreError) -> None:
        old = self._unrecorded.pop(digest, ({}, {}))
        self._unrecorded[digest] = ({**old[0], **statuses}, {**old[1], **portal_ids})
        while len(self._unrecorded) > UNRECORDED_LIMIT:
            self._unrecorded.pop(next(iter(self._unrecorded)))
        log.error("upstream accepted copies of message %s but the delivery ledger could not"
                  " note them (%s): kept in this process's memory, so that a retry here"
                  " does not send them again; free the store's disk", digest[:16], exc,
                  extra={"event": {"notice": "ledger-failed", "message_sha256": digest[:16],
                                   "recipients": len(statuses)}})

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class InFlight:
    """The messages being processed, on any event loop or thread.

    Each runs as a task of its own, shielded from its caller: once processing
    has begun, a cancelled caller (a timeout, a client that hung up) does not
    stop delivery and audit half way, which could leave a delivered copy with
    no audit record. What upstream accepted for a caller that stopped waiting
    goes into the delivery ledger, so that the caller's retry of the same
    bytes sends nothing twice; a retry that comes sooner waits for it.
    """

    def __init__(self, ledger: ThreadSafeLedger) -> None:
        self._ledger = ledger
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[Outcome]] = set()
        # Work whose caller stopped waiting, by SHA-256 of the message bytes.
        self._unreported: dict[str, concurrent.futures.Future[None]] = {}
        self.closing = False  # set by finish(): no new work starts

    async def run(self, start: Callable[[], Coroutine[Any, Any, Outcome]], raw: bytes,
                  now: dt.datetime) -> Outcome:
        """``await start()``, shielded; it processes ``raw`` at time ``now``."""
        if self._unreported:
            await self._after_unreported(hashlib.sha256(raw).hexdigest())
        with self._lock:
            if self.closing:  # a retry that waited for an earlier attempt, past close()
                raise TemporaryFailure(CLOSING)
            task = asyncio.get_running_loop().create_task(start())
            self._tasks.add(task)
        task.add_done_callback(self._forget)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                # Not our caller's cancellation: close() interrupted the message.
                # What upstream accepted is in the ledger; the retry sends the rest.
                raise TemporaryFailure(CLOSING) from None
            self._remember_when_done(task, raw, now)
            raise

    def _forget(self, task: asyncio.Task[Outcome]) -> None:
        with self._lock:
            self._tasks.discard(task)

    async def _after_unreported(self, digest: str) -> None:
        with self._lock:
            pending = self._unreported.get(digest)
        if pending is not None:
            await asyncio.wrap_future(pending)

    def _remember_when_done(self, task: asyncio.Task[Outcome], raw: bytes,
                            now: dt.datetime) -> None:
        digest = hashlib.sha256(raw).hexdigest()
        settled: concurrent.futures.Future[None] = concurrent.futures.Future()
        settled.set_running_or_notify_cancel()  # a waiter's cancellation must not cancel it
        with self._lock:
            self._unreported[digest] = settled

        def remember(done: asyncio.Task[Outcome]) -> None:
            try:
                if not done.cancelled() and done.exception() is None:
                    self._record_accepted(done.result(), now)
            finally:
                with self._lock:
                    if self._unreported.get(digest) is settled:
                        del self._unreported[digest]
                settled.set_result(None)

        task.add_done_callback(remember)

    def _record_accepted(self, outcome: Outcome, now: dt.datetime) -> None:
        accepted = {r.address: r.status for r in outcome.recipients
                    if r.status in (Status.DELIVERED, Status.SEALED)}
        portal_ids = {r.address: r.portal_id for r in outcome.recipients if r.portal_id}
        try:
            self._ledger.record(outcome.message_sha256, accepted, now, portal_ids)
        except StoreError:
            log.error("a message delivered after its sender stopped waiting could not be "
                      "noted in the delivery ledger; a retry may send it again",
                      extra={"event": {"notice": "ledger-failed"}})

    async def finish(self, timeout: float, grace: float = 30.0) -> None:
        """Wait up to ``timeout`` for the work in flight; then interrupt what is
        left (its cancellation records what upstream accepted, in the audit log
        and the ledger, which are still open) and wait up to ``grace`` for that."""
        with self._lock:
            self.closing = True
        await self.wait(timeout)
        with self._lock:
            left = [t for t in self._tasks if not t.done()]
        if not left:
            return
        log.warning("closing with %d message(s) still in flight after %s s: interrupting"
                    " them (copies upstream accepted are recorded; a retry sends the rest)",
                    len(left), timeout)
        here = asyncio.get_running_loop()
        for task in left:
            loop = task.get_loop()
            if loop is here:
                task.cancel()
                continue
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # that loop is closed: its work is over
                continue
        await self.wait(grace)

    async def wait(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) for the work in flight on every loop."""
        with self._lock:
            tasks = list(self._tasks)
        here = asyncio.get_running_loop()
        waits: list[asyncio.Future[Any]] = []
        for task in tasks:
            loop = task.get_loop()
            if loop is here:
                waits.append(task)
                continue
            done: concurrent.futures.Future[None] = concurrent.futures.Future()
            done.set_running_or_notify_cancel()
            try:  # Task.add_done_callback belongs to the task's own loop thread
                loop.call_soon_threadsafe(task.add_done_callback,
                                          lambda _t, done=done: done.set_result(None))
            except RuntimeError:  # that loop is closed: its work is over
                continue
            waits.append(asyncio.wrap_future(done))
        if waits:
            await asyncio.wait(waits, timeout=timeout)
