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
import fcntl
import functools
import hashlib
import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securemail.audit import store
from securemail.audit.chain import (
    Signer,
    canonical,
    canonical_object,
    checkpoint_message,
    ensure_signing_key,
    head_message,
    key_id,
    load_signing_key,
    signature_valid,
)
from securemail.audit.records import RECORD_VERSION, event_fields, format_time, message_fields
from securemail.config import Settings
from securemail.errors import ConfigError, InputError, StoreError
from securemail.model import Envelope, Outcome
from securemail.store.sqlite import describe_fault, open_database

__all__ = ["AdminEvent", "AuditLog", "Chainer", "check_signing_key", "exclusive_writer_lock",
           "last_signer", "signing_key_path"]

_T = TypeVar("_T")
AdminEvent = tuple[str, Mapping[str, str | int | None]]  # (kind, fields) of one event


def signing_key_path(settings: Settings) -> Path:
    if settings.audit.signing_key_file:
        return settings.resolve(settings.audit.signing_key_file)
    return settings.storage.data_dir / "audit-signing.key"


def _signing_key_for(conn: sqlite3.Connection, path: Path, db: Path | None
                     ) -> Ed25519PrivateKey:
    """The key that goes on signing this store's chain.

    A new key is generated only for a store with no records yet. A store that
    holds records must go on with the key that signed them: a key generated in
    place of a lost one, or another installation's key, would sign checkpoints
    that make the whole history fail verification (and so refuse export and
    report). That is an operator error to fix, named with the file at fault.
    """
    key = check_signing_key(conn, path, db)
    return key if key is not None else ensure_signing_key(path)


def _writers_lock_file(db: Path) -> int:
    """The lock file beside the store, opened for locking (created 0644 if
    missing, and given to the store's owner when made by root). Never the
    store file itself: closing any descriptor of a file drops all of a
    process's POSIX locks on it, SQLite's included."""
    real = Path(os.path.realpath(db))  # one lock per store, whatever path names it
    path = real.with_name(real.name + ".writers")
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"{path}: cannot open the audit writers' lock file"
                         f" ({exc.strerror or type(exc).__name__})") from None
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and st.st_mode & 0o777 != 0o644:
            os.fchmod(fd, 0o644)  # readable by the service user whatever the umask
        if os.geteuid() == 0 and st.st_uid == 0:
            owner = db.stat()
            os.fchown(fd, owner.st_uid, owner.st_gid)
    except OSError:
        pass  # locking still works; only the convenience failed
    return fd


def _shared_writer_lock(db: Path) -> int:
    """A shared flock held while this log is open: every writer holds one;
    ``audit new-chain`` needs it to itself."""
    fd = _writers_lock_file(db)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError("audit: the store is being moved to a new chain (audit new-chain);"
                         " try again when it has finished") from None
    except OSError as exc:
        os.close(fd)
        raise StoreError(f"audit: cannot lock {db}.writers ({exc.strerror})") from None
    return fd


@contextmanager
def exclusive_writer_lock(db: Path) -> Iterator[None]:
    """Held by ``audit new-chain``: refuses while any other process (a running
    relay, a CLI import) has the audit log open, and keeps them out meanwhile."""
    fd = _writers_lock_file(db)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{db}: another securemail process has the audit log open"
                             " (a running relay?): stop it first") from None
        except OSError as exc:
            raise StoreError(f"audit: cannot lock {db}.writers ({exc.strerror})") from None
        yield
    finally:
        os.close(fd)


def check_signing_key(conn: sqlite3.Connection, path: Path, db: Path | None
                      ) -> Ed25519PrivateKey | None:
    """The key at ``path`` if it is the one that signed the records in the store
    on ``conn``; None when the store has no records yet (any key will do, and
    none is created here). Raises :class:`ConfigError` otherwise."""
    if not store.has_audit_tables(conn):
        return None
    h = store.head(conn)
    if h.seq == 0:
        return None
    where = f"the store {db}" if db is not None else "this store"
    if not path.exists():
        raise ConfigError(str(path), "", (
            f"the audit signing key (audit.signing_key_file) is missing, but {where} holds"
            f" {h.seq} records signed"
            " with it: restore the key file from your backup (a new key would make the"
            " existing history fail verification). If the key is lost for good, see"
            " 'Lost signing key' in docs/compliance.md"))
    key = load_signing_key(path)
    expected = last_signer(conn, h)
    found = key_id(key.public_key())
    signed_by_key = expected == found if expected else signature_valid(
        key.public_key(), h.signature, head_message(h.seq, h.hash))
    if not signed_by_key:
        raise ConfigError(str(path), "", (
            f"this audit signing key (key id {found}) did not sign {where}"
            + (f" (its last checkpoint names key id {expected})" if expected else "")
            + ": configure the key that did, or see 'Lost signing key' in docs/compliance.md"))
    return key


