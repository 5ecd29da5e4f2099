"""Tables as a reader takes them in: each value beside its column's heading.

A roster or an export from the practice's records system is a table: a
heading row ("Last name", "First name", "DOB", "MRN") over one row per client.
In the file the heading and the value are rows apart, so a detector that
looks for "DOB" followed by a date finds nothing. :func:`labelled_rows`
writes each row again with its headings ("DOB: 03/14/1985; MRN: 448812").
:func:`csv_rows` splits CSV and TSV text into rows for it.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from typing import Final

__all__ = ["csv_rows", "labelled_rows", "with_labelled_rows"]

MAX_HEADING: Final = 80  # characters: a longer cell is a value, not a column heading
_HAS_LETTER = re.compile(r"[^\W\d_]")
_HAS_DIGIT = re.compile(r"\d")


# Headings whose values the detectors recognise by a label before them
# (securemail.phi: a date of birth, an SSN, a record number, a diagnosis).
# Other columns are read in their rows; repeating them here would only
# bring a large table nearer the scan limit.
_LABEL_HEADING = re.compile(
    r"\b(?:d\.?o\.?b|birth|born|ssn|social security|mrn|medical record|diagn|dx|icd"
    r"|impression)", re.IGNORECASE)


def labelled_rows(rows: Iterable[Sequence[str]], limit: int) -> str:
    """The rows below the first heading row, one line each, with the values of
    the columns whose heading names a date of birth, an SSN, a medical record
    number or a diagnosis, each after its heading: ``"DOB: 03/14/1985; MRN:
    448812"``.

    A heading row has at least two cells, all of them short text with a
    letter and no digit. Nothing comes back for a table without one, or
    without such a column. At most ``limit`` characters (the rest is left
    out; the caller scans the table's own text as well).
    """
    headings: list[str] | None = None
    lines: list[str] = []
    size = 0
    for row in rows:
        cells = [" ".join(c.split()) for c in row]
        if headings is None:
            if _is_heading_row(cells):
                headings = cells
                if not any(_LABEL_HEADING.search(h) for h in headings):
                    return ""
            continue
        pairs = [f"{headings[i]}: {v}" for i, v in enumerate(cells)
                 if v and i < len(headings) and _LABEL_HEADING.search(headings[i])]
        if not pairs:
            continue
        line = "; ".join(pairs)
        size += len(line) + 1
        if size > limit:
            break
        lines.append(line)
    return "\n".join(lines)


def _is_heading_row(cells: Sequence[str]) -> bool:
    filled = [c for c in cells if c]
    return len(filled) >= 2 and all(
        len(c) <= MAX_HEADING and _HAS_LETTER.search(c) and not _HAS_DIGIT.search(c)
        for c in filled)


def csv_rows(text: str, *, tab_separated: bool = False) -> list[list[str]]:
    """The rows of CSV (or TSV) text; the separator is the one of ``,``,
    ``;`` (Excel in much of Europe) and tab that the first line uses most.
    Text that is not well-formed CSV gives no rows."""
    first = text[:4096].split("\n", 1)[0]
    delimiter = "\t" if tab_separated else max(",;\t", key=first.count)
    try:
        return list(csv.reader(io.StringIO(text), delimiter=delimiter))
    except csv.Error:  # a field past the csv module's size limit, a NUL byte
        return []


def with_labelled_rows(text: str, name: str, limit: int) -> str:
    """CSV or TSV ``text``, then its rows with their headings (if it has a
    heading row), in at most ``limit`` characters more."""
    rows = csv_rows(text, tab_separated=name.lower().endswith(".tsv"))
    labelled = labelled_rows(rows, max(0, limit - len(text)))
    return f"{text}\n{labelled}" if labelled else text
