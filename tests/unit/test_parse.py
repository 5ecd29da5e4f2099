"""Bounded, strict parsing: limits and ambiguous addresses block, never guess."""

from __future__ import annotations

import pytest

from securemail.config import LimitSettings
from securemail.directory import AddressError
from securemail.parse import parse_address_list, parse_message, strip_header

LIMITS = LimitSettings()


def test_keeps_original_bytes() -> None:
    raw = b"From: a@b.example\r\nTo: c@d.example\r\nSubject: x\r\n\r\nbody \xff\r\n"
    view = parse_message(raw, LIMITS)
    assert view.raw is raw and view.malformed is None
    assert view.addresses("to") == ("c@d.example",)


@pytest.mark.parametrize("value", [
    "jane@mail.example)<collector@evil.example>",
    "jane@mail.example <collector@evil.example>",
    '"jane@mail.example" <collector@evil.example',
    "alice@example.org)<bob@evil.example>, carol@x.example",
    "jane@mail.example\r\n <evil@evil.example>,\r\nBcc: x@evil.example",
    "=?utf-8?q?jane=40mail=2Eexample?=",
    "jane@@mail.example",
    "jane@[127.0.0.1]",
    "<>",
    "jane",
    "x <0@>",  # crashes the stdlib parser (IndexError); found by hypothesis
])
def test_ambiguous_or_broken_addresses_are_rejected(value: str) -> None:
    with pytest.raises(AddressError):
        parse_address_list(value)


@pytest.mark.parametrize(("value", "expected"), [
    ("Jane Roe <Jane@Mail.Example>", ["jane@mail.example"]),
    ('"Roe, Jane" <jane@mail.example>, sam@mail.example', ["jane@mail.example",
                                                           "sam@mail.example"]),
    ("=?utf-8?q?J=C3=A9r=C3=B4me?= <j@x.example>", ["j@x.example"]),
    ("undisclosed-recipients:;", []),
    ("team: a@x.example, b@x.example;", ["a@x.example", "b@x.example"]),
    ("Kim <kim@bücher.example>", ["kim@xn--bcher-kva.example"]),
    ("kim@XN--BCHER-KVA.example", ["kim@xn--bcher-kva.example"]),
])
def test_plain_addresses_parse(value: str, expected: list[str]) -> None:
    assert parse_address_list(value) == expected


def test_cve_2023_27043_message_is_malformed() -> None:
    raw = (b"From: dr@riverside.example\r\nTo: jane@mail.example)<collector@evil.example>\r\n"
           b"Subject: x\r\n\r\nhi\r\n")
    view = parse_message(raw, LIMITS)
    assert view.malformed == "malformed-address"
    assert "To" in view.malformed_detail


def test_two_to_headers_are_ambiguous() -> None:
    raw = b"From: a@b.example\r\nTo: c@d.example\r\nTo: e@f.example\r\n\r\nx"
    assert parse_message(raw, LIMITS).malformed == "malformed-address"


def test_size_limit() -> None:
    raw = b"From: a@b.example\r\n\r\n" + b"x" * 2000
    view = parse_message(raw, LimitSettings(max_message_bytes=1000))
    assert view.malformed == "malformed-message"
    assert "1000 bytes" in view.malformed_detail


def test_header_limit() -> None:
    raw = b"From: a@b.example\r\nX-Junk: " + b"a" * 5000 + b"\r\n\r\nbody"
    assert parse_message(raw, LimitSettings(max_header_bytes=1024)).malformed == \
        "malformed-message"


def _nested(depth: int) -> bytes:
    head = b"From: a@b.example\r\nMIME-Version: 1.0\r\n"
    body = b"Content-Type: text/plain\r\n\r\nleaf\r\n"
    for i in range(depth):
        b = f"b{i}".encode()
        body = (b'Content-Type: multipart/mixed; boundary="' + b + b'"\r\n\r\n--' + b + b"\r\n"
                + body + b"\r\n--" + b + b"--\r\n")
    return head + body


