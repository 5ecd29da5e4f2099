"""Documents read in child processes (the relay's large messages): the same
answers as reading in-process; a child lost to a crash or a signal costs a
retry, not a verdict; a document that runs too long, or kills its reader
twice, is unreadable (fail closed); shutdown defers (451)."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from securemail import document_process
from securemail.document_process import documents_in_child_process, read_document
from securemail.documents import Unreadable
from securemail.errors import TemporaryFailure
from tests.document_makers import pdf_with_pages, pdf_with_text


@pytest.fixture
def pool() -> Iterator[None]:
    """Children enabled, as ``securemail serve`` does; ended afterwards."""
    document_process.enable()
    yield
    document_process.shutdown()


@pytest.fixture(scope="module")
def long_pdf() -> bytes:
    return pdf_with_pages([[f"Page {p} line {i} of a long quarterly report"
                            for i in range(60)] for p in range(490)])


def children() -> list[int]:
    """The pids of the current pool's children (read while the pool may be
    starting one: retried until the listing holds still)."""
    for _ in range(100):
        generation = document_process._POOL._current
        if generation is None:
            return []
        try:
            return [p.pid for p in list((generation.executor._processes or {}).values())]
        except RuntimeError:  # changed size while we looked
            time.sleep(0.01)
    raise AssertionError("the pool's children never held still")


def wait_until(condition: object, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.02)
    assert condition(), "timed out"  # type: ignore[operator]


def in_thread(call: object, results: list[object]) -> threading.Thread:
    def run() -> None:
        with documents_in_child_process():
            try:
                results.append(call())  # type: ignore[operator]
            except Exception as exc:  # noqa: BLE001 - collected for the test to judge
                results.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_child_reads_what_the_caller_would(pool: None) -> None:
    pdf = pdf_with_text("Client: Robert Lane", "Diagnosis: F33.1")
    inline = read_document(pdf, 100_000)
    assert children() == []  # outside the block: read here, no child started
    with documents_in_child_process():
        apart = read_document(pdf, 100_000)
        assert read_document(b"just some bytes", 100_000) is None
        with pytest.raises(Unreadable, match="scan limit"):
            read_document(pdf, 5)
    assert apart == inline and "Robert Lane" in (apart or "")
    assert children() and os.getpid() not in children()


def test_without_enable_documents_are_read_in_the_calling_thread() -> None:
    """A program that embeds the library starts no processes unless it asks."""
    document_process.shutdown()
    with documents_in_child_process():
        text = read_document(pdf_with_text("Invoice 2026-114"), 100_000)
    assert "Invoice 2026-114" in (text or "") and children() == []


def test_a_child_lost_once_costs_a_retry_not_a_verdict(pool: None, long_pdf: bytes) -> None:
    """A child killed while two documents wait on the pool (the OOM killer
    choosing it, a stray signal): both are read, in a fresh pool."""
    with documents_in_child_process():
        read_document(pdf_with_text("warm"), 1000)
    results: list[object] = []
    readers = [in_thread(lambda: read_document(long_pdf, 10_000_000), results),
               in_thread(lambda: read_document(pdf_with_text("Invoice 2026-114"), 1000), results)]
    wait_until(lambda: document_process._POOL.waiting == 2)
    first = children()
    os.kill(first[0], signal.SIGKILL)
    for reader in readers:
        reader.join(timeout=120)
    assert not any(isinstance(r, BaseException) for r in results), results
    assert any("Invoice 2026-114" in str(r) for r in results)
    assert any("Page 489 line 59" in str(r) for r in results)
    assert not set(first) & set(children())  # a fresh pool


def test_a_document_that_kills_its_reader_twice_is_unreadable(
        pool: None, long_pdf: bytes, caplog: pytest.LogCaptureFixture) -> None:
    killed: list[int] = []
    reading = True

    def kill_every_reader() -> None:
        while reading:
            for pid in children():
                if pid not in killed:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_every_reader)
    killer.start()
    try:
        with documents_in_child_process(), pytest.raises(Unreadable, match="stops its reader"):
            read_document(long_pdf, 10_000_000)
    finally:
        reading = False
        killer.join()
    assert len(killed) >= 2
    assert "stopped twice" in caplog.text
    with documents_in_child_process():  # the next document gets a fresh pool
        assert "Invoice" in (read_document(pdf_with_text("Invoice"), 1000) or "")


def test_a_read_past_the_time_limit_is_unreadable_and_its_child_goes_on(
        pool: None, long_pdf: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Timed in the child: the child stops reading and serves the next one."""
    with documents_in_child_process():
        read_document(pdf_with_text("warm"), 1000)
        before = children()
        monkeypatch.setattr(document_process, "READ_SECONDS", 0.2)
        started = time.monotonic()
        with pytest.raises(Unreadable, match=r"takes more than 0\.2 s"):
            read_document(long_pdf, 10_000_000)
        assert time.monotonic() - started < 5
        monkeypatch.setattr(document_process, "READ_SECONDS", 60.0)
        assert "Invoice" in (read_document(pdf_with_text("Invoice"), 1000) or "")
    assert children() == before


