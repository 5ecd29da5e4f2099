"""A reply's text over the limit: the textarea stops at it, and both the page
and the server say "your reply is too long (N characters max)", not the
attachment's "10 MB"."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from securemail.portal.app import MAX_REPLY_TEXT
from securemail.testing import build_message
from tests.unit.portal_helpers import Rig
from tests.unit.portal_http import TestClient, seal

from .conftest import CLIENT, STAFF, Portal
from .test_portal_sessions_browser import open_with_code
from .test_portal_sessions_http import open_session


def test_server_says_too_long_with_the_limit(rig: Rig, client: TestClient) -> None:
    pid = seal(rig)
    token = open_session(rig, client, pid)
    r = client.post(f"/m/{pid}/reply", data={"body": "x" * (MAX_REPLY_TEXT + 1)},
                    headers={"X-CSRF-Token": token})
    assert r.status_code == 413
    assert r.json() == {"error": "reply-too-long", "max": MAX_REPLY_TEXT}
    # Far over (past the form's part limit, so never fully read): the same answer.
    r = client.post(f"/m/{pid}/reply", data={"body": "é" * (MAX_REPLY_TEXT * 3)},
                    headers={"X-CSRF-Token": token})
    assert r.json() == {"error": "reply-too-long", "max": MAX_REPLY_TEXT}
    # Line breaks count once, as the page counts them (a form sends CRLF).
    sent = len(rig.pipeline.sent)
    r = client.post(f"/m/{pid}/reply", data={"body": "a\r\n" * (MAX_REPLY_TEXT // 2)},
                    headers={"X-CSRF-Token": token})
    assert r.json() == {"ok": True}
    assert len(rig.pipeline.sent) > sent


@pytest.mark.browser
def test_page_limits_and_explains_reply_length(portal: Portal, page: Any) -> None:
    raw = build_message(sender=STAFF, to=[CLIENT], subject="Long reply", body="Hello.",
                        message_id="<len@riverside.example>")
    _, link = portal.seal_and_notify(raw, message_id="<len@riverside.example>")
    open_with_code(portal, page, link)
    box = page.locator("#reply-body")
    assert box.get_attribute("maxlength") == str(MAX_REPLY_TEXT)
    box.fill("y" * MAX_REPLY_TEXT)
    expected = f"Your reply is too long ({MAX_REPLY_TEXT:,} characters max)"
    assert expected in page.locator("#reply-error").inner_text()
    box.fill("short")
    assert page.locator("#reply-error").is_hidden()
    # A value past the limit (set by script; typing cannot) is not sent, and says why.
    before = len(portal.capture.messages)
    page.evaluate(f"document.getElementById('reply-body').value = 'z'.repeat({MAX_REPLY_TEXT + 5})")
    page.get_by_role("button", name="Send reply").click()
    assert expected in page.locator("#reply-error").inner_text()
    assert "10 MB" not in page.locator("#reply-error").inner_text()
    page.wait_for_timeout(300)
    assert len(portal.capture.messages) == before
    # The server's answer is shown the same way (a page without the check).
    page.evaluate("document.getElementById('reply-body').removeAttribute('maxlength')")
    page.route("**/m/*/reply", lambda route: route.fulfill(
        status=413, content_type="application/json",
        body='{"error": "reply-too-long", "max": 100000}'))
    page.evaluate("document.getElementById('reply-body').value = 'ok'")
    page.get_by_role("button", name="Send reply").click()
    # expect() polls from Playwright's own script world: a wait_for_function
    # predicate is eval'ed in the page, which the portal's CSP refuses.
    expect(page.locator("#reply-error")).to_contain_text("too long")
