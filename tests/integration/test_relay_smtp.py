"""The SMTP listener's replies, limits and safety rules, over loopback sockets.

The relay here is a small fake with ``Relay.send``'s signature that forwards to
a real aiosmtpd upstream (through the real SMTPTransport), so these tests pin
the SMTP glue; test_relay_pipeline.py runs the real pipeline end to end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemail.admin import start_admin
from securemail.errors import Blocked, MalformedMessage, StoreError, UpstreamUnavailable
from securemail.metrics import READY_DEFERRAL_STREAK
from securemail.model import Action, Decision, Mode, Role, Source, Verdict
from securemail.smtp import has_bare_cr_or_lf
from securemail.smtp_data import DataResult, read_data
from tests.integration.relay_support import (
    FakeRelay,
    RunningRelay,
    Upstream,
    message,
    run_relay,
    write_config,
)

SENDER, RCPT = "dr@riverside.example", "colleague@riverside.example"


@pytest.fixture
async def make_relay(tmp_path: Path, upstream: Upstream
                     ) -> AsyncIterator[Callable[..., Any]]:
    running: list[RunningRelay] = []

    async def make(**kw: Any) -> RunningRelay:
        cfg = write_config(tmp_path, upstream_url=f"smtp://127.0.0.1:{upstream.port}", **kw)
        r = await run_relay(cfg, FakeRelay)
        running.append(r)
        return r

    yield make
    for r in running:
        await r.stop()


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait (bounded) for the server side to catch up with what the client did."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def smtplib_send(port: int, data: bytes, rcpts: list[str], sender: str = SENDER
                 ) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        return s.sendmail(sender, rcpts, data)


async def send(port: int, data: bytes, rcpts: list[str] | None = None,
               sender: str = SENDER) -> tuple[int, str]:
    """aiosmtplib; returns the DATA reply (raises on MAIL/RCPT refusals)."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10)
    await client.connect()
    try:
        await client.mail(sender)
        for r in rcpts or [RCPT]:
            await client.rcpt(r)
        try:
            resp = await client.data(data)
            return resp.code, resp.message
        except aiosmtplib.SMTPDataError as exc:
            return exc.code, exc.message
    finally:
        client.close()


async def test_pass_through_is_250_and_upstream_gets_the_exact_bytes(
        make_relay: Callable[..., Any], upstream: Upstream) -> None:
    r = await make_relay()
    data = message()
    refused = await asyncio.to_thread(smtplib_send, r.port, data, [RCPT])
    assert refused == {}
    assert [m.data for m in upstream.messages] == [data]
    call = r.relay.calls[0]
    assert (call["mail_from"], call["rcpt_tos"], call["peer"]) == (SENDER, [RCPT], "127.0.0.1")
    assert call["auth_identity"] is None and call["tls"] is None


async def test_null_sender_is_accepted_and_passed_as_empty(
        make_relay: Callable[..., Any]) -> None:
    r = await make_relay()
    code, _ = await send(r.port, message(), sender="")
    assert code == 250 and r.relay.calls[0]["mail_from"] == ""


def _verdict(*blocked: str, rule: str = "unauthorised-recipient") -> Verdict:
    return Verdict("<t@x>", Mode.ENFORCE, False, True, tuple(
        Decision(a, Source.CC, Role.THIRD_PARTY, Action.BLOCK, (rule,), "not authorised")
        for a in blocked))


@pytest.mark.parametrize(("error", "expected"), [
    (Blocked(_verdict("mom@mail.example")),
     "550 5.7.1 Blocked by policy (unauthorised-recipient): mom@mail.example"),
    (Blocked(_verdict("x@mail.example", rule="malformed-message")),
     "554 5.6.0 Message not relayed: malformed-message"),
    (MalformedMessage("header too long: Subject: secret"), "554 5.6.0"),
    (StoreError("disk full at /var/lib/secret"), "451 4.3.0"),
    (RuntimeError("Subject: depression follow-up for Jane"), "451 4.3.0"),
    (KeyError("jane@mail.example"), "451 4.3.0"),
])
async def test_every_failure_maps_to_its_fixed_reply(
        make_relay: Callable[..., Any], upstream: Upstream, error: Exception, expected: str,
        caplog: pytest.LogCaptureFixture) -> None:
    r = await make_relay()

    def fail(_: bytes) -> None:
        raise error

    r.relay.behaviour = fail
    with caplog.at_level(logging.DEBUG):
        code, text = await send(r.port, message())
    reply = f"{code} {text}"
    assert reply.startswith(expected)
    assert "Error" not in reply and "secret" not in reply and "Jane" not in reply
    assert "depression" not in caplog.text and "secret" not in caplog.text
    assert upstream.messages == []


