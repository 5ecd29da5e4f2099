"""Inline images (cid: references to multipart/related parts) show in the
HTML body as data: URLs and are not listed as attachments; the size is bounded."""

from __future__ import annotations

import json
import struct
import zlib
from email import policy
from email.message import EmailMessage
from typing import Any

import pytest

from securemail.portal import content
from securemail.portal.content import sealed_document

from .conftest import CLIENT, STAFF, Portal
from .test_portal_sessions_browser import open_with_code


def png(width: int = 3, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                             0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def related_message(*, extra_unreferenced: bool = False) -> bytes:
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = STAFF
    msg["To"] = CLIENT
    msg["Subject"] = "With a logo"
    msg["Message-ID"] = "<cid@riverside.example>"
    msg.set_content("See the logo.")
    msg.add_alternative('<p>Logo: <img id="logo" alt="logo" src="cid:logo%40riverside">'
                        '<img id="other" src="cid:nothing@here"></p>', subtype="html")
    html = msg.get_payload()[1]
    html.add_related(png(), "image", "png", cid="<logo@riverside>", filename="logo.png")
    if extra_unreferenced:
        html.add_related(png(5, 5), "image", "png", cid="<spare@riverside>",
                         filename="spare.png")
    msg.add_attachment(b"%PDF-1.4 real attachment", maintype="application", subtype="pdf",
                       filename="letter.pdf")
    return msg.as_bytes()


def test_referenced_images_are_inlined_and_not_listed() -> None:
    plain, count = sealed_document(related_message(extra_unreferenced=True))
    doc = json.loads(plain)
    (html,) = [p["content"] for p in doc["parts"] if p["type"] == "text/html"]
    assert 'src="data:image/png;base64,' in html and "cid:logo" not in html
    assert 'src="cid:nothing@here"' in html  # unknown reference left alone
    assert [a["name"] for a in doc["attachments"]] == ["spare.png", "letter.pdf"]
    assert count == 2


def test_inlining_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(content, "MAX_INLINE_IMAGES", len(png()) - 1)
    doc = json.loads(sealed_document(related_message())[0])
    (html,) = [p["content"] for p in doc["parts"] if p["type"] == "text/html"]
    assert "cid:logo%40riverside" in html and "data:" not in html
    assert [a["name"] for a in doc["attachments"]] == ["logo.png", "letter.pdf"]


def test_every_reference_counts_against_the_bound() -> None:
    # One 64 KiB image referred to 3,000 times must not make the sealed copy
    # 3,000 times its size (it was 262 MB for a 140 KB message).
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"], msg["To"], msg["Subject"] = STAFF, CLIENT, "Logos"
    msg.set_content("x")
    msg.add_alternative('<img src="cid:a@x">' * 3000, subtype="html")
    msg.get_payload()[1].add_related(bytes(65536), maintype="image", subtype="png", cid="<a@x>")
    raw = msg.as_bytes()
    sealed = sealed_document(raw)[0]
    assert len(sealed) < content.MAX_INLINE_IMAGES + 2 * len(raw)


@pytest.mark.browser
def test_inline_image_shows_in_the_browser(portal: Portal, page: Any) -> None:
    _, link = portal.seal_and_notify(related_message(),
                                     message_id="<cid@riverside.example>")
    open_with_code(portal, page, link)
    frame = page.frame_locator("#m-html")
    frame.locator("#logo").wait_for()
    logo = frame.locator("#logo")
    assert logo.evaluate("img => img.complete ? img.naturalWidth : new Promise("
                         "r => { img.onload = () => r(img.naturalWidth); })") == 3
    assert [n.inner_text() for n in page.locator(".file-name").all()] == ["letter.pdf"]
    assert portal.remote_hits == 0
