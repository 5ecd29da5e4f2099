"""Documents read in child processes (the relay's large messages): the same
answers as reading in-process; a child lost to a crash or a signal costs a
retry, not a verdict; a document that runs too long, or kills its reader
twice, is unreadable (fail closed); shutdown defers (451)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

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
    return document_process._POOL.children()


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
    wait_until(lambda: document_process._POOL.waiting == 2 and len(children()) == 2)
    victim = children()[0]
    os.kill(victim, signal.SIGKILL)
    for reader in readers:
        reader.join(timeout=120)
    assert not any(isinstance(r, BaseException) for r in results), results
    assert any("Invoice 2026-114" in str(r) for r in results)
    assert any("Page 489 line 59" in str(r) for r in results)
    assert victim not in children()


def test_a_read_past_the_time_limit_is_unreadable_and_its_child_replaced(
        pool: None, long_pdf: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Timed in the child, which answers and then exits (cut off at an
    arbitrary point, it may hold a half-done import): a fresh child reads
    the next document."""
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
    assert children() and not set(children()) & set(before)
    wait_until(lambda: not any(_alive(pid) for pid in before))


def test_a_child_that_does_not_answer_is_stopped(
        pool: None, long_pdf: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's backstop, for a child its own timer cannot stop: the
    child is killed, the document tried once more alone, then unreadable."""
    with documents_in_child_process():
        read_document(pdf_with_text("warm"), 1000)
        before = children()
        monkeypatch.setattr(document_process, "WAIT_SECONDS", 0.5)
        with pytest.raises(Unreadable, match="stops its reader"):
            read_document(long_pdf, 10_000_000)
        wait_until(lambda: not any(_alive(pid) for pid in before))  # killed, not left reading
        monkeypatch.setattr(document_process, "WAIT_SECONDS", 300.0)
        assert "Invoice" in (read_document(pdf_with_text("Invoice"), 1000) or "")


def test_a_read_cut_short_by_shutdown_is_a_temporary_failure(
        pool: None, long_pdf: bytes) -> None:
    """The relay drains its messages before it ends the pool; a read that
    shutdown still cancels is retried by the sender (451), not judged."""
    results: list[object] = []
    count = document_process.CHILDREN + 3  # the rest wait for a free child
    readers = [in_thread(lambda: read_document(long_pdf, 10_000_000), results)
               for _ in range(count)]
    wait_until(lambda: document_process._POOL.waiting == count
               and len(document_process._POOL._busy) == document_process.CHILDREN)
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


# Faults injected into the children only: a sitecustomize module on the
# children's PYTHONPATH patches securemail.document_process as they start.
_CHILD_FAULTS = """
import os
mode = os.environ.get("SECUREMAIL_TEST_CHILD_FAULT")
if mode:
    from securemail import document_process as dp
    if mode == "crash-on-marker":
        real = dp.document_text
        def document_text(payload, limit):
            if b"CRASH-ME" in payload:
                os.abort()  # what a parser's segfault does to the child
            return real(payload, limit)
        dp.document_text = document_text
    elif mode == "broken":
        def cannot_start(conn):
            raise RuntimeError("no thread can start")
        dp._child_main = cannot_start
"""


@pytest.fixture
def child_fault(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
                ) -> Callable[[str], None]:
    def inject(mode: str) -> None:
        folder = tmp_path / "child-faults"  # type: ignore[operator]
        folder.mkdir()
        (folder / "sitecustomize.py").write_text(_CHILD_FAULTS)
        paths = [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
        monkeypatch.setenv("SECUREMAIL_TEST_CHILD_FAULT", mode)

    return inject


def test_a_crashing_document_is_unreadable_and_the_one_beside_it_is_read(
        pool: None, long_pdf: bytes, child_fault: Callable[[str], None],
        caplog: pytest.LogCaptureFixture) -> None:
    """The crasher is read again in a child of its own, crashes that one too,
    and is unreadable; the document read beside it is not disturbed."""
    child_fault("crash-on-marker")
    results: dict[str, object] = {}

    def read(name: str, payload: bytes) -> threading.Thread:
        def run() -> None:
            with documents_in_child_process():
                try:
                    results[name] = read_document(payload, 10_000_000)
                except Exception as exc:  # noqa: BLE001 - judged below
                    results[name] = exc

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    innocent = read("innocent", long_pdf)
    wait_until(lambda: document_process._POOL.waiting == 1)
    crasher = read("crasher", pdf_with_text("CRASH-ME", "Client: Robert Lane"))
    for thread in (innocent, crasher):
        thread.join(timeout=120)
    assert "Page 489 line 59" in str(results["innocent"]), results
    assert isinstance(results["crasher"], Unreadable), results
    assert "stopped twice" in caplog.text


def test_a_crasher_is_never_read_in_the_relay_when_no_new_child_can_start(
        pool: None, child_fault: Callable[[str], None], monkeypatch: pytest.MonkeyPatch) -> None:
    """Its child died; no other can start (out of processes, say): a 451,
    never a read in the relay's own thread, where it would crash the relay."""
    child_fault("crash-on-marker")
    with documents_in_child_process():
        read_document(pdf_with_text("warm"), 1000)  # a child is ready
        assert children()

        def no_children(*_: object, **__: object) -> None:
            raise BlockingIOError(11, "Resource temporarily unavailable")

        monkeypatch.setattr(multiprocessing.get_context("spawn").Process, "start", no_children)
        with pytest.raises(TemporaryFailure):
            read_document(pdf_with_text("CRASH-ME"), 1000)


def test_a_child_that_died_while_idle_is_replaced(pool: None) -> None:
    with documents_in_child_process():
        read_document(pdf_with_text("warm"), 1000)
        (idle,) = children()
        os.kill(idle, signal.SIGKILL)
        wait_until(lambda: not _alive(idle))
        assert "Invoice" in (read_document(pdf_with_text("Invoice"), 1000) or "")
    assert idle not in children()


def test_children_that_cannot_read_anything_defer_instead_of_refusing(
        pool: None, child_fault: Callable[[str], None],
        caplog: pytest.LogCaptureFixture) -> None:
    """A child that dies on start (a package upgraded under the running
    relay, no threads left): a 451 the sender retries, not "unreadable"
    (which refuses the message to an outsider for good)."""
    child_fault("broken")
    with documents_in_child_process(), pytest.raises(TemporaryFailure):
        read_document(pdf_with_text("Invoice 2026-114"), 1000)
    assert "cannot read anything" in caplog.text


def test_where_no_child_can_start_documents_are_read_in_the_thread(
        pool: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A sandbox that forbids starting processes: mail keeps flowing (read as
    without children), and the operator is told once."""

    def no_children(*_: object, **__: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(multiprocessing.get_context("spawn").Process, "start", no_children)
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
