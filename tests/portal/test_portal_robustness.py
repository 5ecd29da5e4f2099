"""What a tester found when the store was busy or a handler failed:

- a portal request waiting for a store that another process holds locked
  stopped the whole event loop (the SMTP relay's banner and the other portal
  pages with it) and then ended in a bare 500; now the loop keeps serving and
  the request gets a 503 "try again in a minute";
- a 500 had none of the security headers and a bare "Internal Server Error";
  its log line said only "Exception in ASGI application";
- after a wrong code and then the right one, the screen reader's alert region
  still said "That code is not right" while the message was open.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

import securemail.portal.store as portal_store
from securemail.errors import StoreError
from securemail.logs import JsonFormatter
from securemail.portal.app import create_app
from securemail.portal.service import PortalService
from securemail.testing import build_message
from tests.unit.portal_helpers import Rig
from tests.unit.portal_http import Clock, TestClient, seal

from .conftest import CLIENT, STAFF, Portal

BUSY = 4.0  # seconds the store waits for another writer in these tests (30 in production)
PROMPT = 1.5  # what "at once" means here: well under BUSY
SECURITY_HEADERS = ("content-security-policy", "referrer-policy", "cache-control",
                    "x-content-type-options", "x-frame-options", "cross-origin-opener-policy",
                    "cross-origin-resource-policy", "permissions-policy",
                    "strict-transport-security")
SECRET = "Jane Doe biopsy results Subject: oncology"


# ------------------------------------------------- 1. a locked store, one loop


@pytest.fixture
def busy_portal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Portal]:
    """A real relay + portal + SMTP listener on one event loop, whose store waits
    BUSY seconds (not 30) for another writer."""
    monkeypatch.setattr(portal_store, "BUSY_TIMEOUT", BUSY)
    p = Portal(tmp_path)
    p.conn.execute(f"PRAGMA busy_timeout={int(BUSY * 1000)}")  # the relay's own connection
    try:
        yield p
    finally:
        p.close()


def browser_cookie(response: httpx.Response) -> str:
    match = re.search(r"__Host-sm_browser=([^;]+)", response.headers.get("set-cookie", ""))
    assert match, "the landing page set no browser cookie"
    return match.group(1)


def smtp_banner(portal: Portal) -> tuple[bytes, float]:
    """Connect to the SMTP listener on the portal's event loop: its banner and
    how long it took."""
    host, port = portal.smtp_server.sockets[0].getsockname()[:2]
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=BUSY * 3) as sock:
        banner = sock.recv(200)
    return banner, time.monotonic() - started


def test_a_locked_store_does_not_stop_the_event_loop(busy_portal: Portal) -> None:
    portal = busy_portal
    raw = build_message(sender=STAFF, to=[CLIENT], subject="Locked store", body="Hello.",
                        message_id="<locked@riverside.example>")
    sealed, _ = portal.seal_and_notify(raw, message_id="<locked@riverside.example>")
    with httpx.Client(base_url=portal.base_url, timeout=BUSY * 5) as http, \
            httpx.Client(base_url=portal.base_url, timeout=BUSY * 5) as other:
        landing = http.get(f"/m/{sealed.id}")
        assert landing.status_code == 200
        csrf = re.search(r'data-csrf="([^"]+)"', landing.text)
        assert csrf
        headers = {"X-CSRF-Token": csrf.group(1),
                   "Cookie": f"__Host-sm_browser={browser_cookie(landing)}"}
        # Another process holds the store's write lock (a CLI command, a backup).
        blocker = sqlite3.connect(portal.settings.storage.sqlite_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with ThreadPoolExecutor(1) as pool:
                asked = time.monotonic()
                pending = pool.submit(http.post, f"/m/{sealed.id}/code", headers=headers,
                                      content=b"")
                time.sleep(0.5)
                assert not pending.done(), "the code request did not wait for the store"
                # Meanwhile, on the same event loop: the SMTP listener greets at once,
                banner, took = smtp_banner(portal)
                assert banner.startswith(b"220"), banner
                assert took < PROMPT, f"SMTP banner took {took:.1f}s"
                # a plain task runs at once,
                started = time.monotonic()
                portal.run(asyncio.sleep(0))
                assert time.monotonic() - started < PROMPT
                # and other portal pages are served (reading needs no write lock).
                started = time.monotonic()
                again = other.get(f"/m/{sealed.id}")
                assert again.status_code == 200
                assert time.monotonic() - started < PROMPT
                assert not pending.done()
                answer = pending.result(timeout=BUSY * 5)
                waited = time.monotonic() - asked
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
    # The store stayed locked: a clear "try again in a minute", which the page's
    # script knows, not a bare 500.
    assert answer.status_code == 503
    assert answer.json() == {"error": "unavailable"}
    assert answer.headers["retry-after"] == "60"
    for name in SECURITY_HEADERS[:-1]:  # http://127.0.0.1: no HSTS
        assert name in answer.headers, name
    assert BUSY - 0.5 < waited < BUSY + 5
    # Once the lock is gone, the same request works.
    with httpx.Client(base_url=portal.base_url, timeout=BUSY * 5) as http:
        assert http.post(f"/m/{sealed.id}/code", headers=headers, content=b"").status_code == 200


def test_a_page_the_store_cannot_answer_says_try_again(
        rig: Rig, client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    pid = seal(rig)

    def locked(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("portal store failed (OperationalError)")

    monkeypatch.setattr(rig.service, "check", locked)
    r = client.get(f"/m/{pid}")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "60"
    assert "Please try again in a minute" in r.text
    assert "Riverside Counselling" in r.text and "+1 555 0100" in r.text
    assert "OperationalError" not in r.text
    for name in SECURITY_HEADERS:
        assert name in r.headers, name


# ------------------------------------------------------------ 2. a forced 500


def test_a_server_error_has_the_headers_the_page_and_a_log_line_without_content(
        rig: Rig, clock: Clock, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    pid = seal(rig)
    # As a browser sees it: the server answers, whatever happened inside.
    client = TestClient(create_app(rig.service, reply_sender=rig.pipeline, now=lambda: clock[0]),
                        base_url="https://testserver", raise_server_exceptions=False)
    normal = client.get("/")
    assert normal.status_code == 200

    def broken(portal_id: str) -> Any:
        raise RuntimeError(SECRET)

    monkeypatch.setattr(rig.service.store, "newest_code", broken)
    with caplog.at_level(logging.INFO):
        r = client.get(f"/m/{pid}")
    assert r.status_code == 500
    # Every header every other answer has, with the same values.
    for name in SECURITY_HEADERS:
        assert r.headers.get(name) == normal.headers[name], name
    # The practice's page: its name, its phone, "try again later"; nothing of the error.
    assert r.headers["content-type"].startswith("text/html")
    assert "Riverside Counselling" in r.text and "+1 555 0100" in r.text
    assert "Please try again later" in r.text
    assert "Internal Server Error" not in r.text
    assert "RuntimeError" not in r.text and "biopsy" not in r.text
    # One log line: the exception's class and where it happened, never its text.
    # (Only the app's own records: other tests' servers may log from their threads.)
    failed = [rec for rec in caplog.records
              if rec.name == "securemail.portal.app" and rec.levelno >= logging.ERROR]
    assert len(failed) == 1
    line = json.loads(JsonFormatter().format(failed[0]))
    assert line["exc_class"] == "RuntimeError"
    source, first = inspect.getsourcelines(PortalService.code_sent)
    calls = [first + n for n, text in enumerate(source) if "self.store.newest_code(" in text]
    assert line["exc_at"] == f"securemail/portal/service.py:{calls[0]}"
    assert "biopsy" not in caplog.text and "Traceback" not in caplog.text
    for rec in caplog.records:
        assert "biopsy" not in JsonFormatter().format(rec)
    assert "biopsy" not in str(failed[0].__dict__.get("event"))


# ----------------------------------------------- 3. the stale alert (browser)


@pytest.mark.browser
def test_the_wrong_code_alert_is_cleared_once_the_message_opens(portal: Portal,
                                                                 page: Any) -> None:
    raw = build_message(sender=STAFF, to=[CLIENT], subject="Alert cleared", body="Hello.",
                        message_id="<alert-cleared@riverside.example>")
    _, link = portal.seal_and_notify(raw, message_id="<alert-cleared@riverside.example>")
    page.goto(link)
    before = len(portal.capture.messages)
    page.get_by_role("button", name="Email me a code").click()
    page.locator("#code").wait_for(state="visible")
    right = portal.code_for(before)
    page.fill("#code", f"{(int(right) + 1) % 10**6:06d}")
    page.keyboard.press("Enter")
    expect(page.locator("#sr-alert")).to_have_text("That code is not right. 4 tries left.")
    page.fill("#code", right)
    page.keyboard.press("Enter")
    page.locator("#step-message").wait_for(state="visible")
    expect(page.locator("#sr-status")).to_have_text("Message opened.")
    # The message is open: the alert region no longer says the code was wrong.
    expect(page.locator("#sr-alert")).to_have_text("")
    page.wait_for_timeout(300)  # nothing comes back a moment later either
    expect(page.locator("#sr-alert")).to_have_text("")