def last_signer(conn: sqlite3.Connection, h: store.Head) -> str:
    """The key id named by the store's last checkpoint ("" when there is none)."""
    if not h.last_checkpoint_seq:
        return ""
    for rec in store.iter_records(conn, first_seq=h.last_checkpoint_seq,
                                  last_seq=h.last_checkpoint_seq):
        try:
            body = json.loads(rec.body)
        except ValueError:
            return ""
        return str(body.get("key_id", "")) if isinstance(body, dict) else ""
    return ""


def _start_after_a_wipe(conn: sqlite3.Connection, chainer: Chainer,
                        settings: Settings) -> None:
    """An audit log that is empty while the store holds what was recorded in it
    was wiped: say so, and begin the new chain with a signed ``chain-start``
    (``reason_code`` ``found-empty``, ``count``: the rows that outlived their
    records), so that the wipe stays on record (``audit verify`` notes it).
    The consent on record is forgotten with the records: it is recorded again,
    in the new chain, by the next start or reload."""
    if store.head(conn).seq != 0:  # the usual case: one cheap read, no transaction
        return
    with store.transaction(conn):  # two writers opening at once: one chain-start
        made = store.recorded_history(conn)
        if store.head(conn).seq != 0 or not made:
            return
        logging.getLogger("securemail.audit").error(
            "the audit log in %s is empty, but the store holds %s, each recorded in it when it"
            " was made: its audit records were deleted; a new chain starts with a chain-start"
            " record saying so (restore the store from a backup to get them back)",
            settings.storage.sqlite_path, made.text)
        conn.execute("DROP TABLE IF EXISTS consent_recorded")  # recreated when next used
        at = format_time(datetime.now(UTC))
        chainer.append(conn, [(event_fields("chain-start", {
            "reason_code": "found-empty", "count": made.rows, "actor": "relay"}), at)])
        chainer.checkpoint(conn, at, "chain-start")


@functools.lru_cache(maxsize=16)  # the last checkpoint's time: computed once per checkpoint
def _due_text(cp_at: str, seconds: int) -> str:
    # Our format ends in "Z", which 3.11's fromisoformat reads as UTC.
    return format_time(datetime.fromisoformat(cp_at) + timedelta(seconds=seconds))


Row = tuple[int, str, str, str, str, str]  # seq, kind, at, prev_hash, hash, body


