"""A tab that already shows a decrypted message when the practice revokes it:
an attachment is saved only after the server recorded the download (audit), and
any POST answered 410 takes the message off the page."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from securemail.testing import build_message

from .conftest import CLIENT, STAFF, Portal

pytestmark = pytest.mark.browser

BODY = "Hi Jane,\n\nYour scan report is attached (MRN 550123).\n\nDr. Rivera"
PDF = b"%PDF-1.4\n" + os.urandom(20_000) + b"\n%%EOF\n"


def open_message(portal: Portal, page: Any, message_id: str) -> str:
    raw = build_message(sender=STAFF, to=[CLIENT], subject="Your scan report", body=BODY,
                        attachments=[("scan report.pdf", "application/pdf", PDF)],
                        message_id=message_id)
    sealed, link = portal.seal_and_notify(raw, message_id=message_id)
    page.goto(link)
    portal.enter_code(page)
    page.locator("#m-text").wait_for(state="visible")
    assert page.locator("#m-text").inner_text().strip() == BODY.strip()
    return sealed.id


def portal_events(portal: Portal, portal_id: str) -> list[dict[str, Any]]:
    bodies = [json.loads(b) for (b,) in portal.conn.execute("SELECT body FROM audit_records")]
    return [b for b in bodies if b.get("portal_id") == portal_id and b.get("category") == "portal"]


def assert_withdrawn(page: Any) -> None:
    page.locator("#step-gone").wait_for(state="visible")
    assert page.locator("#step-message").is_hidden()
    assert page.locator("#step-reply").is_hidden()
    assert "550123" not in page.content()
    assert page.locator("#m-files li").count() == 0
    assert page.locator("#m-subject").inner_text() == ""


def test_download_is_recorded_once_then_refused_after_revoke(portal: Portal, page: Any) -> None:
    pid = open_message(portal, page, "<revoked-tab-1@riverside.example>")
    downloads: list[Any] = []
    page.on("download", lambda d: downloads.append(d))

    # Before the revoke: saved, and audited exactly once.
    with page.expect_download() as info:
        page.locator(".file").click()
    assert info.value.suggested_filename == "scan report.pdf"
    assert hashlib.sha256(Path(info.value.path()).read_bytes()).digest() == \
        hashlib.sha256(PDF).digest()
    assert [e["attachment_index"] for e in portal_events(portal, pid)
            if e["kind"] == "downloaded"] == [0]

    assert portal.service.revoke(pid, datetime.now(UTC), actor="cli")
    refused: list[int] = []
    page.on("response", lambda r: refused.append(r.status)
            if r.url.endswith("/downloaded") else None)
    page.locator(".file").click()
    assert_withdrawn(page)
    page.wait_for_timeout(500)  # a save after the answer would show up by now
    assert refused == [410]
    assert len(downloads) == 1  # only the one before the revoke
    kinds = [e["kind"] for e in portal_events(portal, pid)]
    assert kinds.count("downloaded") == 1
    assert kinds[-1] == "revoked"


def test_stay_signed_in_after_revoke_shows_withdrawn(portal: Portal, page: Any) -> None:
    page.clock.install()
    pid = open_message(portal, page, "<revoked-tab-2@riverside.example>")
    page.locator("#portal[data-session-end]").wait_for(state="attached")  # end known
    page.clock.fast_forward("13:05")  # idle: the warning, two minutes before the end
    page.locator("#session-warning").wait_for(state="visible")
    assert portal.service.revoke(pid, datetime.now(UTC))
    page.get_by_role("button", name="Stay signed in").click()
    assert_withdrawn(page)
    assert page.locator("#session-warning").is_hidden()


def test_reply_after_revoke_shows_withdrawn(portal: Portal, page: Any) -> None:
    pid = open_message(portal, page, "<revoked-tab-3@riverside.example>")
    assert portal.service.revoke(pid, datetime.now(UTC))
    page.fill("#reply-body", "Thanks!")
    page.get_by_role("button", name="Send reply").click()
    assert_withdrawn(page)


def test_download_waits_for_the_record_and_says_why_not(portal: Portal, page: Any) -> None:
    pid = open_message(portal, page, "<revoked-tab-4@riverside.example>")
    downloads: list[Any] = []
    page.on("download", lambda d: downloads.append(d))
    # Too many requests: the existing message, nothing saved, the message stays.
    page.route("**/downloaded", lambda route: route.fulfill(
        status=429, content_type="application/json", body='{"error": "rate-limited"}'))
    page.locator(".file").click()
    # In the error line itself: 100 ms later #sr-alert repeats it (two matches).
    page.locator("#files-error", has_text="Too many requests. Please wait a few minutes").wait_for()
    # Network failure: the existing message, nothing saved.
    page.unroute("**/downloaded")
    page.route("**/downloaded", lambda route: route.abort())
    page.locator(".file").click()
    page.locator("#files-error", has_text="We could not reach the server").wait_for()
    page.wait_for_timeout(500)
    assert downloads == []
    assert page.locator("#m-text").is_visible()
    assert not [e for e in portal_events(portal, pid) if e["kind"] == "downloaded"]
    # Back to normal: saved after the record, and the error line is cleared.
    page.unroute("**/downloaded")
    with page.expect_download():
        page.locator(".file").click()
    assert page.locator("#files-error").is_hidden()
    assert [e["kind"] for e in portal_events(portal, pid)].count("downloaded") == 1


def test_no_session_on_download_takes_the_message_off(portal: Portal, page: Any) -> None:
    pid = open_message(portal, page, "<revoked-tab-5@riverside.example>")
    # The session cookie is gone (the browser cookie, which binds CSRF, stays): 401.
    page.context.clear_cookies(name=f"__Host-sm_session-{pid}")
    page.on("download", lambda d: pytest.fail("saved without a recorded download"))
    page.locator(".file").click()
    page.locator("#step-start").wait_for(state="visible")
    assert page.locator("#step-message").is_hidden()
    assert "550123" not in page.content()
    assert page.locator("#m-files li").count() == 0
    assert not [e for e in portal_events(portal, pid) if e["kind"] == "downloaded"]
