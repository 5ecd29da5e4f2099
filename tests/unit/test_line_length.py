"""Body lines past 998 octets are re-encoded before signing; nothing else changes."""

from __future__ import annotations

import email
import email.policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemail.line_length import has_long_lines, wrap_long_lines

HEAD = (b"From: dr@riverside.example\r\nTo: x@other.example\r\nSubject: t\r\n"
        b"MIME-Version: 1.0\r\n")


def leaves(data: bytes) -> list[tuple[str, bytes]]:
    message = email.message_from_bytes(data, policy=email.policy.default)
    return [(p.get_content_type(), p.get_payload(decode=True)) for p in message.walk()
            if not p.is_multipart()]


def test_a_message_without_long_lines_is_left_byte_for_byte() -> None:
    raw = HEAD + b"Content-Type: text/plain\r\n\r\n" + b"short line\r\n" * 500
    assert wrap_long_lines(raw) is raw


def test_each_part_with_long_lines_is_re_encoded_and_reads_the_same() -> None:
    text = ("Grüße, " + "a" * 3000 + " \r\nnext line\t\r\n").encode()
    blob = bytes(range(256)) * 20  # one "line" of binary data, 8bit-labelled
    raw = (HEAD + b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\npreamble\r\n--b1\r\n'
           b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           + text + b"--b1\r\nContent-Type: text/plain\r\n\r\nshort\r\n--b1\r\n"
           b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
           + blob.replace(b"\n", b"").replace(b"\r", b"") + b"\r\n--b1--\r\nepilogue\r\n")
    out = wrap_long_lines(raw)
    assert not has_long_lines(out)
    assert max(len(line) for line in out.split(b"\r\n")) <= 998
    assert leaves(out) == leaves(raw)
    assert out.count(b"quoted-printable") == 1 and out.count(b"base64") == 1
    assert b"\r\nshort\r\n" in out and b"preamble" in out and b"epilogue" in out
    assert out.startswith(HEAD)  # headers as they came


def test_a_message_without_mime_version_gets_one_with_its_encoding() -> None:
    raw = (b"From: dr@riverside.example\r\nTo: x@other.example\r\nSubject: t\r\n\r\n"
           + b"y" * 1500 + b"\r\n")
    out = wrap_long_lines(raw)
    assert b"\r\nMIME-Version: 1.0\r\n" in out.split(b"\r\n\r\n")[0] + b"\r\n"
    assert b"quoted-printable" in out and not has_long_lines(out)


@pytest.mark.parametrize("inner", [
    b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256;'
    b' boundary="s"\r\n\r\n--s\r\nContent-Type:text/plain\r\n\r\nsigned\r\n--s\r\n'
    b"Content-Type: application/pkcs7-signature\r\n\r\nAAAA\r\n--s--\r\n",
    b"Content-Type: message/rfc822\r\n\r\nDKIM-Signature: v=1\r\nSubject:x\r\n\r\nhi\r\n",
])
def test_a_nested_signed_part_or_attached_message_keeps_every_byte(inner: bytes) -> None:
    # The whole message is written anew: "Content-Type:text/plain" inside the
    # signed part became "Content-Type: text/plain" and its signature failed.
    raw = (HEAD + b'Content-Type: multipart/mixed; boundary="m"\r\n\r\n--m\r\n'
           b"Content-Type: text/html\r\n\r\n<p>" + b"z" * 2000 + b"</p>\r\n--m\r\n"
           + inner + b"--m--\r\n")
    assert wrap_long_lines(raw) == raw


def test_a_signed_part_is_left_alone() -> None:
    raw = (HEAD + b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";'
           b' micalg=sha-256; boundary="s"\r\n\r\n--s\r\nContent-Type: text/plain\r\n\r\n'
           + b"x" * 2000 + b"\r\n--s\r\nContent-Type: application/pkcs7-signature\r\n\r\n"
           b"AAAA\r\n--s--\r\n")
    assert wrap_long_lines(raw) == raw


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                               blacklist_characters="\r\n"),
                        max_size=1500), min_size=1, max_size=5))
def test_any_text_reads_the_same_after_re_encoding(lines: list[str]) -> None:
    body = "\r\n".join(lines).encode() + b"\r\n"
    raw = HEAD + b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit" \
        b"\r\n\r\n" + body
    out = wrap_long_lines(raw)
    assert leaves(out) == leaves(raw)
    assert not has_long_lines(out)