def test_mime_depth_limit() -> None:
    assert parse_message(_nested(5), LimitSettings(max_mime_depth=10)).malformed is None
    view = parse_message(_nested(12), LimitSettings(max_mime_depth=10))
    assert view.malformed == "malformed-message" and "nesting" in view.malformed_detail


def test_part_count_limit() -> None:
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(30))
    raw = (b'From: a@b.example\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; '
           b'boundary="b"\r\n\r\n' + parts + b"--b--\r\n")
    assert parse_message(raw, LimitSettings(max_parts=40)).malformed is None
    assert parse_message(raw, LimitSettings(max_parts=20)).malformed == "malformed-message"


def test_strip_header_removes_only_that_header() -> None:
    raw = (b"From: a@b.example\r\nX-Securemail-Restricted: psychotherapy-notes\r\n"
           b"  continued\r\nSubject: x\r\n\r\nX-Securemail-Restricted: in body stays\r\n")
    out = strip_header(raw, "X-Securemail-Restricted")
    assert out == (b"From: a@b.example\r\nSubject: x\r\n\r\n"
                   b"X-Securemail-Restricted: in body stays\r\n")


def test_strip_header_when_it_is_the_last_header() -> None:
    raw = b"From: a@b.example\r\nX-Securemail-Restricted: part2\r\n\r\nbody\r\n"
    assert strip_header(raw, "x-securemail-restricted") == b"From: a@b.example\r\n\r\nbody\r\n"


def _same_as_stdlib(raw: bytes) -> None:
    import email

    from securemail.parse import HEADER_END, _parse_mime

    ours, stdlib = _parse_mime(raw, HEADER_END.search(raw)), email.message_from_bytes(raw)
    try:
        expected = stdlib.as_bytes()
    except UnicodeError:  # the stdlib generator cannot write some 8-bit multiparts back
        expected = None
    if expected is not None:
        assert ours.as_bytes() == expected
    assert ours.items() == stdlib.items()
    assert ours.is_multipart() == stdlib.is_multipart()
    if not stdlib.is_multipart():
        assert ours.get_payload(decode=True) == stdlib.get_payload(decode=True)


def test_single_part_fast_path_matches_the_stdlib_parser_on_cpython_samples() -> None:
    from tests.unit.test_corpus import CORPUS, CPYTHON_DATA

    files = [*CPYTHON_DATA.glob("msg_*.txt"), *CORPUS.glob("*.eml")]
    assert files
    for f in files:
        _same_as_stdlib(f.read_bytes())


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["text/plain", "text/html", "application/pdf", "multipart/mixed",
                        "message/rfc822", "garbage"]),
       st.sampled_from(["7bit", "base64", "quoted-printable", "8bit", ""]),
       st.binary(max_size=400), st.sampled_from([b"\r\n", b"\n"]))
def test_fast_path_matches_the_stdlib_parser(ctype: str, cte: str, body: bytes,
                                             eol: bytes) -> None:
    head = (b"From: a@b.example" + eol + b"Content-Type: " + ctype.encode()
            + b'; boundary="b"' + eol)
    if cte:
        head += b"Content-Transfer-Encoding: " + cte.encode() + eol
    _same_as_stdlib(head + eol + body)


def test_an_encoded_word_inside_an_address_says_how_to_fix_it() -> None:
    """Python's default (SMTP) policy writes a non-ASCII address as encoded words,
    which RFC 2047 forbids there: the message is refused, with the fix named,
    and its Message-ID is still reported."""
    from email.message import EmailMessage

    from securemail.config import LimitSettings
    from securemail.parse import parse_message

    msg = EmailMessage()
    msg["From"] = "dr@riverside.example"
    msg["To"] = "jürgen@bücher.example"
    msg["Message-ID"] = "<enc-1@riverside.example>"
    msg.set_content("hello")
    view = parse_message(msg.as_bytes(), LimitSettings())
    assert view.malformed == "malformed-address"
    assert "email.policy.SMTPUTF8" in view.malformed_detail
    assert view.message_id == "<enc-1@riverside.example>"
