"""Completing a submitted message's headers (RFC 6409 section 8)."""

from __future__ import annotations

import datetime as dt

from securemail.submission_headers import complete_headers

NOW = dt.datetime(2026, 11, 29, 10, 0, tzinfo=dt.UTC)
DIGEST = "ab" * 32


def test_a_complete_message_is_left_exactly_as_it_is() -> None:
    raw = (b"From: a@x.example\r\ndate: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
           b"Message-Id: <1@x.example>\r\n\r\nDate: in the body\r\n")
    assert complete_headers(raw, DIGEST, "relay.example", NOW) is raw


def test_missing_headers_are_added_and_the_id_depends_only_on_the_client_bytes() -> None:
    raw = b"From: a@x.example\r\nSubject: s\r\n\r\nMessage-ID: in the body is not a header\r\n"
    first = complete_headers(raw, DIGEST, "relay.example", NOW)
    later = complete_headers(raw, DIGEST, "relay.example", NOW + dt.timedelta(minutes=5))
    assert first == (b"Date: Sun, 29 Nov 2026 10:00:00 +0000\r\n"
                     b"Message-ID: <" + DIGEST[:32].encode() + b"@relay.example>\r\n" + raw)
    assert later.split(b"\r\n")[1] == first.split(b"\r\n")[1]  # a retry: the same id


def test_return_path_from_the_originator_is_removed_with_its_folded_lines() -> None:
    raw = (b"Return-Path:\r\n <b@elsewhere.example>\r\nFrom: a@x.example\r\n"
           b"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@x.example>\r\n\r\nhi\r\n")
    assert complete_headers(raw, DIGEST, "relay.example", NOW) == raw.split(b"\r\n", 2)[2]
