"""The library API as practice software uses it: ``securemail.load(cfg)``, then
``await relay.send``, ``relay.send_sync``, ``relay.check`` and closing, against
real aiosmtpd upstreams on 127.0.0.1 (ports chosen by the OS).

Tests that call ``send_sync`` are plain functions (no running loop); their
upstream runs on an event loop in a thread of its own.
"""

from __future__ import annotations

import asyncio
import email.message
import gc
import hashlib
import inspect
import json
import ssl
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from click.testing import CliRunner

import securemail
from securemail.audit.export import iter_export_records
from securemail.cli.audit_cmd import audit_group
from securemail.config import UpstreamSettings
from securemail.directory import normalise_address
from securemail.errors import InputError, SecuremailError, TemporaryFailure
from securemail.model import Status
from securemail.store.sqlite import open_database
from securemail.testing import build_message
from securemail.transport.smtp import SMTPTransport
from tests.integration.relay_support import (
    CaptureHandler,
    Upstream,
    make_certs,
    message,
    write_config,
)

STAFF = "colleague@riverside.example"


# ----------------------------------------------------------------- upstreams


class CountingSMTP(SMTP):
    """aiosmtpd's SMTP, counting connections opened and closed."""

    counts: dict[str, int]
    counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.counted:  # called again for the TLS transport after STARTTLS
            self.counted = True
            self.counts["opened"] += 1
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.counts["closed"] += 1
        super().connection_lost(exc)


