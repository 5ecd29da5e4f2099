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

Either way the answer is :func:`securemail.documents.document_text`'s: the
text, None for what is not a document, or :class:`Unreadable`, which the
policy treats as possibly PHI (fail closed). A document whose reading takes
more than :data:`READ_SECONDS` in its child, or that kills its child twice
(out of memory, a crash in a parser), is unreadable; a read that lost its
child to something else (another document's crash, a signal) is tried once
more in a fresh pool, and a read that :func:`shutdown` cut short raises
:class:`~securemail.errors.TemporaryFailure` (451: the sender tries again).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
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
# How long a caller waits for its answer, queue and child start-up included:
# a backstop for a child that hangs where the child's own timer cannot reach.
WAIT_SECONDS: Final = 300.0
# Address space a reading child may map (where the platform lets us set it).
CHILD_MEMORY_BYTES: Final = 2 * 1024 * 1024 * 1024
CHILDREN: Final = 2
READS_PER_POOL: Final = 500  # then a fresh pool: no memory creep in old children

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
    """End the reading children (a read they had not finished raises
    :class:`~securemail.errors.TemporaryFailure`); later reads are made in
    their own thread until :func:`enable`."""
    _POOL.stop()


# ------------------------------------------------------------------ the child


def _start_child() -> None:
    """Runs first in each child. Ctrl-C signals every process of a terminal:
    the children leave stopping to the relay, which drains its messages
    first and then ends the pool (SIGTERM stays: the pool itself stops its
    children with it). A child whose parent is gone exits. Then cap the
    child's address space, so that a file that inflates without end ends in
    MemoryError (read as "unreadable"), not in the kernel's OOM killer
    choosing a process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = CHILD_MEMORY_BYTES if hard == resource.RLIM_INFINITY else min(
            hard, CHILD_MEMORY_BYTES)
        if soft == resource.RLIM_INFINITY or soft > cap:
            resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ImportError, OSError, ValueError):
        pass  # a sandbox that forbids it: the child still runs apart from the relay


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(0)


class _TooLong(BaseException):
    """Raised by the timer: a BaseException, so that no ``except Exception``
    in a parser can swallow it (the timer also fires again every second)."""


def _read_in_child(payload: bytes, limit: int, seconds: float) -> str | None:
    """:func:`document_text` under a timer: past ``seconds`` the reading is
    interrupted and the document is unreadable."""

    def too_long(signum: int, frame: object) -> None:
        raise _TooLong

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        return document_text(payload, limit)
    except _TooLong:
        raise Unreadable(f"the document takes more than {seconds:g} s to read") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------ the pool


@dataclass
class _Generation:
    """One process pool; ``stopped`` when :func:`shutdown` ended it on purpose."""

    executor: concurrent.futures.ProcessPoolExecutor
    reads: int = 0
    stopped: bool = False


class _ChildPool:
    """A process pool started on first use and started afresh after a failure."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: _Generation | None = None
        self.enabled = False
        self._warned = False
        self.waiting = 0  # reads submitted and not answered yet

    def open(self) -> None:
        self.enabled = True

    def read(self, payload: bytes, limit: int) -> str | None:
        with self._lock:
            self.waiting += 1
        try:
            try:
                return self._read_once(payload, limit)
            except BrokenProcessPool:
                # The child went (its document's fault, another's, or a signal):
                # once more in a fresh pool; a second loss is this document's.
                return self._read_once(payload, limit)
        except BrokenProcessPool:
            log.warning("a document reader process stopped twice on one document (out of"
                        " memory or a parser crash): the document counts as unreadable")
            raise Unreadable("the document stops its reader (out of memory or crashed)"
                             ) from None
        except _NoChildren as exc:
            if not self._warned:
                self._warned = True
                log.warning("document reader processes cannot start (%s): documents are"
                            " read in the relay's own threads", exc.cause)
            return document_text(payload, limit)
        finally:
            with self._lock:
                self.waiting -= 1

    def _read_once(self, payload: bytes, limit: int) -> str | None:
        generation = self._generation()
        try:
            future = generation.executor.submit(_read_in_child, payload, limit, READ_SECONDS)
        except RuntimeError:  # shut down meanwhile: by stop(), or as broken
            self._failed(generation)
            if not self.enabled:
                raise TemporaryFailure("the document reader is shut down") from None
            raise BrokenProcessPool("the pool was shut down") from None
        except OSError as exc:
            self._failed(generation)
            raise _NoChildren(type(exc).__name__) from None
        try:
            return future.result(timeout=WAIT_SECONDS)
        except Unreadable:
            raise
        except _TooLong:  # the timer fired as the reading ended
            raise Unreadable(f"the document takes more than {READ_SECONDS:g} s to read"
                             ) from None
        except concurrent.futures.TimeoutError:
            self._failed(generation, kill=True)
            log.warning("a document reader gave no answer in %.0f s: its pool was stopped and"
                        " the document counts as unreadable", WAIT_SECONDS)
            raise Unreadable(f"the document takes more than {WAIT_SECONDS:g} s to read"
                             ) from None
        except (BrokenProcessPool, concurrent.futures.CancelledError):
            if generation.stopped:  # shutting down (reads in progress finish): try later
                raise TemporaryFailure("the document reader was stopped") from None
            self._failed(generation, kill=True)
            raise BrokenProcessPool("a reader stopped") from None

    def stop(self) -> None:
        with self._lock:
            generation, self._current = self._current, None
            self.enabled = False  # later reads: in their own thread, no new children
        if generation is not None:
            generation.stopped = True
            generation.executor.shutdown(wait=True, cancel_futures=True)

    def forget(self) -> None:
        """In a forked child: the parent's pool and its threads are not ours."""
        self._lock = threading.Lock()
        self._current = None
        self.waiting = 0

    def _generation(self) -> _Generation:
        retired: _Generation | None = None
        with self._lock:
            if not self.enabled:
                raise TemporaryFailure("the document reader is shut down")
            if self._current is not None and self._current.reads >= READS_PER_POOL:
                retired, self._current = self._current, None
            if self._current is None:
                try:
                    executor = concurrent.futures.ProcessPoolExecutor(
                        max_workers=CHILDREN, mp_context=multiprocessing.get_context("spawn"),
                        initializer=_start_child)
                except (OSError, NotImplementedError) as exc:  # no semaphores here
                    raise _NoChildren(type(exc).__name__) from None
                self._current = _Generation(executor)
            generation = self._current
            generation.reads += 1
        if retired is not None:
            retired.executor.shutdown(wait=False)  # its reads in progress finish
        return generation

    def _failed(self, generation: _Generation, *, kill: bool = False) -> None:
        """Forget ``generation`` (the next read starts a fresh pool); ``kill``:
        stop its children now, whatever they are doing (their reads are
        tried again, see :meth:`read`)."""
        with self._lock:
            if self._current is generation:
                self._current = None
        executor = generation.executor
        if kill:
            processes = dict(getattr(executor, "_processes", None) or {})
            for process in processes.values():
                with contextlib.suppress(OSError):
                    process.kill()
        executor.shutdown(wait=False, cancel_futures=True)


class _NoChildren(Exception):  # noqa: N818 - a state, as in "no children can start here"
    """No child process can be started here; ``cause`` names the error."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


_POOL: Final = _ChildPool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.forget)
