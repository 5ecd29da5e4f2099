"""SMTP defects found in a security trial, against the real relay, a real
aiosmtpd upstream and raw SMTP over loopback."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from tests.integration.relay_support import (
    CaptureHandler,
    RunningRelay,
    Upstream,
    run_relay,
    start_upstream,
    write_config,
)

SENDER = "dr@riverside.example"
GOOD = "colleague@riverside.example"


async def _dialogue(port: int, lines: list[bytes]) -> list[bytes]:
    """Each chunk sent, then its reply (every line of a multi-line one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = [await asyncio.wait_for(reader.readline(), 5)]
    for chunk in lines:
        writer.write(chunk)
        await writer.drain()
        while True:
            line = await asyncio.wait_for(reader.readline(), 10)
            replies.append(line)
            if line[3:4] != b"-" or not line:
                break
    writer.close()
    return [r for r in replies if r[3:4] != b"-"]


async def test_an_invisible_character_in_an_address_is_refused_not_deferred_forever(
        tmp_path: Path, upstream: Upstream) -> None:
    # U+200B in a recipient passed RCPT, then every DATA got 451 (the upstream
    # client refused it): the good co-recipient never got the message either.
    r = await run_relay(write_config(tmp_path, upstream_url=f"smtp://127.0.0.1:{upstream.port}"))
    try:
        replies = await _dialogue(r.port, [
            b"EHLO client.test\r\n", f"MAIL FROM:<{SENDER}> SMTPUTF8\r\n".encode(),
            f"RCPT TO:<{GOOD}>\r\n".encode(), "RCPT TO:<s\u200b2@riverside.example>\r\n".encode(),
            b"DATA\r\n", f"From: {SENDER}\r\nTo: {GOOD}\r\nSubject: rota\r\n\r\nhi\r\n.\r\n"
            .encode(), "MAIL FROM:<\"a\u2028b\"@riverside.example> SMTPUTF8\r\n".encode(),
            b"QUIT\r\n"])
        codes = [line[:9] for line in replies]
        assert codes[3:5] == [b"250 2.1.5", b"553 5.1.3"]  # the invisible one, alone, at RCPT
        assert codes[6].startswith(b"250")  # the message went to the good recipient
        assert codes[7] == b"501 5.1.7"  # a sender with a line separator, at MAIL
        assert [m.rcpt_tos for m in upstream.messages] == [[GOOD]]
    finally:
        await r.stop()


class _SlowUpstream(CaptureHandler):
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(3.0)
        return await super().handle_DATA(server, session, envelope)


async def _relay_with_timeout(tmp_path: Path, upstream_port: int) -> RunningRelay:
    cfg = write_config(tmp_path, upstream_url=f"smtp://127.0.0.1:{upstream_port}",
                       relay_extra="timeout_seconds = 2\n")
    return await run_relay(cfg)


async def test_a_client_still_sending_its_data_is_not_timed_out(
        tmp_path: Path, upstream: Upstream) -> None:
    # relay.timeout_seconds was a deadline for the whole DATA phase: a client
    # on a slow line got "421 Idle timeout" while its data was still coming.
    r = await _relay_with_timeout(tmp_path, upstream.port)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        await reader.readline()
        for line in (b"EHLO client.test\r\n", f"MAIL FROM:<{SENDER}>\r\n".encode(),
                     f"RCPT TO:<{GOOD}>\r\n".encode(), b"DATA\r\n"):
            writer.write(line)
            while (reply := await asyncio.wait_for(reader.readline(), 5))[3:4] == b"-":
                pass
        assert reply.startswith(b"354")
        writer.write(f"From: {SENDER}\r\nTo: {GOOD}\r\nSubject: slow\r\n\r\n".encode())
        for n in range(6):  # 4.2 s of data, a line every 0.7 s: twice the timeout
            await asyncio.sleep(0.7)
            writer.write(f"line {n}\r\n".encode())
        writer.write(b".\r\n")
        reply = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert reply.startswith(b"250"), reply
        assert len(upstream.messages) == 1
    finally:
        await r.stop()


async def test_the_client_is_not_timed_out_while_the_relay_works_on_its_message(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The upstream takes longer than relay.timeout_seconds: the client, waiting
    # for our reply, got "421 Idle timeout" although the message was delivered
    # (and its log line was never written).
    slow = await start_upstream(handler=_SlowUpstream())
    r = await _relay_with_timeout(tmp_path, slow.port)
    try:
        with caplog.at_level(logging.INFO, logger="securemail.message"):
            refused, reply = await aiosmtplib.send(
                f"From: {SENDER}\r\nTo: {GOOD}\r\nSubject: hi\r\n\r\nhello\r\n".encode(),
                sender=SENDER, recipients=[GOOD], hostname="127.0.0.1", port=r.port,
                start_tls=False, timeout=20)
        assert refused == {} and "relayed" in reply  # 250, not 421
        assert len(slow.messages) == 1
        assert sum(1 for rec in caplog.records if getattr(rec, "event", {}).get("smtp")) == 1
    finally:
        await r.stop()
        await slow.stop()


async def test_a_message_whose_client_hung_up_still_gets_its_log_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The pipeline's line was held for the SMTP reply; the client went away,
    # the message was delivered (shielded), and the line was never written.
    slow = await start_upstream(handler=_SlowUpstream())
    r = await _relay_with_timeout(tmp_path, slow.port)
    try:
        with caplog.at_level(logging.INFO, logger="securemail.message"):
            reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
            await reader.readline()
            writer.write(b"EHLO c\r\n" + f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{GOOD}>\r\n"
                         .encode() + b"DATA\r\n")
            await writer.drain()
            while not (await asyncio.wait_for(reader.readline(), 5)).startswith(b"354"):
                pass
            writer.write(f"From: {SENDER}\r\nTo: {GOOD}\r\nSubject: bye\r\n\r\nhi\r\n.\r\n"
                         .encode())
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.close()  # hang up while the relay delivers
            for _ in range(100):
                if slow.messages and any(getattr(rec, "event", {}).get("event") == "message"
                                         for rec in caplog.records):
                    break
                await asyncio.sleep(0.1)
        assert len(slow.messages) == 1
        lines = [rec for rec in caplog.records if getattr(rec, "event", {}).get("event")
                 == "message"]
        assert len(lines) == 1 and "delivered" in lines[0].getMessage()
    finally:
        await r.stop()
        await slow.stop()


async def test_connections_from_every_client_together_are_limited(
        tmp_path: Path, upstream: Upstream) -> None:
    # Only the per-address limit existed: a few hundred addresses, each holding
    # its share open, could take every file descriptor of the relay.
    cfg = write_config(tmp_path, upstream_url=f"smtp://127.0.0.1:{upstream.port}",
                       relay_extra="max_connections_per_client = 5\nmax_connections = 3\n")
    r = await run_relay(cfg)
    held = []
    try:
        for n in range(2, 5):  # three sessions, each from an address of its own
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", r.port, local_addr=(f"127.0.0.{n}", 0))
            assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"220")
            held.append(writer)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", r.port, local_addr=("127.0.0.9", 0))
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(
            b"421 4.7.0 Too many connections, try again later")
        writer.close()
        held.pop().close()
        for _ in range(50):  # a slot is free again once one closes
            if len(r.listeners.state.open) < 3:
                break
            await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", r.port, local_addr=("127.0.0.9", 0))
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"220")
        writer.close()
    finally:
        for w in held:
            w.close()
        await r.stop()


