"""Documents made at test time: PDFs with text, for the PHI detector tests."""

from __future__ import annotations

import zlib


def pdf_with_text(*lines: str, pages: int = 1, annotation: str = "",
                  field_value: str = "") -> bytes:
    """A minimal, valid PDF 1.4 with ``lines`` on each of ``pages`` pages
    (Helvetica, WinAnsi encoding); ``annotation``: a sticky note on the first
    page; ``field_value``: a filled-in form field."""
    ops = ["BT", "/F1 12 Tf", "72 720 Td", "14 TL"]
    for line in lines:
        escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        ops.append(f"({escaped}) Tj T*")
    ops.append("ET")
    stream = "\n".join(ops).encode("latin-1")
    first_page = 5
    kids = " ".join(f"{first_page + i} 0 R" for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids.encode(), pages),
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ] + [b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R"
         b" /Resources << /Font << /F1 4 0 R >> >> >>"] * pages
    extra = first_page + pages  # the next object number
    if annotation:
        objects.append(b"<< /Type /Annot /Subtype /Text /Rect [10 10 30 30] /Contents (%s) >>"
                       % annotation.encode("latin-1"))
        objects[first_page - 1] = objects[first_page - 1][:-2] + b" /Annots [%d 0 R] >>" % extra
        extra += 1
    if field_value:
        objects.append(b"<< /FT /Tx /T (name) /V (%s) /Rect [0 0 0 0] >>"
                       % field_value.encode("latin-1"))
        objects[0] = b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields [%d 0 R] >> >>" % extra
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


def pdf_objects(objs: dict[int, str | tuple[str, bytes]], *, prev: tuple[int, int] | None = None,
                base: bytes = b"") -> tuple[bytes, tuple[int, int]]:
    """A PDF of the numbered objects (a string: the object; a pair: a stream's
    dictionary entries and its data), or with ``base`` and ``prev`` (the
    last result's second item) an incremental update of ``base`` that writes
    them. Object 1 is the catalog."""
    out = bytearray(base or b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for num in sorted(objs):
        offsets[num] = len(out)
        body = objs[num]
        if isinstance(body, tuple):
            entries, data = body
            out += (f"{num} 0 obj\n<< {entries} /Length {len(data)} >>\nstream\n".encode()
                    + data + b"\nendstream\nendobj\n")
        else:
            out += f"{num} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    size = max(max(objs) + 1, prev[1] if prev else 0)
    out += b"xref\n"
    if prev is None:
        out += f"0 {size}\n0000000000 65535 f \n".encode()
        out += b"".join(f"{offsets[n]:010d} 00000 n \n".encode() for n in range(1, size))
    else:
        out += b"".join(f"{n} 1\n{offsets[n]:010d} 00000 n \n".encode() for n in sorted(offsets))
    trailer = f"/Size {size} /Root 1 0 R" + (f" /Prev {prev[0]}" if prev else "")
    out += f"trailer\n<< {trailer} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out), (xref, size)


def text_stream(*lines: str) -> bytes:
    """Content that shows ``lines`` in font /F1."""
    return ("BT /F1 12 Tf\n" + "\n".join(f"1 0 0 1 72 {700 - 20 * i} Tm ({line}) Tj"
                                          for i, line in enumerate(lines)) + "\nET").encode()


def pdf_with_pages(pages: list[list[str]]) -> bytes:
    """A PDF whose pages each show their own ``lines`` (a content stream per
    page, compressed as most writers do: a reader cannot take one page's text
    for another's)."""
    count = len(pages)
    font = 3 + 2 * count
    objs: dict[int, str | tuple[str, bytes]] = {
        1: "<< /Type /Catalog /Pages 2 0 R >>",
        2: "<< /Type /Pages /Kids [" + " ".join(f"{3 + 2 * i} 0 R" for i in range(count))
           + f"] /Count {count} >>",
        font: "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"}
    for i, lines in enumerate(pages):
        objs[3 + 2 * i] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents"
                           f" {4 + 2 * i} 0 R /Resources << /Font << /F1 {font} 0 R >> >> >>")
        objs[4 + 2 * i] = ("/Filter /FlateDecode", zlib.compress(text_stream(*lines), 9))
    return pdf_objects(objs)[0]


def pdf_with_table(rows: list[list[str]]) -> bytes:
    """A one-page PDF that draws ``rows`` as a table does: each cell its own
    text object at its column's x, a row's cells on one baseline."""
    ops = ["BT /F1 10 Tf"]
    for r, cells in enumerate(rows):
        for c, cell in enumerate(cells):
            escaped = cell.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"1 0 0 1 {60 + 120 * c} {740 - 16 * r} Tm ({escaped}) Tj")
    ops.append("ET")
    objs: dict[int, str | tuple[str, bytes]] = {
        1: "<< /Type /Catalog /Pages 2 0 R >>",
        2: "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        3: ("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
            " /Resources << /Font << /F1 5 0 R >> >> >>"),
        4: ("", "\n".join(ops).encode("latin-1")),
        5: "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    }
    return pdf_objects(objs)[0]
