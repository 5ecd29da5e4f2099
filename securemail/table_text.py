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

import contextlib
import contextvars
import csv
import io
import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

import ahocorasick_rs

from securemail.xml_tokens import tokens

__all__ = ["csv_rows", "html_with_labels", "is_tab_table", "labelled_rows", "labelled_tables",
           "markup_tables", "token_budget", "with_labelled_rows"]

MAX_HEADING: Final = 80  # characters: a longer cell is not a column heading
HEADING_WITHIN: Final = 25  # rows: where a table's heading row is looked for

# Headings of the columns whose values the detectors recognise by a label
# before them (securemail.phi), and the label each is written with. Other
# columns are read in their rows; repeating them would only bring a large
# table nearer the scan limit.
_LABELS: Final = (
    ("DOB", re.compile(r"\b(?:d\.?\s?o\.?\s?b|birth|born)", re.IGNORECASE)),
    ("SSN", re.compile(r"\b(?:ssn|ss\s?#|ss\s?no\b|social\s+security|soc\.?\s?sec)",
                       re.IGNORECASE)),
    ("MRN", re.compile(r"\b(?:mrn|medical\s+record|med\.?\s?rec|chart\s?(?:#|no\b|number))",
                       re.IGNORECASE)),
    ("Diagnosis", re.compile(r"\b(?:diag|dx|icd|impression)", re.IGNORECASE)),
)
# Words one of them needs, lower case: a text with none of them has no
# labelled column. (One Aho-Corasick pass over the lowered text: ~0.05 ms for
# a 40 KiB HTML mail, where a case-insensitive regex of the headings took 2 ms.)
_LABEL_WORDS: Final = ("dob", "d.o.b", "d o b", "birth", "born", "ssn", "ss#", "ss #", "ss no",
                       "social", "soc sec", "soc. sec", "mrn", "medical", "med rec", "med. rec",
                       "chart", "diag", "dx", "icd", "impression")


_LABEL_WORD_FINDER = ahocorasick_rs.AhoCorasick(_LABEL_WORDS)


def _may_have_labels(text: str) -> bool:
    return bool(_LABEL_WORD_FINDER.find_matches_as_indexes(text.lower()))
_NUMBER = re.compile(r"^[\d\s.,:;%$()+/-]*\d[\d\s.,:;%$()+/-]*$")
_DATE = re.compile(r"\d{1,4}[/.-]\d{1,2}[/.-]\d{2,4}")


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
    ``row`` is not one: two or more filled cells, none a number or a date,
    one at least a short heading of a labelled column."""
    filled = [c.strip() for c in row if c.strip()]
    if len(filled) < 2 or any(_NUMBER.match(c) or _DATE.search(c) for c in filled):
        return None
    labels = {}
    for i, cell in enumerate(row):
        if len(cell) > MAX_HEADING:
            continue
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


def is_tab_table(text: str) -> bool:
    """Whether plain text is a table of tab-separated columns (Excel's "Text
    (Tab delimited)" and "Unicode Text" exports are ``.txt`` files): its first
    line holds two tabs or more."""
    return text[:4096].split("\n", 1)[0].count("\t") >= 2


def with_labelled_rows(text: str, name: str, limit: int) -> str:
    """CSV or TSV ``text``, then its labelled values (if it has a heading
    row), in at most ``limit`` characters in all."""
    room = limit - len(text)
    if room <= 0:
        return text
    head = text[:65536]  # the heading row is near the top: rows are parsed past it only
    tabs = name.lower().endswith((".tsv", ".txt")) or is_tab_table(text)
    rows = csv_rows(text, tab_separated=tabs)
    first = list(itertools.islice(csv_rows(head, tab_separated=tabs), HEADING_WITHIN))
    if not any(_heading_labels(r) for r in first):
        return text
    labelled = labelled_rows(rows, room)
    return f"{text}\n{labelled}" if labelled else text


# Tables in markup: HTML (<tr>, <td>/<th>), Word (<w:tr>, <w:tc>), PowerPoint
# (<a:tr>, <a:tc>) and OpenDocument (<table:table-row>, <table:table-cell>).
# Tag names without their prefix (w:tr, a:tr and tr are all "tr"), lower case.
_ROWS: Final = frozenset({"tr", "table-row"})
_CELLS: Final = frozenset({"td", "th", "tc", "table-cell", "covered-table-cell"})
_TABLES: Final = frozenset({"table", "tbl"})
_LINE_BREAKS: Final = frozenset({"br", "p", "line-break", "div"})
# A cell that stands for several columns: HTML colspan, OpenDocument's
# repeated cells, Word's <w:gridSpan w:val="2"/>.
_SPAN = re.compile(r"""\b(?:colspan|number-columns-repeated|w:val)\s*+=\s*+["']?+(\d{1,9}+)""",
                   re.IGNORECASE)
MAX_REPEAT: Final = 50  # columns one cell stands for, at most
MAX_ROW_CELLS: Final = 500  # cells of a row kept
MAX_MARKUP_TOKENS: Final = 500_000  # tags and runs of text read per call
MAX_DOCUMENT_TOKENS: Final = 1_000_000  # and per document, all its parts together

_TOKENS_LEFT: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "table_tokens_left", default=None)


