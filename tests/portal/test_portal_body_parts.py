"""Every inline body part is shown, in order, in real headless chromium."""

from __future__ import annotations

import json
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

import pytest

from securemail.portal.content import sealed_plaintext

from .conftest import CLIENT, STAFF, Portal

PDF = b"%PDF-1.4 apple-mail-attachment %%EOF"


def base(message_id: str) -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = STAFF, CLIENT, "Parts"
    m["Message-ID"] = message_id
    return m


def mixed_plain_then_html() -> bytes:
    m = base("<mixed@riverside.example>")
    m.set_content("PLAIN-FIRST words")
    m.add_attachment("<p id='h'>HTML-SECOND words</p>", subtype="html", disposition="inline")
    return m.as_bytes(policy=SMTP)


def apple_mail() -> bytes:
    m = base("<apple@riverside.example>")
    m.make_mixed()
    for n, part in enumerate(["<p id='one'>HTML-ONE</p>", None, "<p id='two'>HTML-TWO</p>"]):
        sub = EmailMessage()
        if part is None:
            sub.set_content(PDF, maintype="application", subtype="pdf", filename="scan.pdf")
        else:
            sub.set_content(part, subtype="html", disposition="inline")
        m.attach(sub)
        assert n < 3
    return m.as_bytes(policy=SMTP)


def alternative_with_plain_and_html() -> bytes:
    m = base("<alt@riverside.example>")
    m.set_content("ALT-PLAIN")
    m.add_alternative("<p>ALT-HTML</p>", subtype="html")
    m.add_attachment(PDF, maintype="application", subtype="pdf", filename="a.pdf")
    return m.as_bytes(policy=SMTP)


def test_document_lists_every_body_part_in_order() -> None:
    doc = json.loads(sealed_plaintext(mixed_plain_then_html()))
    assert [(p["type"], p["content"].strip()) for p in doc["parts"]] == [
        ("text/plain", "PLAIN-FIRST words"),
        ("text/html", "<p id='h'>HTML-SECOND words</p>")]
    assert doc["attachments"] == []
    doc = json.loads(sealed_plaintext(apple_mail()))
    assert [p["type"] for p in doc["parts"]] == ["text/html", "text/html"]
    assert "HTML-TWO" in doc["parts"][1]["content"]
    assert [a["name"] for a in doc["attachments"]] == ["scan.pdf"]
    # One version of an alternative group: the html; the plain copy is not an attachment.
    doc = json.loads(sealed_plaintext(alternative_with_plain_and_html()))
    assert [p["type"] for p in doc["parts"]] == ["text/html"]
    assert [a["name"] for a in doc["attachments"]] == ["a.pdf"]


def open_in_browser(portal: Portal, page: Any, raw: bytes, message_id: str) -> None:
    _, link = portal.seal_and_notify(raw, message_id=message_id)
    page.goto(link)
    portal.enter_code(page)
    page.locator("#step-message").wait_for(state="visible")


@pytest.mark.browser
def test_mixed_plain_and_html_are_both_shown_in_order(portal: Portal, page: Any) -> None:
    open_in_browser(portal, page, mixed_plain_then_html(), "<mixed@riverside.example>")
    shown = page.locator("#step-message .body-part")
    assert shown.count() == 2
    assert shown.nth(0).evaluate("e => e.tagName") == "PRE"
    assert "PLAIN-FIRST words" in shown.nth(0).inner_text()
    assert shown.nth(1).evaluate("e => e.tagName") == "IFRAME"
    frame = page.frame_locator("#step-message iframe.body-part").nth(0)
    assert frame.locator("#h").inner_text() == "HTML-SECOND words"


@pytest.mark.browser
def test_apple_mail_layout_shows_both_html_parts(portal: Portal, page: Any) -> None:
    open_in_browser(portal, page, apple_mail(), "<apple@riverside.example>")
    frames = page.locator("#step-message iframe.body-part")
    assert frames.count() == 2
    for n in range(2):  # each one sandboxed exactly like the first
        assert frames.nth(n).get_attribute("sandbox") == \
            "allow-same-origin allow-popups allow-popups-to-escape-sandbox"  # no scripts, no forms
        assert frames.nth(n).is_visible()
    assert page.frame_locator("#step-message iframe.body-part").nth(0) \
        .locator("#one").inner_text() == "HTML-ONE"
    assert page.frame_locator("#step-message iframe.body-part").nth(1) \
        .locator("#two").inner_text() == "HTML-TWO"
    assert page.locator(".file-name").all_inner_texts() == ["scan.pdf"]
