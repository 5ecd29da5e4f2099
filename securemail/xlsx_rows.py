"""The rows of an Excel workbook (``.xlsx``) as Excel shows them.

In the file a worksheet holds numbers and indices: a text cell points into
the shared-strings part, which lists each distinct text once in the order it
was first typed, and a date is a serial number (days since 1899-12-30) that
only its cell style marks as a date. Read part by part, "Roe" and "Jane" of
one row can end up far apart and a date of birth reads "31120". This module
puts each cell's shown value back in its row: text resolved, dates written
as dates (``03/14/1985``), cells of a row separated by tabs.

The XML is read with a linear tokenizer (no DTDs, no entity expansion, no
backtracking); malformed parts give what could be read.
"""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Final

__all__ = ["date_styles", "shared_strings", "sheet_rows", "uses_1904"]

# A tag (its name without a namespace prefix, whether it closes, its
# attributes, whether it closes itself) or a run of text.
_TOKEN = re.compile(r"<(/?)(?:[\w.-]{1,64}:)?([\w.-]{1,64})([^<>]{0,4096}?)(/?)>|([^<]+)|<")
_ATTR = re.compile(r"""\b([\w:.-]{1,64})\s*=\s*(?:"([^"]{0,4096})"|'([^']{0,4096})')""")

# Built-in number formats that show a date (ECMA-376 18.8.30 and the East
# Asian ids Excel writes): 14-17, 22 (date and time), 27-36 and 50-58.
_BUILTIN_DATES: Final = frozenset({14, 15, 16, 17, 22, *range(27, 37), *range(50, 59)})
_LITERALS = re.compile(r'"[^"]*"|\\.|\[[^\]]*\]')  # quoted text, escapes, [Red], [$-409]
_MAX_SERIAL: Final = 2_958_465  # 9999-12-31


def _tokens(xml: bytes) -> Iterator[tuple[str, str, dict[str, str], bool, str]]:
    """``(tag, closing, attributes, self_closing, text)``: ``tag`` is "" for text."""
    for m in _TOKEN.finditer(xml.decode("utf-8", "replace")):
        if m.group(5) is not None:
            yield "", "", {}, False, html.unescape(m.group(5))
        elif m.group(2) is not None:
            attrs = {k.rsplit(":", 1)[-1]: html.unescape(double or single)
                     for k, double, single in _ATTR.findall(m.group(3))}
            yield m.group(2), m.group(1), attrs, m.group(4) == "/", ""


def shared_strings(xml: bytes) -> list[str]:
    """The shared-strings part as a list (rich-text runs joined, phonetic
    guides left out)."""
    strings: list[str] = []
    current: list[str] | None = None
    in_text = in_phonetic = False
    for tag, closing, _, self_closing, text in _tokens(xml):
        if tag == "si":
            if closing:
                if current is not None:
                    strings.append("".join(current))
                current = None
            elif self_closing:
                strings.append("")
            else:
                if current is not None:  # the last one was never closed
                    strings.append("".join(current))
                current = []
        elif tag == "rPh":
            in_phonetic = not closing and not self_closing
        elif tag == "t":
            in_text = not closing and not self_closing
        elif not tag and in_text and not in_phonetic and current is not None:
            current.append(text)
    return strings


def date_styles(xml: bytes) -> frozenset[int]:
    """Indices of the cell styles (``cellXfs``) whose number format shows a date."""
    custom: dict[int, str] = {}
    styles: list[int] = []
    in_cell_xfs = False
    for tag, closing, attrs, _, _ in _tokens(xml):
        if tag == "numFmt" and not closing:
            with contextlib.suppress(KeyError, ValueError):
                custom[int(attrs["numFmtId"])] = attrs.get("formatCode", "")
        elif tag == "cellXfs":
            in_cell_xfs = not closing
        elif tag == "xf" and in_cell_xfs and not closing:
            try:
                styles.append(int(attrs.get("numFmtId", "0")))
            except ValueError:
                styles.append(0)
    return frozenset(i for i, fmt in enumerate(styles)
                     if (fmt in custom and _shows_date(custom[fmt]))
                     or (fmt not in custom and fmt in _BUILTIN_DATES))


