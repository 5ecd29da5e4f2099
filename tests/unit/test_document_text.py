"""PHI in document attachments (PDF, Word, Excel, OpenDocument, RTF, ZIP, OLE2).

A letter with "Jane Roe" and a diagnosis in a PDF sent to somebody outside the
practice used to leave in clear: only the file's name was read. These tests
send such attachments through the real parser, classifier and policy.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemail.documents import Unreadable, document_text
from securemail.model import Action
from tests.document_makers import pdf_with_text
from tests.unit.policy_helpers import verdict_for

PHI_TEXT = "Patient: Jane Roe. Diagnosis: F32.1, major depressive disorder."
SENDER = "dr@riverside.example"
OUTSIDER = "colleague@other-clinic.example"  # not staff, client, contact or partner


def mail_with(data: bytes, filename: str, ctype: str = "application/octet-stream") -> bytes:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = OUTSIDER
    msg["Subject"] = "The letter we talked about"
    msg["Message-ID"] = "<doc-1@riverside.example>"
    msg.set_content("Please see the attached document.")
    maintype, subtype = ctype.split("/")
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def decision(config_path: Path, data: bytes, filename: str,
             ctype: str = "application/octet-stream") -> tuple[Action, tuple[str, ...], str]:
    verdict = verdict_for(config_path, mail_with(data, filename, ctype), SENDER, [OUTSIDER])
    d = verdict.decisions[0]
    signals = tuple(sorted({s.detector for s in verdict.facts.phi_signals})) \
        if verdict.facts else ()
    return d.action, signals, d.reason


# ----------------------------------------------------------- document makers


def encrypted_pdf(user_password: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_with_text(PHI_TEXT))))
    writer.encrypt(user_password=user_password, owner_password="owner-secret",
                   algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def ooxml(parts: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        for name, xml in parts.items():
            z.writestr(name, xml)
    return out.getvalue()


W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'


def docx(body: str) -> bytes:
    return ooxml({"word/document.xml": f'<?xml version="1.0"?><w:document {W}><w:body>'
                                       f"{body}</w:body></w:document>"})


def para(*runs: str) -> str:
    return "<w:p>" + "".join(f'<w:r><w:rPr><w:b/></w:rPr><w:t xml:space="preserve">{r}</w:t>'
                             "</w:r>" for r in runs) + "</w:p>"


def plain_zip(files: dict[str, bytes], *, encrypted: bool = False) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    data = out.getvalue()
    if encrypted:  # set bit 0 ("encrypted") of every entry, as a password sets it
        for signature, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            pos = data.find(signature)
            while pos >= 0:
                data = data[:pos + at] + bytes([data[pos + at] | 1]) + data[pos + at + 1:]
                pos = data.find(signature, pos + 4)
    return data


def ole2(*streams: bytes, sector_size: int = 512) -> bytes:
    """An OLE2 header followed by ``streams``, each at a sector boundary (enough
    for the reader, which looks at raw sectors; not a complete compound file)."""
    header = bytearray(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(sector_size - 8))
    header[0x1A:0x1C] = b"\x04\x00" if sector_size == 4096 else b"\x03\x00"
    body = b"".join(s + bytes(-len(s) % sector_size) for s in streams)
    return bytes(header) + body


# ------------------------------------------------------------------- PDF


def test_phi_in_a_pdf_to_an_outsider_is_blocked(config_path: Path) -> None:
    action, signals, _ = decision(config_path, pdf_with_text("Discharge letter", PHI_TEXT),
                                  "letter.pdf", "application/pdf")
    assert action is Action.BLOCK
    assert {"phi-client-name", "phi-icd10", "phi-keyword"} <= set(signals)


def test_a_pdf_without_phi_still_goes_in_clear(config_path: Path) -> None:
    action, signals, _ = decision(config_path, pdf_with_text("Invoice 2026-114", "Toner, 2 boxes"),
                                  "invoice.pdf", "application/pdf")
    assert action is Action.DELIVER
    assert signals == ()


def test_a_pdf_is_found_by_its_bytes_not_its_label(config_path: Path) -> None:
    action, signals, _ = decision(config_path, pdf_with_text(PHI_TEXT), "scan0001.dat")
    assert action is Action.BLOCK
    assert "phi-client-name" in signals


def test_a_password_protected_pdf_cannot_be_ruled_out(config_path: Path) -> None:
    action, signals, reason = decision(config_path, encrypted_pdf("s3cret"), "letter.pdf",
                                       "application/pdf")
    assert action is Action.BLOCK
    assert signals == ("phi-unscanned",)
    assert "could not be read" in reason and "password" in reason


def test_a_pdf_with_only_an_owner_password_is_read() -> None:
    # Permissions-only "encryption": every PDF reader opens it without asking.
    text = document_text(encrypted_pdf(""), 100_000)
    assert text is not None and "Jane Roe" in text


def test_a_damaged_pdf_is_unreadable() -> None:
    with pytest.raises(Unreadable):
        document_text(b"%PDF-1.4\n" + b"\x00garbage" * 100, 100_000)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_a_pdf_printed_by_chromium_is_read(tmp_path: Path, config_path: Path) -> None:
    """A real-world PDF (embedded subset fonts, compressed streams, ToUnicode maps)."""
    page = tmp_path / "letter.html"
    page.write_text("<html><body><h1>Progress note</h1><p>Client: Jane Roe</p>"
                    "<p>Impression: F41.1 generalized anxiety disorder</p></body></html>")
    pdf = tmp_path / "letter.pdf"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                    "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    action, signals, _ = decision(config_path, pdf.read_bytes(), "note.pdf", "application/pdf")
    assert action is Action.BLOCK
    assert {"phi-client-name", "phi-icd10"} <= set(signals)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_letter_spaced_text_in_a_pdf_is_read_as_words(tmp_path: Path, config_path: Path) -> None:
    """CSS letter-spacing (or Word's expanded spacing) puts each glyph apart;
    the PDF's text comes out as "J a n e  R o e"."""
    page = tmp_path / "letter.html"
    page.write_text('<html><body><h1>Progress note</h1><p style="letter-spacing:0.3em">'
                    "Client: Jane Roe</p><p style='letter-spacing:4px'>Impression: F41.1</p>"
                    "</body></html>")
    pdf = tmp_path / "letter.pdf"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                    "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert "J a n e" in (document_text(pdf.read_bytes(), 100_000) or "")
    action, signals, _ = decision(config_path, pdf.read_bytes(), "note.pdf", "application/pdf")
    assert action is Action.BLOCK
    assert {"phi-client-name", "phi-icd10"} <= set(signals)


@given(st.text(alphabet="ab \n", max_size=200))
@settings(max_examples=300, deadline=None)
def test_unspacing_keeps_the_text_and_only_adds_lines(text: str) -> None:
    from securemail.pdf_text import _with_unspaced

    out = _with_unspaced(text)
    assert out.startswith(text)
    assert len(out.splitlines()) <= 2 * max(1, len(text.splitlines()))


def test_unspacing_is_linear_on_a_long_spaced_line() -> None:
    import time

    from securemail.pdf_text import _with_unspaced

    started = time.perf_counter()
    out = _with_unspaced("a " * 200_000 + "bb " * 50_000)
    assert time.perf_counter() - started < 5.0
    assert out.splitlines()[-1].startswith("a" * 1000)


# ------------------------------------------------------ Office, ODF, RTF


def test_a_name_split_into_runs_in_word_is_one_name(config_path: Path) -> None:
    # Word splits text into runs at every formatting or spell-check change.
    data = docx(para("Client: Ja", "ne ", "Ro", "e") + para("Diagnosis: depression"))
    action, signals, _ = decision(config_path, data, "note.docx",
                                  "application/vnd.openxmlformats-officedocument"
                                  ".wordprocessingml.document")
    assert action is Action.BLOCK
    assert {"phi-client-name", "phi-keyword"} <= set(signals)


def test_word_paragraphs_do_not_run_together() -> None:
    text = document_text(docx(para("Jane") + para("Roe")), 100_000)
    assert text is not None and "JaneRoe" not in text and "Jane" in text


def test_word_headers_footers_and_comments_are_read() -> None:
    data = ooxml({
        "word/document.xml": f"<w:document {W}><w:body>{para('Notes')}</w:body></w:document>",
        "word/footer1.xml": f"<w:ftr {W}>{para('MRN: 00451234')}</w:ftr>",
        "word/comments.xml": f"<w:comments {W}>{para('bipolar, see chart')}</w:comments>",
    })
    text = document_text(data, 100_000)
    assert text is not None and "00451234" in text and "bipolar" in text


def test_an_excel_sheet_is_read(config_path: Path) -> None:
    data = ooxml({
        "xl/workbook.xml": '<workbook><sheets><sheet name="Caseload" sheetId="1"/></sheets>'
                           "</workbook>",
        "xl/sharedStrings.xml": "<sst><si><t>Name</t></si><si><t>Jane Roe</t></si>"
                                "<si><r><t>PTS</t></r><r><t>D</t></r></si></sst>",
        "xl/worksheets/sheet1.xml": '<worksheet><sheetData><row><c t="s"><v>0</v></c></row>'
                                    "</sheetData></worksheet>",
    })
    action, signals, _ = decision(config_path, data, "caseload.xlsx")
    assert action is Action.BLOCK
    assert {"phi-client-name", "phi-keyword"} <= set(signals)  # "PTSD" across two runs


def test_an_opendocument_text_is_read(config_path: Path) -> None:
    content = ('<office:document-content><office:body><office:text>'
               "<text:p>Jane <text:span>Roe</text:span></text:p>"
               "<text:p>schizophrenia<text:line-break/>follow-up</text:p>"
               "</office:text></office:body></office:document-content>")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("mimetype", "application/vnd.oasis.opendocument.text")
        z.writestr("content.xml", content)
    action, signals, _ = decision(config_path, out.getvalue(), "note.odt")
    assert action is Action.BLOCK
    assert {"phi-client-name", "phi-keyword"} <= set(signals)


def test_an_encrypted_opendocument_is_unreadable() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("mimetype", "application/vnd.oasis.opendocument.text")
        z.writestr("content.xml", b"\x8f\x11 ciphertext")
        z.writestr("META-INF/manifest.xml",
                   '<manifest:manifest><manifest:file-entry manifest:full-path="content.xml">'
                   "<manifest:encryption-data/></manifest:file-entry></manifest:manifest>")
    with pytest.raises(Unreadable, match="password"):
        document_text(out.getvalue(), 100_000)


def test_rtf_text_is_read_without_its_control_words(config_path: Path) -> None:
    rtf = (rb"{\rtf1\ansi\deff0{\fonttbl{\f0 Times New Roman;}}{\colortbl;\red0\green0\blue0;}"
           rb"\pard\f0\fs24 Client: Jane \b Roe\b0\par Diagnosis: F43.10 post-traumatic stress"
           rb" disorder\par Caf\'e9 \u8212? end}")
    text = document_text(rtf, 100_000)
    assert text is not None and "Times New Roman" not in text and "Jane Roe" in text
    assert "Café" in text and "\\" not in text
    action, signals, _ = decision(config_path, rtf, "letter.rtf", "application/rtf")
    assert action is Action.BLOCK and "phi-icd10" in signals


def test_legacy_office_and_outlook_files_are_read_as_strings(config_path: Path) -> None:
    # Word 97-2003 stores its text as UTF-16 (or 8-bit) in the WordDocument stream.
    fib = b"\xec\xa5\xc1\x00" + bytes(0x0A - 4) + b"\x00\x00" + bytes(20)
    data = ole2(fib, PHI_TEXT.encode("utf-16-le"))
    action, signals, _ = decision(config_path, data, "letter.doc", "application/msword")
    assert action is Action.BLOCK
    assert {"phi-client-name", "phi-icd10"} <= set(signals)


@pytest.mark.parametrize("streams", [
    # Office 2007+ with a password: an OLE2 file holding an EncryptedPackage stream.
    ("EncryptionInfo".encode("utf-16-le") + b"\x00\x00" + "EncryptedPackage".encode("utf-16-le"),),
    # Word 97-2003 with a password: fEncrypted in the FIB.
    (b"\xec\xa5\xc1\x00" + bytes(0x0A - 4) + b"\x00\x01" + bytes(20),),
    # Excel 97-2003 with a password: FILEPASS right after BOF.
    (b"\x09\x08\x10\x00" + bytes(16) + b"\x2f\x00\x36\x00" + bytes(54),),
])
def test_password_protected_office_files_are_unreadable(streams: tuple[bytes, ...],
                                                        config_path: Path) -> None:
    data = ole2(*streams)
    with pytest.raises(Unreadable, match="password"):
        document_text(data, 100_000)
    action, signals, _ = decision(config_path, data, "letter.docx")
    assert action is Action.BLOCK and signals == ("phi-unscanned",)


def test_an_office_file_with_4096_byte_sectors_is_checked_too() -> None:
    data = ole2(b"\xec\xa5\xc1\x00" + bytes(0x0A - 4) + b"\x00\x01" + bytes(20),
                sector_size=4096)
    with pytest.raises(Unreadable):
        document_text(data, 100_000)


# ------------------------------------------------------------------- ZIP


def test_documents_and_file_names_inside_a_zip_are_read(config_path: Path) -> None:
    data = plain_zip({"records/notes.docx": docx(para("Jane Roe") + para("anxiety")),
                      "records/list.csv": b"id,dx\n1,bipolar\n"})
    action, signals, _ = decision(config_path, data, "records.zip", "application/zip")
    assert action is Action.BLOCK
    assert {"phi-client-name", "phi-keyword"} <= set(signals)


def test_a_zip_inside_a_zip_is_not_read(config_path: Path) -> None:
    inner = plain_zip({"note.txt": PHI_TEXT.encode()})
    action, signals, _ = decision(config_path, plain_zip({"inner.zip": inner}), "a.zip")
    assert action is Action.BLOCK and signals == ("phi-unscanned",)


def test_a_password_protected_zip_is_unreadable() -> None:
    with pytest.raises(Unreadable, match="password"):
        document_text(plain_zip({"notes.txt": b"x"}, encrypted=True), 100_000)


def test_a_zip_bomb_stops_at_the_limit_quickly() -> None:
    import time

    bomb = plain_zip({"zeros.txt": bytes(80 * 1024 * 1024)})  # ~80 KB compressed
    started = time.perf_counter()
    with pytest.raises(Unreadable, match="size limit"):
        document_text(bomb, 100_000)
    assert time.perf_counter() - started < 10


def test_text_past_the_scan_limit_counts_as_unscanned(config_path: Path) -> None:
    data = docx(para("harmless words " * 5000))
    with pytest.raises(Unreadable, match="scan limit"):
        document_text(data, 10_000)


# ----------------------------------------------------- what is not a document


def test_an_image_is_judged_by_its_name_only(config_path: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(200)
    assert document_text(png, 100_000) is None
    action, signals, _ = decision(config_path, png, "team-photo.png", "image/png")
    assert action is Action.DELIVER and signals == ()


_MAGIC = st.sampled_from([b"%PDF-1.7\n", b"PK\x03\x04", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
                          b"{\\rtf1 ", b""])


@settings(max_examples=150, deadline=None)
@given(magic=_MAGIC, rest=st.binary(max_size=3000))
def test_any_bytes_give_text_none_or_unreadable(magic: bytes, rest: bytes) -> None:
    try:
        result = document_text(magic + rest, 50_000)
    except Unreadable as exc:
        assert "\n" not in str(exc)  # a short reason, no content
        return
    assert result is None or isinstance(result, str)
