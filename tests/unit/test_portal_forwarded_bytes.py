"""An attached (forwarded) message reaches the client as the bytes the sender
attached, byte for byte: its own DKIM signature and its value as evidence
depend on them. Only when those bytes cannot be found unambiguously is it
rebuilt from the parsed message."""

from __future__ import annotations

import base64
import json
from email import policy
from email.parser import BytesParser
from typing import Any

import pytest

from securemail.portal import content
from securemail.portal.content import sealed_plaintext

# What re-serialising would change: a folded DKIM-Signature, a long Subject in
# encoded words (re-encoded and re-folded), a boundary parameter with odd
# spacing and quoting, a preamble and an epilogue, tabs, 8-bit text.
FORWARDED = (
    b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=school.example;\r\n"
    b"\ts=sel; h=from:to:subject:date:message-id;\r\n"
    b"\tbh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
    b"\tb=dGVzdHNpZ25hdHVyZQ==\r\n"
    b"From:   School Office <office@school.example>\r\n"
    b"To: jane.doe@mail.example\r\n"
    b"Subject: =?utf-8?q?Zeugnis_f=C3=BCr_das_Schuljahr_2025=2F2026_und_weitere_In?=\r\n"
    b" =?utf-8?q?formationen_zum_Gespr=C3=A4ch?=\r\n"
    b"Date: Mon, 2 Mar 2026 08:00:00 +0100\r\n"
    b"Message-ID: <report-1@school.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/alternative;\r\n"
    b"   boundary = \"inner  boundary\"\r\n"
    b"\r\n"
    b"This is a multi-part message in MIME format.\r\n"
    b"--inner  boundary\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    + "Grüße\tvon der Schule\r\n".encode()
    + b"--inner  boundary\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    + "<p>Grüße</p>\r\n".encode()
    + b"--inner  boundary--  \r\n"
    b"epilogue text\r\n"
)
SIMPLE = b"From:  a@x.example\r\nSubject: =?UTF-8?Q?s?=\r\n\r\nbody\r\n"


def outer(*parts: bytes, boundary: bytes = b"outer", nl: bytes = b"\r\n") -> bytes:
    head = (b"From: dr.rivera@riverside.example\r\nTo: jane.doe@mail.example\r\n"
            b"Subject: Fwd: report\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"" + boundary + b"\"\r\n\r\n")
    body = b"".join(b"--" + boundary + nl + p + nl for p in parts) + b"--" + boundary + b"--" + nl
    return head.replace(b"\r\n", nl) + body


def text_part(text: bytes = b"See the forwarded report.", nl: bytes = b"\r\n") -> bytes:
    return b"Content-Type: text/plain; charset=utf-8" + nl + nl + text


def eml_part(message: bytes, *headers: bytes, nl: bytes = b"\r\n") -> bytes:
    head = b"Content-Type: message/rfc822" + nl + b"".join(h + nl for h in headers)
    return head + nl + message


def attachments(raw: bytes) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(sealed_plaintext(raw))["attachments"]
    return found


def data(attachment: dict[str, Any]) -> bytes:
    return base64.b64decode(attachment["data"])


def test_forwarded_message_is_the_original_byte_for_byte() -> None:
    raw = outer(text_part(), eml_part(FORWARDED, b'Content-Disposition: attachment; '
                                                 b'filename="report.eml"'))
    (att,) = attachments(raw)
    assert att["name"] == "report.eml" and att["type"] == "message/rfc822"
    assert data(att) == FORWARDED
    assert att["size"] == len(FORWARDED)


@pytest.mark.parametrize("message", [FORWARDED, SIMPLE])
def test_rebuilding_would_have_changed_the_bytes(message: bytes) -> None:
    # Guards the tests here: the email package does not write these back as they were.
    parsed = BytesParser(policy=policy.default).parsebytes(message)
    assert parsed.as_bytes(policy=policy.SMTP) != message


@pytest.mark.parametrize("ending", [b"--inner  boundary--", b"--inner  boundary--\r\n\r\n",
                                    b"--inner  boundary--\r\nepilogue", b"--inner  boundary--\r\n"])
@pytest.mark.parametrize("last", [True, False])
def test_however_the_forwarded_message_ends(ending: bytes, last: bool) -> None:
    forwarded = FORWARDED[:FORWARDED.index(b"--inner  boundary--")] + ending
    parts = [text_part(), eml_part(forwarded)]
    (att,) = attachments(outer(*(parts if last else parts[::-1])))
    assert data(att) == forwarded


def test_bare_newline_line_ends_are_kept() -> None:
    forwarded = FORWARDED.replace(b"\r\n", b"\n")
    raw = outer(text_part(nl=b"\n"), eml_part(forwarded, nl=b"\n"), nl=b"\n")
    (att,) = attachments(raw)
    assert data(att) == forwarded


