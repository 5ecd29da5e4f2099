"""Reading documents in child processes, for the relay's large messages.

A long PDF takes seconds to read. Read in a worker thread of the relay, it
still stalled every other SMTP session for up to half a second at a time:
the reading thread gives the GIL back and takes it again many times a
second (each zlib stream, each hash update), and the event loop, waiting for
its turn, kept losing that race. Read in a child process, it competes for a
core, not for the GIL, and a crafted file that eats memory or crashes the
parser takes down the child, not the relay.

:func:`read_document` is what the PHI detectors call. Once :func:`enable`
has been called (``securemail serve`` does) and inside
:func:`documents_in_child_process` (the relay's worker thread for large
messages), it hands the payload to a small pool of child processes;
everywhere else it reads in the calling thread. A program that embeds the
library reads in its own threads unless it calls :func:`enable` (its main
module must then be import-safe: children are started with ``spawn``).

Each child has a pipe of its own, which only the child holds at the other
end: a child that dies is seen at once (end of file, a broken pipe), never
waited on. Either way the answer is
:func:`securemail.documents.document_text`'s: the text, None for what is not
a document, or :class:`Unreadable`, which the policy treats as possibly PHI
(fail closed). A document whose reading takes more than :data:`READ_SECONDS`
in its child is unreadable. A read whose child dies or does not answer in
:data:`WAIT_SECONDS` is tried once more in a child of its own; only a loss
there makes the document unreadable, and only if a fresh child can read
anything at all (else :class:`~securemail.errors.TemporaryFailure`, 451: the
sender tries again). Reads still waiting for a child when :func:`shutdown`
runs raise TemporaryFailure too; reads in progress finish.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import signal
import threading
from collections.abc import Iterator
from typing import Final

from securemail.documents import Unreadable, document_text
from securemail.errors import TemporaryFailure

__all__ = [
    "CHILD_MEMORY_BYTES",
    "READ_SECONDS",
    "documents_in_child_process",
    "enable",
    "read_document",
    "shutdown",
]

log = logging.getLogger("securemail.document_process")

# One document's reading in its child (the PDF reader's own limit, 30 s,
# normally stops a slow PDF first); timed in the child, so waiting for a free
# child does not count.
READ_SECONDS: Final = 60.0
# How long a read waits for its child's answer (start-up included): a
# backstop for a child that hangs where its own timer cannot reach.
WAIT_SECONDS: Final = 300.0
# Address space a reading child may map (where the platform lets us set it).
CHILD_MEMORY_BYTES: Final = 2 * 1024 * 1024 * 1024
CHILDREN: Final = 2
READS_PER_CHILD: Final = 500  # then a fresh child: no memory creep
PROBE_SECONDS: Final = 60.0  # for a fresh child to start and read nothing
START_SECONDS: Final = 60.0  # for a child to start and say it is ready

_in_child: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "securemail_documents_in_child", default=False)


@contextlib.contextmanager
def documents_in_child_process() -> Iterator[None]:
    """Documents read inside this block are read in a child process (once
    :func:`enable` has been called)."""
    token = _in_child.set(True)
    try:
        yield
    finally:
        _in_child.reset(token)


def enable() -> None:
    """Read documents in child processes from now on (within
    :func:`documents_in_child_process`); undoes an earlier :func:`shutdown`."""
    _POOL.open()


def read_document(payload: bytes, limit: int) -> str | None:
    """:func:`~securemail.documents.document_text`, in a child process when
    enabled and :func:`documents_in_child_process` asks for it."""
    if not _in_child.get() or not _POOL.enabled:
        return document_text(payload, limit)
    return _POOL.read(payload, limit)


def shutdown() -> None:
    """End the reading children (idle ones now, busy ones when their read
    ends; a read still waiting for a child raises
    :class:`~securemail.errors.TemporaryFailure`); later reads are made in
    their own thread until :func:`enable`."""
    _POOL.stop()


# ------------------------------------------------------------------ the child


def _child_main(conn: multiprocessing.connection.Connection) -> None:
    """A reading child: one request at a time on ``conn``, until it closes.
    Ctrl-C signals every process of a terminal: the children leave stopping
    to the relay, which drains its messages first and then ends them. A
    child whose parent is gone exits (its pipe closes). The child's address
    space is capped, so that a file that inflates without end ends in
    MemoryError (read as "unreadable"), not in the kernel's OOM killer
    choosing a process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _limit_memory()
    signal.signal(signal.SIGALRM, _too_long)
    try:
        conn.send(("ready", None))
        while True:
            request = conn.recv()
            if request is None:
                return
            payload, limit, seconds = request
            try:
                answer: tuple[str, str | None] = ("text", _read_timed(payload, limit, seconds))
            except _Interrupted as exc:
                # Cut off at an arbitrary point (an import half done, perhaps):
                # answer, then make way for a fresh child.
                conn.send(("interrupted", str(exc)))
                return
            except Unreadable as exc:
                answer = ("unreadable", str(exc))
            conn.send(answer)
    except (EOFError, OSError):
        return  # our relay process is gone, or closed our pipe


