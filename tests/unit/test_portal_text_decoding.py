"""The portal shows text as a mail program does: iso-8859-1, latin1 and
us-ascii labels read as windows-1252 (WHATWG Encoding), 8-bit bytes under a
missing, ASCII or unknown label read as UTF-8 when they are UTF-8 (else
windows-1252), never U+FFFD when a sensible reading exists. For body text, the
Subject, the names in From/To/Cc and attachment names."""

from __future__ import annotations

import json
from typing import Any

import pytest

from securemail.portal.content import sealed_plaintext

QUOTED = "“see you soon” – fee €20"
GREETING = "Grüße aus der Praxis – bis bald"


def sealed(raw: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(sealed_plaintext(raw))
    return doc


def message(body: bytes, *headers: bytes, subject: bytes = b"s") -> bytes:
    head = b"From: dr.rivera@riverside.example\r\nTo: jane.doe@mail.example\r\n"
    head += b"Subject: " + subject + b"\r\n" + b"".join(h + b"\r\n" for h in headers)
    return head + b"\r\n" + body


def shown_text(doc: dict[str, Any]) -> str:
    texts = [p["content"] for p in doc["parts"]]
    assert len(texts) == 1 and doc["text"] == texts[0]
    text: str = texts[0]
    return text


# -- Defect 1: windows-1252 text labelled iso-8859-1 -------------------------------

def test_tester_report_subject_and_body_keep_quotes_dash_and_euro() -> None:
    raw = message(b"She said =93see you soon=94 =96 fee =8020\r\n",
                  b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=iso-8859-1",
                  b"Content-Transfer-Encoding: quoted-printable",
                  subject=b"=?iso-8859-1?Q?=93Quote=94_=80?=")
    doc = sealed(raw)
    assert doc["subject"] == "“Quote” €"
    assert shown_text(doc) == f"She said {QUOTED}\n"


@pytest.mark.parametrize("label", ["iso-8859-1", "ISO-8859-1", "latin1", "l1", "iso_8859-1",
                                   "cp819", "windows-1252", "iso88591", "x-cp1252",
                                   '"iso-8859-1"'])
def test_latin1_labels_are_read_as_windows_1252(label: str) -> None:
    body = QUOTED.encode("cp1252") + b"\r\n"
    raw = message(body, b"Content-Type: text/plain; charset=" + label.encode())
    assert shown_text(sealed(raw)) == QUOTED + "\n"


def test_html_body_labelled_latin1_keeps_windows_1252_characters() -> None:
    body = b"<p>" + QUOTED.encode("cp1252") + b"</p>\r\n"
    raw = message(body, b"Content-Type: text/html; charset=iso-8859-1")
    doc = sealed(raw)
    assert doc["html"] == f"<p>{QUOTED}</p>\n"
    assert doc["parts"] == [{"type": "text/html", "content": f"<p>{QUOTED}</p>\n"}]


def test_latin1_label_with_base64_body() -> None:
    import base64

    body = base64.b64encode(QUOTED.encode("cp1252")) + b"\r\n"
    raw = message(body, b"Content-Type: text/plain; charset=iso-8859-1",
                  b"Content-Transfer-Encoding: base64")
    assert shown_text(sealed(raw)) == QUOTED


def test_bytes_windows_1252_leaves_undefined_are_c1_not_replacement() -> None:
    # 0x81, 0x8D, 0x8F, 0x90, 0x9D have no windows-1252 character: WHATWG reads
    # them as the C1 control of that value; nothing fails.
    raw = message(b"a\x81b\x9dc\x80\r\n", b"Content-Type: text/plain; charset=iso-8859-1")
    assert shown_text(sealed(raw)) == "a\x81b\x9dc€\n"


@pytest.mark.parametrize("subject", [
    b"=?iso-8859-1?Q?=93Quote=94_=80?=",
    b"=?ISO-8859-1?q?=93Quote=94?= =?iso-8859-1?q?_=80?=",
    b"=?iso-8859-1?B?k1F1b3RllCCA?=",
    b"=?latin1?Q?=93Quote=94_=80?=",
    b"=?us-ascii?Q?=93Quote=94_=80?=",
    b"=?iso-8859-1*en?Q?=93Quote=94_=80?=",
])
def test_encoded_words_in_latin1_and_ascii_labels_are_windows_1252(subject: bytes) -> None:
    assert sealed(message(b"x\r\n", subject=subject))["subject"] == "“Quote” €"


def test_subject_around_the_words_and_other_charsets_is_unchanged() -> None:
    # (RFC 2047: the space between two adjacent encoded words is not text.)
    subject = (b"Re: =?iso-8859-1?q?=93Quote=94?= and =?utf-8?q?caf=C3=A9?= "
               b"=?koi8-r?b?8NLJ18XU?= =?iso-8859-1?q?_=80?= end")
    assert sealed(message(b"x\r\n", subject=subject))["subject"] == \
        "Re: “Quote” and caféПривет € end"


def test_display_names_in_from_to_and_cc_are_windows_1252() -> None:
    raw = (b"From: =?iso-8859-1?q?Dr_=93Ana=94_Rivera?= <dr.rivera@riverside.example>\r\n"
           b"To: =?us-ascii?q?Jane_=96_Doe?= <jane.doe@mail.example>\r\n"
           b"Cc: =?iso-8859-1?q?Andr=E9?= <andre@mail.example>, plain@mail.example\r\n"
           b"Subject: s\r\n\r\nx\r\n")
    doc = sealed(raw)
    assert doc["from"] == "Dr “Ana” Rivera <dr.rivera@riverside.example>"
    assert doc["to"] == "Jane – Doe <jane.doe@mail.example>"
    assert doc["cc"] == "André <andre@mail.example>, plain@mail.example"


@pytest.mark.parametrize("disposition", [
    b"attachment; filename*=iso-8859-1''%93Befund%94%20%80.pdf",
    b"attachment; filename*0*=iso-8859-1''%93Befund; filename*1*=%94%20%80.pdf",
    b'attachment; filename="=?iso-8859-1?q?=93Befund=94_=80.pdf?="',
    b'attachment; filename="\x93Befund\x94 \x80.pdf"',
])
def test_attachment_names_are_windows_1252(disposition: bytes) -> None:
    raw = (b"From: a@riverside.example\r\nTo: b@mail.example\r\nSubject: s\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
           b"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: " + disposition
           + b"\r\n\r\n%PDF\r\n--b--\r\n")
    assert [a["name"] for a in sealed(raw)["attachments"]] == ["“Befund” €.pdf"]


@pytest.mark.parametrize(("ctype", "shown"), [
    (b'application/pdf; name="=?iso-8859-1?q?=93Befund=94_=80.pdf?="', "“Befund” €.pdf"),
    (b"application/pdf; name*=us-ascii''%93Befund%94.pdf", "“Befund”.pdf"),
    (b"application/pdf; name*=utf-8''%E2%80%9CBefund%E2%80%9D.pdf", "“Befund”.pdf"),
    (b'application/pdf; name="Befund.pdf"', "Befund.pdf"),
])
def test_attachment_name_from_content_type(ctype: bytes, shown: str) -> None:
    raw = (b"From: a@riverside.example\r\nTo: b@mail.example\r\nSubject: s\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
           b"--b\r\nContent-Type: " + ctype + b"\r\n\r\n%PDF\r\n--b--\r\n")
    assert [a["name"] for a in sealed(raw)["attachments"]] == [shown]


# -- Defect 2: UTF-8 under no label or an ASCII label ---------------------------------

@pytest.mark.parametrize("headers", [
    (),
    (b"Content-Type: text/plain",),
    (b"MIME-Version: 1.0", b"Content-Type: text/plain; charset=us-ascii"),
    (b"Content-Type: text/plain; charset=\"US-ASCII\"",),
    (b"Content-Type: text/plain; charset=ascii", b"Content-Transfer-Encoding: 8bit"),
])
def test_utf8_body_without_a_usable_label_is_read_as_utf8(headers: tuple[bytes, ...]) -> None:
    raw = message(GREETING.encode("utf-8") + b"\r\n", *headers)
    text = shown_text(sealed(raw))
    assert text == GREETING + "\n"
    assert "\ufffd" not in text


def test_windows_1252_body_without_a_label_is_read_as_windows_1252() -> None:
    raw = message(GREETING.encode("cp1252") + b"\r\n")
    assert shown_text(sealed(raw)) == GREETING + "\n"


@pytest.mark.parametrize(("label", "encoding"), [
    (b"x-unknown", "utf-8"),
    (b"x-unknown", "cp1252"),
    (b"unknown-8bit", "utf-8"),
    (b"base64", "utf-8"),         # a Python codec, not a character set
    (b"unicode-escape", "utf-8"),
    (b"x-mac-roman", "mac-roman"),  # WHATWG's name; Python knows "mac-roman"
    (b"macintosh", "mac-roman"),
    (b"koi8-r", "koi8-r"),
])
def test_unknown_labels_are_guessed_and_known_ones_used(label: bytes, encoding: str) -> None:
    text = "Привет" if encoding == "koi8-r" else GREETING
    raw = message(text.encode(encoding) + b"\r\n", b"Content-Type: text/plain; charset=" + label)
    assert shown_text(sealed(raw)) == text + "\n"


def test_a_utf8_label_is_honoured() -> None:
    raw = message(GREETING.encode("utf-8") + b"\r\n", b"Content-Type: text/plain; charset=utf-8")
    assert shown_text(sealed(raw)) == GREETING + "\n"


@pytest.mark.parametrize(("subject", "shown"), [
    ("Grüße – bis bald".encode(), "Grüße – bis bald"),              # SMTPUTF8
    ("Grüße – bis bald".encode("cp1252"), "Grüße – bis bald"),      # 8-bit, not UTF-8
    (b"=?x-unknown?q?Gr=C3=BC=C3?= =?x-unknown?q?=9Fe?=", "Grüße"),  # split character
    (b"=?us-ascii?q?Gr=C3=BC=C3=9Fe?=", "Grüße"),
    (b"=?unknown-8bit?b?R3L8334=?=", "Grüß~"),
])
def test_subject_bytes_are_read_as_utf8_else_windows_1252(subject: bytes, shown: str) -> None:
    assert sealed(message(b"x\r\n", subject=subject))["subject"] == shown


def test_sealed_document_is_valid_utf8_json_for_any_label() -> None:
    # Nothing undecodable (lone surrogates) may reach the JSON.
    raw = message(b"\xff\xfe\x81\r\n", b"Content-Type: text/plain; charset=x-whatever",
                  subject=b"=?x-whatever?q?=FF=81?= \xff")
    doc = sealed(raw)
    assert doc["subject"] == "ÿ\x81 ÿ"
    assert shown_text(doc) == "ÿþ\x81\n"
