"""The message view shows From, To, Cc and Date as a mail program would; a
message without a Date shows when it was sealed, labelled so; documents
sealed before "cc" was kept still render."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from securemail.portal import service as service_module
from securemail.portal.content import sealed_plaintext

from .conftest import CLIENT, STAFF, Portal
from .test_portal_sessions_browser import open_with_code

pytestmark = pytest.mark.browser

RAW = (f"From: Dr. Rivera <{STAFF}>\r\n"
       f"To: =?utf-8?q?Jane_D=C3=B6e?= <{CLIENT}>\r\n"
       "Cc: Front Desk <desk@riverside.example>, records@riverside.example\r\n"
       "Subject: Headers\r\n"
       "Date: Mon, 02 Mar 2026 09:30:00 +0000\r\n"
       "Message-ID: <hdr@riverside.example>\r\n"
       "\r\nHello Jane.\r\n").encode()


def rows(page: Any) -> dict[str, str]:
    out = {}
    for row in page.locator(".meta dl > div:not([hidden])").all():
        out[row.locator("dt").inner_text()] = row.locator("dd").inner_text()
    return out


def test_the_document_keeps_cc() -> None:
    doc = json.loads(sealed_plaintext(RAW))
    assert doc["to"] == f"Jane Döe <{CLIENT}>"
    assert doc["cc"] == "Front Desk <desk@riverside.example>, records@riverside.example"


def test_from_to_cc_and_date_are_shown(portal: Portal, page: Any) -> None:
    _, link = portal.seal_and_notify(RAW, message_id="<hdr@riverside.example>")
    open_with_code(portal, page, link)
    shown = rows(page)
    assert list(shown) == ["From", "To", "Cc", "Date"]
    assert shown["From"] == f"Dr. Rivera <{STAFF}>"
    assert shown["To"] == f"Jane Döe <{CLIENT}>"
    assert shown["Cc"] == "Front Desk <desk@riverside.example>, records@riverside.example"
    assert "2026" in shown["Date"]


def test_no_date_shows_the_sealed_time_labelled(portal: Portal, page: Any) -> None:
    raw = RAW.replace(b"Date: Mon, 02 Mar 2026 09:30:00 +0000\r\n", b"").replace(
        b"Cc: Front Desk <desk@riverside.example>, records@riverside.example\r\n", b"")
    sealed_at = datetime.now(UTC) - timedelta(hours=1)
    _, link = portal.seal_and_notify(raw, message_id="<hdr@riverside.example>", now=sealed_at)
    open_with_code(portal, page, link)
    shown = rows(page)
    assert list(shown) == ["From", "To", "Sealed"]  # no empty Cc or Date row
    # The sealed time's year, in the browser's time zone (a day either side of UTC at most):
    # not this year's, which differs from it in the first hour of January 1.
    years = {str((sealed_at + timedelta(days=d)).year) for d in (-1, 0, 1)}
    assert any(y in shown["Sealed"] for y in years) and "no date" in shown["Sealed"]


def test_an_old_document_without_cc_still_renders(portal: Portal, page: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    old = {"v": 1, "subject": "Old format", "from": STAFF, "to": CLIENT,
           "date": "Mon, 02 Mar 2026 09:30:00 +0000", "text": "Old body.", "html": None,
           "attachments": []}
    monkeypatch.setattr(service_module, "sealed_document",
                        lambda raw: (json.dumps(old).encode(), 0))
    _, link = portal.seal_and_notify(RAW, message_id="<hdr@riverside.example>")
    monkeypatch.undo()
    open_with_code(portal, page, link)
    assert list(rows(page)) == ["From", "To", "Date"]
    assert page.locator("#m-text").inner_text().strip() == "Old body."
