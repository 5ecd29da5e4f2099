"""The code was right but fetching the message failed (the connection
dropped): the page says so, and "Open message" fetches the message again
instead of sending the used code again (which would count as a wrong guess
and, five presses later, lock the message)."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from securemail.testing import build_message

from .conftest import CLIENT, STAFF, Portal


@pytest.mark.browser
def test_network_drop_after_the_right_code_retries_without_the_code(portal: Portal,
                                                                    page: Any) -> None:
    raw = build_message(sender=STAFF, to=[CLIENT], subject="Retry", body="Hello Jane.",
                        message_id="<retry@riverside.example>")
    sealed, link = portal.seal_and_notify(raw, message_id="<retry@riverside.example>")
    verifies: list[str] = []
    page.on("request", lambda req: verifies.append(req.url) if req.url.endswith("/verify")
            else None)
    # The page first looks for a live session (there is none yet).
    with page.expect_response(lambda r: r.url.endswith("/sealed")):
        page.goto(link)
    before = len(portal.capture.messages)
    page.get_by_role("button", name="Email me a code").click()
    page.locator("#code").wait_for(state="visible")
    page.fill("#code", portal.code_for(before))
    page.route("**/sealed", lambda route: route.abort("internetdisconnected"))
    error = page.locator("#code-error")
    for _ in range(6):  # more presses than the five wrong codes that would lock it
        page.get_by_role("button", name="Open message").click()
        error.wait_for(state="visible")
        assert "could not reach the server" in error.inner_text()
        assert page.locator("#step-code").is_visible()
        expect(page.locator("#open")).to_be_enabled()  # not wait_for_function: CSP
    page.unroute("**/sealed")
    page.get_by_role("button", name="Open message").click()
    page.locator("#step-message").wait_for(state="visible")
    assert "Hello Jane." in page.locator("#m-text").inner_text()
    assert len(verifies) == 1  # the code went to the server once
    row = portal.service.get(sealed.id)
    assert row is not None and row.failed_codes == 0 and row.locked is None
    # Where the reply goes is said above the form.
    assert page.locator("#reply-to").inner_text() == f"Your reply goes to {STAFF}."