def test_a_child_that_does_not_answer_is_stopped(
        pool: None, long_pdf: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's backstop, for a child its own timer cannot stop."""
    with documents_in_child_process():
        read_document(pdf_with_text("warm"), 1000)
        before = children()
        monkeypatch.setattr(document_process, "WAIT_SECONDS", 0.3)
        with pytest.raises(Unreadable, match=r"takes more than 0\.3 s"):
            read_document(long_pdf, 10_000_000)
        wait_until(lambda: not any(_alive(pid) for pid in before))  # killed, not left reading
        monkeypatch.setattr(document_process, "WAIT_SECONDS", 300.0)
        assert "Invoice" in (read_document(pdf_with_text("Invoice"), 1000) or "")


def test_a_read_cut_short_by_shutdown_is_a_temporary_failure(
        pool: None, long_pdf: bytes) -> None:
    """The relay drains its messages before it ends the pool; a read that
    shutdown still cancels is retried by the sender (451), not judged."""
    results: list[object] = []
    count = document_process.CHILDREN + 3  # a child takes one more than it reads: some wait
    readers = [in_thread(lambda: read_document(long_pdf, 10_000_000), results)
               for _ in range(count)]
    wait_until(lambda: document_process._POOL.waiting == count)
    time.sleep(0.2)  # all submitted
    document_process.shutdown()
    for reader in readers:
        reader.join(timeout=120)
    assert len(results) == count
    assert any(isinstance(r, TemporaryFailure) for r in results), results
    assert all(isinstance(r, (str, TemporaryFailure)) for r in results), results
    # The reads the children had begun were finished, not thrown away.
    assert sum(isinstance(r, str) for r in results) >= document_process.CHILDREN, results
    with documents_in_child_process():  # after shutdown: read here, no new children
        assert "Invoice" in (read_document(pdf_with_text("Invoice"), 1000) or "")
    assert children() == []


@pytest.mark.parametrize("where", ["constructor", "submit"])
def test_where_no_child_can_start_documents_are_read_in_the_thread(
        pool: None, where: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A sandbox without fork or /dev/shm: mail keeps flowing (read as
    without children), and the operator is told once."""

    def no_children(*_: object, **__: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    if where == "constructor":
        monkeypatch.setattr(concurrent.futures.ProcessPoolExecutor, "__init__", no_children)
    else:
        monkeypatch.setattr(concurrent.futures.ProcessPoolExecutor, "submit", no_children)
    monkeypatch.setattr(document_process._POOL, "_warned", False)
    with documents_in_child_process():
        first = read_document(pdf_with_text("Client: Robert Lane"), 100_000)
        second = read_document(pdf_with_text("Invoice 2026-114"), 100_000)
    assert "Robert Lane" in (first or "") and "Invoice 2026-114" in (second or "")
    warnings = [r for r in caplog.records if r.name == "securemail.document_process"]
    assert len(warnings) == 1 and "PermissionError" in warnings[0].getMessage()
    assert "Robert" not in caplog.text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie the pool has not reaped yet is gone for our purpose
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
