"""Shared pieces for the relay integration tests: real aiosmtpd upstreams on
127.0.0.1 (port 0), trustme certificates, a temp config, and the relay's
listeners started on the test's own event loop."""

from __future__ import annotations

import asyncio
import ssl
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.smtp import SMTP, Envelope, Session

from securemail.config import Settings, load_settings
from securemail.listeners import Listeners, start_listeners


@dataclass
class Captured:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str] = field(default_factory=list)


@dataclass
class CaptureHandler:
    """An upstream that keeps what it accepts; can refuse or defer recipients."""

    messages: list[Captured] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # address -> "550 5.1.1 ..."
    data_reply: str | None = None
    received: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        reply = self.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        self.messages.append(Captured(envelope.mail_from, list(envelope.rcpt_tos),
                                      envelope.original_content, list(envelope.mail_options)))
        self.received.set()
        return "250 OK captured"


@dataclass
class Upstream:
    handler: CaptureHandler
    server: asyncio.AbstractServer
    port: int

    @property
    def messages(self) -> list[Captured]:
        return self.handler.messages

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def start_upstream(*, tls: ssl.SSLContext | None = None,
                         handler: CaptureHandler | None = None, port: int = 0) -> Upstream:
    """A capturing aiosmtpd server; offers STARTTLS when ``tls`` is given."""
    loop = asyncio.get_running_loop()
    handler = handler or CaptureHandler()
    server = await loop.create_server(
        lambda: SMTP(handler, tls_context=tls, hostname="upstream.test", loop=loop,
                     enable_SMTPUTF8=True),
        host="127.0.0.1", port=port)
    return Upstream(handler, server, server.sockets[0].getsockname()[1])


@dataclass
class Certs:
    ca: trustme.CA
    ca_file: Path
    server_context: ssl.SSLContext
    cert_file: Path
    key_file: Path


def make_certs(tmp: Path) -> Certs:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert_file, key_file = tmp / "server.pem", tmp / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return Certs(ca, ca_file, ctx, cert_file, key_file)


def write_config(tmp: Path, *, upstream_url: str, upstream_tls: str = "none",
                 ca_file: str = "", extra: str = "", relay_extra: str = "",
                 limits: str = "", portal: bool = False) -> Path:
    cfg = tmp / "securemail.toml"
    cfg.write_text(textwrap.dedent("""\
        [practice]
        name = "Riverside Counseling"
        domains = ["riverside.example"]

        [relay]
        listen = "127.0.0.1:10025"                # replaced by port 0 in run_relay
        hostname = "relay.test"
        """) + relay_extra + textwrap.dedent(f"""

        [upstream]
        url = "{upstream_url}"
        tls = "{upstream_tls}"
        ca_file = "{ca_file}"
        timeout_seconds = 5

        [storage]
        url = "sqlite:data/securemail.db"

        [portal]
        enabled = {"true" if portal else "false"}

        [limits]
        """) + limits + textwrap.dedent("""

        [[directory.clients]]
        id = "c-1001"
        addresses = ["jane@mail.example"]
        contacts = [{ address = "guardian@mail.example", relation = "parent" }]
        """) + extra)
    return cfg


def message(*, frm: str = "dr@riverside.example", to: str = "colleague@riverside.example",
            cc: str = "", subject: str = "Lunch", body: str = "See you at noon.",
            size: int = 0) -> bytes:
    headers = [f"From: {frm}", f"To: {to}"] + ([f"Cc: {cc}"] if cc else []) + [
        f"Subject: {subject}", "Message-ID: <t-1@riverside.example>",
        "Date: Sat, 28 Nov 2026 10:00:00 +0000", "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8"]
    text = body
    if size:
        line = "x" * 70
        text = "\r\n".join([line] * (size // 72 + 1))
    return ("\r\n".join(headers) + "\r\n\r\n" + text + "\r\n").encode()


@dataclass
class RunningRelay:
    relay: Any
    listeners: Listeners
    settings: Settings

    @property
    def port(self) -> int:
        return self.listeners.addresses["relay"][1]

    def port_of(self, name: str) -> int:
        return self.listeners.addresses[name][1]

    async def stop(self) -> None:
        await self.listeners.close()
        await self.relay.close()


def on_free_ports(settings: Settings) -> Settings:
    """The same settings with every listener on 127.0.0.1 port 0 (config files
    must name a real port; tests let the OS choose)."""
    from dataclasses import replace

    return replace(settings,
                   relay=replace(settings.relay, listen="127.0.0.1:0"),
                   submission=replace(settings.submission, listen="127.0.0.1:0"))


async def run_relay(cfg: Path, make_relay: Callable[[Settings], Any] | None = None
                    ) -> RunningRelay:
    """The real ``securemail.load`` relay (or ``make_relay``) behind our listeners."""
    settings = on_free_ports(load_settings(cfg))
    if make_relay is None:
        from securemail.relay import load

        relay = load(cfg)
    else:
        relay = make_relay(settings)
    listeners = await start_listeners(relay, settings)
    return RunningRelay(relay, listeners, settings)


class FakeRelay:
    """Same ``send`` signature as ``securemail.relay.Relay``; hands every message
    to ``transport`` unchanged, or does what ``behaviour`` says. It exercises the
    SMTP glue only; the real pipeline is covered by test_relay_pipeline.py."""

    def __init__(self, settings: Settings, transport: Any = None) -> None:
        from securemail.transport.factory import transport_from_settings

        self.settings = settings
        self.transport = transport or transport_from_settings(settings)
        self.portal = None
        self.calls: list[dict[str, Any]] = []
        self.behaviour: Callable[[bytes], Any] | None = None
        self.gate: asyncio.Event | None = None  # when set, send waits for it
        self.reloads = 0

    def reload(self) -> None:
        self.reloads += 1

    async def send(self, message: bytes, *, mail_from: str | None = None,
                   rcpt_tos: Any = None, peer: str | None = None,
                   auth_identity: str | None = None, tls: Any = None, now: Any = None,
                   trace: str | None = None) -> Any:
        import hashlib

        from securemail.model import (
            Action,
            Decision,
            Mode,
            Outcome,
            RecipientOutcome,
            Role,
            Source,
            Status,
            Verdict,
        )

        self.calls.append({"mail_from": mail_from, "rcpt_tos": list(rcpt_tos or []),
                           "peer": peer, "auth_identity": auth_identity, "tls": tls,
                           "data": message})
        if self.gate is not None:
            await self.gate.wait()
        if self.behaviour is not None:
            self.behaviour(message)
        rcpts = list(rcpt_tos or [])
        decisions = tuple(Decision(r, Source.TO, Role.STAFF, Action.DELIVER, ("no-phi",), "ok")
                          for r in rcpts)
        verdict = Verdict("<t@x>", Mode.ENFORCE, False, False, decisions)
        result = await self.transport.send(mail_from or "", rcpts, message)
        status = {r: Status.DELIVERED for r in result.accepted}
        status.update({r: Status.REFUSED for r in result.refused})
        status.update({r: Status.DEFERRED for r in result.deferred})
        return Outcome(verdict, tuple(RecipientOutcome(r, Action.DELIVER, status[r])
                                      for r in rcpts),
                       hashlib.sha256(message).hexdigest(), result.tls)

    async def close(self) -> None:
        await self.transport.close()
