"""The text of document attachments, for the PHI detectors.

A discharge summary, a superbill or an intake form leaves the practice as a
PDF or Word file far more often than as text in the body. This module reads
what a person would read in such a file:

- PDF: the text of each page, comments, form fields, metadata, embedded
  files and what earlier revisions kept in the file show
  (:mod:`securemail.pdf_text`);
- Office Open XML (Word ``.docx``, Excel ``.xlsx``, PowerPoint ``.pptx``)
  and OpenDocument (``.odt``, ``.ods``, ``.odp``): the text in their XML
  parts, including headers, footers, comments, notes and sheet names; an
  Excel workbook's rows as Excel shows them, and each row again with its
  column headings (:mod:`securemail.xlsx_rows`, :mod:`securemail.table_text`);
- RTF: the text without its control words;
- Outlook's ``winmail.dat`` (TNEF): its body and the documents packed in it
  (:mod:`securemail.tnef_text`);
- legacy binary Office files and Outlook ``.msg`` (OLE2 compound files):
  runs of readable text, in 8-bit and UTF-16 form, as ``strings`` finds them;
- ZIP archives: the names of their files, and the documents inside (one level).

The kind is found from the file's first bytes, not from its label, so a PDF
sent as ``application/octet-stream`` or named ``scan.dat`` is still read.

:func:`document_text` returns None for anything that is not a document
(images, audio, unknown binaries: judged by file name only), the text
otherwise, and raises :class:`Unreadable` for a document whose text cannot be
read in full (encrypted, damaged, or larger than the limits): the caller
must then treat it as possibly PHI. Nothing here logs, and no error carries
content.
"""

from __future__ import annotations

import contextvars
import html
import io
import re
import zipfile
from typing import Final

from securemail.table_text import (
    html_with_labels,
    is_tab_table,
    labelled_rows,
    labelled_tables,
    token_budget,
    with_labelled_rows,
)

__all__ = ["TNEF_SIGNATURE", "Unreadable", "document_text", "is_document", "member_text",
           "rtf_text", "spend"]

MAX_ZIP_MEMBERS: Final = 2000
MAX_INFLATED_BYTES: Final = 64 * 1024 * 1024  # all XML parts of one file, decompressed
_MAX_DEPTH: Final = 1  # documents inside a ZIP archive; a ZIP inside that is unreadable


class Unreadable(Exception):  # noqa: N818 - a state, as in "this attachment is unreadable"
    """A document whose text could not be read in full; ``str()`` says why,
    with no content and no file name."""


def document_text(payload: bytes, limit: int, *, _depth: int = 0) -> str | None:
    """The text of ``payload`` if it is a document we read, else None.

    At most ``limit`` characters are returned; a document with more text
    raises :class:`Unreadable` ("past the scan limit"), like one that
    cannot be opened. All the files inside one document (members of an
    archive, embedded files) share one budget of decompressed bytes.
    """
    if _depth == 0:
        token = _BUDGET.set([MAX_INFLATED_BYTES])
        try:
            with token_budget():
                return _document_text(payload, limit, 0)
        finally:
            _BUDGET.reset(token)
    return _document_text(payload, limit, _depth)


def _document_text(payload: bytes, limit: int, depth: int) -> str | None:
    try:
        if payload.startswith(b"PK\x03\x04"):
            return _bounded(_zip_text(payload, limit, depth), limit)
        if payload.startswith(_OLE2):
            return _bounded(_ole2_text(payload), limit)
        if payload.startswith(TNEF_SIGNATURE):  # before PDF: it may pack one near its start
            from securemail.tnef_text import tnef_text

            return _bounded(tnef_text(payload, limit, depth), limit)
        if b"%PDF-" in payload[:_PDF_HEADER_WINDOW]:
            from securemail.pdf_text import pdf_text

            return _bounded(pdf_text(payload, limit, depth), limit)
        if payload.lstrip()[:5] == b"{\\rtf":
            return _bounded(rtf_text(payload), limit)
        if payload.startswith(_COMPRESSED) or payload[257:262] == b"ustar":
            return _bounded(_tar_text(payload, limit, depth), limit)
    except Unreadable:
        raise
    except RecursionError:
        raise Unreadable("the document is nested too deep to read") from None
    except Exception as exc:  # noqa: BLE001 - any fault reading a file: it is unreadable
        raise Unreadable(f"the document cannot be read ({type(exc).__name__})") from None
    for magic, kind in _UNREAD_ARCHIVES:
        if payload.startswith(magic):
            raise Unreadable(f"a {kind} archive is not read")
    return None


