"""RFC 9788 header protection: the body survives byte for byte; the outside says nothing."""

from __future__ import annotations

import email.policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemail.protect import crlf, protect, split_header, wrap_base64

SUBJECTS = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=4,
                   max_size=60).filter(lambda s: "..." not in s)
BODIES = st.binary(max_size=2000)


def message(subject: str, body: bytes, sep: bytes = b"\r\n") -> bytes:
    head = [b"From: Dr. Reed <reed@riverside.example>", b"To: jane@mail.example",
            b"Cc: =?utf-8?q?Zo=C3=AB?= <zoe@mail.example>",
            b"Subject: " + subject.encode(), b"Bcc: hidden@mail.example",
            b"X-Client-Id: c-1001", b"Received: from app (127.0.0.1)",
            b"MIME-Version: 1.0", b"Content-Type: text/plain;", b' charset="utf-8"',
            b"Content-Transfer-Encoding: 8bit"]
    return sep.join(head) + sep + sep + body


@given(SUBJECTS, BODIES)
def test_inner_body_is_the_original_and_outer_hides_subject(subject: str, body: bytes) -> None:
    inner, outer = protect(message(subject, body))
    header, _, inner_body = inner.partition(b"\r\n\r\n")
    assert inner_body == crlf(body)
    # The outer headers carry a placeholder Subject; the real one is only inside.
    # (A bare substring test would trip on a subject like "rive" in the domain.)
    outer_subjects = [line for line in outer.split(b"\r\n") if line.startswith(b"Subject:")]
    assert outer_subjects == [b"Subject: ..."]
    if len(subject.strip()) >= 8:  # long enough not to occur in the fixed headers by chance
        assert subject.encode() not in outer
    assert b"X-Client-Id" not in outer and b"hidden@" not in outer and b"hidden@" not in inner
    assert b"Received:" not in inner
    assert b"Subject: " + subject.encode() + b"\r\n" in header + b"\r\n"
    assert b"\n" not in (outer + header).replace(b"\r\n", b"")


@given(SUBJECTS, BODIES)
def test_lf_and_crlf_input_give_the_same_entity(subject: str, body: bytes) -> None:
    unix_body = body.replace(b"\r", b"")
    assert protect(message(subject, unix_body, b"\n")) == \
        protect(message(subject, crlf(unix_body)))


def test_entity_headers_parse_as_protected() -> None:
    inner, outer = protect(message("Your diagnosis", "Zoë\r\n.\r\n".encode()))
    entity = email.message_from_bytes(inner, policy=email.policy.default)
    assert entity["Subject"] == "Your diagnosis"
    assert entity["Cc"] == "Zoë <zoe@mail.example>"
    assert entity.get_content_type() == "text/plain"
    assert entity.get_param("charset") == "utf-8"
    assert entity.get_param("hp") == "cipher"
    assert entity.get_param("protected-headers") == "v1"
    assert entity.get_all("HP-Outer") == [
        "From: Dr. Reed <reed@riverside.example>", "To: jane@mail.example",
        "Cc: Zoë <zoe@mail.example>", "Subject: ..."]
    outside = email.message_from_bytes(outer + b"\r\n", policy=email.policy.default)
    assert outside["Subject"] == "..."
    assert sorted(outside.keys()) == ["Cc", "From", "Subject", "To"]


def test_message_without_content_type_gets_text_plain() -> None:
    inner, _ = protect(b"Subject: hi\r\n\r\nbonjour \xc3\xa9\r\n")
    entity = email.message_from_bytes(inner, policy=email.policy.default)
    assert entity.get_content_type() == "text/plain"
    assert entity.get_param("charset") == "utf-8"


@pytest.mark.parametrize("bad", [b" folded first\r\n\r\nx", b"no colon here\r\n\r\nx",
                                 b"Bad Name: x\r\n\r\nx"])
def test_malformed_header_is_refused(bad: bytes) -> None:
    with pytest.raises(ValueError):
        split_header(bad)


@given(st.binary(max_size=500), st.integers(min_value=4, max_value=80))
def test_wrap_base64_round_trips(data: bytes, width: int) -> None:
    import base64

    wrapped = wrap_base64(base64.b64encode(data), width)
    lines = wrapped.split(b"\r\n")
    assert lines[-1] == b"" and all(0 < len(line) <= width for line in lines[:-1])
    assert base64.b64decode(b"".join(lines)) == data


@pytest.mark.parametrize(("body", "label"), [
    (b"Gruesse\r\n", b"Content-Type: text/plain; charset=us-ascii"),
    ("Grüße, Frau Müller\r\n".encode(), b"Content-Type: text/plain; charset=utf-8"),
    ("Grüße, Frau Müller\r\n".encode("latin-1"), b"Content-Type: text/plain;\r\n hp="),
])
def test_a_body_without_content_type_is_labelled_only_as_its_bytes_prove(
        body: bytes, label: bytes) -> None:
    raw = b"From: reed@riverside.example\r\nTo: jane@mail.example\r\nSubject: x\r\n\r\n" + body
    inner, _ = protect(raw)
    assert inner.startswith(label)  # Latin-1 is not called utf-8: no charset, reader guesses
    assert inner.endswith(body)
