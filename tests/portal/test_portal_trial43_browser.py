"""What the accessibility trial of round 43 found, in real headless chromium:

- while the sealed message downloads after the right code, the page says it is
  opening it (with its size), and pressing "Open message" again starts no
  second download;
- a reply being written when the message is withdrawn stays on the page, to
  copy;
- a long reply-to address, a long word in an HTML body: no sideways scrolling
  on a phone;
- buttons busy with a request keep the keyboard focus (not dropped to the page);
- input borders have 3:1 contrast; the text follows the browser's font size;
- a wrong code marks the code field invalid and describes it with the error
  (the reply box likewise);
- "Sign out" ends the session, and Back does not bring the message back;
- the wording of the last try, a code that is too short, and the limit of
  codes an hour;
- the tab's title follows the step; subject and text body are dir="auto".
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from playwright.sync_api import expect

from securemail.testing import build_message

from .conftest import CLIENT, STAFF, Portal

pytestmark = pytest.mark.browser

PRACTICE = "Riverside Counselling"
LONG_REPLY_TO = "Intake Team <appointments.team.for.new.clients@riverside.example>"


def landing(portal: Portal, page: Any, subject: str, message_id: str, **kw: Any) -> str:
    raw = build_message(sender=STAFF, to=[CLIENT], subject=subject,
                        body=kw.pop("body", f"Body of {subject}."), message_id=message_id, **kw)
    sealed, link = portal.seal_and_notify(raw, message_id=message_id)
    page.goto(link)
    page.get_by_text("You have a secure message").wait_for()
    return sealed.id


def open_message(portal: Portal, page: Any, subject: str, message_id: str, **kw: Any) -> str:
    pid = landing(portal, page, subject, message_id, **kw)
    portal.enter_code(page)
    page.locator("#step-message").wait_for(state="visible")
    # The page checks in once the message is open (its session timers start).
    page.locator("#portal[data-session-end]").wait_for(state="attached")
    return pid


def ask_for_code(portal: Portal, page: Any) -> str:
    before = len(portal.capture.messages)
    page.get_by_role("button", name="Email me a code").click()
    page.locator("#code").wait_for(state="visible")
    return portal.code_for(before)


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


def focused(page: Any) -> dict[str, str]:
    return dict(page.evaluate("({tag: document.activeElement.tagName,"
                              " id: document.activeElement.id,"
                              " cls: document.activeElement.className})"))


def no_sideways_scroll(page: Any) -> None:
    widths = page.evaluate("({scroll: document.documentElement.scrollWidth,"
                           " client: document.documentElement.clientWidth})")
    assert widths["scroll"] <= widths["client"], widths


def contrast(a: str, b: str) -> float:
    def lum(css: str) -> float:
        r, g, b_ = (int(v) / 255 for v in re.findall(r"\d+", css)[:3])
        f = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in (r, g, b_)]
        return 0.2126 * f[0] + 0.7152 * f[1] + 0.0722 * f[2]

    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


# ------------------------------------------------ 1. opening a large message


def test_opening_a_large_message_shows_progress_and_downloads_once(portal: Portal,
                                                                   page: Any) -> None:
    data = os.urandom(1_500_000)
    landing(portal, page, "Slow open", "<slow-open@riverside.example>",
            attachments=[("x-ray.pdf", "application/pdf", data)])
    code = ask_for_code(portal, page)
    page.fill("#code", code)
    sealed: list[str] = []
    page.on("request", lambda r: sealed.append(r.url) if r.url.endswith("/sealed") else None)
    # A slow line: the sealed message (about 2 MB) takes several seconds.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 50, "downloadThroughput": 400_000,
        "uploadThroughput": 400_000})
    page.locator("#open").focus()
    page.keyboard.press("Enter")
    busy = page.locator("#opening")
    expect(busy).to_be_visible()
    expect(busy).to_contain_text("Opening your message")
    # Its size, from the answer's Content-Length, and how far it got.
    expect(busy).to_contain_text(re.compile(r"\d+\.\d MB"), timeout=10_000)
    expect(page.locator("#sr-status")).to_contain_text("Opening your message")
    # The button stays focused (not disabled: that drops the focus), marked busy.
    assert focused(page)["id"] == "open"
    assert page.locator("#open").get_attribute("aria-disabled") == "true"
    # The impatient second press (and Enter in the field) starts nothing.
    page.keyboard.press("Enter")
    page.locator("#open").evaluate("b => b.click()")  # a pointer press (no focus move)
    page.locator("#code").press("Enter")
    page.locator("#step-message").wait_for(state="visible", timeout=60_000)
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    assert len(sealed) == 1, sealed
    assert busy.is_hidden()
    assert page.locator(".file-name").inner_text() == "x-ray.pdf"
    expect(page.locator("#sr-status")).to_have_text("Message opened.")


# ------------------------------------------ 2. a reply when the message goes


def test_unsent_reply_stays_on_the_page_when_the_message_is_withdrawn(portal: Portal,
                                                                      page: Any) -> None:
    pid = open_message(portal, page, "Withdrawn while replying", "<gone-reply@riverside.example>")
    text = "Dear Dr Rivera,\nI can come on Tuesday at 3pm.\nJane"
    page.fill("#reply-body", text)
    assert portal.service.revoke(pid, datetime.now(UTC))
    page.get_by_role("button", name="Send reply").click()
    page.locator("#step-gone").wait_for(state="visible")
    # The message is gone; the client's own words are not.
    assert page.locator("#m-subject").inner_text() == ""
    draft = page.get_by_role("textbox", name="Your unsent reply")
    expect(draft).to_be_visible()
    expect(draft).to_have_value(text)
    assert draft.get_attribute("readonly") is not None
    note = page.locator("#gone-reply-note")
    expect(note).to_have_text("Your reply was not sent; copy it if you want to send it "
                              "another way.")
    assert "gone-reply-note" in (draft.get_attribute("aria-describedby") or "")
    # Focus on what happened, as before.
    assert page.evaluate("document.activeElement.textContent") == \
        "This message is no longer available"


def test_gone_without_a_reply_shows_no_reply_box(portal: Portal, page: Any) -> None:
    pid = open_message(portal, page, "Withdrawn, nothing typed", "<gone-empty@riverside.example>",
                       attachments=[("a.pdf", "application/pdf", b"%PDF" * 10)])
    assert portal.service.revoke(pid, datetime.now(UTC))
    page.locator(".file").click()
    page.locator("#step-gone").wait_for(state="visible")
    assert page.locator("#gone-reply").is_hidden()


# ------------------------------------------------------- 3. reflow (1.4.10)


@pytest.mark.parametrize("width", [375, 320])
def test_long_reply_address_wraps_on_a_phone(portal: Portal, page: Any, width: int) -> None:
    page.set_viewport_size({"width": width, "height": 700})
    open_message(portal, page, "Reply address", f"<reply-to-{width}@riverside.example>",
                 headers={"Reply-To": LONG_REPLY_TO})
    expect(page.locator("#reply-to")).to_contain_text("appointments.team.for.new.clients@")
    no_sideways_scroll(page)
    card = page.locator("#step-reply").bounding_box()
    strong = page.locator("#reply-to strong").bounding_box()
    assert strong["x"] + strong["width"] <= card["x"] + card["width"], (strong, card)


def test_long_word_in_an_html_body_wraps_in_its_frame(portal: Portal, page: Any) -> None:
    page.set_viewport_size({"width": 320, "height": 640})
    word = "Pneumonoultramicroscopicsilicovolcanoconiosis" * 6
    url = "https://riverside.example/forms/intake?token=" + "abcdef0123456789" * 12
    open_message(portal, page, "Long word", "<long-word@riverside.example>",
                 html=f"<p id='w'>{word}</p><p><a href='{url}'>{url}</a></p>")
    frame = page.frame_locator("#m-html")
    frame.locator("#w").wait_for()
    sizes = page.locator("#m-html").evaluate(
        "f => ({scroll: f.contentDocument.documentElement.scrollWidth,"
        " client: f.contentDocument.documentElement.clientWidth})")
    assert sizes["scroll"] <= sizes["client"], sizes
    no_sideways_scroll(page)


# --------------------------------------------------- 4. focus stays (2.4.3)


def test_busy_buttons_keep_the_keyboard_focus(portal: Portal, page: Any) -> None:
    landing(portal, page, "Focus kept", "<focus-kept@riverside.example>",
            attachments=[("a.pdf", "application/pdf", b"%PDF" * 10),
                         ("b.pdf", "application/pdf", b"%PDF" * 10)])
    code = ask_for_code(portal, page)
    # A wrong code sent with the Open button: focus back in the (emptied) field.
    page.fill("#code", wrong(code))
    page.locator("#open").focus()
    page.keyboard.press("Enter")
    page.locator("#code-error").wait_for(state="visible")
    assert focused(page)["id"] == "code"
    page.fill("#code", code)
    page.keyboard.press("Enter")
    page.locator("#step-message").wait_for(state="visible")
    page.locator("#portal[data-session-end]").wait_for(state="attached")
    # An attachment saved from the keyboard: the focus stays on its button.
    first = page.locator(".file").first
    first.focus()
    with page.expect_download():
        page.keyboard.press("Enter")
    expect(first).not_to_have_attribute("aria-disabled", "true")
    assert focused(page)["cls"] == "file"
    assert page.evaluate("document.activeElement.textContent").startswith("a.pdf")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent").startswith("b.pdf")
    # Send reply from the keyboard: the focus stays on Send.
    page.fill("#reply-body", "Thank you.")
    page.locator("#reply-send").focus()
    page.keyboard.press("Enter")
    page.locator("#reply-ok").wait_for(state="visible")
    assert focused(page)["id"] == "reply-send"
    assert page.locator("#reply-send").get_attribute("aria-disabled") is None


# --------------------------------------- 5. and 10. contrast and font size


def test_input_borders_have_three_to_one_contrast(portal: Portal, page: Any) -> None:
    open_message(portal, page, "Borders", "<borders@riverside.example>")
    for field in ("#code", "#reply-body"):
        colours = page.locator(field).evaluate(
            "el => ({border: getComputedStyle(el).borderTopColor,"
            " field: getComputedStyle(el).backgroundColor,"
            " card: getComputedStyle(el.closest('.card')).backgroundColor})")
        assert contrast(colours["border"], colours["field"]) >= 3.0, (field, colours)
        assert contrast(colours["border"], colours["card"]) >= 3.0, (field, colours)


def test_text_follows_the_browsers_font_size_setting(portal: Portal, page: Any) -> None:
    cdp = page.context.new_cdp_session(page)
    cdp.send("Page.enable")
    cdp.send("Page.setFontSizes", {"fontSizes": {"standard": 32, "fixed": 26}})
    landing(portal, page, "Font size", "<font-size@riverside.example>")
    root = page.evaluate("getComputedStyle(document.documentElement).fontSize")
    assert root == "32px"
    for sel in ("body", "#step-start p", "#send-code"):
        size = page.evaluate(f"getComputedStyle(document.querySelector('{sel}')).fontSize")
        assert size == "32px", (sel, size)


# ------------------------------------------------- 6. errors on fields (3.3.1)


def test_wrong_code_marks_the_field_invalid_until_fixed(portal: Portal, page: Any) -> None:
    landing(portal, page, "Invalid code", "<invalid-code@riverside.example>")
    code = ask_for_code(portal, page)
    field = page.locator("#code")
    assert field.get_attribute("aria-invalid") is None
    page.fill("#code", wrong(code))
    page.keyboard.press("Enter")
    page.locator("#code-error").wait_for(state="visible")
    expect(field).to_have_attribute("aria-invalid", "true")
    described = (field.get_attribute("aria-describedby") or "").split()
    assert described == ["code-help", "code-error"]
    page.fill("#code", code)
    page.keyboard.press("Enter")
    page.locator("#step-message").wait_for(state="visible")
    assert field.get_attribute("aria-invalid") is None
    assert field.get_attribute("aria-describedby") == "code-help"


def test_empty_reply_marks_the_box_invalid_until_fixed(portal: Portal, page: Any) -> None:
    open_message(portal, page, "Invalid reply", "<invalid-reply@riverside.example>")
    box = page.locator("#reply-body")
    page.get_by_role("button", name="Send reply").click()
    expect(page.locator("#reply-error")).to_have_text("Please write a message or attach a file.")
    expect(box).to_have_attribute("aria-invalid", "true")
    assert "reply-error" in (box.get_attribute("aria-describedby") or "").split()
    assert focused(page)["id"] == "reply-body"
    box.press_sequentially("Hi")
    expect(page.locator("#reply-error")).to_be_hidden()
    assert box.get_attribute("aria-invalid") is None
    assert "reply-error" not in (box.get_attribute("aria-describedby") or "")


# ---------------------------------------------------- 7. the second device


def test_second_device_is_told_a_code_works_once(portal: Portal, page: Any,
                                                 browser: Any) -> None:
    landing(portal, page, "Two devices", "<two-devices@riverside.example>")
    code = ask_for_code(portal, page)
    page.fill("#code", code)
    page.keyboard.press("Enter")
    page.locator("#step-message").wait_for(state="visible")
    other = browser.new_context()
    try:
        second = other.new_page()
        second.goto(page.url)
        second.get_by_role("button", name="I already have a code").wait_for()
        said = second.locator("#code-sent").inner_text()
        assert "A code works only once" in said
        assert "ask for a new code here" in said
        second.get_by_role("button", name="I already have a code").click()
        assert "It works once, for 10 minutes." in second.locator("#code-help").inner_text()
    finally:
        other.close()


# -------------------------------------------------------------- 8. sign out


def test_sign_out_ends_the_session_and_back_does_not_show_the_message(portal: Portal,
                                                                      page: Any) -> None:
    pid = open_message(portal, page, "Sign out", "<sign-out@riverside.example>",
                       body="Your results: MRN 771204.")
    link = page.url
    page.fill("#reply-body", "half-written reply")
    assert page.evaluate(f"sessionStorage.getItem('securemail-draft:{pid}')")
    cookie = f"__Host-sm_session-{pid}"
    # The test server is plain http: chromium keeps __Host- cookies on 127.0.0.1.
    held = [c for c in page.context.cookies() if c["name"] == cookie]
    assert len(held) == 1
    button = page.get_by_role("button", name="Sign out")
    with page.expect_response(lambda r: r.url.endswith("/signout")) as answer:
        button.click()
    assert answer.value.status == 200
    page.locator("#step-start").wait_for(state="visible")
    expect(page.locator("#start-note")).to_have_text(
        "You have signed out. To read the message again, ask for a new code.")
    assert focused(page)["id"] == "start-heading"
    assert "771204" not in page.content()
    assert page.evaluate(f"sessionStorage.getItem('securemail-draft:{pid}')") is None
    assert page.locator("#reply-body").input_value() == ""
    assert not any(c["name"] == cookie for c in page.context.cookies())
    # Away and Back: the landing page again, not the message.
    page.goto(f"{portal.base_url}/")
    page.go_back()
    page.get_by_text("You have a secure message").wait_for()
    page.wait_for_timeout(500)
    assert page.url == link
    assert page.locator("#step-message").is_hidden()
    assert "771204" not in page.content()
    # The server ended the session too: the old cookie, put back, opens nothing.
    page.context.add_cookies(held)
    assert page.request.get(f"{portal.base_url}/m/{pid}/sealed").status == 401


def test_sign_out_clears_the_page_even_when_the_server_is_unreachable(portal: Portal,
                                                                     page: Any) -> None:
    pid = open_message(portal, page, "Sign out offline", "<sign-out-offline@riverside.example>",
                       body="Your results: MRN 660311.")
    page.fill("#reply-body", "draft")
    page.route("**/signout", lambda route: route.abort("internetdisconnected"))
    page.get_by_role("button", name="Sign out").click()
    page.locator("#step-start").wait_for(state="visible")
    expect(page.locator("#start-note")).to_contain_text(
        "Please close every window of this browser")
    assert "660311" not in page.content()
    assert page.evaluate(f"sessionStorage.getItem('securemail-draft:{pid}')") is None


def test_sign_out_clears_the_page_at_once_when_the_server_does_not_answer(
        portal: Portal, page: Any) -> None:
    # Review 46: with the sign-out request left unanswered, the message stayed
    # on screen (and the button busy) for as long as it hung.
    open_message(portal, page, "Sign out hangs", "<sign-out-hang@riverside.example>",
                 body="Your results: MRN 551177.")
    page.route("**/signout", lambda route: None)  # never answered
    page.get_by_role("button", name="Sign out").click()
    page.locator("#step-start").wait_for(state="visible", timeout=3000)
    assert "551177" not in page.content()


def test_sign_out_clears_the_other_tabs_of_the_message(portal: Portal, page: Any) -> None:
    # Review 46: a second tab (same browser, same cookie) kept showing the
    # message for up to the idle time after "Sign out" in the first.
    open_message(portal, page, "Two tabs", "<two-tabs@riverside.example>",
                 body="Your results: MRN 440022.")
    other = page.context.new_page()
    try:
        other.goto(page.url)
        other.locator("#step-message").wait_for(state="visible")
        assert "440022" in other.content()
        page.get_by_role("button", name="Sign out").click()
        other.locator("#step-start").wait_for(state="visible", timeout=3000)
        assert "440022" not in other.content()
        expect(other.locator("#start-note")).to_have_text(
            "You have signed out. To read the message again, ask for a new code.")
    finally:
        other.close()


# ------------------------------------------------------------- 9. wording


def test_last_try_says_what_the_next_wrong_code_does(portal: Portal, page: Any) -> None:
    pid = landing(portal, page, "Last try", "<last-try@riverside.example>")
    code = ask_for_code(portal, page)
    error = page.locator("#code-error")
    for left in (4, 3, 2):
        page.fill("#code", wrong(code))
        page.keyboard.press("Enter")
        expect(error).to_have_text(f"That code is not right. {left} tries left.")
    page.fill("#code", wrong(code))
    page.keyboard.press("Enter")
    expect(error).to_contain_text("That code is not right. 1 try left")
    expect(error).to_contain_text(f"one more wrong code locks this message until {PRACTICE} "
                                  "sends it again")
    row = portal.service.get(pid)
    assert row is not None and row.failed_codes == 4 and row.locked is None
    # And it does: the locked step, and the tab says so too.
    page.fill("#code", wrong(code))
    page.keyboard.press("Enter")
    page.locator("#step-locked").wait_for(state="visible")
    expect(page).to_have_title(f"Message locked · {PRACTICE}")


def test_a_short_code_says_codes_have_six_digits_and_costs_no_try(portal: Portal,
                                                                  page: Any) -> None:
    pid = landing(portal, page, "Short code", "<short-code@riverside.example>")
    code = ask_for_code(portal, page)
    verifies: list[str] = []
    page.on("request", lambda r: verifies.append(r.url) if r.url.endswith("/verify") else None)
    page.fill("#code", code[:5])
    page.keyboard.press("Enter")
    expect(page.locator("#code-error")).to_have_text(
        "Codes have 6 digits. Please type all 6 digits from the email.")
    expect(page.locator("#code")).to_have_attribute("aria-invalid", "true")
    assert verifies == []
    row = portal.service.get(pid)
    assert row is not None and row.failed_codes == 0
    page.fill("#code", code[:3] + " " + code[3:])  # spaces are fine
    page.keyboard.press("Enter")
    page.locator("#step-message").wait_for(state="visible")


def test_too_many_codes_says_the_limit(portal: Portal, page: Any) -> None:
    landing(portal, page, "Code limit", "<code-limit@riverside.example>")
    ask_for_code(portal, page)
    note, error = page.locator("#code-note"), page.locator("#code-error")
    for _ in range(4):  # five codes in all
        page.get_by_role("button", name="Send me a new code").click()
        expect(note).to_have_text("We sent you a new code.")
    page.get_by_role("button", name="Send me a new code").click()
    expect(error).to_contain_text("We send at most 5 codes an hour for a message")
    assert "Too many requests" not in error.inner_text()


# ------------------------------------------------- 11. and 12. title, direction


def test_title_follows_the_step(portal: Portal, page: Any) -> None:
    pid = landing(portal, page, "Titles", "<titles@riverside.example>",
                  attachments=[("a.pdf", "application/pdf", b"%PDF" * 10)])
    assert page.title() == f"Secure message · {PRACTICE}"
    code = ask_for_code(portal, page)
    expect(page).to_have_title(f"Enter your code · {PRACTICE}")
    page.fill("#code", code)
    page.keyboard.press("Enter")
    page.locator("#step-message").wait_for(state="visible")
    # Never the subject: titles are kept in the browser's history.
    expect(page).to_have_title(f"Your message · {PRACTICE}")
    page.locator("#portal[data-session-end]").wait_for(state="attached")
    assert portal.service.revoke(pid, datetime.now(UTC))
    page.locator(".file").click()
    page.locator("#step-gone").wait_for(state="visible")
    expect(page).to_have_title(f"Message no longer available · {PRACTICE}")


def test_subject_and_text_body_take_their_direction_from_the_text(portal: Portal,
                                                                  page: Any) -> None:
    rtl = "שלום ג'יין, תוצאות הבדיקה שלך מצורפות"
    open_message(portal, page, rtl, "<rtl@riverside.example>", body=rtl)
    assert page.locator("#m-subject").get_attribute("dir") == "auto"
    assert page.locator("#m-text").get_attribute("dir") == "auto"
    assert page.locator("#m-subject").evaluate("el => getComputedStyle(el).direction") == "rtl"
    assert page.locator("#m-text").evaluate("el => getComputedStyle(el).direction") == "rtl"