@dataclass(slots=True)
class Chainer:
    """Appends records inside an open transaction; knows the checkpoint policy."""

    key: Ed25519PrivateKey
    checkpoint_every: int
    checkpoint_seconds: int
    instance_id: str = ""
    kid: str = field(init=False)
    signer: Signer = field(init=False)
    _head: store.Head | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.kid = key_id(self.key.public_key())
        self.signer = Signer(self.key)

    def append(self, conn: sqlite3.Connection, items: list[tuple[dict[str, Any], str]]) -> int:
        """Chain ``(fields, at)`` items after the head; add due checkpoints; sign the head.

        The head this writer last wrote is kept in memory and the update is
        guarded by it (``advance_head``), which saves reading it back on every
        transaction; when the store moved on meanwhile (another process
        appended, or our last transaction rolled back), the guard fails and the
        items are chained again after the stored head. No items: nothing is
        written (a head signed over no new record would change nothing but the
        signature, and on an empty store would name a record that is not there).
        """
        if not items:
            return store.head(conn).seq
        cached = self._head
        h = cached if cached is not None else store.head(conn)
        rows, new = self._chain(h, items)
        if cached is None or not store.advance_head(conn, cached, new):
            if cached is not None:
                h = store.head(conn)
                rows, new = self._chain(h, items)
            store.set_head(conn, new)
        store.insert(conn, rows)
        self._head = new
        return new.seq

    def _chain(self, h: store.Head, items: list[tuple[dict[str, Any], str]]
               ) -> tuple[list[Row], store.Head]:
        # The per-record loop is the hot path of a batch: everything it needs is
        # a local, and a record is encoded once (hashed, then stored as is).
        seq, prev = h.seq, h.hash
        cp_seq, cp_at = h.last_checkpoint_seq, h.last_checkpoint_at
        next_cp_seq = cp_seq + self.checkpoint_every
        cp_due_at = self._due_at(cp_at)
        rows: list[Row] = []
        add = rows.append
        dumps, sort_keys, sha256 = orjson.dumps, orjson.OPT_SORT_KEYS, hashlib.sha256
        for fields, at in items:
            seq += 1
            record = {**fields, "at": at, "prev_hash": prev, "seq": seq, "v": RECORD_VERSION}
            if "hash" in record:
                del record["hash"]
            try:
                encoded = dumps(record, option=sort_keys)
            except TypeError:  # anything orjson will not take: the reference encoder decides
                encoded = canonical_object(record)
            digest = sha256(encoded).hexdigest()
            add((seq, str(fields["kind"]), at, prev, digest, encoded.decode()))
            prev = digest
            if not cp_at:
                cp_at = at  # the interval runs from the first record of a new store
                cp_due_at = self._due_at(cp_at)
            if seq >= next_cp_seq or at >= cp_due_at:
                cp = self.checkpoint_fields(seq, prev,
                                            "count" if seq >= next_cp_seq else "interval")
                seq, prev = _link(rows, cp, seq, prev, at)
                cp_seq, cp_at = seq, at
                next_cp_seq = cp_seq + self.checkpoint_every
                cp_due_at = self._due_at(cp_at)
        return rows, self.signed_head(seq, prev, cp_seq, cp_at)

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
            "signature": self.signer.sign(checkpoint_message(covers_seq, covers_hash)),
        }

    def signed_head(self, seq: int, digest: str, cp_seq: int, cp_at: str) -> store.Head:
        return store.Head(seq, digest, self.signer.sign(head_message(seq, digest)), cp_seq, cp_at)

    def set_head(self, conn: sqlite3.Connection, seq: int, digest: str, cp_seq: int,
                 cp_at: str) -> None:
        self._head = None  # written outside append: read it back next time
        store.set_head(conn, self.signed_head(seq, digest, cp_seq, cp_at))

    def checkpoint(self, conn: sqlite3.Connection, at: str, reason: str) -> bool:
        """Sign the head as a checkpoint record if records follow the last checkpoint."""
        h = store.head(conn)
        if h.seq == h.last_checkpoint_seq:
            return False
        rows: list[Row] = []
        seq, digest = _link(rows, self.checkpoint_fields(h.seq, h.hash, reason), h.seq, h.hash,
                            at)
        store.insert(conn, rows)
        self.set_head(conn, seq, digest, seq, at)
        return True


def _link(rows: list[Row], fields: Mapping[str, Any], seq: int, prev: str, at: str
          ) -> tuple[int, str]:
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


