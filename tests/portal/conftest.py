"""A real portal for browser tests: uvicorn on 127.0.0.1 (port 0) in a thread,
code emails and replies over real SMTP to an aiosmtpd capture, and Debian's
chromium driven by Playwright."""

from __future__ import annotations

import asyncio
import email
import re
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvicorn
from aiosmtpd.smtp import SMTP, Envelope, Session

import securemail
from securemail.config import Settings
from securemail.portal.app import create_app
from securemail.portal.service import PortalService, Sealed

T = TypeVar("T")
CHROMIUM_ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
STAFF = "dr.rivera@riverside.example"
CLIENT = "jane.doe@mail.example"
CONFIG = """
[practice]
name = "Riverside Counselling"
domains = ["riverside.example"]
phone = "+1 555 0100"
website = "https://riverside.example"

[upstream]
url = "smtp://127.0.0.1:{smtp_port}"
tls = "none"

[storage]
url = "sqlite:data/securemail.db"

[portal]
base_url = "{base_url}"

[[directory.clients]]
id = "c-1001"
addresses = ["jane.doe@mail.example"]
names = ["Jane Doe"]
"""


@dataclass
class Captured:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        msg = email.message_from_bytes(self.data, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


class Capture:
    """aiosmtpd handler keeping every message it accepts (thread-safe reads)."""

    def __init__(self) -> None:
        self.messages: list[Captured] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._lock:
            self.messages.append(Captured(str(envelope.mail_from), list(envelope.rcpt_tos),
                                          bytes(envelope.original_content or b"")))
        return "250 OK captured"

    def wait_for(self, match: Callable[[Captured], bool], timeout: float = 10.0) -> Captured:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for m in self.messages:
                    if match(m):
                        return m
            time.sleep(0.05)
        raise AssertionError("expected message never arrived at the capture")


class Portal:
    """Everything the browser tests touch, running in one background event loop."""

    def __init__(self, tmp: Path) -> None:
        self.capture = Capture()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.smtp_server = self.run(self.loop.create_server(
            lambda: SMTP(self.capture, hostname="capture.test", loop=self.loop),
            host="127.0.0.1", port=0))
        smtp_port = self.smtp_server.sockets[0].getsockname()[1]
        # A "remote" web server: any fetch that reaches it is a leak (tracking pixel).
        self.remote_hits = 0

        async def remote(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.remote_hits += 1
            writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()

        self.remote_server = self.run(asyncio.start_server(remote, "127.0.0.1", 0))
        self.remote_url = f"http://127.0.0.1:{self.remote_server.sockets[0].getsockname()[1]}"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = tmp / "securemail.toml"
        config.write_text(CONFIG.format(smtp_port=smtp_port, base_url=self.base_url))
        # The real relay: policy, pipeline, portal, audit, upstream SMTP to the capture.
        self.relay = securemail.load(config)
        self.settings: Settings = self.relay.settings
        self.conn = self.relay.db
        self.transport = self.relay.transport
        self.service: PortalService = self.relay.portal

        async def reply_sender(raw: bytes, mail_from: str, rcpt_to: str) -> None:
            await self.relay.send(raw, mail_from=mail_from, rcpt_tos=[rcpt_to])

        app = create_app(self.service, reply_sender=reply_sender)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.server_done = asyncio.run_coroutine_threadsafe(
            self.server.serve(sockets=[self.sock]), self.loop)
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=15)

    def link_from_notification(self, portal_id: str) -> str:
        got = self.capture.wait_for(lambda m: portal_id.encode() in m.data.replace(b"=\r\n", b""))
        assert got.rcpt_tos == [CLIENT]
        text = got.message.get_body(preferencelist=("plain",))
        assert text is not None
        links = re.findall(r"http://127\.0\.0\.1:\d+/m/\S+", text.get_content())
        assert len(links) == 1
        return str(links[0])

    def seal_and_notify(self, raw: bytes, *, now: datetime | None = None,
                        message_id: str = "<orig-1@riverside.example>") -> tuple[Sealed, str]:
        """Seal like the pipeline does, deliver the notification to the capture and
        return the link found in the captured notification."""
        now = now or datetime.now(UTC)
        sealed = self.service.seal(raw, message_id=message_id, sender=STAFF, recipient=CLIENT,
                                   now=now)
        note = self.service.notification(sealed, sender=STAFF, recipient=CLIENT, now=now)
        self.run(self.transport.send(STAFF, [CLIENT], note))
        return sealed, self.link_from_notification(sealed.id)

    def enter_code(self, page: Any) -> None:
        """On an open landing page: ask for a code, type the one emailed, open."""
        before = len(self.capture.messages)
        page.get_by_role("button", name="Email me a code").click()
        page.locator("#code").wait_for(state="visible")
        page.fill("#code", self.code_for(before))
        page.get_by_role("button", name="Open message").click()

    def code_for(self, since: int) -> str:
        """The code from the newest code email after message number ``since``."""
        got = self.capture.wait_for(
            lambda m: m in self.capture.messages[since:] and b"one-time code" in m.data)
        body = got.message.get_body(preferencelist=("plain",))
        assert body is not None
        match = re.search(r"^\s+(\d{6})\s*$", body.get_content(), re.M)
        assert match, "no code in the code email"
        return match.group(1)

    def close(self) -> None:
        self.server.should_exit = True
        self.server_done.result(timeout=15)
        self.smtp_server.close()
        self.run(self.smtp_server.wait_closed())
        self.remote_server.close()
        self.run(self.remote_server.wait_closed())
        self.run(self.relay.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    p = Portal(tmp_path_factory.mktemp("portal"))
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian's chromium is not installed")
    with playwright.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    try:
        yield pg
    finally:
        context.close()