_BUDGET: contextvars.ContextVar[list[int]] = contextvars.ContextVar("documents_budget")


def spend(size: int) -> None:
    """Count ``size`` decompressed bytes against the current document's budget."""
    budget = _BUDGET.get(None)
    if budget is None:
        return
    budget[0] -= size
    if budget[0] < 0:
        raise Unreadable("the document inflates past the size limit")


def _left() -> int:
    budget = _BUDGET.get(None)
    return MAX_INFLATED_BYTES if budget is None else max(0, budget[0])


def is_document(payload: bytes) -> bool:
    """Whether ``payload`` is a kind :func:`document_text` reads (or refuses),
    from its first bytes: a PDF or ZIP labelled ``text/plain`` is a document.
    (Looked at in place: on the policy's hot path, no copy of the payload.)"""
    return (payload.find(b"%PDF-", 0, _PDF_HEADER_WINDOW) >= 0
            or payload.startswith((b"PK\x03\x04", _OLE2))
            or _RTF_START.match(payload) is not None
            or payload.startswith((*_COMPRESSED, TNEF_SIGNATURE))
            or payload[257:262] == b"ustar"
            or payload.startswith(tuple(m for m, _ in _UNREAD_ARCHIVES)))


# PDF readers find the header after junk (a mail gateway's banner, a BOM);
# Acrobat looks in the first 1024 bytes, others further.
_PDF_HEADER_WINDOW: Final = 8192
_RTF_START: Final = re.compile(rb"\s*\{\\rtf")  # after what bytes.lstrip() would take off
_COMPRESSED: Final = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz (tar or not)
TNEF_SIGNATURE: Final = b"\x78\x9f\x3e\x22"  # Outlook's winmail.dat (securemail.tnef_text)
_UNREAD_ARCHIVES: Final = ((b"7z\xbc\xaf\x27\x1c", "7z"), (b"Rar!\x1a\x07", "RAR"))


def _bounded(text: str, limit: int) -> str:
    if len(text) > limit:
        raise Unreadable("the document's text is past the scan limit")
    return text


# ------------------------------------------------- Office Open XML, ODF, ZIP

# Every XML part of an Office file is read (body, headers, footers, notes,
# comments, text boxes, charts, SmartArt, slide masters, alternative body
# parts such as Word for the web's document2.xml, ...) except these, which
# hold formatting only.
_SKIPPED_PARTS = re.compile(
    r"(.*/)?(_rels/.*|\[Content_Types\]\.xml|.*theme\d*\.xml|styles\.xml|fontTable\.xml"
    r"|settings\.xml|webSettings\.xml|numbering\.xml|stylesWithEffects\.xml|presProps\.xml"
    r"|viewProps\.xml|tableStyles\.xml|manifest\.xml|calcChain\.xml)", re.IGNORECASE)
_OFFICE_TEXT = (".htm", ".html", ".xhtml", ".mht", ".mhtml", ".txt")  # Word's altChunk parts
_XPS_TEXT = re.compile(r'UnicodeString="([^"]{0,100000})"')
# Tags that end a paragraph, cell, line, formula or value: a word stops
# there. Every other tag (a run of differently formatted letters inside one
# word, "Ja" in bold and "ne" not) joins its neighbours as the reader sees them.
# The end of a table cell is a tab (cells of a row read apart, as in a table:
# "Roe<tab>Jane" is a surname-first name; "Roe Jane" in a sentence is not).
_CELL_END = re.compile(r"</(w:tc|a:tc|table:table-cell|c)>", re.IGNORECASE)
_BREAK_TAG = re.compile(
    r"</(w:p|a:p|text:p|text:h|si|f|v|c:v|is|author|comment)>"
    r"|<(w:br|w:cr|w:tab|text:tab|text:line-break|text:s|a:br|sheet|table:table)\b[^<>]{0,4096}>",
    re.IGNORECASE)
_ANY_TAG = re.compile(r"<[^<>]{0,4096}>")  # bounded: "<<<<" without ">" stays linear
_SHEET_NAME = re.compile(
    r'<(?:sheet|table:table)\b[^<>]{0,4096}?\b(?:table:)?name="([^"<>]{0,4096})"', re.IGNORECASE)