class AuditLog:
    """The audit API used by the pipeline, the portal and the CLI."""

    def __init__(self, write_conn: sqlite3.Connection, read_conn: sqlite3.Connection,
                 chainer: Chainer, *, owns: tuple[sqlite3.Connection, ...] = (),
                 writer_lock: int | None = None) -> None:
        self._write = write_conn
        self.conn = read_conn  # for exports, verification and reports
        self.chainer = chainer
        self._owns = owns
        self._writer_lock = writer_lock  # shared flock on the store file while open
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="securemail-audit", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, settings: Settings, *, conn: sqlite3.Connection | None = None,
             instance_id: str = "") -> AuditLog:
        lock: int | None = None
        if conn is None:
            path = settings.storage.sqlite_path
            lock = _shared_writer_lock(path)  # first: nothing to leak if it is refused
            try:
                write, read = open_database(path), open_database(path)
            except BaseException:
                os.close(lock)
                raise
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
        try:
            store.prepare(write)
            key = _signing_key_for(write, signing_key_path(settings),
                                   settings.storage.sqlite_path if conn is None else None)
            chainer = Chainer(key, settings.audit.checkpoint_every,
                              settings.audit.checkpoint_seconds, instance_id)
            _start_after_a_wipe(write, chainer, settings)
        except BaseException:
            for c in owns:
                c.close()
            if lock is not None:
                os.close(lock)
            raise
        return cls(write, read, chainer, owns=owns, writer_lock=lock)

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
        if not bodies:
            return
        job = self._submit(_Job([(b, at) for b in bodies], asyncio.get_running_loop()))
        await job.future

    def record_outcome_now(self, envelope: Envelope, outcome: Outcome, *, config_digest: str,
                           instance_id: str, now: datetime) -> None:
        """:meth:`record_outcome` committed in the calling thread, for a caller
        that can no longer await (an interrupted delivery)."""
        at = format_time(now)
        bodies = message_fields(envelope, outcome, config_digest=config_digest,
                                instance_id=instance_id)
        self._append_now([(b, at) for b in bodies])

    def record_event(self, kind: str, /, *, now: datetime, **fields: str | int | None) -> None:
        """A portal or admin event (see ``records.EVENT_FIELDS``); durable on return.

        ``kind`` is one of ``records.PORTAL_EVENTS`` or ``records.ADMIN_EVENTS``
        (a ``portal.`` or ``admin.`` prefix is accepted). A field name outside
        the allow-list raises ValueError: content never reaches the log.
        """
        body = event_fields(kind, fields)
        self._append_now([(body, format_time(now))])

    def change_and_record(
        self, change: Callable[[sqlite3.Connection], tuple[_T, Sequence[AdminEvent]]], *,
        now: datetime,
    ) -> _T:
        """Run ``change(conn)`` and append the events it returns in ONE durable
        transaction on the store: an administrative change (directory or key
        import) and its audit records are committed together or not at all.

        ``change`` writes through ``conn`` (``store.sqlite.transaction`` inside
        it becomes a savepoint) and returns ``(result, [(kind, fields), ...])``.
        """
        at = format_time(now)

        def call(conn: sqlite3.Connection) -> _T:
            result, events = change(conn)
            items = [(event_fields(kind, dict(fields)), at) for kind, fields in events]
            if items:
                self.chainer.append(conn, items)
            return result

        out: _T = self.run_in_transaction(call)
        return out

    def append_many(self, bodies: list[dict[str, Any]], *, now: datetime) -> None:
        """Append prepared record bodies in one transaction (bench and import tools)."""
        at = format_time(now)
        self._append_now([(b, at) for b in bodies])

    def _append_now(self, items: list[tuple[dict[str, Any], str]]) -> None:
        if not items:
            return  # nothing to record: no transaction, no head signed over nothing
        if self._closed:
            raise StoreError("audit: the log is closed")
        # Synchronous callers commit in their own thread (no hand-off to the
        # writer); the lock keeps them and the writer off the connection at once.
        with self._lock:
            try:
                with store.transaction(self._write) as conn:
                    self.chainer.append(conn, items)
            except sqlite3.Error as exc:
                raise StoreError(f"audit: cannot append ({describe_fault(exc)})") from None

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
            except sqlite3.Error as exc:
                raise StoreError(f"audit: cannot append ({describe_fault(exc)})") from None

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
            if self._writer_lock is not None:
                os.close(self._writer_lock)  # releases the shared lock
                self._writer_lock = None

    def _submit(self, job: _Job) -> _Job:
        if self._closed:
            raise StoreError("audit: the log is closed")
        self._queue.put(job)
        return job

    # ------------------------------------------------------------ writer thread

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch: list[_Job] = [first]
            stop = False
            while True:  # take everything that queued up while we were busy
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Job]) -> None:
        items = [item for j in batch for item in j.items]
        try:
            with self._lock, store.transaction(self._write) as conn:
                self.chainer.append(conn, items)
        except Exception as exc:  # noqa: BLE001 - the writer must outlive any one batch
            err = StoreError(f"audit: cannot append ({describe_fault(exc)})") if isinstance(
                exc, sqlite3.Error) else exc
            _notify(batch, err)
        else:
            _notify(batch, None)
