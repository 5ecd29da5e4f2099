"""AuditLog: durable, hash-chained appends with group commit and signed checkpoints.

All writes go through one writer thread per AuditLog. Records that arrive
while a commit is in flight are committed together in the next transaction
(one fsync for the lot), which is what lets many in-flight messages be
recorded durably at a high rate. Every caller waits until the transaction
holding its records has committed: "recorded" always means "on disk".

Each transaction takes SQLite's write lock (``BEGIN IMMEDIATE``) before it
reads the chain head, so several processes appending to one store serialise
and never fork the chain.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securemail.audit import store
from securemail.audit.chain import (
    canonical,
    checkpoint_message,
    ensure_signing_key,
    head_message,
    key_id,
    record_hash,
    sign,
)
from securemail.audit.records import RECORD_VERSION, event_fields, format_time, message_fields
from securemail.config import Settings
from securemail.errors import StoreError
from securemail.model import Envelope, Outcome
from securemail.store.sqlite import open_database

__all__ = ["AuditLog", "Chainer", "Tip", "signing_key_path"]

log = logging.getLogger("securemail.audit")


def signing_key_path(settings: Settings) -> Path:
    if settings.audit.signing_key_file:
        return settings.resolve(settings.audit.signing_key_file)
    return settings.storage.data_dir / "audit-signing.key"


@functools.lru_cache(maxsize=16)  # the last checkpoint's time: computed once per checkpoint
def _due_text(cp_at: str, seconds: int) -> str:
    # Our format ends in "Z", which 3.11's fromisoformat reads as UTC.
    return format_time(datetime.fromisoformat(cp_at) + timedelta(seconds=seconds))


@dataclass(frozen=True, slots=True)
class Tip:
    """Where the chain ends: the newest record and the last checkpoint."""

    seq: int  # 0 for an empty store
    hash: str
    checkpoint_seq: int
    checkpoint_at: str  # "" until the store has a record


@dataclass(slots=True)
class Chainer:
    """Appends records inside an open transaction; knows the checkpoint and the
    head-signature policy.

    An append writes its records and nothing else, unless it signs the head:
    it does when this writer's last head signature is ``head_sign_seconds``
    old or more (at a practice's pace, every append), or when the append adds
    a checkpoint. Under sustained load one head signature a period covers all
    of that period's transactions, and the writer thread signs the newest
    record when the period ends (``sign_pending``). ``head_sign_seconds = 0``
    signs every transaction.
    """

    key: Ed25519PrivateKey
    checkpoint_every: int
    checkpoint_seconds: int
    instance_id: str = ""
    head_sign_seconds: float = 0.0
    kid: str = field(init=False)
    unsigned_since: float | None = field(init=False, default=None)  # monotonic time
    _tip: Tip | None = field(init=False, default=None)
    _signed_at: float = field(init=False, default=-math.inf)

    def __post_init__(self) -> None:
        self.kid = key_id(self.key.public_key())

    def tip(self, conn: sqlite3.Connection) -> Tip:
        """Where the stored chain ends, read inside the caller's transaction.

        The tip this writer last wrote is kept in memory and checked against
        the newest stored record (one indexed read): when another process
        appended meanwhile, or our last transaction rolled back, it is read
        again, the checkpoint part from the signed head row (which every
        checkpoint rewrites).
        """
        cached = self._tip
        last = store.last_record(conn)
        if cached is not None and last == (cached.seq, cached.hash):
            return cached
        h = store.head(conn)
        if last is None:
            return Tip(h.seq, h.hash, h.last_checkpoint_seq, h.last_checkpoint_at)
        return Tip(last[0], last[1], h.last_checkpoint_seq,
                   h.last_checkpoint_at or store.first_at(conn))

    def append(self, conn: sqlite3.Connection, items: list[tuple[dict[str, Any], str]]) -> int:
        """Chain ``(fields, at)`` items after the tip, with due checkpoints; sign the
        head when due."""
        rows, tip = self._chain(self.tip(conn), items)
        store.insert(conn, rows)
        now = time.monotonic()
        if now - self._signed_at >= self.head_sign_seconds or any(
                r[1] == "checkpoint" for r in rows):
            self._sign(conn, tip, now)
        elif self.unsigned_since is None:
            self.unsigned_since = now
        self._tip = tip
        return tip.seq

    def _chain(self, tip: Tip, items: list[tuple[dict[str, Any], str]]
               ) -> tuple[list[tuple[int, str, str, str, str, str]], Tip]:
        seq, prev = tip.seq, tip.hash
        cp_seq, cp_at = tip.checkpoint_seq, tip.checkpoint_at
        cp_due_at = self._due_at(cp_at)
        rows: list[tuple[int, str, str, str, str, str]] = []
        for fields, at in items:
            seq, prev = _link(rows, fields, seq, prev, at)
            if not cp_at:
                cp_at = at  # the interval runs from the first record of a new store
                cp_due_at = self._due_at(cp_at)
            due_count = seq - cp_seq >= self.checkpoint_every
            if due_count or at >= cp_due_at:
                cp = self.checkpoint_fields(seq, prev, "count" if due_count else "interval")
                seq, prev = _link(rows, cp, seq, prev, at)
                cp_seq, cp_at = seq, at
                cp_due_at = self._due_at(cp_at)
        return rows, Tip(seq, prev, cp_seq, cp_at)

    def _due_at(self, cp_at: str) -> str:
        """When the next interval checkpoint is due, as record time text (which
        sorts in time order): compared as strings, not parsed per record."""
        if not cp_at:
            return ""
        return _due_text(cp_at, self.checkpoint_seconds)

    def checkpoint_fields(self, covers_seq: int, covers_hash: str, reason: str) -> dict[str, Any]:
        return {  # keys in sorted order (cheaper to encode canonically)
            "covers_hash": covers_hash, "covers_seq": covers_seq, "instance_id": self.instance_id,
            "key_id": self.kid, "kind": "checkpoint", "reason": reason,
            "signature": sign(self.key, checkpoint_message(covers_seq, covers_hash)),
        }

    def _sign(self, conn: sqlite3.Connection, tip: Tip, now: float) -> None:
        store.set_head(conn, store.Head(tip.seq, tip.hash,
                                        sign(self.key, head_message(tip.seq, tip.hash)),
                                        tip.checkpoint_seq, tip.checkpoint_at))
        self._signed_at, self.unsigned_since = now, None

    def set_head(self, conn: sqlite3.Connection, seq: int, digest: str, cp_seq: int,
                 cp_at: str) -> None:
        """Sign ``(seq, digest)`` as the head after a record written outside ``append``."""
        tip = Tip(seq, digest, cp_seq, cp_at)
        self._sign(conn, tip, time.monotonic())
        self._tip = tip

    def sign_pending(self, conn: sqlite3.Connection) -> bool:
        """Sign the newest record as the head if the signed head trails it; True if it did."""
        self.unsigned_since = None
        tip = self.tip(conn)
        if tip.seq == 0 or store.head(conn).seq == tip.seq:
            return False
        self._sign(conn, tip, time.monotonic())
        self._tip = tip
        return True

    def forget(self) -> None:
        """After a rolled-back transaction: read the tip again, sign the next append."""
        self._tip = None
        self._signed_at = -math.inf

    def checkpoint(self, conn: sqlite3.Connection, at: str, reason: str) -> bool:
        """Sign the head as a checkpoint record if records follow the last checkpoint."""
        tip = self.tip(conn)
        if tip.seq == tip.checkpoint_seq:
            self.sign_pending(conn)  # e.g. records after a crash, never signed
            return False
        seq = tip.seq + 1
        record = {**self.checkpoint_fields(tip.seq, tip.hash, reason), "v": RECORD_VERSION,
                  "seq": seq, "at": at, "prev_hash": tip.hash}
        digest = record_hash(record)
        store.insert(conn, [(seq, "checkpoint", at, tip.hash, digest,
                             canonical(record).decode())])
        self.set_head(conn, seq, digest, seq, at)
        return True


def _link(rows: list[tuple[int, str, str, str, str, str]], fields: Mapping[str, Any], seq: int,
          prev: str, at: str) -> tuple[int, str]:
    """Append one record after ``(seq, prev)``; returns the new ``(seq, hash)``."""
    seq += 1
    # Encoded once: hashed, then stored as is.
    encoded = canonical({**fields, "at": at, "prev_hash": prev, "seq": seq, "v": RECORD_VERSION})
    digest = hashlib.sha256(encoded).hexdigest()
    rows.append((seq, str(fields["kind"]), at, prev, digest, encoded.decode()))
    return seq, digest


class _Job:
    """Records from one async caller, waiting for the writer thread's next commit.

    The caller's loop future is settled from the writer thread with one
    ``call_soon_threadsafe`` per batch and loop (one self-pipe wake-up for the
    lot) instead of a concurrent Future + ``wrap_future`` per record.
    """

    __slots__ = ("future", "items", "loop")

    def __init__(self, items: list[tuple[dict[str, Any], str]],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.items = items
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()


def _settle(jobs: list[_Job], err: BaseException | None) -> None:
    """Runs in the callers' loop: report the commit (or its failure) to each job."""
    for j in jobs:
        if j.future.done():  # the caller was cancelled meanwhile
            continue
        if err is None:
            j.future.set_result(None)
        else:
            j.future.set_exception(err)


def _notify(jobs: list[_Job], err: BaseException | None) -> None:
    """From the writer thread: settle ``jobs``, one wake-up per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
    for j in jobs:
        by_loop.setdefault(j.loop, []).append(j)
    for loop, group in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, group, err)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass


_STOP = object()
_WAKE = object()  # a synchronous append left the head unsigned: schedule its signature


class AuditLog:
    """The audit API used by the pipeline, the portal and the CLI."""

    def __init__(self, write_conn: sqlite3.Connection, read_conn: sqlite3.Connection,
                 chainer: Chainer, *, owns: tuple[sqlite3.Connection, ...] = ()) -> None:
        self._write = write_conn
        self.conn = read_conn  # for exports, verification and reports
        self.chainer = chainer
        self._owns = owns
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="securemail-audit", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, settings: Settings, *, conn: sqlite3.Connection | None = None,
             instance_id: str = "") -> AuditLog:
        key = ensure_signing_key(signing_key_path(settings))
        chainer = Chainer(key, settings.audit.checkpoint_every, settings.audit.checkpoint_seconds,
                          instance_id, settings.audit.head_sign_ms / 1000)
        if conn is None:
            path = settings.storage.sqlite_path
            write, read = open_database(path), open_database(path)
            owns: tuple[sqlite3.Connection, ...] = (write, read)
        else:
            # Never share the caller's connection with our thread: its transactions
            # would interleave with ours. Open our own on the same file.
            row = conn.execute("PRAGMA database_list").fetchone()
            file = str(row[2]) if row is not None else ""
            if file:
                write, read = open_database(file), conn
                owns = (write,)
            else:  # in-memory store (tests): one connection, used only by our thread for writes
                write = read = conn
                owns = ()
        store.prepare(write)
        return cls(write, read, chainer, owns=owns)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.chainer.key.public_key()

    # ------------------------------------------------------------ writing

    async def record_outcome(self, envelope: Envelope, outcome: Outcome, *, config_digest: str,
                             instance_id: str, now: datetime,
                             events: Sequence[tuple[str, Mapping[str, str | int | None]]] = (),
                             ) -> None:
        """One record per recipient, plus ``events`` (portal events that belong to
        this message, e.g. "notified"); returns once all are durable, committed
        together with other messages' records (group commit)."""
        at = format_time(now)
        bodies = message_fields(envelope, outcome, config_digest=config_digest,
                                instance_id=instance_id)
        bodies += [event_fields(kind, dict(fields)) for kind, fields in events]
        job = self._submit(_Job([(b, at) for b in bodies], asyncio.get_running_loop()))
        await job.future

    def record_event(self, kind: str, /, *, now: datetime, **fields: str | int | None) -> None:
        """A portal or admin event (see ``records.EVENT_FIELDS``); durable on return.

        ``kind`` is one of ``records.PORTAL_EVENTS`` or ``records.ADMIN_EVENTS``
        (a ``portal.`` or ``admin.`` prefix is accepted). A field name outside
        the allow-list raises ValueError: content never reaches the log.
        """
        body = event_fields(kind, fields)
        self._append_now([(body, format_time(now))])

    def append_many(self, bodies: list[dict[str, Any]], *, now: datetime) -> None:
        """Append prepared record bodies in one transaction (bench and import tools)."""
        at = format_time(now)
        self._append_now([(b, at) for b in bodies])

    def _append_now(self, items: list[tuple[dict[str, Any], str]]) -> None:
        # Synchronous callers commit in their own thread (no hand-off to the
        # writer); the lock keeps them and the writer off the connection at once.
        def append(conn: sqlite3.Connection) -> bool:
            was_signed = self.chainer.unsigned_since is None
            self.chainer.append(conn, items)
            return was_signed and self.chainer.unsigned_since is not None

        if self.run_in_transaction(append):
            self._queue.put(_WAKE)  # the writer thread signs the head when the period ends

    def checkpoint(self, now: datetime, *, reason: str = "requested") -> bool:
        at = format_time(now)
        result: bool = self.run_in_transaction(lambda c: self.chainer.checkpoint(c, at, reason))
        return result

    def run_in_transaction(self, call: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``call(conn)`` inside its own durable write transaction."""
        if self._closed:
            raise StoreError("audit: the log is closed")
        return self._transaction(call)

    def _transaction(self, call: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            try:
                with store.transaction(self._write) as conn:
                    return call(conn)
            except BaseException as exc:
                self.chainer.forget()  # what it cached may have been rolled back
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"audit: cannot append ({type(exc).__name__})") from None
                raise

    def close(self, now: datetime) -> None:
        """Commit what is queued, write a final checkpoint, close our connections."""
        if self._closed:
            return
        self._closed = True  # refuse new records from here on
        self._queue.put(_STOP)
        self._thread.join()  # the writer commits everything queued before the stop
        late_jobs: list[_Job] = []
        while True:  # a caller that raced with close: tell it, never leave it waiting
            try:
                late = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(late, _Job):
                late_jobs.append(late)
        _notify(late_jobs, StoreError("audit: the log is closed"))
        try:
            at = format_time(now)
            self._transaction(lambda c: self.chainer.checkpoint(c, at, "close"))
        finally:
            for c in self._owns:
                c.close()

    def _submit(self, job: _Job) -> _Job:
        if self._closed:
            raise StoreError("audit: the log is closed")
        self._queue.put(job)
        return job

    # ------------------------------------------------------------ writer thread

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self._sign_due_in())
            except queue.Empty:
                self._sign_pending()
                continue
            if first is _STOP:
                return
            batch: list[_Job] = [] if first is _WAKE else [first]
            stop = False
            while True:  # take everything that queued up while we were busy
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                if nxt is not _WAKE:
                    batch.append(nxt)
            if batch:
                self._commit(batch)
            if stop:
                return

    def _sign_due_in(self) -> float | None:
        """Seconds until the unsigned part of the head must be signed (None: nothing is)."""
        since = self.chainer.unsigned_since
        if since is None:
            return None
        return max(0.0, since + self.chainer.head_sign_seconds - time.monotonic())

    def _sign_pending(self) -> None:
        try:
            with self._lock, store.transaction(self._write) as conn:
                self.chainer.sign_pending(conn)
        except Exception:  # noqa: BLE001 - try again next period; the records are durable
            self.chainer.forget()
            self.chainer.unsigned_since = time.monotonic()
            log.warning("audit: could not sign the chain head; retrying",
                        extra={"event": {"notice": "audit-head-sign-failed"}})

    def _commit(self, batch: list[_Job]) -> None:
        items = [item for j in batch for item in j.items]
        try:
            with self._lock, store.transaction(self._write) as conn:
                self.chainer.append(conn, items)
        except Exception as exc:  # noqa: BLE001 - the writer must outlive any one batch
            self.chainer.forget()
            err = StoreError(f"audit: cannot append ({type(exc).__name__})") if isinstance(
                exc, sqlite3.Error) else exc
            _notify(batch, err)
        else:
            _notify(batch, None)