def _zip_text(payload: bytes, limit: int, depth: int) -> str:
    try:
        archive = zipfile.ZipFile(io.BytesIO(payload))
        members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise Unreadable(f"the ZIP file cannot be read ({type(exc).__name__})") from None
    if len(members) > MAX_ZIP_MEMBERS:
        raise Unreadable(f"the ZIP file has more than {MAX_ZIP_MEMBERS} entries")
    names = {m.filename for m in members}
    office = "[Content_Types].xml" in names or (
        "mimetype" in names and _read(archive, archive.getinfo("mimetype"), 200).startswith(
            b"application/vnd.oasis.opendocument"))
    if "META-INF/manifest.xml" in names and b"encryption-data" in _read(
            archive, archive.getinfo("META-INF/manifest.xml"), 1024 * 1024):
        raise Unreadable("the OpenDocument file is encrypted with a password")
    if not office and depth >= _MAX_DEPTH:
        raise Unreadable("a ZIP file inside a ZIP file is not read")
    chunks: list[str] = []
    size = 0
    workbook = _Workbook()  # an Excel workbook's parts, put back into rows below
    for member in members:
        if member.is_dir():
            continue
        if member.flag_bits & 0x1:
            raise Unreadable("the ZIP file is encrypted with a password")
        name = member.filename
        if office:
            lowered = name.lower()
            if _SKIPPED_PARTS.fullmatch(name):
                continue
            if workbook.takes(lowered):
                data = _read(archive, member)
                text = workbook.add(lowered, data)
            elif lowered.endswith((".xml", ".rels")):
                data = _read(archive, member)
                text = _xml_text(data, properties=lowered.startswith(("docprops/", "meta")))
                # A Word, PowerPoint or OpenDocument table: "DOB" over a column.
                labelled = labelled_tables(data.decode("utf-8", "replace"), limit - size)
                text = f"{text}\n{labelled}" if labelled else text
            elif lowered.endswith(".fpage"):  # XPS / OpenXPS: glyph runs carry the text
                data = _read(archive, member)
                text = " ".join(html.unescape(v) for v in _XPS_TEXT.findall(
                    data.decode("utf-8", "replace")))
            elif lowered.endswith(".bin") and "/embeddings/" not in lowered:
                data = _read(archive, member)  # Excel binary (.xlsb) parts
                text = _strings(data)
            elif "/embeddings/" in lowered or lowered.endswith(_OFFICE_TEXT):
                # An embedded workbook or document, an HTML chunk: read like a member.
                data = _read(archive, member)
                text = member_text(name, data, limit - size, depth + 1)
            else:
                continue  # media, fonts, binaries that hold no text
        else:  # a plain archive: its file names, and the documents in it
            data = _read(archive, member)
            text = name + "\n" + member_text(name, data, limit - size, depth + 1)
        chunks.append(text)
        size += len(text)
        if size > limit:
            break
    if workbook.parts() and size <= limit:
        styles = archive.getinfo("xl/styles.xml") if "xl/styles.xml" in names else None
        chunks.append(workbook.text(_read(archive, styles) if styles else b"", limit - size))
    return "\n".join(chunks)