async def test_partial_refusal_is_250_and_total_refusal_is_550(
        make_relay: Callable[..., Any], upstream: Upstream) -> None:
    upstream.handler.rcpt_replies["gone@mail.example"] = "550 5.1.1 no such user"
    r = await make_relay()
    code, _ = await send(r.port, message(), [RCPT, "gone@mail.example"])
    assert code == 250 and upstream.messages[0].rcpt_tos == [RCPT]
    code, text = await send(r.port, message(), ["gone@mail.example"])
    assert code == 550 and text.startswith("5.1.0")


async def test_upstream_deferral_is_451(make_relay: Callable[..., Any],
                                        upstream: Upstream) -> None:
    upstream.handler.rcpt_replies[RCPT] = "452 4.2.2 mailbox full"
    r = await make_relay()
    code, text = await send(r.port, message())
    assert (code, text.split()[0]) == (451, "4.3.0")


async def test_upstream_down_is_451_and_nothing_is_claimed(
        make_relay: Callable[..., Any], upstream: Upstream) -> None:
    r = await make_relay()
    await upstream.stop()
    code, text = await send(r.port, message())
    assert (code, text.split()[0]) == (451, "4.3.0")


def test_bare_cr_lf_detector() -> None:
    assert not has_bare_cr_or_lf(b"a\r\nb\r\n")
    assert has_bare_cr_or_lf(b"a\nb\r\n")
    assert has_bare_cr_or_lf(b"a\rb\r\n")
    assert has_bare_cr_or_lf(b"a\r\n.\n\r\n")


