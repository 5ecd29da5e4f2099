"""The text of PDF attachments, for the PHI detectors (see :mod:`securemail.documents`).

What a reader of the file sees and what the file holds: the text of each
page (pypdf), comments and sticky notes, filled-in form fields, metadata,
embedded files, and the lines of earlier revisions that an incremental save
(a "redaction", an edit, a signature) left in the bytes. Letter-spaced lines
("J a n e  R o e") are read once more as words. An empty owner password is
tried, as every PDF reader does; a user password, no text at all (a scan),
more than :data:`MAX_PDF_PAGES` pages or :data:`PDF_SECONDS` of reading make
the file :class:`~securemail.documents.Unreadable`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import time
import warnings
from typing import TYPE_CHECKING, Any, Final

from securemail.documents import Unreadable, member_text

if TYPE_CHECKING:
    from pypdf import PdfReader

__all__ = ["MAX_PDF_PAGES", "MAX_PDF_REVISIONS", "PDF_SECONDS", "pdf_text"]

MAX_PDF_PAGES: Final = 500
logging.getLogger("pypdf").setLevel(logging.CRITICAL)  # its warnings may quote the file


PDF_SECONDS: Final = 30.0  # reading one PDF's text may take this long, no longer


MAX_PDF_REVISIONS: Final = 16  # earlier revisions read, newest first


def pdf_text(payload: bytes, limit: int, depth: int) -> str:
    """The text of a PDF (see the module's docstring); raises
    :class:`~securemail.documents.Unreadable` when it cannot be read in full."""
    from pypdf import PdfReader

    deadline = time.monotonic() + PDF_SECONDS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = PdfReader(io.BytesIO(payload))
            if reader.is_encrypted and not reader.decrypt(""):
                raise Unreadable("the PDF is encrypted with a password")
            if len(reader.pages) > MAX_PDF_PAGES:
                raise Unreadable(f"the PDF has more than {MAX_PDF_PAGES} pages")
            read: set[bytes] = set()  # page contents whose text is read (by digest)
            texts = _revision_text(reader, limit, deadline, read)
            if not "".join(texts).strip() and len(reader.pages):
                raise Unreadable("the PDF has no text to read (a scan or an image)")
            size = sum(map(len, texts))
            texts.extend(_earlier_revisions_text(payload, texts, limit - size, deadline, read))
            size = sum(map(len, texts))
            info = reader.metadata
            if info is not None:  # what a reader's Properties dialog shows
                texts.extend(str(info.get(k, "")) for k in ("/Title", "/Subject", "/Keywords"))
            # Files embedded in the PDF (attachments, portfolios).
            for name, contents in reader.attachments.items():
                for data in contents:
                    texts.append(name)  # "Jane_Roe_labs.pdf" says as much as its text
                    texts.append(member_text(name, data, limit - size, depth + 1))
    except Unreadable:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser fault: the PDF is unreadable
        raise Unreadable(f"the PDF cannot be read ({type(exc).__name__})") from None
    return "\n".join(texts)


def _revision_text(reader: PdfReader, limit: int, deadline: float,
                   read: set[bytes]) -> list[str]:
    """The text of each page, its comments, and the filled-in form fields.
    A page whose content stream and resources were read already (the same
    page in another revision: their digests are in ``read``) is not read
    again; the digests of the pages read are added."""
    texts: list[str] = []
    size = 0
    for page in reader.pages:
        if time.monotonic() > deadline:
            raise Unreadable(f"the PDF takes more than {PDF_SECONDS:.0f} s to read")
        digest = _page_digest(page)
        text = ""
        if digest not in read:
            read.add(digest)
            text = _with_unspaced(page.extract_text() or "")
        # Comments, sticky notes and free-text boxes drawn on the page.
        for annot in page.get("/Annots") or ():
            obj = annot.get_object()
            text += "".join(f"\n{obj[k]}" for k in ("/Contents", "/T")
                            if isinstance(obj.get(k), str))
        texts.append(text)
        size += len(text)
        if size > limit:
            break
    # A filled-in form: the values of its fields.
    fields = reader.get_fields() or {}
    texts.extend(str(f.get("/V")) for f in fields.values() if isinstance(f.get("/V"), str))
    return texts


def _page_digest(page: Any) -> bytes:
    """What a page's text is made of, byte for byte: its content stream, and
    of every font and form XObject it uses (nested forms too) the bytes that
    decide its text (a form's stream; a font's name, encoding and ToUnicode
    map). An update that changes any of them, in place or under a new
    number, changes the digest."""
    digest = hashlib.sha256()
    contents = page.get_contents()
    digest.update(contents.get_data() if contents is not None else b"")
    _digest_resources(digest, page.get("/Resources"), depth=0)
    return digest.digest()


_MAX_FORM_DEPTH: Final = 4


def _digest_resources(digest: Any, resources: Any, depth: int) -> None:
    resources = _resolved(resources)
    if not isinstance(resources, dict):
        return
    fonts = _resolved(resources.get("/Font"))
    for name, font in sorted(fonts.items()) if isinstance(fonts, dict) else ():
        font = _resolved(font)
        digest.update(b"\0font " + str(name).encode())
        if isinstance(font, dict):
            for key in ("/BaseFont", "/Subtype", "/Encoding", "/Differences"):
                digest.update(repr(_resolved(font.get(key))).encode())
            to_unicode = _resolved(font.get("/ToUnicode"))
            if hasattr(to_unicode, "get_data"):
                digest.update(to_unicode.get_data())
    xobjects = _resolved(resources.get("/XObject"))
    for name, xobject in sorted(xobjects.items()) if isinstance(xobjects, dict) else ():
        xobject = _resolved(xobject)
        digest.update(b"\0xobject " + str(name).encode())
        if isinstance(xobject, dict) and xobject.get("/Subtype") == "/Form":
            if depth >= _MAX_FORM_DEPTH:
                digest.update(str(id(xobject)).encode())  # too deep to compare: never equal
                continue
            digest.update(xobject.get_data() if hasattr(xobject, "get_data") else b"")
            _digest_resources(digest, xobject.get("/Resources"), depth + 1)


def _resolved(value: Any) -> Any:
    return value.get_object() if hasattr(value, "get_object") else value


# Letter-spaced text (CSS letter-spacing, Word's expanded spacing) comes out
# of a PDF one glyph at a time: "J a n e  R o e", words two spaces apart.
_SPACED_RUN = re.compile(r"(?<!\S)(?:\S ){2,}\S(?!\S)")


def _with_unspaced(text: str) -> str:
    """``text``, plus each letter-spaced line again as words ("Jane Roe")."""
    joined = [_SPACED_RUN.sub(lambda m: m.group(0)[::2], line) for line in text.splitlines()]
    extra = [" ".join(j.split()) for j, line in zip(joined, text.splitlines(), strict=True)
             if j != line]
    if not extra:
        return text
    return text + ("" if text.endswith("\n") else "\n") + "\n".join(extra)


# Each revision of a PDF ends "startxref <offset> %%EOF"; a "%%EOF" without it
# (in a stream, a stray line at the end) ends none.
_REVISION_END = re.compile(rb"startxref[ \t\r\n]{1,8}(\d{1,20})[ \t\r\n]{1,8}%%EOF[ \t\r\n]{0,2}")


def _earlier_revisions_text(payload: bytes, current: list[str], limit: int,
                            deadline: float, read: set[bytes]) -> list[str]:
    """Lines that earlier revisions of the file show and the last one does not.

    A PDF saved with changes (Acrobat's "Save", a filled-in form, a signature)
    keeps every earlier revision in the file, each ending in ``startxref``
    and ``%%EOF``; an "edit" or "redaction" made that way leaves the original
    text in the bytes sent, for anyone with a text editor or a forensic
    reader to find. The last :data:`MAX_PDF_REVISIONS` revisions before the
    final one are read (pages unchanged since are not read again). A
    revision that cannot be read is passed over: the file as a reader shows
    it was read in full.
    """
    from pypdf import PdfReader

    ends: dict[bytes, int] = {}  # a revision's xref offset -> where it ends
    for m in _REVISION_END.finditer(payload):
        ends.setdefault(m.group(1), m.end())  # a repeated end (stray %%EOF lines) is one
    final = max(ends.values(), default=0)
    earlier_ends = sorted(end for end in ends.values() if end < final)
    seen = {line.strip() for text in current for line in text.splitlines()}
    found: list[str] = []
    for end in reversed(earlier_ends[-MAX_PDF_REVISIONS:]):
        try:
            earlier = PdfReader(io.BytesIO(payload[:end]))
            if earlier.is_encrypted and not earlier.decrypt(""):
                continue
            if len(earlier.pages) > MAX_PDF_PAGES:
                continue
            texts = _revision_text(earlier, limit, deadline, read)
        except Unreadable:
            raise
        except Exception:  # noqa: BLE001, S112 - a partial revision (a linearized file's first)
            continue
        for text in texts:
            for line in text.splitlines():
                if line.strip() and line.strip() not in seen:
                    seen.add(line.strip())
                    found.append(line)
                    limit -= len(line) + 1
                    if limit < 0:
                        raise Unreadable("the document's text is past the scan limit")
    return found