class _Workbook:
    """The parts of an Excel workbook that :mod:`securemail.xlsx_rows` puts
    back together: the shared strings (the first part so named), the
    worksheets, the workbook's date system. Any other part is read as XML."""

    def __init__(self) -> None:
        self.shared: bytes | None = None
        self.sheets: list[tuple[str, bytes]] = []
        self.date1904 = False

    def takes(self, lowered: str) -> bool:
        return ((lowered == "xl/sharedstrings.xml" and self.shared is None)
                or lowered == "xl/workbook.xml" or _WORKSHEET.fullmatch(lowered) is not None)

    def add(self, lowered: str, data: bytes) -> str:
        """Keeps the part; returns the text to read of it now."""
        from securemail.xlsx_rows import uses_1904

        if lowered == "xl/workbook.xml":
            self.date1904 = self.date1904 or uses_1904(data)
            return _xml_text(data)  # sheet names
        if lowered == "xl/sharedstrings.xml":
            self.shared = data
        else:
            self.sheets.append((lowered, data))
        return ""  # read with the rows

    def parts(self) -> bool:
        return self.shared is not None or bool(self.sheets)

    def text(self, styles: bytes, limit: int) -> str:
        """Each worksheet's rows as Excel shows them (tab between cells,
        dates as dates), its other text (formulas, page headers) and its
        labelled values (``DOB: ...``); then the shared strings no cell
        shows (a deleted row is still in the file) and phonetic guides."""
        from securemail.xlsx_rows import (
            SharedStrings,
            TooLarge,
            date_styles,
            digit_patterns,
            shared_strings,
            sheet_text,
        )

        out: list[str] = []
        try:
            shared = (shared_strings(self.shared, limit) if self.shared is not None
                      else SharedStrings())
            dates, patterns = date_styles(styles), digit_patterns(styles)
            used: set[int] = set()
            left = limit  # for all the sheets together
            for _, data in sorted(self.sheets):
                sheet = sheet_text(data, shared.strings, dates, limit=left,
                                   date1904=self.date1904, patterns=patterns)
                used |= sheet.used
                out.append("\n".join("\t".join(row) for row in sheet.rows))
                out.extend(sheet.other)
                out.append(labelled_rows(sheet.rows, left))
                left -= sum(len(part) + 1 for part in out[-(len(sheet.other) + 2):])
                if left < 0:
                    raise TooLarge("the workbook's text is past the scan limit")
        except TooLarge:
            raise Unreadable("the document's text is past the scan limit") from None
        out.extend(s for i, s in enumerate(shared.strings) if i not in used)
        out.extend(shared.other)
        return "\n".join(out)


_WORKSHEET = re.compile(r"xl/worksheets/[^/]+\.xml")


_PLAIN_SUFFIXES = (".txt", ".csv", ".tsv", ".json", ".xml", ".md", ".log", ".yaml", ".yml",
                   ".vcf", ".ics", ".htm", ".html", ".xhtml", ".mht", ".mhtml")
_HTML_SUFFIXES = (".htm", ".html", ".xhtml", ".mht", ".mhtml")


def member_text(name: str, data: bytes, limit: int, depth: int) -> str:
    """The text of one file inside an archive or a document: a document is
    read as one (a document nested too deep is unreadable), a text file by
    its name (HTML without its tags, UTF-16 by its byte-order mark), a saved
    email as the message it is; anything else gives nothing (its name, read
    by the caller, is all there is)."""
    if is_document(data):
        if depth > _MAX_NESTED:
            raise Unreadable("a document nested that deep is not read")
        return document_text(data, limit, _depth=depth) or ""
    lowered = name.lower()
    if lowered.endswith(".eml"):
        return _eml_text(data, limit, depth)
    if lowered.endswith(_PLAIN_SUFFIXES) or not name:
        text = _decode_text(data)
        if lowered.endswith((".csv", ".tsv")) or is_tab_table(text):
            return with_labelled_rows(text, name, limit)
        return html_with_labels(text, limit) if lowered.endswith(_HTML_SUFFIXES) or (
            not name and "<html" in text[:2000].lower()) else text
    return ""


_MAX_NESTED: Final = 3  # documents inside documents inside archives, read this deep


def _decode_text(data: bytes) -> str:
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16", "replace")
    return data.decode("utf-8-sig", "replace")


def _eml_text(data: bytes, limit: int, depth: int) -> str:
    """A saved email inside an archive: its shown headers, text parts and the
    documents attached to it."""
    import email

    message = email.message_from_bytes(data)
    chunks = [str(message.get(h, "")) for h in ("subject", "from", "to", "cc")]
    for part in message.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        filename = str(part.get_filename() or "")
        chunks.append(filename)
        if part.get_content_maintype() == "text" and not is_document(payload):
            text = payload.decode(part.get_content_charset() or "utf-8", "replace") \
                if _known_charset(part.get_content_charset()) else _decode_text(payload)
            chunks.append(html_with_labels(text, limit) if part.get_content_subtype() == "html"
                          else text)
        else:
            chunks.append(member_text(filename, payload, limit, depth + 1))
    return "\n".join(chunks)


def _known_charset(charset: str | None) -> bool:
    import codecs

    if not charset:
        return False
    try:
        codecs.lookup(charset)
    except LookupError:
        return False
    return True


