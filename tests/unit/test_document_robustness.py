"""A review's findings on document reading: every fault is "unreadable" (never
a crash that defers the message for ever), crafted files stay cheap, and a
document can't be hidden by how it is packed."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemail.documents import Unreadable, document_text, is_document
from securemail.markup import html_text
from securemail.model import Action
from tests.document_makers import pdf_with_text
from tests.unit.test_document_text import PHI_TEXT, decision, docx, ooxml, para, plain_zip


def test_a_corrupt_deflate_stream_is_unreadable_not_a_crash() -> None:
    data = bytearray(plain_zip({"notes.txt": PHI_TEXT.encode() * 50}))
    start = data.find(b"notes.txt") + len(b"notes.txt")
    data[start:start + 8] = b"\xff" * 8  # the deflate stream of the first entry
    with pytest.raises(Unreadable):
        document_text(bytes(data), 100_000)


def test_a_zip_of_an_unsupported_version_is_unreadable() -> None:
    data = bytearray(plain_zip({"notes.txt": b"x"}))
    central = data.find(b"PK\x01\x02")
    data[central + 6:central + 8] = (64).to_bytes(2, "little")  # "version 6.4 needed"
    local = data.find(b"PK\x03\x04")
    data[local + 4:local + 6] = (64).to_bytes(2, "little")
    with pytest.raises(Unreadable):
        document_text(bytes(data), 100_000)


@pytest.mark.parametrize("xml", ["<" * 150_000, "<w:br " * 30_000, "<sheet " * 30_000])
def test_crafted_xml_is_read_in_linear_time(xml: str) -> None:
    data = ooxml({"word/document.xml": xml})
    started = time.process_time()
    document_text(data, 10_000_000)
    assert time.process_time() - started < 2.0


@pytest.mark.parametrize("markup", ["<!--" * 20_000, "<script" * 20_000, "<" * 200_000,
                                    "<span " * 30_000])
def test_crafted_html_is_read_in_linear_time(markup: str) -> None:
    started = time.process_time()
    html_text(markup)
    assert time.process_time() - started < 2.0


def test_one_budget_covers_every_file_in_an_archive() -> None:
    big = docx(para("x" * 1_000_000))  # ~1 MB of XML, a few KB compressed
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(120):
            z.writestr(f"copy{i}.docx", big)
    started = time.process_time()
    with pytest.raises(Unreadable):
        document_text(out.getvalue(), 10**9)
    assert time.process_time() - started < 20


def test_a_zip_whose_first_file_is_a_pdf_is_read_as_a_zip(config_path: Path) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:  # the PDF's bytes in the clear
        z.writestr("cover.pdf", pdf_with_text("Cover page"))
        z.writestr("notes.txt", PHI_TEXT.encode())
    data = out.getvalue()
    assert b"%PDF-" in data[:1024]
    action, found, _ = decision(config_path, data, "files.zip", "application/zip")
    assert action is Action.BLOCK and "phi-client-name" in found


def test_a_file_named_mimetype_does_not_make_a_zip_an_office_file(config_path: Path) -> None:
    data = plain_zip({"mimetype": b"text/plain", "notes.txt": PHI_TEXT.encode()})
    action, found, _ = decision(config_path, data, "files.zip", "application/zip")
    assert action is Action.BLOCK and "phi-client-name" in found


def test_excel_binary_and_xps_parts_are_read() -> None:
    xlsb = ooxml({"xl/sharedStrings.bin": "Jane Roe".encode("utf-16-le") + b"\x00\x07"})
    text = document_text(xlsb, 100_000)
    assert text is not None and "Jane Roe" in text
    xps = ooxml({"Documents/1/Pages/1.fpage":
                 '<FixedPage><Glyphs UnicodeString="Jane Roe, anxiety" /></FixedPage>'})
    text = document_text(xps, 100_000)
    assert text is not None and "Jane Roe, anxiety" in text


def test_an_rtf_non_breaking_space_is_a_space() -> None:
    text = document_text(b"{\\rtf1 Client: Jane\\~Roe}", 100_000)
    assert text is not None and "Jane Roe" in text


@pytest.mark.parametrize(("markup", "shown"), [
    ("Patient: <!-->Jane Roe<!-- x -->", "Jane Roe"),
    ("Patient: <!--->Jane Roe", "Jane Roe"),
    ("<!-- a --!>Jane Roe", "Jane Roe"),
    ("Jane <!-- never closed Roe", "Roe"),   # read rather than guessed away
])
def test_html_comments_end_where_browsers_end_them(markup: str, shown: str) -> None:
    assert shown in html_text(markup)


def test_a_subject_mixing_raw_utf8_and_an_encoded_word_is_decoded() -> None:
    from securemail.parse import decode_header_text

    assert decode_header_text("Über =?utf-8?b?SmFuZSBSb2U=?=") == "Über Jane Roe"


def test_rtf_object_results_are_read_and_an_unclosed_hidden_group_is_unreadable() -> None:
    text = document_text(b"{\\rtf1 {\\object{\\*\\objdata 0102}{\\result Patient: Jane Roe}}}",
                         100_000)
    assert text is not None and "Jane Roe" in text
    with pytest.raises(Unreadable):
        document_text(b"{\\rtf1 {\\colortbl;\\red0 Jane Roe, F32.1", 100_000)


@pytest.mark.parametrize("markup", ['Ja<span title="a>b">ne Roe',
                                    "<style-note>Jane Roe</style-note><style></style>"])
def test_quoted_angle_brackets_and_custom_elements_do_not_hide_words(markup: str) -> None:
    assert "Jane Roe" in html_text(markup)



# Text that is no document's start (lower case: not "BZh", "PK", "Rar!", ...).
_TEXT = st.text("abcdefghijklmnopqrstuvwxyz0123456789 .,\n", max_size=200)


@given(_TEXT, st.integers(min_value=0, max_value=9000))
def test_a_pdf_header_anywhere_in_the_first_8_kib_makes_a_document(lead: str, pad: int) -> None:
    """As PDF readers find it after junk (a gateway's banner, a BOM); past
    8 KiB it is text that mentions PDF."""
    before = (lead + "x" * pad).encode()
    assert is_document(before + b"%PDF-1.7\n") == (len(before) + len(b"%PDF-") <= 8192)


@pytest.mark.parametrize(("before", "document"), [(8187, True), (8188, False)])
def test_the_pdf_header_window_ends_at_8_kib(before: int, document: bool) -> None:
    assert is_document(b"x" * before + b"%PDF-1.7\n") is document


@given(st.text(" \t\r\n\x0b\x0c", max_size=9000), _TEXT)
def test_rtf_after_any_whitespace_is_a_document_and_after_text_is_not(space: str,
                                                                      lead: str) -> None:
    assert is_document(space.encode() + b"{\\rtf1\\ansi hi}")
    if lead.strip():
        assert not is_document(lead.encode() + b"{\\rtf1\\ansi hi}")