async def test_a_bare_lf_does_not_end_a_command_line(tmp_path: Path, upstream: Upstream) -> None:
    # "EHLO x<LF>MAIL FROM:...<LF>RCPT TO:...<LF>DATA<LF>" was read as four
    # commands and relayed (RFC 5321 2.3.8: a bare LF must not end a line).
    r = await run_relay(write_config(tmp_path, upstream_url=f"smtp://127.0.0.1:{upstream.port}"))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        await reader.readline()
        writer.write(f"EHLO x\nMAIL FROM:<{SENDER}>\nRCPT TO:<{GOOD}>\nDATA\r\n".encode())
        reply = await asyncio.wait_for(reader.readline(), 5)
        assert reply.startswith(b"5"), reply  # one unknown command, not four
        writer.write(b"EHLO x\r\n")  # CRLF lines still work
        lines = [await asyncio.wait_for(reader.readline(), 5)]
        while lines[-1][3:4] == b"-":
            lines.append(await asyncio.wait_for(reader.readline(), 5))
        assert lines[-1].startswith(b"250")
        writer.close()
        assert upstream.messages == []
    finally:
        await r.stop()


async def test_a_shutdown_answers_421_to_sessions_and_relays_no_new_message(
        tmp_path: Path, upstream: Upstream) -> None:
    # deploy.md promised it; such a client got nothing until every message in
    # flight had finished, and a session that had MAIL and RCPT could even send
    # DATA during the drain and have its message relayed.
    r = await run_relay(write_config(tmp_path, upstream_url=f"smtp://127.0.0.1:{upstream.port}"))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
        await reader.readline()
        writer.write(f"EHLO c\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{GOOD}>\r\nDATA\r\n".encode())
        while not (await asyncio.wait_for(reader.readline(), 5)).startswith(b"354"):
            pass
        writer.write(f"From: {SENDER}\r\nTo: {GOOD}\r\nSubject: half\r\n\r\nhalf".encode())
        await writer.drain()
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", r.port)
        await idle_reader.readline()
        drain = asyncio.create_task(r.listeners.drain(timeout=10))
        # A session with nothing in flight is told at once and closed.
        assert (await asyncio.wait_for(idle_reader.readline(), 2)).startswith(b"421 4.3.2")
        assert await asyncio.wait_for(idle_reader.read(), 2) == b""
        idle_writer.close()
        await asyncio.sleep(0.3)
        writer.write(b" the rest\r\n.\r\n")  # the data ends during the drain
        assert (await asyncio.wait_for(reader.readline(), 2)).startswith(b"421 4.3.2")
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
        assert await drain is True
        assert upstream.messages == []
    finally:
        await r.stop()


async def test_a_client_that_stops_reading_is_cut_off_after_the_grace_period(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # close() waits until all we wrote has left: a client that stopped reading
    # kept its session, and a drain waiting for it (Python 3.12+), forever.
    from securemail import smtp

    monkeypatch.setattr(smtp, "CLOSE_GRACE_SECONDS", 0.5)
    lost = asyncio.Event()

    class Server(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(b"x" * (64 * 1024 * 1024))  # far more than the socket buffers
            transport.close()  # waits for the peer to read it all: it never will
            smtp._abort_later(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            lost.set()

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # and never reads
    try:
        await asyncio.wait_for(lost.wait(), 5)
    finally:
        writer.close()
        server.close()
