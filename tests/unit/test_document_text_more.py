"""Documents as practices really send them (from a trial with ~180 documents made
by python-docx, openpyxl, reportlab, LibreOffice, chromium, zip and tar): each
case here was delivered in clear to an outsider before."""

from __future__ import annotations

import base64
import gzip
import io
import tarfile
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest

from securemail.documents import Unreadable, document_text
from securemail.model import Action
from tests.conftest import ConfigFactory
from tests.document_makers import pdf_with_text
from tests.unit.policy_helpers import verdict_for
from tests.unit.test_document_text import (
    OUTSIDER,
    PHI_TEXT,
    SENDER,
    decision,
    docx,
    ole2,
    ooxml,
    para,
    plain_zip,
)


def blocked_with(config: Path, data: bytes, filename: str, ctype: str,
                 *signals: str) -> None:
    action, found, _ = decision(config, data, filename, ctype)
    assert action is Action.BLOCK, found
    assert set(signals) <= set(found), found


@pytest.mark.parametrize(("ctype", "filename"), [
    ("text/plain", "letter.txt"), ("text/csv", "export.csv"), ("text/html", "page.html"),
    ("application/xml", "data.xml"), ("application/octet-stream", "notes.txt")])
def test_a_document_labelled_as_text_is_read_as_a_document(
        config_path: Path, ctype: str, filename: str) -> None:
    blocked_with(config_path, pdf_with_text(PHI_TEXT), filename, ctype,
                 "phi-client-name", "phi-icd10")
    blocked_with(config_path, docx(para("Jane Roe") + para("bipolar disorder")), filename,
                 ctype, "phi-client-name")


def test_pdf_form_fields_and_comments_are_read(config_path: Path) -> None:
    blocked_with(config_path, pdf_with_text("Intake form", field_value="Jane Roe"),
                 "intake.pdf", "application/pdf", "phi-client-name")
    blocked_with(config_path, pdf_with_text("Report", annotation="Jane Roe: diagnosis F32.1"),
                 "report.pdf", "application/pdf", "phi-client-name", "phi-icd10")


def test_a_pdf_without_text_is_a_scan_and_counts_as_unscanned(config_path: Path) -> None:
    action, found, reason = decision(config_path, pdf_with_text(), "scan.pdf",
                                     "application/pdf")
    assert action is Action.BLOCK and found == ("phi-unscanned",)


def test_a_pdf_that_takes_too_long_is_unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    import securemail.pdf_text as pdf_text

    monkeypatch.setattr(pdf_text, "PDF_SECONDS", -1.0)
    with pytest.raises(Unreadable, match="to read"):
        document_text(pdf_with_text(PHI_TEXT), 100_000)