def test_several_forwarded_messages_each_exact() -> None:
    second = SIMPLE.replace(b"Subject:", b"X-Note:   second\r\n\tfolded\r\nSubject:")
    raw = outer(text_part(), eml_part(FORWARDED), b"Content-Type: application/pdf\r\n"
                b"Content-Disposition: attachment; filename=\"a.pdf\"\r\n\r\n%PDF-1.7",
                eml_part(second))
    found = attachments(raw)
    assert [a["type"] for a in found] == ["message/rfc822", "application/pdf", "message/rfc822"]
    assert data(found[0]) == FORWARDED and data(found[2]) == second
    assert data(found[1]) == b"%PDF-1.7"


def test_forwarded_message_nested_in_multiparts() -> None:
    alternative = (b"Content-Type: multipart/alternative; boundary=alt\r\n\r\n"
                   b"--alt\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
                   b"--alt\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--alt--")
    mixed = (b"Content-Type: multipart/mixed; boundary=\"in-mixed\"\r\n\r\n"
             b"--in-mixed\r\n" + eml_part(FORWARDED) + b"\r\n--in-mixed--\r\n")
    raw = outer(alternative, mixed)
    (att,) = attachments(raw)
    assert data(att) == FORWARDED


def test_forwarded_message_in_a_digest_without_part_headers() -> None:
    # In multipart/digest a part without Content-Type is message/rfc822.
    raw = outer(text_part(),
                b"Content-Type: multipart/digest; boundary=d\r\n\r\n"
                b"--d\r\n\r\n" + FORWARDED + b"\r\n--d\r\n\r\n" + SIMPLE + b"\r\n--d--")
    found = attachments(raw)
    assert [data(a) for a in found] == [FORWARDED, SIMPLE]


def test_a_message_that_is_itself_message_rfc822() -> None:
    raw = (b"From: dr.rivera@riverside.example\r\nTo: jane.doe@mail.example\r\n"
           b"Subject: Fwd\r\nMIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n"
           + FORWARDED)
    (att,) = attachments(raw)
    assert data(att) == FORWARDED


def test_boundary_text_inside_the_forwarded_message_does_not_mislead() -> None:
    # Lines that nearly are the outer delimiter, and the outer boundary as text
    # in the middle of a line.
    forwarded = (b"From:  a@x.example\r\nSubject: =?UTF-8?Q?s?=\r\n\r\n"
                 b"--outerx\r\n--outer-- not\r\ntext --outer\r\n --outer\r\nend\r\n")
    raw = outer(text_part(), eml_part(forwarded))
    (att,) = attachments(raw)
    assert data(att) == forwarded


def test_transport_padding_after_the_delimiters() -> None:
    raw = outer(text_part(), eml_part(FORWARDED)).replace(b"--outer\r\n", b"--outer \t\r\n")
    (att,) = attachments(raw)
    assert data(att) == FORWARDED


def test_found_bytes_that_parse_otherwise_are_not_used() -> None:
    # Bare CR line ends: the email package splits lines where the byte search
    # does not, so the attachment is rebuilt (as before), still the same message.
    raw = outer(text_part(), eml_part(SIMPLE)).replace(b"\r\n", b"\r")
    (att,) = attachments(raw)
    rebuilt = BytesParser(policy=policy.default).parsebytes(data(att))
    assert data(att) != SIMPLE.replace(b"\r\n", b"\r")
    assert rebuilt["Subject"] == "s" and rebuilt.get_content().strip() == "body"


def test_encoded_forwarded_message_is_rebuilt_as_before() -> None:
    # message/rfc822 may not be base64 (RFC 2046); a sender that does it anyway
    # gets what the email package made of it, as before.
    raw = outer(text_part(), eml_part(base64.b64encode(SIMPLE),
                                      b"Content-Transfer-Encoding: base64"))
    (att,) = attachments(raw)
    assert data(att) != base64.b64encode(SIMPLE)


def test_nesting_past_the_limit_is_rebuilt(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = outer(text_part(), b"Content-Type: multipart/mixed; boundary=n\r\n\r\n--n\r\n"
                + eml_part(SIMPLE) + b"\r\n--n--")
    assert data(attachments(raw)[0]) == SIMPLE
    monkeypatch.setattr(content, "MAX_NESTING", 1)
    rebuilt = data(attachments(raw)[0])
    assert rebuilt != SIMPLE
    assert BytesParser(policy=policy.default).parsebytes(rebuilt)["Subject"] == "s"


def test_many_near_delimiter_lines_stay_exact() -> None:
    # Crafted: a long text of lines that almost are the boundary. The search is
    # one pass over the bytes; the forwarded message after it is still exact.
    noise = b"--oute\r\n--outerr\r\n" * 20000
    raw = outer(text_part(noise), eml_part(FORWARDED))
    (att,) = attachments(raw)
    assert data(att) == FORWARDED


def test_missing_close_delimiter() -> None:
    # The last part runs to the end of the raw message, less its last line
    # break (which would belong to the missing delimiter), for the email
    # package and for the byte search alike.
    raw = outer(text_part(), eml_part(SIMPLE))
    raw = raw[:raw.rindex(b"\r\n--outer--")]
    assert raw.endswith(SIMPLE)
    (att,) = attachments(raw)
    assert data(att) == SIMPLE.removesuffix(b"\r\n")
    (att,) = attachments(raw.removesuffix(b"\r\n"))
    assert data(att) == SIMPLE.removesuffix(b"\r\n")
