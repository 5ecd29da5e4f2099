"""Attachment names and types, both ways: in sealed messages and in replies."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest

from securemail.portal.content import Attachment, build_reply, sealed_plaintext
from securemail.testing import build_message

from .conftest import CLIENT, STAFF, Portal

BIDI = ["invoice\u202efdp.exe", "a\u202ab\u202bc\u202cd\u202de.pdf",
        "x\u2066y\u2067z\u2068w\u2069.pdf", "zero\u200bwidth\u200d\ufeff.pdf", "soft\u00ad.pdf"]
LONG = "Results of the assessment " * 12 + ".pdf"  # 316 characters


def names_sealed(names: list[str]) -> list[str]:
    raw = build_message(sender=STAFF, to=[CLIENT], subject="s", body="b",
                        attachments=[(n, "application/pdf", b"%PDF") for n in names],
                        message_id="<names@riverside.example>")
    return [a["name"] for a in json.loads(sealed_plaintext(raw))["attachments"]]


def name_replied(name: str, ctype: str = "application/pdf", data: bytes = b"%PDF") -> Any:
    raw = build_reply(from_address=STAFF, client=CLIENT, to=STAFF, subject="Re", body="hi",
                      in_reply_to="<o@r.example>", attachment=Attachment(name, ctype, data),
                      now=datetime.now(UTC))
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    (att,) = list(msg.iter_attachments())
    return att


def test_format_characters_are_stripped_from_names_both_ways() -> None:
    expected = ["invoicefdp.exe", "abcde.pdf", "xyzw.pdf", "zerowidth.pdf", "soft.pdf"]
    assert names_sealed(BIDI) == expected
    assert [name_replied(n).get_filename() for n in BIDI] == expected


def test_long_names_keep_their_extension_both_ways() -> None:
    (sealed,) = names_sealed([LONG])
    replied = name_replied(LONG).get_filename()
    for name in (sealed, replied):
        assert len(name) <= 200
        assert name.endswith(".pdf")
        assert name.startswith("Results of the assessment")


@pytest.mark.parametrize("ctype", ["message/rfc822", "multipart/mixed", "message/partial",
                                   "Multipart/Alternative", "message/global"])
def test_container_types_from_the_browser_become_octet_stream(ctype: str) -> None:
    eml = b"From: a@b.example\r\nSubject: fwd\r\n\r\nforwarded body\r\n"
    att = name_replied("forwarded.eml", ctype, eml)
    assert att.get_content_type() == "application/octet-stream"
    assert att.get_filename() == "forwarded.eml"
    assert att.get_content() == eml


@pytest.mark.browser
def test_reply_with_an_eml_attachment_is_delivered(portal: Portal, page: Any) -> None:
    raw = build_message(sender=STAFF, to=[CLIENT], subject="Notes", body="See notes.",
                        message_id="<eml@riverside.example>")
    _, link = portal.seal_and_notify(raw, message_id="<eml@riverside.example>")
    page.goto(link)
    portal.enter_code(page)
    eml = b"From: school@example.org\r\nSubject: report\r\n\r\nThe school report.\r\n"
    before = len(portal.capture.messages)
    page.fill("#reply-body", "Forwarding the school's mail.")
    page.set_input_files("#reply-file", files=[{
        "name": "school.eml", "mimeType": "message/rfc822", "buffer": eml}])
    page.get_by_role("button", name="Send reply").click()
    # #reply-ok, not any text: 100 ms later #sr-status repeats it (two matches).
    page.locator("#reply-ok", has_text="Your reply was sent securely.").wait_for()
    got = portal.capture.wait_for(lambda m: m in portal.capture.messages[before:]
                                  and m.rcpt_tos == [STAFF])
    (att,) = list(got.message.iter_attachments())
    assert att.get_filename() == "school.eml"
    assert att.get_content_type() == "application/octet-stream"
    assert att.get_content() == eml