def test_a_tar_gz_is_read_and_a_7z_counts_as_unscanned(config_path: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        data = PHI_TEXT.encode()
        info = tarfile.TarInfo("notes/session.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    blocked_with(config_path, out.getvalue(), "records.tar.gz", "application/gzip",
                 "phi-client-name")
    blocked_with(config_path, gzip.compress(PHI_TEXT.encode()), "notes.txt.gz",
                 "application/gzip", "phi-client-name")
    action, found, _ = decision(config_path, b"7z\xbc\xaf\x27\x1c" + bytes(100), "a.7z",
                                "application/x-7z-compressed")
    assert action is Action.BLOCK and found == ("phi-unscanned",)


def test_word_for_the_web_document2_and_html_chunks_are_read(config_path: Path) -> None:
    w = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
    data = ooxml({"word/document2.xml": f"<w:document {w}><w:body>{para('Jane Roe')}"
                                        f"{para('anxiety')}</w:body></w:document>"})
    blocked_with(config_path, data, "note.docx", "application/octet-stream", "phi-client-name")
    chunk = ooxml({"word/document.xml": f"<w:document {w}><w:body/></w:document>",
                   "word/afchunk.htm": "<html><body><p>Jane <b>Roe</b>, depression</p>"})
    blocked_with(config_path, chunk, "note.docx", "application/octet-stream", "phi-client-name")


def test_excel_formula_cells_and_document_properties_keep_words_apart() -> None:
    sheet = ooxml({"xl/worksheets/sheet1.xml": '<worksheet><sheetData><row><c t="str">'
                                               "<f>CONCAT(B2,\" \",C2)</f><v>Jane Roe</v></c>"
                                               "</row></sheetData></worksheet>",
                   "docProps/core.xml": "<cp:coreProperties><dc:title>Caseload</dc:title>"
                                        "<dc:creator>Jane Roe</dc:creator></cp:coreProperties>"})
    text = document_text(sheet, 100_000)
    assert text is not None
    assert "C2)Jane" not in text and "CaseloadJane" not in text
    assert text.count("Jane Roe") == 2


def test_an_opendocument_sheet_name_is_read() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("mimetype", "application/vnd.oasis.opendocument.spreadsheet")
        z.writestr("content.xml", '<office:document-content><table:table table:name="Jane Roe">'
                                  "</table:table></office:document-content>")
    text = document_text(out.getvalue(), 100_000)
    assert text is not None and "Jane Roe" in text


def test_line_breaks_in_rtf_source_are_not_text() -> None:
    rtf = b"{\\rtf1\\ansi Client: Ja\r\nne {\\b\r\nRo}e\\par\r\nnext line}"
    text = document_text(rtf, 100_000)
    assert text is not None and "Jane Roe" in text and "next line" in text


def test_legacy_office_text_with_latin1_letters_is_read(make_config: ConfigFactory) -> None:
    config = make_config(extra='''
[[directory.clients]]
id = "c-3001"
addresses = ["jose@mail.example"]
names = ["José Núñez"]
''')
    data = ole2(b"\x09\x08\x10\x00" + bytes(16) + b"\xfc\x00" + bytes(20),
                "Client: José Núñez, diagnosis F32.1".encode("cp1252"))
    blocked_with(config, data, "caseload.xls", "application/vnd.ms-excel",
                 "phi-client-name", "phi-icd10")


def test_files_inside_a_zip_are_read_as_what_they_are(config_path: Path) -> None:
    mail = EmailMessage()
    mail["Subject"] = "Intake"
    mail.set_content("see attached")
    mail.add_attachment(pdf_with_text(PHI_TEXT), maintype="application", subtype="pdf",
                        filename="intake.pdf")
    cases = {
        "page.html": b"<html><body><p>Jane <span>R</span>oe &amp; depression</p></body></html>",
        "notes.txt": "Jane Roe, anxiety".encode("utf-16"),
        "contact.vcf": b"BEGIN:VCARD\r\nFN:Jane Roe\r\nNOTE:bipolar\r\nEND:VCARD\r\n",
        "saved.eml": mail.as_bytes(),
    }
    for name, data in cases.items():
        blocked_with(config_path, plain_zip({name: data}), "files.zip", "application/zip",
                     "phi-client-name")


def test_harmless_documents_still_go_in_clear(config_path: Path) -> None:
    for data in (pdf_with_text("Invoice 2026-114", "Toner, 2 boxes", field_value="Paid"),
                 plain_zip({"invoice.txt": b"Toner, 2 boxes"})):
        action, found, _ = decision(config_path, data, "invoice.pdf", "application/pdf")
        assert action is Action.DELIVER and found == ()
    _ = (base64, OUTSIDER, SENDER, verdict_for)  # shared helpers of the sibling module


def test_an_ics_sent_as_octet_stream_is_read(config_path: Path) -> None:
    ics = b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nSUMMARY:Jane Roe - anxiety follow-up\r\n" \
          b"END:VEVENT\r\nEND:VCALENDAR\r\n"
    blocked_with(config_path, ics, "appointment.ics", "application/octet-stream",
                 "phi-client-name", "phi-keyword")


def test_alt_text_and_pivot_values_in_office_files_are_read() -> None:
    data = ooxml({
        "word/document.xml": '<w:document><w:body><wp:docPr id="1" name="Picture 1"'
                             ' descr="Photo of Jane Roe"/></w:body></w:document>',
        "xl/pivotCache/pivotCacheRecords1.xml": '<pivotCacheRecords><r><s v="bipolar"/></r>'
                                                "</pivotCacheRecords>"})
    text = document_text(data, 100_000)
    assert text is not None and "Jane Roe" in text and "bipolar" in text


def test_a_pdf_header_after_a_banner_is_found() -> None:
    late = b"X-Gateway-Banner: scanned\r\n" * 80 + pdf_with_text(PHI_TEXT)
    assert late.index(b"%PDF-") > 1024
    text = document_text(late, 100_000)
    assert text is not None and "Jane Roe" in text


# ------------------------------------------- PDF revisions (incremental saves)


def saved_over(original: bytes, *lines: str) -> bytes:
    """``original`` with its page's text replaced by ``lines`` through an
    incremental update, as Acrobat's "Save" writes it: the earlier revision
    stays in the file, byte for byte."""
    from pypdf import PdfWriter

    writer = PdfWriter(io.BytesIO(original), incremental=True)
    ops = " ".join(f"({line}) Tj T*" for line in lines)
    contents = writer.pages[0]["/Contents"].get_object()
    contents.set_data(f"BT /F1 12 Tf 72 720 Td 14 TL {ops} ET".encode("latin-1"))
    out = io.BytesIO()
    writer.write(out)
    assert out.getvalue().startswith(original)
    return out.getvalue()


def test_text_an_incremental_save_replaced_is_still_read(config_path: Path) -> None:
    """A "redaction" saved as an update: a reader shows "[REDACTED]", the file
    sent still holds the name and diagnosis."""
    redacted = saved_over(pdf_with_text(PHI_TEXT), "Patient: [REDACTED]")
    text = document_text(redacted, 100_000) or ""
    assert "[REDACTED]" in text and "Jane Roe" in text and "F32.1" in text
    blocked_with(config_path, redacted, "letter.pdf", "application/pdf",
                 "phi-client-name", "phi-icd10")


def test_a_pdf_saved_twice_without_phi_still_goes_in_clear(config_path: Path) -> None:
    twice = saved_over(saved_over(pdf_with_text("Staff meeting moved to Thursday."),
                                  "Staff meeting moved to Friday."),
                       "Staff meeting moved to Friday at 3 pm.")
    text = document_text(twice, 100_000) or ""
    assert text.count("Staff meeting") == 3  # each distinct line once
    action, found, _ = decision(config_path, twice, "memo.pdf", "application/pdf")
    assert action is Action.DELIVER, found


def test_an_end_marker_inside_page_text_does_not_hide_a_revision() -> None:
    """``startxref 9 %%EOF`` in a page looks like a revision's end: the bytes
    before it are no PDF and are passed over; the real earlier revision is
    still read."""
    data = saved_over(pdf_with_text("see startxref 9 %%EOF in the log", "Patient: Jane Roe"),
                      "Patient: [REDACTED]", "see startxref 9 %%EOF in the log")
    text = document_text(data, 100_000) or ""
    assert "Jane Roe" in text and text.count("startxref 9") == 1


def test_a_word_table_row_with_the_surname_first_names_the_client(config_path: Path) -> None:
    """Cells of a row are read apart ("Roe<tab>Jane"), as a roster in Word is."""
    def cell(text: str) -> str:
        return f"<w:tc>{para(text)}</w:tc>"

    table = ("<w:tbl><w:tr>" + cell("Last") + cell("First") + cell("Concern") + "</w:tr><w:tr>"
             + cell("Roe") + cell("Jane") + cell("depression") + "</w:tr></w:tbl>")
    action, found, _ = decision(config_path, docx(table), "roster.docx",
                                "application/vnd.openxmlformats-officedocument"
                                ".wordprocessingml.document")
    assert action is Action.BLOCK and "phi-client-name" in found


def saved_again(pdf: bytes, note: str) -> bytes:
    """An incremental save that changes no page (a signature, a metadata
    edit): one new Info object, an xref section and a trailer."""
    import re

    prev = int(re.findall(rb"startxref\s+(\d+)", pdf)[-1])
    size = max(int(n) for n in re.findall(rb"/Size (\d+)", pdf))
    at = len(pdf)
    update = b"%d 0 obj\n<< /Producer (%s) >>\nendobj\n" % (size, note.encode())
    xref = at + len(update)
    update += (b"xref\n%d 1\n%010d 00000 n \ntrailer\n<< /Size %d /Root 1 0 R /Info %d 0 R"
               b" /Prev %d >>\nstartxref\n%d\n%%%%EOF\n" % (size, at, size + 1, size, prev, xref))
    return pdf + update


def test_a_redaction_saved_over_many_times_is_still_read(config_path: Path) -> None:
    pdf = saved_over(pdf_with_text(PHI_TEXT), "Patient: [REDACTED]")
    for i in range(8):
        pdf = saved_again(pdf, f"review {i}")
    assert "Jane Roe" in (document_text(pdf, 100_000) or "")
    # Stray "%%EOF" lines after the end are no revisions.
    assert "Jane Roe" in (document_text(pdf + b"%%EOF\n" * 20, 100_000) or "")
    blocked_with(config_path, pdf, "letter.pdf", "application/pdf", "phi-client-name")


def test_pages_no_revision_changed_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 30-page report signed four times: 30 pages to read, not 150."""
    from pypdf import PageObject

    pdf = pdf_with_text("Staff meeting moved to Thursday.", pages=30)
    for i in range(4):
        pdf = saved_again(pdf, f"signature {i}")
    calls = []
    extract = PageObject.extract_text

    def counted(self: PageObject, *args: object, **kwargs: object) -> str:
        calls.append(1)
        return extract(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(PageObject, "extract_text", counted)
    assert "Thursday" in (document_text(pdf, 100_000) or "")
    assert len(calls) == 1  # the 30 pages share one content stream and font


FORM = "/Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << /Font << /F1 9 0 R >> >>"
HELVETICA = "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def page_drawing_form(contents: int, form: int) -> str:
    return (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {contents} 0 R "
            f"/Resources << /XObject << /X0 {form} 0 R >> >> >>")


def test_pages_sharing_a_content_stream_but_not_their_forms_are_each_read() -> None:
    """Both pages only say "draw form X0"; each page's X0 holds other text
    (stamps, overlays and OCR layers are drawn so)."""
    from tests.document_makers import pdf_objects, text_stream

    pdf, _ = pdf_objects({
        1: "<< /Type /Catalog /Pages 2 0 R >>",
        2: "<< /Type /Pages /Kids [3 0 R 4 0 R] /Count 2 >>",
        3: page_drawing_form(5, 6), 4: page_drawing_form(8, 7),
        5: ("", b"q /X0 Do Q"), 8: ("", b"q /X0 Do Q"),
        6: (FORM, text_stream("Patient Jane Roe")),
        7: (FORM, text_stream("SSN 123-45-6789 diagnosis F32.1")),
        9: HELVETICA})
    text = document_text(pdf, 100_000) or ""
    assert "Jane Roe" in text and "F32.1" in text


def test_a_form_redacted_in_place_by_an_update_is_still_read() -> None:
    from tests.document_makers import pdf_objects, text_stream

    pdf, prev = pdf_objects({
        1: "<< /Type /Catalog /Pages 2 0 R >>", 2: "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        3: page_drawing_form(4, 5), 4: ("", b"q /X0 Do Q"),
        5: (FORM, text_stream("Patient Jane Roe")), 6: "<< >>", 7: "<< >>", 8: "<< >>",
        9: HELVETICA})
    redacted, _ = pdf_objects({5: (FORM, text_stream("Patient [redacted]"))}, prev=prev,
                              base=pdf)
    text = document_text(redacted, 100_000) or ""
    assert "[redacted]" in text and "Jane Roe" in text