@contextlib.contextmanager
def token_budget(tokens: int = MAX_DOCUMENT_TOKENS) -> Iterator[None]:
    """Bounds the markup read for tables by every :func:`markup_tables` call
    inside (the parts of one document)."""
    reset = _TOKENS_LEFT.set([tokens])
    try:
        yield
    finally:
        _TOKENS_LEFT.reset(reset)


@dataclass
class _Table:
    rows: list[list[str]] = field(default_factory=list)
    row: list[str] | None = None
    cell: list[str] | None = None
    span: int = 1

    def end_cell(self) -> int:
        """Ends the open cell; returns how many columns it added."""
        added = 0
        if self.cell is not None and self.row is not None:
            added = max(0, min(self.span, MAX_ROW_CELLS - len(self.row)))
            self.row.extend([" ".join("".join(self.cell).split())] * added)
        self.cell, self.span = None, 1
        return added

    def end_row(self) -> int:
        added = self.end_cell()
        if self.row is not None:
            self.rows.append(self.row)
        self.row = None
        return added


def markup_tables(markup: str, limit: int) -> list[list[list[str]]]:
    """The tables in ``markup``, each a list of rows of cell texts (tags
    removed, entities decoded, a cell spanning columns repeated); a table
    inside a cell is a table of its own. Reading stops after ``limit``
    characters of cell text (each column counts one more),
    :data:`MAX_MARKUP_TOKENS` tokens, or what is left of the document's
    :func:`token_budget`."""
    tables: list[list[list[str]]] = []
    stack: list[_Table] = []
    left = _TOKENS_LEFT.get()
    most = MAX_MARKUP_TOKENS if left is None else min(MAX_MARKUP_TOKENS, left[0])
    size = count = 0
    for count, (tag, closing, attrs, text) in enumerate(tokens(markup), start=1):
        if count > most or size > limit:
            break
        if not tag:
            if stack and stack[-1].cell is not None:
                stack[-1].cell.append(text)
                size += len(text)
            continue
        name = tag.lower()
        if name in _TABLES:
            if not closing:
                stack.append(_Table())
            elif stack:
                table = stack.pop()
                size += table.end_row()
                tables.append(table.rows)
        elif not stack:
            continue
        elif name in _ROWS:
            table = stack[-1]
            size += table.end_row()
            table.row = None if closing else []
        elif name in _CELLS:
            table = stack[-1]
            size += table.end_cell()
            if closing or table.row is None:
                continue
            found = _SPAN.search(attrs)
            table.span = min(int(found.group(1)), MAX_REPEAT) if found else 1
            table.cell = []
            if attrs.endswith("/"):  # an empty cell: <table:table-cell/>
                size += table.end_cell()
        elif name == "gridspan" and stack[-1].cell is not None:
            found = _SPAN.search(attrs)
            stack[-1].span = min(int(found.group(1)), MAX_REPEAT) if found else 1
        elif name in _LINE_BREAKS and stack[-1].cell is not None:
            stack[-1].cell.append(" ")
    if left is not None:
        left[0] -= count
    while stack:  # tables never closed
        table = stack.pop()
        table.end_row()
        tables.append(table.rows)
    return tables


def labelled_tables(markup: str, limit: int) -> str:
    """:func:`labelled_rows` of every table in ``markup``: "" when it has
    none, or none with a labelled column."""
    if not _HAS_TABLE.search(markup) or not _may_have_labels(markup):
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
    room = limit - len(text) - 1
    labelled = labelled_tables(markup, room) if room > 0 else ""
    return f"{text}\n{labelled}" if labelled else text
