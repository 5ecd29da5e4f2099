"""Documents made at test time: PDFs with text, for the PHI detector tests."""

from __future__ import annotations


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
