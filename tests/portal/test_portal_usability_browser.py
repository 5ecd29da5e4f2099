"""What a new-user trial of the portal found, in real headless chromium:

- after the right code the keyboard focus lands on the message, and status
  changes (a wrong code, "message opened") are read out by screen readers;
- a long HTML body is shown whole, in a frame as tall as its content (no
  scrolling box inside the page), and printing gives the message, not forms;
- clicking the email link again after asking for a code offers to type that
  code instead of replacing it with a new one.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from playwright.sync_api import expect

from securemail.testing import build_message

from .conftest import CLIENT, STAFF, Portal

pytestmark = pytest.mark.browser

END_LINK = "https://end.example/last-paragraph"


def open_landing(portal: Portal, page: Any, subject: str, message_id: str,
                 html: str | None = None) -> str:
    raw = build_message(sender=STAFF, to=[CLIENT], subject=subject,
                        body=f"Body of {subject}.", html=html, message_id=message_id)
    _, link = portal.seal_and_notify(raw, message_id=message_id)
    page.goto(link)
    page.get_by_text("You have a secure message").wait_for()
    return link


def code_emails(portal: Portal) -> int:
    return sum(b"one-time code" in m.data for m in portal.capture.messages)


def live_text(page: Any, region: str, expected: str) -> None:
    """Wait until the live region ``region`` says ``expected`` (it is set a moment
    after it is cleared, so that the same words twice are read twice)."""
    # expect() polls from Playwright's own script world: a wait_for_function
    # predicate is eval'ed in the page, which the portal's CSP refuses.
    expect(page.locator(region)).to_contain_text(expected, timeout=5_000)


# ------------------------------------------------------------- 1. accessibility


def test_focus_moves_to_the_message_heading_after_the_code(portal: Portal, page: Any) -> None:
    open_landing(portal, page, "Focus check", "<focus@riverside.example>")
    portal.enter_code(page)
    page.locator("#step-message").wait_for(state="visible")
    # Focus is on the message's heading (the subject), not left on the used form.
    assert page.evaluate("document.activeElement.id") == "m-subject"
    assert page.evaluate("document.activeElement.tagName") == "H1"
    assert page.locator("#m-subject").get_attribute("tabindex") == "-1"
    assert page.locator("#m-subject").inner_text() == "Focus check"
    # The next Tab goes on into the message, not back to the hidden code form.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.closest('#step-code')") is None


def test_status_changes_are_announced(portal: Portal, page: Any) -> None:
    open_landing(portal, page, "Announce check", "<announce@riverside.example>")
    # The live regions are in the page from the start, and for screen readers only.
    assert page.locator("#sr-status").get_attribute("role") == "status"
    assert page.locator("#sr-alert").get_attribute("role") == "alert"
    box = page.locator("#sr-status").bounding_box()
    assert box is None or (box["width"] <= 1 and box["height"] <= 1)
    before = len(portal.capture.messages)
    page.get_by_role("button", name="Email me a code").click()
    page.locator("#code").wait_for(state="visible")
    assert page.evaluate("document.activeElement.id") == "code"
    right = portal.code_for(before)
    # A wrong code: said at once (the assertive region).
    page.fill("#code", f"{(int(right) + 1) % 10**6:06d}")
    page.keyboard.press("Enter")
    live_text(page, "#sr-alert", "That code is not right")
    # The right one: the polite region says the message opened.
    page.fill("#code", right)
    page.keyboard.press("Enter")
    page.locator("#step-message").wait_for(state="visible")
    live_text(page, "#sr-status", "Message opened")
    # The code field is described by where the code went.
    assert "We emailed a 6-digit code" in page.locator("#code").evaluate(
        "el => document.getElementById(el.getAttribute('aria-describedby')).textContent")


def test_a_withdrawn_message_takes_the_focus_to_what_happened(portal: Portal,
                                                               page: Any) -> None:
    open_landing(portal, page, "Gone check", "<gone-focus@riverside.example>")
    portal.enter_code(page)
    page.locator("#step-message").wait_for(state="visible")
    # The page checks in once the message is open; revoked before that answer,
    # the check-in (not the reply) finds the message gone and the reply form is
    # hidden before the test can type (a race seen once in nine runs).
    page.locator("#portal[data-session-end]").wait_for(state="attached")
    sealed_id = page.locator("#portal").get_attribute("data-id")
    assert sealed_id
    assert portal.service.revoke(sealed_id, datetime.now(UTC))
    page.fill("#reply-body", "Hello")
    page.get_by_role("button", name="Send reply").click()
    page.locator("#step-gone").wait_for(state="visible")
    assert page.evaluate("document.activeElement.textContent") == \
        "This message is no longer available"


# ------------------------------------------------------ 2. long HTML and printing


def long_html(paragraphs: int = 200) -> str:
    body = "".join(f"<p>Paragraph {n}: the notes from our session, written out in full so "
                   f"that the message is long enough to need many screens.</p>"
                   for n in range(paragraphs))
    return (f"<div style='font-family:Georgia,serif'>{body}"
            f"<p id='last'>Last paragraph. <a href='{END_LINK}'>end</a></p></div>")


def frame_fits(page: Any) -> tuple[bool, dict[str, float]]:
    """Whether the HTML body's frame shows all of its content: the framed
    document has nothing to scroll, and the frame is as tall as the content."""
    frame = page.locator("#m-html").element_handle().content_frame()
    inner = frame.evaluate("() => ({scroll: document.scrollingElement.scrollHeight,"
                           " view: document.scrollingElement.clientHeight})")
    box = page.locator("#m-html").bounding_box()
    facts = {"content": inner["scroll"], "view": inner["view"], "frame": box["height"]}
    fits = inner["scroll"] <= inner["view"] + 2 and box["height"] >= inner["scroll"]
    return fits, facts


def wait_until_fits(page: Any, timeout: float = 5.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        fits, facts = frame_fits(page)
        if fits:
            return facts
        assert time.monotonic() < deadline, f"the frame scrolls inside: {facts}"
        page.wait_for_timeout(50)


def open_long_html(portal: Portal, page: Any, message_id: str) -> None:
    open_landing(portal, page, "Long notes", message_id, html=long_html())
    portal.enter_code(page)
    page.locator("#step-message").wait_for(state="visible")
    page.frame_locator("#m-html").locator("#last").wait_for()


def test_long_html_message_frame_is_as_tall_as_its_content(portal: Portal,
                                                            page: Any) -> None:
    open_long_html(portal, page, "<long-html@riverside.example>")
    facts = wait_until_fits(page)
    assert facts["content"] > 3 * page.viewport_size["height"]  # really long
    # Still sandboxed: no script runs in it, and no form is sent from it.
    sandbox = (page.locator("#m-html").get_attribute("sandbox") or "").split()
    assert "allow-scripts" not in sandbox and "allow-forms" not in sandbox
    # On a phone the text wraps into more lines: the frame grows with it, and
    # back on a wide screen it shrinks again.
    page.set_viewport_size({"width": 390, "height": 800})
    narrow = wait_until_fits(page)
    assert narrow["content"] > facts["content"]
    page.set_viewport_size({"width": 1280, "height": 720})
    wide = wait_until_fits(page)
    assert abs(wide["frame"] - facts["frame"]) <= 2


def test_measurable_frame_still_runs_and_sends_nothing(portal: Portal, page: Any) -> None:
    """The frame is same-origin only so that the page can measure it: with no
    allow-scripts, nothing in it can act on that origin."""
    html = (f"<meta http-equiv='refresh' content='0;url={portal.base_url}/static/x.css?refresh'>"
            "<p id='x'>Hi</p>"
            "<script>document.getElementById('x').textContent='script ran';"
            "parent.document.title='pwned'</script>"
            "<img src='data:image/gif;base64,R0lGODlhAQABAAAAACw='"
            " onload=\"parent.document.title='pwned-onload'\""
            " onerror=\"parent.document.title='pwned-onerror'\">"
            f"<form action='{portal.base_url}/static/form' method='get'>"
            "<button id='go'>go</button></form>"
            "<a id='js' target='_self' href=\"javascript:parent.document.title='pwned-js'\">js</a>")
    requests: list[str] = []  # of every page: links and forms target a new window
    page.context.on("request", lambda r: requests.append(r.url))
    open_landing(portal, page, "Inert", "<inert@riverside.example>", html=html)
    portal.enter_code(page)
    frame = page.frame_locator("#m-html")
    frame.locator("#x").wait_for()
    frame.locator("#go").click()
    frame.locator("#js").click()
    page.wait_for_timeout(500)
    assert frame.locator("#x").inner_text() == "Hi"
    assert "pwned" not in page.title()
    assert not [u for u in requests if "refresh" in u or "/static/form" in u], requests
    assert frame.locator("#x").is_visible()  # the frame was not navigated away


def test_printing_gives_the_headers_and_the_whole_body(portal: Portal, page: Any) -> None:
    open_long_html(portal, page, "<long-print@riverside.example>")
    page.emulate_media(media="print")
    for shown in ("#m-subject", "#m-from", "#m-to", "#m-html"):
        assert page.locator(shown).is_visible(), shown
    for gone in ("#reply-form", "#reply-body", "#step-reply", "#code-form", "#send-code",
                 "#step-start"):
        assert page.locator(gone).is_hidden(), gone
    assert page.locator("button:visible").count() == 0
    # The printed pages hold the whole body: the link in its last paragraph is
    # on paper (a frame that scrolls would print its first screen only).
    wait_until_fits(page)
    pdf = page.pdf(format="A4")
    assert END_LINK.encode() in pdf
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) > 3
    page.emulate_media(media="screen")
    assert page.locator("#reply-form").is_visible()


# ------------------------------------------------ 3. the email link clicked again


def test_second_tab_offers_the_code_already_sent(portal: Portal, page: Any) -> None:
    link = open_landing(portal, page, "Second tab", "<second-tab@riverside.example>")
    before = len(portal.capture.messages)
    page.get_by_role("button", name="Email me a code").click()
    page.locator("#code").wait_for(state="visible")
    first = portal.code_for(before)
    sent = code_emails(portal)

    # The client clicks the email link again before typing the code.
    tab = page.context.new_page()
    asked: list[str] = []
    tab.on("request", lambda r: asked.append(r.url) if r.url.endswith("/code") else None)
    tab.goto(link)
    have = tab.get_by_role("button", name="I already have a code")
    have.wait_for()
    assert tab.get_by_role("button", name="Email me a new code").is_visible()
    note = tab.locator("#code-sent").inner_text()
    assert re.search(r"A code was sent to j•••@mail\.example at \d{1,2}:\d{2}", note), note
    # Opening the page sent nothing.
    assert code_emails(portal) == sent
    have.click()
    tab.locator("#code").wait_for(state="visible")
    assert tab.evaluate("document.activeElement.id") == "code"
    tab.fill("#code", first)
    tab.get_by_role("button", name="Open message").click()
    tab.locator("#step-message").wait_for(state="visible")
    assert tab.locator("#m-subject").inner_text() == "Second tab"
    assert asked == [] and code_emails(portal) == sent  # no new code replaced it


def test_reload_after_asking_offers_the_code_and_a_new_one_still_works(portal: Portal,
                                                                       page: Any) -> None:
    open_landing(portal, page, "Reloaded", "<reloaded@riverside.example>")
    page.get_by_role("button", name="Email me a code").click()
    page.locator("#code").wait_for(state="visible")
    page.reload()
    page.get_by_role("button", name="I already have a code").wait_for()
    # The client lost that email: a new code replaces it, and opens the message.
    before = len(portal.capture.messages)
    page.get_by_role("button", name="Email me a new code").click()
    page.locator("#code").wait_for(state="visible")
    page.fill("#code", portal.code_for(before))
    page.get_by_role("button", name="Open message").click()
    page.locator("#step-message").wait_for(state="visible")
    # The used code is no longer offered on this page.
    assert page.locator("#have-code").is_hidden()
    assert page.locator("#send-code").inner_text() == "Email me a code"
