"""Attachment names lose every invisible character (Unicode's
Default_Ignorable_Code_Point, format and control characters), and a run of
blanks is one space, so padding cannot hide the real extension."""

from __future__ import annotations

import email
import unicodedata
from datetime import UTC, datetime
from email import policy

import pytest

from securemail.portal.content import Attachment, _safe_name, build_reply

INVISIBLE = [
    "\u00ad", "\u034f", "\u061c", "\u115f", "\u1160", "\u17b4", "\u180b", "\u180e", "\u180f",
    "\u200b", "\u200d", "\u202e", "\u2060", "\u2066", "\u3164", "\ufe00", "\ufe0f", "\ufeff",
    "\uffa0", "\U0001bca0", "\U0001d173", "\U000e0001", "\U000e0041", "\U000e0100",
]


@pytest.mark.parametrize("char", INVISIBLE, ids=[f"U+{ord(c):04X}" for c in INVISIBLE])
def test_default_ignorable_characters_are_dropped(char: str) -> None:
    assert _safe_name(f"inv{char}oice.pdf", "fallback") == "invoice.pdf"


@pytest.mark.parametrize("blank", ["\u2800", "\u3000", "\u00a0", " ", "\u2003", "\u1680"])
def test_blank_padding_cannot_push_the_extension_away(blank: str) -> None:
    name = _safe_name("Lab results.pdf" + blank * 150 + ".exe", "fallback")
    assert name == "Lab results.pdf .exe"


def test_filler_padding_is_removed() -> None:
    assert _safe_name("Lab results.pdf" + "\u3164" * 150 + ".exe", "f") == "Lab results.pdf.exe"
    assert _safe_name("\u2800\u3164 \u034f", "fallback.bin") == "fallback.bin"


def test_ordinary_names_are_unchanged() -> None:
    for name in ("results.pdf", "Café notes (final).docx", "報告.pdf", "a b.txt"):
        assert _safe_name(name, "f") == unicodedata.normalize("NFC", name)


def test_reply_attachment_name_is_cleaned_too() -> None:
    raw = build_reply(from_address="secure@riverside.example", client="jane.doe@mail.example",
                      to="dr.rivera@riverside.example", subject="Re", body="see file",
                      in_reply_to="<a@b>", now=datetime.now(UTC),
                      attachment=Attachment("Lab results.pdf" + "\u2800" * 150 + ".exe",
                                            "application/pdf", b"MZ"))
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert [p.get_filename() for p in msg.iter_attachments()] == ["Lab results.pdf .exe"]