async def _raw_session(port: int, chunks: list[bytes]) -> list[bytes]:
    """Speak raw SMTP; returns every reply line received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = [await reader.readline()]
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
        while True:
            line = await asyncio.wait_for(reader.readline(), 5)
            replies.append(line)
            if line[3:4] != b"-":
                break
    writer.close()
    return replies


async def test_a_malformed_recipient_is_refused_alone_at_rcpt(
        make_relay: Callable[..., Any], upstream: Upstream) -> None:
    r = await make_relay()
    replies = await _raw_session(r.port, [
        b"EHLO client.test\r\n", b"MAIL FROM:<dr@riverside.example>\r\n",
        b"RCPT TO:<postmaster>\r\n", b"RCPT TO:<a@[192.0.2.1]>\r\n",
        b"RCPT TO:<colleague@riverside.example>\r\n", b"DATA\r\n",
        b"From: dr@riverside.example\r\nTo: colleague@riverside.example\r\n"
        b"Subject: rota\r\n\r\nhello\r\n.\r\n", b"QUIT\r\n"])
    codes = [line[:9] for line in replies if line[3:4] == b" "]
    assert codes[3:5] == [b"553 5.1.3", b"553 5.1.3"]  # each bad one, on its own
    assert codes[5] == b"250 2.1.5" and codes[7].startswith(b"250")
    assert len(upstream.messages) == 1


async def test_smuggling_with_bare_lf_is_rejected_and_nothing_leaves(
        make_relay: Callable[..., Any], upstream: Upstream) -> None:
    r = await make_relay()
    smuggled = (b"From: dr@riverside.example\r\nTo: colleague@riverside.example\r\n"
                b"Subject: one\r\n\r\nhello\r\n"
                b"\n.\r\n"  # the end-of-data marker some servers see ("<LF>.<CRLF>")
                b"MAIL FROM:<ceo@riverside.example>\r\nRCPT TO:<victim@mail.example>\r\n"
                b"DATA\r\nFrom: ceo@riverside.example\r\nSubject: forged\r\n\r\nPay me\r\n"
                b".\r\n")
    replies = await _raw_session(r.port, [
        b"EHLO client\r\n", f"MAIL FROM:<{SENDER}>\r\n".encode(), f"RCPT TO:<{RCPT}>\r\n".encode(),
        b"DATA\r\n", smuggled, b"QUIT\r\n"])
    data_reply = replies[-2]
    assert data_reply.startswith(b"554 5.6.0"), replies
    assert upstream.messages == [] and r.relay.calls == []


async def test_size_is_advertised_and_enforced(make_relay: Callable[..., Any],
                                               upstream: Upstream) -> None:
    r = await make_relay(limits="max_message_bytes = 20000\n")
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port, start_tls=False)
    await client.connect()
    await client.ehlo()
    assert client.esmtp_extensions["size"] == "20000"
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await client.mail(SENDER, options=["SIZE=20001"])
    assert refused.value.code == 552
    await client.mail(SENDER)
    await client.rcpt(RCPT)
    with pytest.raises(aiosmtplib.SMTPDataError) as too_big:
        await client.data(message(size=30000))
    assert too_big.value.code == 552
    # One text at MAIL and after DATA, giving the limit (it said neither).
    assert refused.value.message == too_big.value.message == (
        "5.3.4 Message too big: this relay takes at most 20000 bytes (19 KiB) including"
        " attachments, which grow by a third when attached")
    client.close()
    assert upstream.messages == [] and r.relay.calls == []
    code, _ = await send(r.port, message(size=10000))
    assert code == 250


async def test_recipient_limit_is_452(make_relay: Callable[..., Any]) -> None:
    r = await make_relay(relay_extra="max_recipients = 2\n")
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port, start_tls=False)
    await client.connect()
    await client.mail(SENDER)
    await client.rcpt("a@riverside.example")
    await client.rcpt("b@riverside.example")
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as exc:
        await client.rcpt("c@riverside.example")
    assert (exc.value.code, exc.value.message.split()[0]) == (452, "4.5.3")
    client.close()


async def test_no_open_relay_for_untrusted_peers(make_relay: Callable[..., Any],
                                                 upstream: Upstream,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    r = await make_relay(relay_extra='trusted_networks = ["10.0.0.0/8"]\n')
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port, start_tls=False)
    await client.connect()
    await client.mail(SENDER)
    with caplog.at_level(logging.WARNING, logger="securemail.smtp"):
        for _ in range(3):
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as exc:
                await client.rcpt(RCPT)
            assert exc.value.code == 554
    client.close()
    assert upstream.messages == []
    # Probing shows in the log: once per connection, with the peer, no addresses.
    refused = [r.getMessage() for r in caplog.records if "relay refused" in r.getMessage()]
    assert refused == ["relay refused: 127.0.0.1 is not in relay.trusted_networks"
                       " (content-filter listener)"]


async def test_connections_per_client_are_limited(make_relay: Callable[..., Any],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    r = await make_relay(relay_extra="max_connections_per_client = 2\n")
    clients = []
    for _ in range(2):
        c = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port, start_tls=False)
        await c.connect()
        clients.append(c)
    third = await _raw_session(r.port, [])
    assert third[0].startswith(b"421 4.7.0")
    fourth = await _raw_session(r.port, [])
    assert fourth[0].startswith(b"421 4.7.0")
    # The operator learns why (trial 41: nothing was logged), once a minute.
    limited = [m for m in caplog.messages if "max_connections_per_client = 2" in m]
    assert limited == ["refused a connection from 127.0.0.1 (421): 3 sessions from that"
                       " address would pass relay.max_connections_per_client = 2 (each relay"
                       " process counts its own)"]
    clients.pop().close()
    await until(lambda: r.listeners.state.per_client["127.0.0.1"] == 1)
    c = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port, start_tls=False)
    await c.connect()  # a slot is free again
    for c2 in (*clients, c):
        c2.close()


async def test_drain_finishes_in_flight_and_answers_new_sessions_421(
        make_relay: Callable[..., Any], upstream: Upstream) -> None:
    r = await make_relay()
    r.relay.gate = asyncio.Event()
    in_flight = asyncio.create_task(send(r.port, message()))
    await until(lambda: bool(r.relay.calls))
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    assert (await reader.readline()).startswith(b"220")
    writer.write(f"EHLO c\r\nMAIL FROM:<{SENDER}>\r\n".encode())  # a message begun
    while not (await reader.readline()).startswith(b"250 2.1.0"):
        pass
    drain = asyncio.create_task(r.listeners.drain(timeout=10))
    await until(lambda: r.listeners.state.draining)
    late = await _raw_session(r.port, [])
    assert late[0].startswith(b"421")
    # A session with no message in flight is told at once and closed (RFC 5321
    # 3.8), not left to send DATA during the drain, while the one in flight goes on.
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"421 4.3.2")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert not in_flight.done()
    r.relay.gate.set()
    assert (await in_flight)[0] == 250
    assert await drain is True
    assert len(upstream.messages) == 1


async def test_sessions_left_open_at_the_end_of_a_drain_get_421_not_a_hang_up(
        make_relay: Callable[..., Any]) -> None:
    r = await make_relay()
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    assert (await reader.readline()).startswith(b"220")
    writer.write(b"EHLO client.example\r\n")
    while not (await reader.readline()).startswith(b"250 "):
        pass
    assert await r.listeners.drain(timeout=10) is True
    # RFC 5321 4.2.2: the client learns why the session ends and retries later.
    line = await asyncio.wait_for(reader.readline(), 5)
    assert line.startswith(b"421 4.3.2")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_one_json_log_line_per_message_without_local_parts(
        make_relay: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    r = await make_relay()
    with caplog.at_level(logging.INFO, logger="securemail.message"):
        await send(r.port, message(), [RCPT, "someone@mail.example"])
    records = [rec for rec in caplog.records if rec.name == "securemail.message"]
    assert len(records) == 1
    event = records[0].event  # type: ignore[attr-defined]
    line = json.dumps(event)
    assert event["smtp"]["reply"] == "250 2.0.0"
    assert event["smtp"]["sender_domain"] == "riverside.example"
    assert "colleague" not in line and "someone" not in line and "dr@" not in line


async def test_admin_endpoint_serves_health_and_metrics(make_relay: Callable[..., Any]) -> None:
    r = await make_relay()
    state = r.listeners.state
    admin = await start_admin("127.0.0.1", 0, metrics=state.metrics.render,
                              healthy=lambda: not state.draining,
                              not_ready=state.metrics.not_ready)
    port = admin.sockets[0].getsockname()[1]
    await send(r.port, message())

    async def get(path: str) -> tuple[str, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        raw = (await reader.read()).decode()
        writer.close()
        head, _, body = raw.partition("\r\n\r\n")
        return head.split("\r\n")[0], body

    status, body = await get("/healthz")
    assert status.endswith("200 OK") and body == "ok\n"
    status, body = await get("/metrics")
    assert 'securemail_messages_total{outcome="delivered"} 1' in body
    assert 'securemail_recipients_total{action="deliver"} 1' in body
    assert "securemail_message_seconds_count 1" in body
    status, body = await get("/readyz")
    assert status.endswith("200 OK") and body == "ready\n"
    # Every label value is there before it is first counted (alerts can use it).
    assert 'securemail_messages_total{outcome="blocked"} 0' in (await get("/metrics"))[1]

    def upstream_down(_: bytes) -> None:
        raise UpstreamUnavailable("upstream unavailable (ConnectionRefusedError)")

    r.relay.behaviour = upstream_down
    for _ in range(READY_DEFERRAL_STREAK):
        assert (await send(r.port, message()))[0] == 451
    status, body = await get("/readyz")
    assert "503" in status and body.startswith(f"deferring: the last {READY_DEFERRAL_STREAK}")
    status, _ = await get("/healthz")
    assert status.endswith("200 OK")  # the process itself is fine: no restart wanted
    assert f"securemail_deferral_streak {READY_DEFERRAL_STREAK}" in (await get("/metrics"))[1]
    r.relay.behaviour = None
    assert (await send(r.port, message()))[0] == 250
    assert (await get("/readyz"))[0].endswith("200 OK")

    state.draining = True
    status, _ = await get("/healthz")
    assert "503" in status
    assert "503" in (await get("/readyz"))[0]
    admin.close()
    await admin.wait_closed()


@given(st.lists(st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
                max_size=40),
       st.integers(min_value=1, max_value=64))
@settings(max_examples=200, deadline=None)
def test_data_reader_returns_exactly_what_was_dot_stuffed(lines: list[bytes],
                                                          feed: int) -> None:
    """Whatever the lines and however the bytes arrive, the reader gives back the
    original message and leaves the next command in the stream."""
    original = b"".join(line + b"\r\n" for line in lines)
    stuffed = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                       for line in lines)

    async def run() -> tuple[DataResult, bytes]:
        reader = asyncio.StreamReader(limit=64)  # a small window exercises the overrun path
        wire = stuffed + b".\r\nQUIT\r\n"
        for i in range(0, len(wire), feed):
            reader.feed_data(wire[i:i + feed])
        reader.feed_eof()
        result = await read_data(reader, None)
        return result, await reader.read()

    result, rest = asyncio.run(run())
    assert result == DataResult(original, False)
    assert rest == b"QUIT\r\n"


async def test_dot_stuffed_lines_arrive_unstuffed(make_relay: Callable[..., Any],
                                                  upstream: Upstream) -> None:
    r = await make_relay()
    data = message(body=".leading dot\r\n..two dots\r\n.\r\nend")
    await asyncio.to_thread(smtplib_send, r.port, data, [RCPT])  # smtplib dot-stuffs
    assert upstream.messages[0].data == data


async def test_reload_applies_new_limits_and_networks_to_open_listeners(
        make_relay: Callable[..., Any]) -> None:
    from dataclasses import replace

    r = await make_relay(relay_extra="max_recipients = 1\n")
    s = r.settings
    r.listeners.prepare(replace(s, relay=replace(s.relay, max_recipients=3,
                                               trusted_networks=("10.0.0.0/8",))))()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port, start_tls=False)
    await client.connect()
    await client.mail(SENDER)
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as exc:
        await client.rcpt(RCPT)  # loopback is no longer trusted
    assert exc.value.code == 554
    client.close()
    r.listeners.prepare(replace(s, relay=replace(s.relay, max_recipients=3)))()
    code, _ = await send(r.port, message(), ["a@riverside.example", "b@riverside.example",
                                             "c@riverside.example"])
    assert code == 250


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
       | st.from_regex(r"<[a-z.+_-]{1,12}@[a-z0-9.-]{1,12}>( [A-Z]+=[0-9A-Z]+)?", fullmatch=True))
@settings(max_examples=300, deadline=None)
def test_fast_address_path_agrees_with_the_rfc5322_parser(arg: str) -> None:
    from email._header_value_parser import get_angle_addr

    from securemail.smtp import _PLAIN_PATH

    m = _PLAIN_PATH.match(arg)
    if m is None:
        return  # aiosmtpd's own parser handles it
    addr, rest = get_angle_addr(arg)
    assert (m.group(1), m.group(2)) == (addr.addr_spec, rest)


async def test_the_content_filter_port_neither_lists_nor_accepts_auth(
        make_relay: Callable[..., Any]) -> None:
    # AUTH belongs to the submission listener; on the content-filter port HELP
    # must not offer it and AUTH must say where to go, not ask for a password.
    r = await make_relay()

    def talk() -> tuple[bytes, tuple[int, bytes], tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", r.port, timeout=10) as s:
            s.ehlo()
            code, help_text = s.docmd("HELP")
            assert code == 250
            return help_text, s.docmd("AUTH", "PLAIN AGZvbwBiYXI="), s.docmd("HELP", "AUTH")

    help_text, auth, help_auth = await asyncio.to_thread(talk)
    commands = help_text.decode().split(":", 1)[1].split()
    assert "AUTH" not in commands and {"MAIL", "RCPT", "DATA", "EHLO"} <= set(commands)
    assert auth[0] == 502 and b"submission" in auth[1]
    assert help_auth[0] == 501


async def test_an_idle_client_is_told_why_before_the_connection_closes(
        make_relay: Callable[..., Any]) -> None:
    r = await make_relay(relay_extra="timeout_seconds = 1\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
    try:
        greeting = await asyncio.wait_for(reader.readline(), 5)
        assert greeting.startswith(b"220")
        rest = await asyncio.wait_for(reader.read(), 10)  # until the server closes
        assert rest == b"421 4.4.2 Idle timeout, closing the connection\r\n"
    finally:
        writer.close()