class UpstreamThread:
    """A capturing aiosmtpd upstream on an event loop in a thread of its own,
    for tests whose own thread must have no running loop (``send_sync``)."""

    def __init__(self, handler: CaptureHandler | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler or CaptureHandler()
        self.tls = tls
        self.counts = {"opened": 0, "closed": 0}
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    async def _serve(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await start_counting_server(self.handler, self.counts, self.tls)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        await server.wait_closed()
        del loop

    @property
    def messages(self) -> list[Any]:
        return self.handler.messages

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def stop(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


async def start_counting_server(handler: CaptureHandler, counts: dict[str, int],
                                tls: ssl.SSLContext | None = None) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        smtp = CountingSMTP(handler, hostname="upstream.test", loop=loop, enable_SMTPUTF8=True,
                            tls_context=tls)
        smtp.counts = counts
        return smtp

    return await loop.create_server(factory, host="127.0.0.1", port=0)


@pytest.fixture
def upstream_thread() -> Iterator[UpstreamThread]:
    up = UpstreamThread()
    yield up
    up.stop()


def url(up: Upstream) -> str:
    return f"smtp://127.0.0.1:{up.port}"


def eventually(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


async def eventually_async(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def audit_records(cfg: Path) -> list[dict[str, Any]]:
    """Every audit record in the store (the audit read API, on a connection of our own)."""
    conn = open_database(cfg.parent / "data" / "securemail.db")
    try:
        return list(iter_export_records(conn))
    finally:
        conn.close()


def message_records(cfg: Path, raw: bytes) -> list[dict[str, Any]]:
    digest = hashlib.sha256(raw).hexdigest()
    return [r for r in audit_records(cfg)
            if r.get("kind") == "message" and r.get("message_sha256") == digest]


def numbered(n: int) -> bytes:
    return message(to=STAFF, body=f"Message number {n}.")


# ----------------------------------------------------------------- 1: loops and threads


def test_send_sync_again_and_again_delivers_every_time(tmp_path: Path,
                                                       upstream_thread: UpstreamThread) -> None:
    relay = securemail.load(write_config(tmp_path, upstream_url=upstream_thread.url))
    try:
        outcomes = [relay.send_sync(numbered(n)) for n in range(3)]
    finally:
        relay.close_sync()
    assert [o.delivered for o in outcomes] == [(STAFF,)] * 3
    assert len(upstream_thread.messages) == 3
    # Each call's loop closed its own connection on the way out: none is left open.
    assert eventually(lambda: upstream_thread.counts["closed"] == upstream_thread.counts["opened"])


def test_send_sync_over_verified_starttls_leaves_no_connection_open(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    up = UpstreamThread(tls=certs.server_context)
    try:
        cfg = write_config(tmp_path, upstream_url=up.url, upstream_tls="required",
                           ca_file=str(certs.ca_file))
        with securemail.load(cfg) as relay:
            outcomes = [relay.send_sync(numbered(n)) for n in range(2)]
        assert all(o.upstream_tls is not None and o.upstream_tls.version for o in outcomes)
        assert len(up.messages) == 2
        assert eventually(lambda: up.counts["closed"] == up.counts["opened"] == 2)
    finally:
        up.stop()


def test_one_relay_serves_many_threads_and_loops_at_once(
        tmp_path: Path, upstream_thread: UpstreamThread) -> None:
    relay = securemail.load(write_config(tmp_path, upstream_url=upstream_thread.url))

    async def three_on_one_loop(first: int) -> list[securemail.Outcome]:
        return list(await asyncio.gather(*(relay.send(numbered(n))
                                           for n in range(first, first + 3))))

    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            sync = [pool.submit(relay.send_sync, numbered(n)) for n in range(12)]
            loops = [pool.submit(asyncio.run, three_on_one_loop(100 + 10 * i))
                     for i in range(2)]
            outcomes = [f.result(timeout=30) for f in sync]
            outcomes += [o for f in loops for o in f.result(timeout=30)]
    finally:
        relay.close_sync()
    assert len(outcomes) == 18
    assert all(o.delivered == (STAFF,) for o in outcomes)
    assert len(upstream_thread.messages) == 18
    assert eventually(lambda: upstream_thread.counts["closed"] == upstream_thread.counts["opened"])


async def test_async_callers_and_send_sync_threads_share_one_relay(
        tmp_path: Path, upstream: Upstream) -> None:
    """The FastAPI shape: async handlers on the main loop, sync code in worker threads."""
    relay = securemail.load(write_config(tmp_path, upstream_url=url(upstream)))
    try:
        outcomes = await asyncio.gather(
            *(relay.send(numbered(n)) for n in range(5)),
            *(asyncio.to_thread(relay.send_sync, numbered(n)) for n in range(5, 10)))
        outcomes.append(await relay.send(numbered(10)))  # the main loop's pool still works
    finally:
        await relay.close()
    assert all(o.delivered == (STAFF,) for o in outcomes)
    assert len(upstream.messages) == 11


def test_close_on_a_new_loop_after_send_sync_writes_the_final_checkpoint(
        tmp_path: Path, upstream_thread: UpstreamThread) -> None:
    cfg = write_config(tmp_path, upstream_url=upstream_thread.url)
    relay = securemail.load(cfg)
    relay.send_sync(numbered(1))
    asyncio.run(relay.close())
    last = audit_records(cfg)[-1]
    assert last["kind"] == "checkpoint" and last["reason"] == "close"


def test_a_pool_whose_loop_was_closed_without_shutting_down_is_dropped(
        upstream_thread: UpstreamThread) -> None:
    transport = SMTPTransport(UpstreamSettings(url=upstream_thread.url, tls="none"))
    raw = numbered(1)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(transport.send("dr@riverside.example", [STAFF], raw))
    loop.close()  # no shutdown_asyncgens: the pool's session outlives its loop
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the dead loop's transport, in GC
        result = asyncio.run(transport.send("dr@riverside.example", [STAFF], raw))
        # The new loop's pool dropped the dead one and shut its socket down.
        assert eventually(lambda: upstream_thread.counts["closed"] >= 1)
        asyncio.run(transport.close())
        del loop
        gc.collect()  # nothing is left for the dead loop's async generator hook
    assert result.accepted == (STAFF,)
    assert len(upstream_thread.messages) == 2
    assert eventually(lambda: upstream_thread.counts["closed"] == upstream_thread.counts["opened"])


def test_close_after_a_loop_was_closed_without_shutting_down_does_not_raise(
        upstream_thread: UpstreamThread) -> None:
    transport = SMTPTransport(UpstreamSettings(url=upstream_thread.url, tls="none"))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(transport.send("dr@riverside.example", [STAFF], numbered(1)))
    loop.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the dead loop's transport, in GC
        asyncio.run(transport.close())  # used to raise "Event loop is closed"
        assert eventually(lambda: upstream_thread.counts["closed"] == 1)
        del loop
        gc.collect()


def test_close_from_another_loop_closes_a_running_loops_sessions(
        upstream_thread: UpstreamThread) -> None:
    transport = SMTPTransport(UpstreamSettings(url=upstream_thread.url, tls="none"))
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        asyncio.run_coroutine_threadsafe(
            transport.send("dr@riverside.example", [STAFF], numbered(1)), loop).result(10)
        assert upstream_thread.counts == {"opened": 1, "closed": 0}
        asyncio.run(transport.close())  # another loop; the first one still runs
        assert eventually(lambda: upstream_thread.counts["closed"] == 1)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


# ----------------------------------------------------------------- 2: send_sync in a loop


async def test_send_sync_inside_a_running_loop_says_to_await_send(
        tmp_path: Path, upstream: Upstream) -> None:
    relay = securemail.load(write_config(tmp_path, upstream_url=url(upstream)))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(securemail.UsageError, match=r"await relay\.send") as info:
                relay.send_sync(numbered(1))
            gc.collect()
        assert not [w for w in caught if "never awaited" in str(w.message)]
        assert isinstance(info.value, SecuremailError)
        assert not isinstance(info.value, TemporaryFailure)
        assert (await relay.send(numbered(2))).delivered == (STAFF,)  # still usable
    finally:
        await relay.close()
    assert len(upstream.messages) == 1


def test_send_sync_takes_the_same_keywords_as_send() -> None:
    sync = inspect.signature(securemail.Relay.send_sync).parameters
    not_sync = inspect.signature(securemail.Relay.send).parameters
    assert list(sync) == list(not_sync)
    assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in sync.values())
    assert all(sync[n].kind is not_sync[n].kind and sync[n].default == not_sync[n].default
               for n in sync)


# ----------------------------------------------------------------- 3: closing


def test_with_block_closes_and_later_calls_say_the_relay_is_closed(
        tmp_path: Path, upstream_thread: UpstreamThread) -> None:
    cfg = write_config(tmp_path, upstream_url=upstream_thread.url)
    with securemail.load(cfg) as relay:
        assert relay.send_sync(numbered(1)).delivered == (STAFF,)
    for call in (lambda: relay.send_sync(numbered(2)), lambda: relay.check(numbered(2)),
                 lambda: asyncio.run(relay.send(numbered(2)))):
        with pytest.raises(securemail.RelayClosed, match="relay is closed") as info:
            call()
        assert not isinstance(info.value, TemporaryFailure)
    relay.close_sync()  # idempotent, on any loop
    asyncio.run(relay.close())
    assert audit_records(cfg)[-1]["reason"] == "close"
    assert len(upstream_thread.messages) == 1


async def test_async_with_closes_the_relay(tmp_path: Path, upstream: Upstream) -> None:
    cfg = write_config(tmp_path, upstream_url=url(upstream))
    async with securemail.load(cfg) as relay:
        await relay.send(numbered(1))
    with pytest.raises(securemail.RelayClosed):
        await relay.send(numbered(2))
    await relay.close()
    with pytest.raises(securemail.UsageError, match="async with"):
        relay.close_sync()  # inside a running loop
    assert audit_records(cfg)[-1]["reason"] == "close"


# ----------------------------------------------------------------- 4: cancelled send


class SlowDataHandler(CaptureHandler):
    """Takes ``delay`` seconds to answer the end of DATA."""

    delay = 1.0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
async def slow_upstream() -> AsyncIterator[Upstream]:
    from tests.integration.relay_support import start_upstream

    up = await start_upstream(handler=SlowDataHandler())
    yield up
    await up.stop()


async def test_a_cancelled_send_still_delivers_and_audits_and_the_retry_sends_nothing_twice(
        tmp_path: Path, slow_upstream: Upstream) -> None:
    cfg = write_config(tmp_path, upstream_url=url(slow_upstream))
    raw = numbered(1)
    async with securemail.load(cfg) as relay:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(relay.send(raw), 0.3)
        assert await eventually_async(lambda: len(slow_upstream.messages) == 1)
        assert await eventually_async(lambda: bool(message_records(cfg, raw)))
        outcome = await relay.send(raw)  # the caller's retry, as after any failure
        assert outcome.delivered == (STAFF,)
    assert len(slow_upstream.messages) == 1
    statuses = [r["outcome"] for r in message_records(cfg, raw)]
    assert statuses and set(statuses) == {Status.DELIVERED.value}


async def test_a_retry_while_the_cancelled_send_is_still_going_waits_for_it(
        tmp_path: Path, slow_upstream: Upstream) -> None:
    cfg = write_config(tmp_path, upstream_url=url(slow_upstream))
    raw = numbered(1)
    async with securemail.load(cfg) as relay:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(relay.send(raw), 0.3)
        outcome = await asyncio.wait_for(relay.send(raw), 10)  # upstream is still on DATA
        assert outcome.delivered == (STAFF,)
    assert len(slow_upstream.messages) == 1
    # The first attempt's record (upstream's reply) and the retry's (from the ledger).
    first, retry = message_records(cfg, raw)
    assert (first["outcome"], first["upstream_reply"]) == ("delivered", "250")
    assert (retry["outcome"], retry["upstream_reply"]) == ("delivered", None)


async def test_close_waits_for_a_send_whose_caller_stopped_waiting(
        tmp_path: Path, slow_upstream: Upstream) -> None:
    cfg = write_config(tmp_path, upstream_url=url(slow_upstream))
    raw = numbered(1)
    relay = securemail.load(cfg)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(relay.send(raw), 0.3)
    await relay.close()
    assert len(slow_upstream.messages) == 1
    assert message_records(cfg, raw)
    assert audit_records(cfg)[-1]["reason"] == "close"


# ----------------------------------------------------------------- 5: no recipients


def no_recipient_headers() -> bytes:
    return (b"From: dr@riverside.example\r\nSubject: x\r\nMessage-ID: <n@riverside.example>\r\n"
            b"\r\nhello\r\n")


@pytest.mark.parametrize("make_raw, limits", [
    (no_recipient_headers, ""),
    (lambda: bytes(range(256)) * 8, ""),
    (lambda: message(to=STAFF, size=8000), "max_message_bytes = 2048\n"),
], ids=["no-to-cc-bcc", "random-bytes", "over-max-message-bytes"])
async def test_a_message_nobody_could_receive_is_refused_before_anything_happens(
        tmp_path: Path, upstream: Upstream, make_raw: Callable[[], bytes], limits: str) -> None:
    cfg = write_config(tmp_path, upstream_url=url(upstream), limits=limits)
    raw = make_raw()
    async with securemail.load(cfg) as relay:
        with pytest.raises(InputError, match="no recipients: pass rcpt_tos="):
            relay.check(raw)
        with pytest.raises(InputError, match="no recipients: pass rcpt_tos=") as info:
            await relay.send(raw)
        with pytest.raises(InputError, match="no recipients"):
            await relay.send(raw, rcpt_tos=[])
        assert not isinstance(info.value, TemporaryFailure)
    assert upstream.messages == []
    assert not [r for r in audit_records(cfg) if r.get("kind") == "message"]


async def test_rcpt_tos_as_a_single_string_is_a_type_error(tmp_path: Path,
                                                         upstream: Upstream) -> None:
    async with securemail.load(write_config(tmp_path, upstream_url=url(upstream))) as relay:
        with pytest.raises(TypeError, match="rcpt_tos"):
            relay.check(numbered(1), rcpt_tos=STAFF)
        with pytest.raises(TypeError, match="rcpt_tos"):
            await relay.send(numbered(1), rcpt_tos=STAFF)
    assert upstream.messages == []


# ----------------------------------------------------------------- 6: EmailMessage, UTF-8


async def test_an_email_message_with_a_utf8_address_is_read_like_its_bytes(
        tmp_path: Path, upstream: Upstream) -> None:
    to = "jürgen@bücher.example"
    msg = email.message.EmailMessage()
    msg["From"] = "dr@riverside.example"
    msg["To"] = to
    msg["Subject"] = "Lunch"
    msg["Message-ID"] = "<utf8@riverside.example>"
    msg.set_content("See you at noon.")
    same_bytes = build_message(sender="dr@riverside.example", to=[to], subject="Lunch",
                               body="See you at noon.", message_id="<utf8@riverside.example>")
    async with securemail.load(write_config(tmp_path, upstream_url=url(upstream))) as relay:
        verdict = relay.check(msg)
        assert not verdict.malformed
        assert verdict.decisions == relay.check(same_bytes).decisions
        outcome = await relay.send(msg)
    assert outcome.delivered == (normalise_address(to),)
    [got] = upstream.messages
    assert f"To: {to}".encode() in got.data
    assert b"=?utf-8?" not in got.data


# ----------------------------------------------------------------- 7: upstream_reply


class EnhancedReplyHandler(CaptureHandler):
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await super().handle_DATA(server, session, envelope)
        return "250 2.0.0 Ok: queued as 4ZQX1"


@pytest.mark.parametrize("handler, expected", [
    (EnhancedReplyHandler, "250 2.0.0"),
    (CaptureHandler, "250"),  # "250 OK captured": no enhanced code
])
async def test_delivered_recipients_carry_the_upstream_reply_code(
        tmp_path: Path, handler: type[CaptureHandler], expected: str) -> None:
    from tests.integration.relay_support import start_upstream

    up = await start_upstream(handler=handler())
    cfg = write_config(tmp_path, upstream_url=url(up))
    raw = numbered(1)
    try:
        async with securemail.load(cfg) as relay:
            outcome = await relay.send(raw)
    finally:
        await up.stop()
    assert [r.upstream_reply for r in outcome.recipients] == [expected]
    result = CliRunner().invoke(audit_group, ["export", "-c", str(cfg)])  # securemail audit export
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines() if line.strip()]
    [record] = [r for r in records if r.get("kind") == "message"]
    assert record["recipient"] == STAFF and record["upstream_reply"] == expected
    assert "queued" not in result.output and "captured" not in result.output


# ----------------------------------------------------------------- deferrals say what


async def test_a_deferral_says_which_recipients_wait_and_survives_pickling(
        tmp_path: Path) -> None:
    import pickle
    import socket

    from securemail.errors import RecipientsDeferred
    from securemail.relay import load

    # A port nobody listens on: the upstream is down. Held bound (connections to it are
    # refused): closed, it could be the port of the next socket, or the relay's own end.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        relay = load(write_config(tmp_path, upstream_url=f"smtp://127.0.0.1:{port}"))
        try:
            with pytest.raises(RecipientsDeferred) as info:
                await relay.send(numbered(1), rcpt_tos=[STAFF])
        finally:
            await relay.close()
    exc = info.value
    assert isinstance(exc, TemporaryFailure)  # retry-later code keeps working
    assert exc.deferred == (STAFF,) and exc.accepted == ()
    assert [r.status for r in exc.outcome.recipients] == [Status.DEFERRED]
    # The exception itself says why: a developer's error tracker shows it.
    assert str(exc).startswith("every recipient deferred (upstream: ")
    assert f"127.0.0.1:{port}" in str(exc) and "unavailable" in str(exc)
    copy = pickle.loads(pickle.dumps(exc))
    assert isinstance(copy, RecipientsDeferred) and copy.deferred == (STAFF,)


class _SlowForJane(CaptureHandler):
    """Accepts the colleague's copy at once; the client's portal notice takes 1 s."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if "jane@mail.example" in envelope.rcpt_tos:
            await asyncio.sleep(1.0)
        return await super().handle_DATA(server, session, envelope)


def test_a_send_cut_off_by_its_event_loop_ending_leaves_a_record_and_no_duplicate(
        tmp_path: Path) -> None:
    # asyncio.run() cancels every task left when main() returns, the shielded
    # pipeline included. The copies upstream accepted by then must be on record
    # (audit) and in the ledger (the retry sends only the rest).
    up = UpstreamThread(_SlowForJane())
    try:
        cfg = write_config(tmp_path, upstream_url=up.url, portal=True)
        raw = message(to="jane@mail.example", cc=STAFF,
                      body="Diagnosis F32.1 for Jane, SSN 123-45-6789.")
        relay = securemail.load(cfg)

        async def impatient() -> None:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(relay.send(raw), 0.4)

        asyncio.run(impatient())
        assert eventually(lambda: any(STAFF in m.rcpt_tos for m in up.messages))
        first = message_records(cfg, raw)
        assert {(r["recipient"], r["outcome"]) for r in first} == {
            (STAFF, "delivered"), ("jane@mail.example", "deferred")}
        outcome = relay.send_sync(raw)  # the caller's retry
        assert {r.address: r.status for r in outcome.recipients} == {
            STAFF: Status.DELIVERED, "jane@mail.example": Status.SEALED}
        # The first attempt's sealed copy, whose notice never left, was withdrawn:
        # one active copy (the retry's), the one the notice links to.
        import datetime as dt

        now = dt.datetime.now(dt.UTC)
        active = [row.id for row in relay.portal.list(now) if row.state(now) == "active"]
        assert active == [r.portal_id for r in outcome.recipients if r.portal_id]
        relay.close_sync()
        assert sum(STAFF in m.rcpt_tos for m in up.messages) == 1  # not sent twice
    finally:
        up.stop()


def test_a_relay_that_cannot_start_leaves_nothing_open(tmp_path: Path) -> None:
    # A caller retrying load() (its key file is being restored, say) must not
    # pile up open store connections, lock files or writer threads.
    import os
    import threading

    cfg = write_config(tmp_path, upstream_url="smtp://127.0.0.1:9")
    first = securemail.load(cfg)
    first.record_config_loaded("start")  # a store with records and a signing key
    first.close_sync()
    key = tmp_path / "data" / "audit-signing.key"
    key.rename(tmp_path / "saved.key")
    fds_before = len(os.listdir("/proc/self/fd"))
    threads_before = threading.active_count()
    for _ in range(5):
        with pytest.raises(securemail.ConfigError):
            securemail.load(cfg)
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert threading.active_count() == threads_before


def test_the_per_message_log_line_reads_well_without_a_json_formatter(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An EHR with logging.basicConfig() sees what happened, not just "message";
    still no local part and no content."""
    import logging

    from securemail.testing import capturing_relay

    relay, sent = capturing_relay(write_config(tmp_path, upstream_url="smtp://127.0.0.1:1"))
    try:
        with caplog.at_level(logging.INFO, logger="securemail.message"):
            relay.send_sync(b"From: dr@riverside.example\r\nTo: colleague@riverside.example\r\n"
                            b"Subject: Lunch plans\r\n\r\nNoon?\r\n")
    finally:
        relay.close_sync()
    assert len(sent) == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "securemail.message"]
    assert len(lines) == 1
    assert lines[0].startswith("message ")
    assert "deliver/delivered @riverside.example" in lines[0]
    assert "colleague" not in lines[0] and "Lunch" not in lines[0]


def test_the_log_line_says_whether_what_left_was_dkim_signed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A wrong [dkim] domain shows in the log ("unsigned"), not only at the receiver."""
    import logging

    from securemail.dkim import generate_key
    from securemail.testing import capturing_relay

    pem, _ = generate_key()
    (tmp_path / "dkim.key").write_bytes(pem)
    cfg = write_config(tmp_path, upstream_url="smtp://127.0.0.1:1", extra="""
        [dkim]
        domain = "riverside.example"
        selector = "sm1"
        key_file = "dkim.key"
        """)
    relay, sent = capturing_relay(cfg)
    try:
        with caplog.at_level(logging.INFO, logger="securemail.message"):
            for frm in ("dr@riverside.example", "noreply@scheduling-app.example"):
                relay.send_sync(f"From: {frm}\r\nTo: colleague@riverside.example\r\n"
                                "Subject: x\r\n\r\nhello\r\n".encode(),
                                mail_from=frm)
    finally:
        relay.close_sync()
    events = [getattr(r, "event", {}) for r in caplog.records if r.name == "securemail.message"]
    assert [e.get("dkim") for e in events] == ["signed", "unsigned"]
    assert sent[0].data.startswith(b"DKIM-Signature:") and b"DKIM-Signature" not in sent[1].data
