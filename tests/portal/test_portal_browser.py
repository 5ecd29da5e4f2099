"""The whole pickup path in real headless chromium, plus every negative page."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from securemail.portal.service import MAX_FAILED_CODES
from securemail.testing import build_message

from .conftest import CLIENT, STAFF, Portal

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
BODY = ("Hi Jane,\n\nYour lab results are attached (MRN 448812, diagnosis F41.1).\n"
        "See you on Tuesday at 3pm.\n\nDr. Rivera")
PDF = b"%PDF-1.4\n" + os.urandom(40_000) + b"\n%%EOF\n"


def original(html: str | None = None) -> bytes:
    return build_message(sender=STAFF, to=[CLIENT], subject="Your lab results", body=BODY,
                         html=html, attachments=[("results 2026.pdf", "application/pdf", PDF)],
                         message_id="<orig-1@riverside.example>")


def request_and_enter_code(portal: Portal, page: Any, *, screenshot: bool = False) -> None:
    before = len(portal.capture.messages)
    page.get_by_role("button", name="Email me a code").click()
    page.locator("#code").wait_for(state="visible")
    if screenshot:
        page.screenshot(path=str(ARTIFACTS / "portal-code.png"))
    page.fill("#code", portal.code_for(before))
    page.get_by_role("button", name="Open message").click()


def test_client_reads_downloads_and_replies(portal: Portal, page: Any) -> None:
    # Through the whole relay pipeline: PHI to a client -> sealed + notification.
    outcome = portal.run(portal.relay.send(original(), now=datetime.now(UTC)))
    (result,) = outcome.recipients
    assert (result.action.value, result.status.value) == ("portal", "sealed")
    assert result.portal_id
    link = portal.link_from_notification(result.portal_id)
    notification = portal.capture.messages[-1].data
    assert b"lab results" not in notification and b"Tuesday" not in notification
    before = len(portal.capture.messages)

    page.goto(link)
    page.get_by_text("You have a secure message").wait_for()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "portal-landing.png"))
    # Opening the link sent nothing and created no code (scanners prefetch links).
    assert len(portal.capture.messages) == before

    request_and_enter_code(portal, page, screenshot=True)
    page.locator("#m-text").wait_for(state="visible")
    assert page.locator("#m-subject").inner_text() == "Your lab results"
    assert page.locator("#m-text").inner_text().strip() == BODY.strip()
    # Attachments are listed with name and size.
    file_button = page.locator(".file")
    assert file_button.locator(".file-name").inner_text() == "results 2026.pdf"
    assert file_button.locator(".file-size").inner_text() == f"{len(PDF) / 1024:.1f} KB"

    page.screenshot(path=str(ARTIFACTS / "portal-message.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(ARTIFACTS / "portal-message-phone.png"), full_page=True)
    # Nothing wider than a phone screen: no horizontal scrolling.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390

    with page.expect_download() as info:
        file_button.click()
    download = info.value
    assert download.suggested_filename == "results 2026.pdf"
    assert hashlib.sha256(Path(download.path()).read_bytes()).digest() == \
        hashlib.sha256(PDF).digest()

    # Secure reply with an attachment reaches the original sender at the upstream.
    before = len(portal.capture.messages)
    page.fill("#reply-body", "Thank you, see you Tuesday.")
    page.set_input_files("#reply-file", files=[{
        "name": "insurance card.png", "mimeType": "image/png", "buffer": b"\x89PNG-card-bytes"}])
    page.get_by_role("button", name="Send reply").click()
    # #reply-ok, not any text: 100 ms later #sr-status repeats it (two matches).
    page.locator("#reply-ok", has_text="Your reply was sent securely.").wait_for()
    reply = portal.capture.wait_for(
        lambda m: m in portal.capture.messages[before:] and m.rcpt_tos == [STAFF])
    msg = reply.message
    assert msg["Reply-To"] == CLIENT
    assert msg["Subject"] == "Re: Your lab results"
    assert msg["In-Reply-To"] == "<orig-1@riverside.example>"
    assert reply.mail_from == STAFF
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None and "Thank you, see you Tuesday." in body.get_content()
    (att,) = list(msg.iter_attachments())
    assert att.get_filename() == "insurance card.png"
    assert att.get_content() == b"\x89PNG-card-bytes"
    # ... and is stored sealed, addressed to the staff member.
    replies = [r for r in portal.service.list(datetime.now(UTC))
               if r.parent_id == result.portal_id]
    assert [(r.kind, r.recipient, r.sender) for r in replies] == [("reply", STAFF, CLIENT)]
    # Every step is in the audit log, and no content, code or key is.
    bodies = [json.loads(b) for (b,) in portal.conn.execute("SELECT body FROM audit_records")]
    kinds = [b["kind"] for b in bodies
             if b.get("portal_id") == result.portal_id and b.get("category") == "portal"]
    assert kinds == ["notified", "code-sent", "code-verified", "opened", "downloaded",
                     "replied"], kinds
    everything = json.dumps(bodies)
    # "MRN 448812", not bare digits: the records' hex hashes and ids may hold those.
    for secret in ("lab results", "MRN 448812", "results 2026.pdf", link.split("#")[1]):
        assert secret not in everything


def test_html_body_is_sandboxed_and_loads_nothing_remote(portal: Portal, page: Any) -> None:
    html = ("<p id='greeting' style='color:#0a5'>Hello <b>Jane</b></p>"
            "<script>parent.document.title='pwned'</script>"
            f"<link rel='stylesheet' href='{portal.remote_url}/style.css'>"
            f"<img src='{portal.remote_url}/pixel.gif'>"
            f"<img src='{portal.base_url}/static/portal.css?tracker'>")
    _, link = portal.seal_and_notify(original(html=html))
    served: list[str] = []
    page.on("response", lambda r: served.append(r.url))
    page.goto(link)
    request_and_enter_code(portal, page)
    frame = page.frame_locator("#m-html")
    frame.locator("#greeting").wait_for()
    assert frame.locator("#greeting").inner_text() == "Hello Jane"
    page.wait_for_timeout(300)  # give any (wrongly allowed) image fetch time to land
    assert page.title() != "pwned"
    assert page.locator("#m-html").get_attribute("sandbox") == \
        "allow-same-origin allow-popups allow-popups-to-escape-sandbox"  # no scripts, no forms
    # Nothing reached the remote server, nor even the portal's own origin.
    assert portal.remote_hits == 0
    assert not [u for u in served if "tracker" in u or portal.remote_url in u]


def test_five_wrong_codes_lock_the_message(portal: Portal, page: Any) -> None:
    sealed, link = portal.seal_and_notify(original())
    page.goto(link)
    before = len(portal.capture.messages)
    page.get_by_role("button", name="Email me a code").click()
    page.locator("#code").wait_for(state="visible")
    right = portal.code_for(before)
    wrong = [f"{(int(right) + n) % 10**6:06d}" for n in range(1, MAX_FAILED_CODES + 1)]
    for attempt in range(1, MAX_FAILED_CODES):
        page.fill("#code", wrong[attempt - 1])
        page.get_by_role("button", name="Open message").click()
        # In the error line itself: 100 ms later #sr-alert repeats it (two matches).
        page.locator("#code-error", has_text=f"{MAX_FAILED_CODES - attempt} tr").wait_for()
    page.fill("#code", wrong[-1])
    page.get_by_role("button", name="Open message").click()
    page.locator("#step-locked").wait_for(state="visible")
    # Even the right code does not open a locked message.
    assert portal.service.get(sealed.id).state(datetime.now(UTC)) == "locked"  # type: ignore[union-attr]
    # A fresh visit shows the locked page, from the server.
    response = page.reload()
    assert response.status == 423
    assert page.locator("[data-state=locked]").is_visible()


def test_expired_message_page(portal: Portal, page: Any) -> None:
    _, link = portal.seal_and_notify(original(), now=datetime.now(UTC) - timedelta(days=31))
    response = page.goto(link)
    assert response.status == 410
    assert page.get_by_role("heading").inner_text() == "This message has expired"


def test_revoked_message_page(portal: Portal, page: Any) -> None:
    sealed, link = portal.seal_and_notify(original())
    assert portal.service.revoke(sealed.id, datetime.now(UTC))
    response = page.goto(link)
    assert response.status == 410
    assert page.get_by_role("heading").inner_text() == "This message was withdrawn"


def test_link_without_key(portal: Portal, page: Any) -> None:
    _, link = portal.seal_and_notify(original())
    before = len(portal.capture.messages)
    page.goto(link.split("#")[0])
    page.locator("#step-nokey").wait_for(state="visible")
    assert page.get_by_role("button", name="Email me a code").is_hidden()
    assert len(portal.capture.messages) == before


def test_unknown_link(portal: Portal, page: Any) -> None:
    response = page.goto(f"{portal.base_url}/m/AAAAAAAAAAAAAAAAAAAAAAAA#x")
    assert response.status == 404
    assert page.get_by_role("heading").inner_text() == "This link is not valid"


def test_tampered_ciphertext_shows_nothing(portal: Portal, page: Any) -> None:
    sealed, link = portal.seal_and_notify(original())
    blob = bytearray(portal.service.store.ciphertext(sealed.id) or b"")
    blob[len(blob) // 2] ^= 0x01
    portal.conn.execute("UPDATE portal_messages SET ciphertext = ? WHERE id = ?",
                        (bytes(blob), sealed.id))
    page.goto(link)
    request_and_enter_code(portal, page)
    page.locator("#step-broken").wait_for(state="visible")
    assert page.locator("#step-message").is_hidden()
    assert "lab results" not in page.content()


def test_wrong_key_in_link_shows_nothing(portal: Portal, page: Any) -> None:
    sealed, link = portal.seal_and_notify(original())
    other, _ = portal.seal_and_notify(original())
    page.goto(link.split("#")[0] + "#" + other.url.split("#")[1])
    request_and_enter_code(portal, page)
    page.locator("#step-broken").wait_for(state="visible")
    assert "lab results" not in page.content()


def test_security_headers_and_cookies_in_the_browser(portal: Portal, page: Any) -> None:
    sealed, link = portal.seal_and_notify(original())
    response = page.goto(link)
    headers = response.headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src 'self';" in headers["content-security-policy"]
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-store"
    cookies = {c["name"]: c for c in page.context.cookies()}
    browser_cookie = cookies["__Host-sm_browser"]
    assert browser_cookie["secure"] and browser_cookie["httpOnly"]
    assert browser_cookie["sameSite"] == "Lax"  # binds CSRF tokens only
    request_and_enter_code(portal, page)
    page.locator("#m-text").wait_for(state="visible")
    session = {c["name"]: c for c in page.context.cookies()}[f"__Host-sm_session-{sealed.id}"]
    assert session["secure"] and session["httpOnly"] and session["sameSite"] == "Strict"