def _limit_memory() -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = CHILD_MEMORY_BYTES if hard == resource.RLIM_INFINITY else min(
            hard, CHILD_MEMORY_BYTES)
        if soft == resource.RLIM_INFINITY or soft > cap:
            resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ImportError, OSError, ValueError):
        pass  # a sandbox that forbids it: the child still runs apart from the relay


class _TooLong(BaseException):
    """Raised by the timer: a BaseException, so that no ``except Exception``
    in a parser can swallow it (the timer also fires again every second)."""


def _too_long(signum: int, frame: object) -> None:
    raise _TooLong


def _read_timed(payload: bytes, limit: int, seconds: float) -> str | None:
    """:func:`document_text` under a timer: past ``seconds`` the reading is
    interrupted and the document is unreadable."""
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
        try:
            return document_text(payload, limit)
        finally:
            _disarm()
    except _TooLong:
        raise _Interrupted(f"the document takes more than {seconds:g} s to read") from None


class _Interrupted(Unreadable):  # noqa: N818 - a state, like Unreadable
    """Unreadable because the timer cut the reading off."""


def _disarm() -> None:
    """Stop the timer, even if it fires once more while we do (the next
    request's wait for work must not be interrupted)."""
    while True:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
            return
        except _TooLong:
            continue


# ------------------------------------------------------------------ the parent


class _Lost(Exception):  # noqa: N818 - a state: the child was lost mid-read
    """The child died or did not answer in time (it has been killed)."""


class _NoChildren(Exception):  # noqa: N818 - a state, as in "no children can start here"
    """No child process can be started here; ``cause`` names the error."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class _Child:
    """One reading process and our end of its pipe; used by one read at a time.
    Only the child holds the other end, so a dead child is seen at once (EOF,
    a broken pipe), never waited on."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        try:
            self.process = context.Process(target=_child_main, args=(theirs,), daemon=True,
                                           name="securemail-document-reader")
            self.process.start()
        except (OSError, NotImplementedError) as exc:
            ours.close()
            raise _NoChildren(type(exc).__name__) from None
        finally:
            theirs.close()
        self.conn = ours
        self.reads = 0
        self.ready = False
        self.done = False  # the child exits after its answer (it was cut off)

    def read(self, payload: bytes, limit: int, wait: float | None = None) -> str | None:
        self.reads += 1
        try:
            if not self.ready:  # started, set up, and waiting for work
                if not self.conn.poll(START_SECONDS):
                    self.kill()
                    raise _Lost("did not start") from None
                self.conn.recv()
                self.ready = True
            self.conn.send((payload, limit, READ_SECONDS))
            if not self.conn.poll(WAIT_SECONDS if wait is None else wait):
                self.kill()
                raise _Lost("no answer") from None
            kind, value = self.conn.recv()
        except (EOFError, OSError) as exc:
            self.kill()
            raise _Lost(type(exc).__name__) from None
        except BaseException:
            self.kill()  # the pipe may be out of step: never reuse it
            raise
        if kind in ("unreadable", "interrupted"):
            self.done = kind == "interrupted"
            raise Unreadable(str(value))
        return None if value is None else str(value)

    def close(self) -> None:
        """Ask the child to exit once it is idle (it is, between reads)."""
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.conn.close()
        self.process.join(5)
        if self.process.is_alive():
            self.kill()

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        with contextlib.suppress(OSError):
            self.conn.close()
        self.process.join(5)


