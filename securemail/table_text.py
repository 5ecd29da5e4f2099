"""Tables as a reader takes them in: a value read with its column's heading.

A roster or an export from the practice's records system is a table: a
heading row ("Last name", "First name", "DOB", "MRN") over one row per
client. In the file the heading and the value are rows apart, so a detector
that looks for "DOB" followed by a date finds nothing. :func:`labelled_rows`
writes again the values of the columns the detectors know by their label (a
date of birth, an SSN, a medical record number, a diagnosis), each after
that label: ``"DOB: 03/14/1985; MRN: 448812"``. :func:`csv_rows` splits CSV
and TSV text into rows for it.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

__all__ = ["csv_rows", "html_with_labels", "labelled_rows", "labelled_tables", "markup_tables",
           "with_labelled_rows"]

MAX_HEADING: Final = 80  # characters: a longer cell is a value, not a column heading
HEADING_WITHIN: Final = 25  # rows: where a table's heading row is looked for

# Headings of the columns whose values the detectors recognise by a label
# before them (securemail.phi), and the label each is written with. Other
# columns are read in their rows; repeating them would only bring a large
# table nearer the scan limit.
_LABELS: Final = (
    ("DOB", re.compile(r"\b(?:d\.?\s?o\.?\s?b|birth|born)", re.IGNORECASE)),
    ("SSN", re.compile(r"\b(?:ssn|social\s+security|soc\.?\s?sec)", re.IGNORECASE)),
    ("MRN", re.compile(r"\b(?:mrn|medical\s+record|med\.?\s?rec)", re.IGNORECASE)),
    ("Diagnosis", re.compile(r"\b(?:diagn|dx\b|icd|impression)", re.IGNORECASE)),
)
_HAS_LETTER = re.compile(r"[^\W\d_]")
_VALUE_LIKE = re.compile(r"^[\W\d_]*$|\d{1,4}[/.-]\d{1,2}[/.-]\d{2,4}")  # a number, a date


def labelled_rows(rows: Iterable[Sequence[str]], limit: int) -> str:
    """The labelled values of the rows below the table's heading row, one
    line per row: ``"DOB: 03/14/1985; Diagnosis: F32.1"``.

    The heading row is the first of the first :data:`HEADING_WITHIN` rows
    with two or more cells, all of them short text that is not a number or
    a date, one of them the heading of a labelled column ("DOB", "Date of
    birth (MM/DD/YYYY)", "ICD-10", "MRN"); a title row above it ("Practice",
    "Riverside Counselling") is passed over. Nothing comes back for a table
    without one. At most ``limit`` characters (the rest is left out: the
    caller scans the table's own text as well).
    """
    labels: dict[int, str] | None = None
    lines: list[str] = []
    size = 0
    for number, row in enumerate(rows):
        if labels is None:
            if number >= HEADING_WITHIN:
                return ""
            labels = _heading_labels(row)
            continue
        pairs = [f"{labels[i]}: {' '.join(row[i].split())}" for i in labels
                 if i < len(row) and row[i].strip()]
        if not pairs:
            continue
        line = "; ".join(pairs)
        size += len(line) + 1
        if size > limit:
            break
        lines.append(line)
    return "\n".join(lines)


def _heading_labels(row: Sequence[str]) -> dict[int, str] | None:
    """The labelled columns of a heading row (index -> label), or None if
    ``row`` is not one."""
    filled = [c.strip() for c in row if c.strip()]
    if len(filled) < 2 or not all(len(c) <= MAX_HEADING and _HAS_LETTER.search(c)
                                  and not _VALUE_LIKE.search(c) for c in filled):
        return None
    labels = {}
    for i, cell in enumerate(row):
        for label, heading in _LABELS:
            if heading.search(cell):
                labels[i] = label
                break
    return labels or None


def csv_rows(text: str, *, tab_separated: bool = False) -> Iterator[list[str]]:
    """The rows of CSV (or TSV) text, one at a time; the separator is the
    one of ``,``, ``;`` (Excel in much of Europe) and tab that the first line
    uses most. Rows stop where the text stops being well-formed CSV."""
    first = text[:4096].split("\n", 1)[0]
    delimiter = "\t" if tab_separated else max(",;\t", key=first.count)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    while True:
        try:
            yield next(reader)
        except (StopIteration, csv.Error):  # the end; a field past csv's size limit
            return


def with_labelled_rows(text: str, name: str, limit: int) -> str:
    """CSV or TSV ``text``, then its labelled values (if it has a heading
    row), in at most ``limit`` characters in all."""
    room = limit - len(text)
    if room <= 0:
        return text
    head = text[:65536]  # the heading row is near the top: rows are parsed past it only
    rows = csv_rows(text, tab_separated=name.lower().endswith(".tsv"))
    first = list(itertools.islice(csv_rows(head, tab_separated=name.lower().endswith(".tsv")),
                                  HEADING_WITHIN))
    if not any(_heading_labels(r) for r in first):
        return text
    labelled = labelled_rows(rows, room)
    return f"{text}\n{labelled}" if labelled else text


# Tables in markup: HTML (<tr>, <td>/<th>), Word (<w:tr>, <w:tc>), PowerPoint
# (<a:tr>, <a:tc>) and OpenDocument (<table:table-row>, <table:table-cell>).
_ROWS: Final = frozenset({"tr", "w:tr", "a:tr", "table:table-row"})
_CELLS: Final = frozenset({"td", "th", "w:tc", "a:tc", "table:table-cell",
                           "table:covered-table-cell"})
_TABLES: Final = frozenset({"table", "w:tbl", "a:tbl", "table:table"})
# Tags, runs of text; possessive, so hostile markup is read in linear time.
_MARKUP_TOKEN = re.compile(r"<(/?)([\w:.-]{1,64}+)([^<>]{0,4096}+)>|([^<]++)|<")
_REPEATED = re.compile(r'number-columns-repeated\s*+=\s*+"(\d{1,9}+)"')
MAX_REPEAT: Final = 50  # a repeated cell (OpenDocument) counts this often at most
MAX_MARKUP_TOKENS: Final = 2_000_000


def markup_tables(markup: str, limit: int) -> list[list[list[str]]]:
    """The tables in ``markup``, each a list of rows of cell texts (tags
    removed, entities decoded); a table inside a cell is a table of its own.
    At most ``limit`` characters of cell text are gathered; the tables end
    there."""
    import html

    tables: list[list[list[str]]] = []
    stack: list[tuple[list[list[str]], list[str] | None, list[str] | None, int]] = []
    size = 0
    for count, m in enumerate(_MARKUP_TOKEN.finditer(markup)):
        if count >= MAX_MARKUP_TOKENS or size > limit:
            break
        text = m.group(4)
        if text is not None:
            if stack and stack[-1][2] is not None:
                stack[-1][2].append(html.unescape(text) if "&" in text else text)
                size += len(text)
            continue
        name = (m.group(2) or "").lower()
        closing = m.group(1) == "/"
        if name in _TABLES:
            if not closing:
                stack.append(([], None, None, 1))
            elif stack:
                rows, row, cell, repeat = stack.pop()
                _end_row(rows, row, cell, repeat)
                tables.append(rows)
        elif not stack:
            continue
        elif name in _ROWS:
            rows, row, cell, repeat = stack[-1]
            _end_row(rows, row, cell, repeat)
            stack[-1] = (rows, None if closing else [], None, 1)
        elif name in _CELLS:
            rows, row, cell, repeat = stack[-1]
            if row is not None and cell is not None:
                row.extend([" ".join("".join(cell).split())] * repeat)
            found = _REPEATED.search(m.group(3)) if not closing else None
            repeat = min(int(found.group(1)), MAX_REPEAT) if found else 1
            opened = not closing and not m.group(3).endswith("/")
            if not closing and m.group(3).endswith("/") and row is not None:
                row.extend([""] * repeat)  # an empty cell: <table:table-cell/>
            stack[-1] = (rows, row, [] if opened else None, repeat)
        elif name in ("br", "w:br", "text:line-break", "p", "w:p", "text:p", "a:p") and \
                stack[-1][2] is not None:
            stack[-1][2].append(" ")
    while stack:  # tables never closed
        rows, row, cell, repeat = stack.pop()
        _end_row(rows, row, cell, repeat)
        tables.append(rows)
    return tables


def _end_row(rows: list[list[str]], row: list[str] | None, cell: list[str] | None,
             repeat: int) -> None:
    if row is None:
        return
    if cell is not None:
        row.extend([" ".join("".join(cell).split())] * repeat)
    rows.append(row)


def labelled_tables(markup: str, limit: int) -> str:
    """:func:`labelled_rows` of every table in ``markup``: "" when it has
    none, or none with a labelled column."""
    if not _HAS_TABLE.search(markup) or not any(h.search(markup) for _, h in _LABELS):
        return ""  # (most HTML mail has layout tables: tokenized only when worth it)
    out: list[str] = []
    for rows in markup_tables(markup, limit):
        text = labelled_rows(rows, limit)
        if text:
            out.append(text)
            limit -= len(text) + 1
            if limit <= 0:
                break
    return "\n".join(out)


_HAS_TABLE = re.compile(r"<(?:table|w:tbl|a:tbl|table:table)\b", re.IGNORECASE)


def html_with_labels(markup: str, limit: int) -> str:
    """The text of HTML as a mail program shows it, then the labelled values
    of its tables (an export from a records system: "DOB" over a column),
    in at most ``limit`` characters more than the text."""
    from securemail.markup import html_text

    text = html_text(markup)
    labelled = labelled_tables(markup, limit)
    return f"{text}\n{labelled}" if labelled else text
