"""Document attachments through the running relay: a PDF with PHI to an
outsider is refused and nothing leaves; a long PDF being read (in a child
process) does not hold up other connections."""

from __future__ import annotations

import asyncio
import time
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib

from securemail import document_process
from tests.document_makers import pdf_with_pages, pdf_with_text
from tests.integration.relay_support import Upstream, message, run_relay, write_config

SENDER = "dr@riverside.example"
OUTSIDER = "colleague@other-clinic.example"
STAFF = "colleague@riverside.example"


def with_pdf(pdf: bytes, to: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = to
    msg["Subject"] = "Letter"
    msg["Message-ID"] = "<pdf-1@riverside.example>"
    msg["Date"] = "Sat, 28 Nov 2026 10:00:00 +0000"
    msg.set_content("Please see the attached letter.")
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="letter.pdf")
    return msg.as_bytes()


async def send(port: int, data: bytes, rcpt: str) -> tuple[int, str, float]:
    started = time.perf_counter()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=60)
    await client.connect()
    try:
        try:
            response = await client.sendmail(SENDER, [rcpt], data)
            code, text = 250, response[1]
        except aiosmtplib.SMTPRecipientsRefused as exc:
            code, text = exc.recipients[0].code, exc.recipients[0].message
        except aiosmtplib.SMTPResponseException as exc:
            code, text = exc.code, exc.message
    finally:
        client.close()
    return code, text, time.perf_counter() - started


async def test_phi_in_a_pdf_to_an_outsider_is_refused_and_nothing_leaves(
        tmp_path: Path, upstream: Upstream) -> None:
    cfg = write_config(tmp_path, upstream_url=f"smtp://127.0.0.1:{upstream.port}", extra="""
        [[directory.clients]]
        id = "c-2001"
        addresses = ["rob@mail.example"]
        names = ["Robert Lane"]
        """)
    relay = await run_relay(cfg)
    try:
        pdf = pdf_with_text("Client: Robert Lane", "Diagnosis: F33.1, recurrent depression")
        code, text, _ = await send(relay.port, with_pdf(pdf, OUTSIDER), OUTSIDER)
        assert code == 550 and "unauthorised-recipient" in text
        assert "Robert" not in text and "F33" not in text  # no content in the reply
        assert upstream.messages == []

        harmless = pdf_with_text("Invoice 2026-114", "Toner, 2 boxes")
        code, _, _ = await send(relay.port, with_pdf(harmless, OUTSIDER), OUTSIDER)
        assert code == 250 and len(upstream.messages) == 1
    finally:
        await relay.stop()


async def test_a_long_pdf_does_not_hold_up_other_connections(
        tmp_path: Path, upstream: Upstream) -> None:
    """The relay runs on this test's event loop: while it reads the report, the
    loop must keep turning (every other connection is served by it)."""
    relay = await run_relay(write_config(tmp_path,
                                         upstream_url=f"smtp://127.0.0.1:{upstream.port}"))
    gaps: list[float] = []
    reading = True

    async def ticker() -> None:
        while reading:
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            gaps.append(time.perf_counter() - before)

    try:
        document_process.enable()  # as `securemail serve` does
        # Every page its own (identical pages are read once).
        report = pdf_with_pages([[f"Page {p} line {i} of a long quarterly report, ordinary words"
                                  for i in range(60)] for p in range(490)])
        ticks = asyncio.create_task(ticker())
        code, _, big_seconds = await send(relay.port, with_pdf(report, STAFF), STAFF)
        reading = False
        await ticks
        assert code == 250 and len(upstream.messages) == 1
        # A child process read it: read on the event loop, nothing else ran
        # for as long as that took (about two seconds here); read in a worker
        # thread, the loop still lost the GIL for 15-25% of the reading time
        # at a stretch (0.3-0.5 s). Read in a child, the longest stall is ~1%
        # of it (8 ms idle; ~2% with the machine's cores busy).
        assert document_process._POOL.children()  # a child started, and read it
        assert max(gaps) < 0.1 * big_seconds, (max(gaps), big_seconds)
        code, _, _ = await send(relay.port, message(), STAFF)
        assert code == 250 and len(upstream.messages) == 2
    finally:
        await relay.stop()
        await asyncio.to_thread(document_process.shutdown)


async def test_a_message_judged_in_a_worker_thread_never_uses_the_shared_connection(
        tmp_path: Path) -> None:
    """The shared connection carries the portal's and the directory's
    transactions: a worker thread's reads in the middle of one would commit
    or break it. Its keys come through a connection of its own."""
    import threading

    from securemail.model import Envelope
    from securemail.relay import load

    relay = load(write_config(tmp_path, upstream_url="smtp://127.0.0.1:1", extra="""
        [[directory.clients]]
        id = "c-2001"
        addresses = ["rob@mail.example"]
        names = ["Robert Lane"]
        """))
    threads: set[str] = set()
    shared = relay.db

    class Recording:
        def __getattr__(self, name: str) -> object:
            threads.add(threading.current_thread().name)
            return getattr(shared, name)

    relay.db = Recording()  # type: ignore[assignment]
    relay.keyring._conn = relay.db  # type: ignore[assignment]
    relay._directory_checked = 0.0  # the directory check is due
    try:
        raw = with_pdf(pdf_with_text("Client: Robert Lane", "Diagnosis: F33.1"), OUTSIDER)
        import datetime as dt

        verdict = await relay.evaluate_in_thread(
            raw, Envelope(SENDER, (OUTSIDER,)), dt.datetime.now(dt.UTC))
    finally:
        relay.db = shared  # type: ignore[assignment]
        relay.keyring._conn = shared
        await relay.close()
    assert verdict.decisions[0].action.value == "block"
    assert threads <= {threading.current_thread().name}, threads