def _tar_text(payload: bytes, limit: int, depth: int) -> str:
    """A tar archive (plain, gzip, bzip2 or xz): names and files, like a ZIP.
    A compressed file that is not a tar is the one file inside it."""
    import bz2
    import gzip
    import lzma
    import tarfile

    if depth > _MAX_DEPTH:
        raise Unreadable("an archive inside an archive is not read")
    try:
        if payload.startswith(_COMPRESSED):
            raw = io.BytesIO(payload)
            stream: io.BufferedIOBase = (
                gzip.GzipFile(fileobj=raw) if payload[:1] == b"\x1f"
                else bz2.BZ2File(raw) if payload[:1] == b"B" else lzma.LZMAFile(raw))
            with stream:
                inner = stream.read(_left() + 1)
            spend(len(inner))
            if inner[257:262] != b"ustar":
                return member_text("", inner, limit, depth + 1)
            payload = inner
        chunks: list[str] = []
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:") as archive:
            members = archive.getmembers()
            if len(members) > MAX_ZIP_MEMBERS:
                raise Unreadable(f"the archive has more than {MAX_ZIP_MEMBERS} entries")
            for member in members:
                chunks.append(member.name)
                if member.isfile():
                    member_file = archive.extractfile(member)
                    data = member_file.read(_left() + 1) if member_file is not None else b""
                    spend(len(data))
                    chunks.append(member_text(member.name, data, limit, depth + 1))
        return "\n".join(chunks)
    except Unreadable:
        raise
    except (OSError, EOFError, ValueError, tarfile.TarError, lzma.LZMAError) as exc:
        raise Unreadable(f"the archive cannot be read ({type(exc).__name__})") from None


def _read(archive: zipfile.ZipFile, member: zipfile.ZipInfo, most: int | None = None) -> bytes:
    """The decompressed bytes of ``member``, counted against the document's
    budget: a ZIP bomb that inflates past it is unreadable, never read to the
    end."""
    budget = _left() if most is None else most
    with archive.open(member) as stream:
        data = stream.read(budget + 1)
    if len(data) > budget:
        raise Unreadable("the ZIP file inflates past the size limit")
    if most is None:
        spend(len(data))
    return data


# Text kept in attributes: picture descriptions and titles (alt text), pivot
# cache values, XPS glyph runs.
_TEXT_ATTRS = re.compile(r'\b(?:descr|title|v|UnicodeString)="([^"<>]{1,4096})"')


def _xml_text(data: bytes, *, properties: bool = False) -> str:
    """Text of an XML part; in document properties (title, author, keywords)
    every element is a field of its own."""
    text = data.decode("utf-8", "replace")
    names = " ".join(_SHEET_NAME.findall(text) + _TEXT_ATTRS.findall(text))
    text = _ANY_TAG.sub(" ", text) if properties else _ANY_TAG.sub(
        "", _BREAK_TAG.sub(" ", _CELL_END.sub("\t", text)))
    return html.unescape(f"{names} {text}" if names else text)


# ------------------------------------------------------------- RTF, OLE2

_RTF_HEX = re.compile(rb"\\'([0-9a-fA-F]{2})")
_RTF_UNICODE = re.compile(rb"\\u(-?\d{1,5}) ?(\\'[0-9a-fA-F]{2}|\?)?")
_RTF_BREAK = re.compile(rb"\\(par|line|tab|cell|row|sect|page)\b ?")
_RTF_CONTROL = re.compile(rb"\\[a-zA-Z]+-?\d* ?|\\[^a-zA-Z]|[{}]")
# Destinations whose text is not shown: fonts, colours, styles, pictures, ...
_RTF_HIDDEN = re.compile(
    rb"\{(?:\\\*)?\\(fonttbl|colortbl|stylesheet|pict|objdata|themedata|colorschememapping"
    rb"|latentstyles|datastore|generator|rsidtbl|listtable|listoverridetable)\b")


_RTF_SOURCE_BREAK = re.compile(rb"(\\[a-zA-Z]+-?\d*)?\r?\n")


_RTF_SPECIAL = {b"\\~": b" ", b"\\_": b"-", b"\\-": b""}  # nbsp, nb hyphen, optional hyphen