class _ChildPool:
    """Up to CHILDREN reading processes, started as reads need them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Child] = []
        self._busy: set[_Child] = set()
        self._slots = threading.BoundedSemaphore(CHILDREN)
        self.enabled = False
        self._warned = False
        self.waiting = 0  # reads asked for and not answered yet

    def open(self) -> None:
        self.enabled = True

    def children(self) -> list[int]:
        """The pids of the reading children (for tests and the curious)."""
        with self._lock:
            return [c.process.pid or 0 for c in [*self._idle, *self._busy]]

    def read(self, payload: bytes, limit: int) -> str | None:
        with self._lock:
            self.waiting += 1
        try:
            with self._slots:  # waiting for a free child: each read ahead is bounded
                child = self._take()
                try:
                    text = child.read(payload, limit)
                except _Lost:
                    self._drop(child)
                except Unreadable:
                    self._give_back(child)  # an answer: the child goes on (unless done)
                    raise
                except BaseException:
                    self._drop(child)  # killed by read(): its pipe may be out of step
                    raise
                else:
                    self._give_back(child)
                    return text
            # The child died or hung: this document's fault, or a signal's, or
            # the OOM killer's. Once more, in a child of its own; only a loss
            # there is this document's.
            return self._read_alone(payload, limit)
        except Unreadable:
            raise
        except _NoChildren as exc:
            if not self._warned:
                self._warned = True
                log.warning("document reader processes cannot start (%s): documents are"
                            " read in the relay's own threads", exc.cause)
            return document_text(payload, limit)
        finally:
            with self._lock:
                self.waiting -= 1

    def _read_alone(self, payload: bytes, limit: int) -> str | None:
        if not self.enabled:
            raise TemporaryFailure("the document reader is shut down")
        try:
            alone = _Child()
        except _NoChildren:
            # Never read a document that may just have killed its reader in the
            # relay itself: try again later.
            raise TemporaryFailure("document reader processes cannot start") from None
        try:
            return alone.read(payload, limit)
        except _Lost:
            pass
        finally:
            alone.close()
        # Blame the document only if a child can read anything at all: a child
        # that cannot start (an upgrade under a running relay, no threads
        # left) must not refuse every message.
        try:
            probe = _Child()
        except _NoChildren:
            raise TemporaryFailure("document reader processes cannot start") from None
        try:
            works = probe.read(b"", 1, PROBE_SECONDS) is None
        except (_Lost, Unreadable):
            works = False
        finally:
            probe.close()
        if not works:
            log.error("document reader processes start but cannot read anything: large"
                      " messages are deferred (451) until the relay is restarted")
            raise TemporaryFailure("the document reader processes do not work")
        log.warning("a document reader process stopped twice on one document (out of"
                    " memory, a parser crash, or past the time limit): the document counts"
                    " as unreadable")
        raise Unreadable("the document stops its reader (out of memory or crashed)")

    def _take(self) -> _Child:
        with self._lock:
            if not self.enabled:
                raise TemporaryFailure("the document reader is shut down")
            child = self._idle.pop() if self._idle else None
        if child is not None and not child.process.is_alive():
            child.kill()  # died while idle (a stray signal): not this document's loss
            child = None
        if child is None:
            child = _Child()
        with self._lock:
            self._busy.add(child)
        return child

    def _give_back(self, child: _Child) -> None:
        with self._lock:
            self._busy.discard(child)
            keep = self.enabled and child.reads < READS_PER_CHILD and not child.done
            if keep:
                self._idle.append(child)
        if not keep:
            child.close()  # shut down meanwhile, or a fresh child now and then

    def _drop(self, child: _Child) -> None:
        with self._lock:
            self._busy.discard(child)

    def stop(self) -> None:
        with self._lock:
            self.enabled = False  # later reads: in their own thread, no new children
            idle, self._idle = self._idle, []
        for child in idle:
            child.close()  # busy ones close as their reads end (_give_back)

    def forget(self) -> None:
        """In a forked process: the parent's children and lock are not ours
        (multiprocessing must not stop or join them when this process exits)."""
        for child in [*self._idle, *self._busy]:
            multiprocessing.process._children.discard(child.process)  # type: ignore[attr-defined]
            with contextlib.suppress(OSError):
                child.conn.close()
        self._lock = threading.Lock()
        self._idle, self._busy = [], set()
        self._slots = threading.BoundedSemaphore(CHILDREN)
        self.waiting = 0


_POOL: Final = _ChildPool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.forget)
