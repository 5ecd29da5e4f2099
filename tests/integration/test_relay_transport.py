"""Upstream transports against real aiosmtpd servers on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import mailbox
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from securemail.config import Settings, UpstreamSettings, parse_settings
from securemail.errors import UpstreamUnavailable
from securemail.transport import MemoryTransport
from securemail.transport.factory import transport_from_settings
from securemail.transport.maildir import MaildirTransport, read_envelope
from securemail.transport.smtp import SMTPTransport, reply_code, wire_data
from tests.integration.relay_support import (
    CaptureHandler,
    Upstream,
    make_certs,
    start_upstream,
)

MSG = b"From: a@riverside.example\r\nTo: b@mail.example\r\nSubject: x\r\n\r\nhello\r\n"


def upstream(port: int, **kw: object) -> UpstreamSettings:
    return UpstreamSettings(url=f"smtp://127.0.0.1:{port}", **kw)  # type: ignore[arg-type]


async def test_starttls_verified_delivery_reports_tls_facts(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    up = await start_upstream(tls=certs.server_context)
    t = SMTPTransport(upstream(up.port, ca_file=str(certs.ca_file)))
    try:
        result = await t.send("a@riverside.example", ["b@mail.example"], MSG)
    finally:
        await t.close()
        await up.stop()
    assert result.accepted == ("b@mail.example",)
    assert up.messages[0].data == MSG
    assert result.tls is not None and result.tls.version in ("TLSv1.2", "TLSv1.3")
    assert result.tls.cipher
    pem = Path(certs.cert_file).read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    assert result.tls.peer_cert_sha256 == hashlib.sha256(der).hexdigest()


async def test_upstream_without_starttls_gets_nothing(tmp_path: Path) -> None:
    up = await start_upstream(tls=None)
    t = SMTPTransport(upstream(up.port))
    try:
        with pytest.raises(UpstreamUnavailable):
            await t.send("a@riverside.example", ["b@mail.example"], MSG)
    finally:
        await t.close()
        await up.stop()
    assert up.messages == []


async def test_unverifiable_certificate_gets_nothing(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    up = await start_upstream(tls=certs.server_context)
    t = SMTPTransport(upstream(up.port))  # system CAs do not know the test CA
    try:
        with pytest.raises(UpstreamUnavailable):
            await t.send("a@riverside.example", ["b@mail.example"], MSG)
    finally:
        await t.close()
        await up.stop()
    assert up.messages == []


async def test_per_recipient_codes_without_upstream_text() -> None:
    handler = CaptureHandler(rcpt_replies={
        "gone@mail.example": "550 5.1.1 <gone@mail.example>: user unknown, secret detail",
        "full@mail.example": "452 4.2.2 mailbox full, secret detail",
    })
    up = await start_upstream(handler=handler)
    t = SMTPTransport(upstream(up.port, tls="none"))
    try:
        result = await t.send("a@riverside.example",
                              ["ok@mail.example", "gone@mail.example", "full@mail.example"], MSG)
    finally:
        await t.close()
        await up.stop()
    assert result.accepted == ("ok@mail.example",)
    assert dict(result.refused) == {"gone@mail.example": "550 5.1.1"}
    assert dict(result.deferred) == {"full@mail.example": "452 4.2.2"}
    assert up.messages[0].rcpt_tos == ["ok@mail.example"]


async def test_utf8_headers_are_announced_with_smtputf8() -> None:
    up = await start_upstream()  # advertises SMTPUTF8
    t = SMTPTransport(upstream(up.port, tls="none"))
    intl = ("From: a@riverside.example\r\nTo: Zoë <zoe@mail.example>\r\nSubject: Grüße\r\n"
            "\r\nhello\r\n").encode()
    try:
        await t.send("a@riverside.example", ["zoe@mail.example"], intl)
        await t.send("a@riverside.example", ["zoe@mail.example"], MSG)
    finally:
        await t.close()
        await up.stop()
    assert "SMTPUTF8" in up.messages[0].mail_options
    assert "SMTPUTF8" not in up.messages[1].mail_options


async def test_data_refused_permanently_marks_all_refused() -> None:
    up = await start_upstream(handler=CaptureHandler(data_reply="554 5.7.1 content rejected"))
    t = SMTPTransport(upstream(up.port, tls="none"))
    try:
        result = await t.send("a@riverside.example", ["b@mail.example"], MSG)
        up.handler.data_reply = "451 4.3.0 try later"
        with pytest.raises(UpstreamUnavailable):
            await t.send("a@riverside.example", ["b@mail.example"], MSG)
    finally:
        await t.close()
        await up.stop()
    assert result.accepted == () and dict(result.refused) == {"b@mail.example": "554 5.7.1"}


class CountingUpstream:
    """A capturing aiosmtpd upstream that counts the connections made to it."""

    def __init__(self, handler: CaptureHandler, server: asyncio.AbstractServer) -> None:
        self.handler = handler
        self.server = server
        self.connections = 0
        self.port = int(server.sockets[0].getsockname()[1])

    @classmethod
    async def start(cls, handler: CaptureHandler | None = None) -> CountingUpstream:
        loop = asyncio.get_running_loop()
        handler = handler or CaptureHandler()
        up: CountingUpstream

        def factory() -> SMTP:
            up.connections += 1
            return SMTP(handler, loop=loop)

        up = cls(handler, await loop.create_server(factory, host="127.0.0.1", port=0))
        return up

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def test_connections_are_reused_and_pool_is_bounded() -> None:
    up = await CountingUpstream.start()
    t = SMTPTransport(upstream(up.port, tls="none", pool_size=2))
    try:
        for _ in range(3):
            await t.send("a@riverside.example", ["b@mail.example"], MSG)
        assert up.connections == 1
        await asyncio.gather(*(t.send("a@riverside.example", ["b@mail.example"], MSG)
                               for _ in range(10)))
        assert up.connections <= 2
    finally:
        await t.close()
        await up.stop()
    assert len(up.handler.messages) == 13


async def test_old_sessions_and_a_reload_give_fresh_connections(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A `postfix reload` changes what new smtpd processes do; a session kept
    # open forever would never see it. Sessions are replaced after a while,
    # and SIGHUP (recycle) drops the idle ones at once.
    import securemail.transport.smtp as smtp_transport

    up = await CountingUpstream.start()
    t = SMTPTransport(upstream(up.port, tls="none"))
    # Long enough for two sends on a slow, busy machine: the second must find it young.
    monkeypatch.setattr(smtp_transport, "SESSION_REUSE_SECONDS", 1.5)
    try:
        await t.send("a@riverside.example", ["b@mail.example"], MSG)
        await t.send("a@riverside.example", ["b@mail.example"], MSG)
        assert up.connections == 1  # reused while young
        await asyncio.sleep(1.6)
        await t.send("a@riverside.example", ["b@mail.example"], MSG)
        assert up.connections == 2  # too old: replaced
        t.recycle()
        await t.send("a@riverside.example", ["b@mail.example"], MSG)
        assert up.connections == 3  # dropped by the reload
    finally:
        await t.close()
        await up.stop()
    assert len(up.handler.messages) == 4


async def test_pooled_connection_closed_by_upstream_is_replaced() -> None:
    up = await start_upstream()
    t = SMTPTransport(upstream(up.port, tls="none"))
    try:
        await t.send("a@riverside.example", ["b@mail.example"], MSG)
        port = up.port
        await up.stop()  # closes the listening socket; drop the idle session too
        for session in t._idle:
            session.client.close()
        up = await start_upstream(port=port)
        result = await t.send("a@riverside.example", ["b@mail.example"], MSG)
    finally:
        await t.close()
        await up.stop()
    assert result.accepted == ("b@mail.example",)
    assert len(up.messages) == 1


async def test_upstream_down_is_unavailable() -> None:
    up = await start_upstream()
    port = up.port
    await up.stop()
    t = SMTPTransport(upstream(port, tls="none"))
    with pytest.raises(UpstreamUnavailable):
        await t.send("a@riverside.example", ["b@mail.example"], MSG)
    await t.close()


def test_reply_code_keeps_codes_only() -> None:
    assert reply_code(550, "5.1.1 <x@y>: no such user") == "550 5.1.1"
    assert reply_code(421, "service not available") == "421"


async def test_maildir_writes_exact_bytes_and_envelope_sidecar(tmp_path: Path) -> None:
    t = MaildirTransport(tmp_path / "outbox")
    data = MSG.replace(b"hello", "héllo".encode())
    result = await t.send("a@riverside.example", ["b@mail.example", "c@mail.example"], data)
    assert result.accepted == ("b@mail.example", "c@mail.example")
    files = list((tmp_path / "outbox" / "new").iterdir())
    assert len(files) == 1 and files[0].read_bytes() == data
    assert list((tmp_path / "outbox" / "tmp").iterdir()) == []
    assert read_envelope(files[0]) == ("a@riverside.example", ("b@mail.example", "c@mail.example"))
    box = mailbox.Maildir(tmp_path / "outbox", create=False)
    assert [m["Subject"] for m in box] == ["x"]


async def test_maildir_unwritable_is_temporary(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UpstreamUnavailable):
        await MaildirTransport(blocker / "outbox").send("a@x.example", ["b@y.example"], MSG)


def _settings(tmp_path: Path, url: str, tls: str = "required") -> Settings:
    cfg = tmp_path / "securemail.toml"
    return parse_settings({"upstream": {"url": url, "tls": tls}}, str(cfg))


def test_factory_builds_each_transport(tmp_path: Path) -> None:
    t = transport_from_settings(_settings(tmp_path, "smtp://127.0.0.1:2526", "none"))
    assert isinstance(t, SMTPTransport) and (t.host, t.port) == ("127.0.0.1", 2526)
    t = transport_from_settings(_settings(tmp_path, "maildir://outbox"))
    assert isinstance(t, MaildirTransport) and t.path == tmp_path.resolve() / "outbox"
    t = transport_from_settings(_settings(tmp_path, "maildir:///var/tmp/out"))
    assert isinstance(t, MaildirTransport) and t.path == Path("/var/tmp/out")
    assert isinstance(transport_from_settings(_settings(tmp_path, "memory://")), MemoryTransport)


def test_tls_context_requires_verification() -> None:
    t = SMTPTransport(upstream(25))
    assert t._tls_context is not None
    assert t._tls_context.verify_mode is ssl.CERT_REQUIRED and t._tls_context.check_hostname


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b".", b"..", b"a", b" ", b"\r", b"\n", b"\r\n", b"\r\n.",
                                 b"\xc3\xbc", b"x" * 40]), max_size=30).map(b"".join))
def test_wire_data_is_what_aiosmtplib_would_send(message: bytes) -> None:
    # aiosmtplib's own DATA preparation is the reference: same endings, same stuffing.
    expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"
    assert wire_data(message) == expected


async def test_dot_lines_and_bare_line_endings_arrive_as_sent_lines(upstream: Upstream) -> None:
    body = b"From: a@riverside.example\nSubject: x\n\n.\n..two\n.hidden\r\nend"
    t = SMTPTransport(UpstreamSettings(url=f"smtp://127.0.0.1:{upstream.port}", tls="none"))
    try:
        result = await t.send("a@riverside.example", ["b@mail.example"], body)
    finally:
        await t.close()
    assert result.accepted == ("b@mail.example",)
    # aiosmtpd undoes the dot-stuffing: the lines are the sender's, in CRLF form.
    assert upstream.messages[0].data == (b"From: a@riverside.example\r\nSubject: x\r\n\r\n"
                                         b".\r\n..two\r\n.hidden\r\nend\r\n")


async def test_addresses_that_could_break_out_of_the_command_are_not_sent(
        upstream: Upstream) -> None:
    t = SMTPTransport(UpstreamSettings(url=f"smtp://127.0.0.1:{upstream.port}", tls="none"))
    try:
        with pytest.raises(UpstreamUnavailable):
            await t.send("a@riverside.example>\r\nRCPT TO:<x@evil.example", ["b@mail.example"],
                         MSG)
    finally:
        await t.close()
    assert upstream.messages == []


async def test_sighup_with_the_same_upstream_opens_fresh_connections(tmp_path: Path) -> None:
    from securemail.relay import load
    from tests.integration.relay_support import write_config

    up = await CountingUpstream.start()
    relay = load(write_config(tmp_path, upstream_url=f"smtp://127.0.0.1:{up.port}"))
    try:
        for n in range(2):
            await relay.send(MSG.replace(b"Subject:", b"X-N: %d\r\nSubject:" % n),
                             mail_from="a@riverside.example", rcpt_tos=["b@riverside.example"])
        assert up.connections == 1
        relay.reload()  # what SIGHUP does; [upstream] unchanged
        await relay.send(MSG, mail_from="a@riverside.example", rcpt_tos=["b@riverside.example"])
        assert up.connections == 2
    finally:
        await relay.close()
        await up.stop()


async def test_a_session_busy_during_a_recycle_is_not_reused() -> None:
    # On a busy relay every session is in use when SIGHUP comes: those must
    # close after their message instead of going back to the pool.
    gate = asyncio.Event()

    class Slow(CaptureHandler):
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            if not gate.is_set():
                await gate.wait()
            return await super().handle_DATA(server, session, envelope)

    up = await CountingUpstream.start(Slow())
    t = SMTPTransport(upstream(up.port, tls="none", pool_size=1))
    try:
        busy = asyncio.create_task(t.send("a@riverside.example", ["b@mail.example"], MSG))
        while not up.connections:
            await asyncio.sleep(0.01)
        t.recycle()  # SIGHUP while the only session is in the middle of DATA
        gate.set()
        await busy
        await t.send("a@riverside.example", ["b@mail.example"], MSG)
        assert up.connections == 2
    finally:
        await t.close()
        await up.stop()