def rtf_text(payload: bytes) -> str:
    # Line breaks in RTF source are not text: a control word they end keeps
    # a space as its delimiter, any other is dropped ("Ja\nne" is "Jane").
    data = _RTF_SOURCE_BREAK.sub(lambda m: (m.group(1) + b" ") if m.group(1) else b"",
                                 payload.replace(b"\\\r\n", b"\\par ").replace(b"\\\n", b"\\par "))
    for symbol, replacement in _RTF_SPECIAL.items():
        data = data.replace(symbol, replacement)
    data = _strip_groups(data)
    data = _RTF_BREAK.sub(b"\n", data)  # a newline: a control word's one space can't take it
    data = _RTF_UNICODE.sub(lambda m: _code_point(int(m.group(1))), data)
    data = _RTF_HEX.sub(lambda m: bytes([int(m.group(1), 16)]), data)
    data = _RTF_CONTROL.sub(b"", data)
    return data.decode("cp1252", "replace")


def _code_point(value: int) -> bytes:
    char = chr(value % 65536) if value >= -32768 else "?"
    return char.encode("cp1252", "replace")


def _strip_groups(data: bytes) -> bytes:
    """``data`` without the groups of hidden destinations (font tables, ...)."""
    out = bytearray()
    pos = 0
    for found in _RTF_HIDDEN.finditer(data):
        if found.start() < pos:
            continue  # inside a group already removed
        out += data[pos:found.start()]
        depth, i = 0, found.start()
        while i < len(data):
            c = data[i]
            if c == 0x5C:  # backslash: skip the escaped character
                i += 2
                continue
            if c == 0x7B:
                depth += 1
            elif c == 0x7D:
                depth -= 1
                if depth == 0:
                    i += 1
                    break
            i += 1
        if depth > 0:  # the end of the file inside a hidden group: the rest is lost
            raise Unreadable("the RTF file ends inside an unclosed group")
        pos = i
    out += data[pos:]
    return bytes(out)


_OLE2: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def _ole2_text(payload: bytes) -> str:
    if _ole2_encrypted(payload):
        raise Unreadable("the Office file is encrypted with a password")
    return _strings(payload)


def _ole2_encrypted(payload: bytes) -> bool:
    """Whether an OLE2 file holds an encrypted document.

    Office 2007+ files with a password are OLE2 files with an
    ``EncryptedPackage`` stream (MS-OFFCRYPTO); Word 97-2003 sets fEncrypted
    in the FIB at the start of its WordDocument stream; Excel 97-2003 puts a
    FILEPASS record right after the workbook's BOF record. Streams start on
    sector boundaries (512 bytes in version 3 files, 4096 in version 4).
    """
    if "EncryptedPackage".encode("utf-16-le") in payload:
        return True
    sector = 4096 if payload[0x1A:0x1C] == b"\x04\x00" else 512
    for start in range(sector, len(payload) - 32, sector):
        if payload[start:start + 2] == b"\xec\xa5":  # Word FIB: wIdent 0xA5EC
            flags = int.from_bytes(payload[start + 0x0A:start + 0x0C], "little")
            if flags & 0x0100:  # fEncrypted
                return True
        elif payload[start:start + 4] == b"\x09\x08\x10\x00":  # Excel BIFF8 BOF, 16 bytes
            if payload[start + 20:start + 22] == b"\x2f\x00":  # FILEPASS follows
                return True
    return False


_ASCII_RUN = re.compile(rb"[\x20-\x7e\t\r\n]{4,}")
_LATIN1_RUN = re.compile(rb"[\x20-\x7e\t\r\n\xa0-\xff]{4,}")  # with accented letters (José)
_UTF16_RUN = re.compile(rb"(?:[\x20-\x7e\t\r\n]\x00|[\xa0-\xff]\x00){4,}")


def _strings(payload: bytes) -> str:
    """Readable runs of an OLE2 file (Word 97-2003, Excel 97-2003, Outlook .msg):
    their text is stored uncompressed, as 8-bit or UTF-16LE characters."""
    runs = [m.group().decode("ascii") for m in _ASCII_RUN.finditer(payload)]
    # Runs with Windows-1252 letters too, as well as (not instead of) the plain
    # ones: a stray high byte next to "Jane" must not turn it into "ÿJane".
    runs += [m.group().decode("cp1252", "replace") for m in _LATIN1_RUN.finditer(payload)
             if not m.group().isascii()]
    runs += [m.group().decode("utf-16-le", "replace") for m in _UTF16_RUN.finditer(payload)]
    return "\n".join(runs)