def _shows_date(code: str) -> bool:
    """Whether a number format code shows a date: it has a day or year, or
    months without hours or seconds ("mm" beside "h" or "s" is minutes)."""
    plain = _LITERALS.sub("", code.split(";", 1)[0]).lower()
    return bool(re.search("[dy]", plain)) or ("m" in plain and not re.search("[hs]", plain))


def uses_1904(workbook_xml: bytes) -> bool:
    """Whether the workbook counts days from 1904 (old Excel for Mac)."""
    for tag, _, attrs, _, _ in _tokens(workbook_xml):
        if tag == "workbookPr":
            return attrs.get("date1904", "").lower() in ("1", "true")
    return False


def sheet_rows(xml: bytes, shared: list[str], dates: frozenset[int], *,
               date1904: bool = False, limit: int,
               used: set[int] | None = None) -> list[list[str]]:
    """The worksheet's rows, each a list of the values its cells show, in
    order; stops once ``limit`` characters are gathered. The indices of the
    shared strings the cells show are added to ``used``."""
    rows: list[list[str]] = []
    row: list[str] | None = None
    cell: tuple[str, str] | None = None  # the open cell's type and style
    value: list[str] = []
    inline: list[str] = []
    where = ""  # the element whose text is being read: "v", "t" (inline) or ""
    size = 0

    def close_cell() -> None:
        nonlocal cell
        if cell is not None and row is not None:
            shown = "".join(value)
            if cell[0] == "s" and used is not None and shown.strip().isdigit():
                used.add(int(shown))
            row.append(_shown(cell[0], cell[1], shown, "".join(inline), shared, dates, date1904))
        cell = None

    for tag, closing, attrs, self_closing, text in _tokens(xml):
        if not tag:
            if where == "v":
                value.append(text)
            elif where == "t":
                inline.append(text)
        elif tag == "row":
            close_cell()  # a cell left open ends with its row
            if not closing and not self_closing:
                row = []
                continue
            if row is not None:  # </row>, or an empty <row/>
                rows.append(row)
                size += sum(map(len, row)) + len(row)
                if size > limit:
                    return rows
            row = None
        elif tag == "c":
            close_cell()
            if not closing:
                cell = (attrs.get("t", "n"), attrs.get("s", "0"))
                value, inline = [], []
                if self_closing:
                    close_cell()
        elif tag in ("v", "t"):
            where = "" if closing or self_closing else tag
    close_cell()  # a part cut short: its last row as far as it goes
    if row:
        rows.append(row)
    return rows


def _shown(kind: str, style: str, value: str, inline: str, shared: list[str],
           dates: frozenset[int], date1904: bool) -> str:
    if kind == "s":
        try:
            return shared[int(value)]
        except (ValueError, IndexError):
            return ""
    if kind == "inlineStr":
        return inline
    if kind in ("str", "e", "d"):  # formula text, an error such as #N/A, an ISO date
        return value
    if kind == "b":
        return "TRUE" if value.strip() == "1" else "FALSE"
    if style.isdigit() and int(style) in dates:
        return _date_text(value, date1904) or value
    return value


def _date_text(value: str, date1904: bool) -> str:
    """A date serial as ``MM/DD/YYYY`` (the time of day left out)."""
    try:
        serial = int(float(value))
    except (ValueError, OverflowError):
        return ""
    if not 1 <= serial <= _MAX_SERIAL:
        return ""
    if date1904:
        base = date(1904, 1, 1)
    else:
        # Excel counts a 29 February 1900 that never was (Lotus 1-2-3's bug).
        base = date(1899, 12, 31) if serial < 60 else date(1899, 12, 30)
    try:
        return (base + timedelta(days=serial)).strftime("%m/%d/%Y")
    except OverflowError:
        return ""
