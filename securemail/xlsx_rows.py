"""The rows of an Excel workbook (``.xlsx``) as Excel shows them.

In the file a worksheet holds numbers and indices: a text cell points into
the shared-strings part, which lists each distinct text once in the order it
was first typed, and a date is a serial number (days since 1899-12-30) that
only its cell style marks as a date. Read part by part, "Roe" and "Jane" of
one row can end up far apart and a date of birth reads "31120". This module
puts each cell's shown value back in its row: text resolved, dates written
as dates (``03/14/1985``), cells of a row separated by tabs.

Nothing in a part is lost: text that is not a shown value (a formula, a
phonetic guide, stray text) is returned beside the rows. The XML is read
with a linear tokenizer (possessive quantifiers: no DTDs, no entity
expansion, no backtracking), at most :data:`MAX_TOKENS` tags and runs of
text per part; every text gathered counts against the caller's limit as it
is gathered, so a small file cannot unfold into gigabytes. Past either
bound :class:`TooLarge` is raised; malformed parts give what could be read.
"""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Final

from securemail.xml_tokens import tokens

__all__ = ["MAX_TOKENS", "SharedStrings", "SheetText", "TooLarge", "date_styles",
           "digit_patterns", "shared_strings", "sheet_text", "uses_1904"]

MAX_TOKENS: Final = 2_000_000  # tags and runs of text in one part (a 2 MiB text limit
# is passed at about 400,000 cells; this bounds the CPU a part of empty tags costs)

_ATTR = re.compile(r"""\b([\w:.-]{1,64}+)\s*+=\s*+(?:"([^"]{0,4096}+)"|'([^']{0,4096}+)')""")

# Built-in number formats that show a date (ECMA-376 18.8.30 and the East
# Asian ids Excel writes): 14-17, 22 (date and time), 27-36 and 50-58.
_BUILTIN_DATES: Final = frozenset({14, 15, 16, 17, 22, *range(27, 37), *range(50, 59)})
# Quoted text, escaped characters, and bracketed sections other than elapsed
# time ([h], [mm], [ss]): colours, conditions, locales ([Red], [>=100], [$-409]).
_LITERALS = re.compile(r'"[^"]*+"|\\.|\[(?![hms]++\])[^\]]*+\]', re.IGNORECASE)
_MAX_SERIAL: Final = 2_958_465  # 9999-12-31


class TooLarge(ValueError):
    """A part holds more than can be read: past the caller's text limit or
    :data:`MAX_TOKENS`."""


@dataclass
class SharedStrings:
    """The shared-strings part: each string (rich-text runs joined), and
    apart from them the text of phonetic guides (furigana) and any text
    outside a string."""

    strings: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)


@dataclass
class SheetText:
    """A worksheet: its rows as shown, and every other text in it."""

    rows: list[list[str]] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    used: set[int] = field(default_factory=set)  # shared strings its cells show


def _tokens(xml: bytes) -> Iterator[tuple[str, bool, str, str]]:
    """:func:`securemail.xml_tokens.tokens` of a part, at most :data:`MAX_TOKENS`."""
    for count, token in enumerate(tokens(xml.decode("utf-8", "replace"))):
        if count >= MAX_TOKENS:
            raise TooLarge(f"a part holds more than {MAX_TOKENS:,} tags")
        yield token


def _attrs(raw: str) -> dict[str, str]:
    return {k.rsplit(":", 1)[-1]: html.unescape(double or single)
            for k, double, single in _ATTR.findall(raw)}


def _int(text: str, default: int = -1) -> int:
    """An ASCII decimal number; ``default`` for anything else ("²" included)."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else default


def shared_strings(xml: bytes, limit: int) -> SharedStrings:
    """The shared-strings part, at most ``limit`` characters of it: text
    outside any string (after a malformed ``<si/>``) is kept with the
    phonetic guides."""
    out = SharedStrings()
    current: list[str] | None = None
    in_text = in_phonetic = False
    size = 0
    for tag, closing, raw, text in _tokens(xml):
        if tag == "si":
            if current is not None:  # </si>, or a new <si> after one never closed
                out.strings.append("".join(current))
            current = None if closing or raw.endswith("/") else []
            if raw.endswith("/"):
                out.strings.append("")
        elif tag == "rPh":
            in_phonetic = not closing and not raw.endswith("/")
        elif tag == "t":
            in_text = not closing and not raw.endswith("/")
        elif not tag and (in_text or text.strip()):
            size += len(text)
            if size > limit:
                raise TooLarge("the shared strings are past the scan limit")
            if in_text and not in_phonetic and current is not None:
                current.append(text)
            else:
                out.other.append(text)
    if current is not None:
        out.strings.append("".join(current))
    return out


def _cell_formats(xml: bytes) -> list[tuple[int, str]]:
    """Of each cell style (``cellXfs``, in order) its number format: the id,
    and the format code if the styles part defines it (custom formats)."""
    custom: dict[int, str] = {}
    styles: list[int] = []
    in_cell_xfs = False
    for tag, closing, raw, _ in _tokens(xml):
        if tag == "numFmt" and not closing:
            attrs = _attrs(raw)
            with contextlib.suppress(KeyError):
                custom[_int(attrs["numFmtId"])] = attrs.get("formatCode", "")
        elif tag == "cellXfs":
            in_cell_xfs = not closing and not raw.endswith("/")
        elif tag == "xf" and in_cell_xfs and not closing:
            styles.append(_int(_attrs(raw).get("numFmtId", "0"), 0))
    return [(fmt, custom.get(fmt, "")) for fmt in styles]


def date_styles(xml: bytes) -> frozenset[int]:
    """Indices of the cell styles (``cellXfs``) whose number format shows a date."""
    return frozenset(i for i, (fmt, code) in enumerate(_cell_formats(xml))
                     if (_shows_date(code) if code else fmt in _BUILTIN_DATES))


def _shows_date(code: str) -> bool:
    """Whether a number format code shows a date: it has a day or year, or
    months without hours or seconds ("mm" beside "h" or "s" is minutes).
    An elapsed time ("[h]:mm") is not a date."""
    plain = _LITERALS.sub("", code.split(";", 1)[0]).lower()
    if "[" in plain:  # [h], [mm], [ss]: a duration
        return False
    return bool(re.search("[dy]", plain)) or ("m" in plain and not re.search("[hs]", plain))


def digit_patterns(xml: bytes) -> dict[int, str]:
    """Cell styles whose number format is zeros and literal characters, such
    as Excel's Social Security Number ``000\\-00\\-0000`` or a ZIP code
    ``00000``: style index -> the pattern ("000-00-0000"). Such a number
    shows its leading zeros: 12345678 is "012-34-5678"."""
    patterns = {i: _digit_pattern(code) for i, (_, code) in enumerate(_cell_formats(xml))}
    return {i: pattern for i, pattern in patterns.items() if pattern}


_DIGIT_FORMAT = re.compile(r'(?:0|\\.|"[^"0-9]{0,20}+"|[-\s()/])++')


def _digit_pattern(code: str) -> str:
    """``000\\-00\\-0000`` -> "000-00-0000"; "" for any other format."""
    code = code.split(";", 1)[0]
    if not code or _DIGIT_FORMAT.fullmatch(code) is None or "0" not in code.replace("\\0", ""):
        return ""
    return re.sub(r'\\(.)|"([^"]*)"', lambda m: m.group(1) or m.group(2) or "", code)


def _with_digits(value: str, pattern: str) -> str:
    """An integer ``value`` shown through ``pattern``'s zeros; as it is otherwise."""
    if not (value.isascii() and value.isdigit()):
        return value
    zeros = pattern.count("0")
    digits = value.zfill(zeros)
    head, digits = digits[:len(digits) - zeros], digits[len(digits) - zeros:]
    it = iter(digits)
    first = pattern.index("0")  # digits past the zeros go before the first of them
    return pattern[:first] + head + "".join(next(it) if c == "0" else c
                                            for c in pattern[first:])


def uses_1904(workbook_xml: bytes) -> bool:
    """Whether the workbook counts days from 1904 (old Excel for Mac)."""
    for tag, _, raw, _ in _tokens(workbook_xml):
        if tag == "workbookPr":
            return _attrs(raw).get("date1904", "").lower() in ("1", "true")
    return False


def sheet_text(xml: bytes, shared: list[str], dates: frozenset[int], *, limit: int,
               date1904: bool = False, patterns: dict[int, str] | None = None) -> SheetText:
    """The worksheet's rows, each a list of the values its cells show, and
    every other text in the part (formulas, inline text not shown, text
    outside cells). Raises :class:`TooLarge` once more than ``limit``
    characters are gathered."""
    out = SheetText()
    row: list[str] | None = None
    cell: tuple[str, int] | None = None  # the open cell's type and style
    value: list[str] = []
    inline: list[str] = []
    where = ""  # the element whose text is being read: "v", "t" (inline) or another
    phonetic = False  # inside a phonetic guide (its <t> is not the cell's text)
    size = 0

    def count(text: str) -> None:
        nonlocal size
        size += len(text) + 1
        if size > limit:
            raise TooLarge("the worksheet's text is past the scan limit")

    def close_cell() -> None:
        nonlocal cell
        if cell is not None:
            raw_value, inline_text = "".join(value), "".join(inline)
            shown = _shown(cell[0], cell[1], raw_value, inline_text, shared, dates, date1904,
                           out)
            if patterns and cell[0] == "n" and cell[1] in patterns:
                shown = _with_digits(shown, patterns[cell[1]])
            count(shown)
            if row is not None:
                row.append(shown)
            else:
                out.other.append(shown)
            # Text a cell holds but does not show (inline text in a number or
            # shared-string cell, a value beside inline text): read as well.
            for unshown in (inline_text, raw_value if cell[0] == "inlineStr" else ""):
                if unshown.strip() and unshown != shown:
                    count(unshown)
                    out.other.append(unshown)
        cell = None

    for tag, closing, raw, text in _tokens(xml):
        if not tag:
            if where == "v" and cell is not None:
                value.append(text)
            elif where == "t" and cell is not None and not phonetic:
                inline.append(text)
            elif text.strip():
                count(text)
                out.other.append(text)  # a formula, a phonetic guide, a header, stray text
        elif tag == "row":
            close_cell()  # a cell left open ends with its row
            if row is not None:
                out.rows.append(row)
            row = [] if not closing and not raw.endswith("/") else None
        elif tag == "c":
            close_cell()
            if not closing:
                attrs = _attrs(raw)
                cell = (attrs.get("t", "n"), _int(attrs.get("s", "0"), 0))
                value, inline = [], []
                if raw.endswith("/"):
                    close_cell()
        elif tag in ("v", "t") and not raw.endswith("/"):
            where = "" if closing else tag
        elif tag == "rPh":
            phonetic = not closing and not raw.endswith("/")
        elif tag == "f":
            where = ""  # a formula's text is not the value: gathered as other text
    close_cell()  # a part cut short: its last row as far as it goes
    if row:
        out.rows.append(row)
    return out


def _shown(kind: str, style: int, value: str, inline: str, shared: list[str],
           dates: frozenset[int], date1904: bool, out: SheetText) -> str:
    if kind == "s":
        index = _int(value)
        if 0 <= index < len(shared):
            out.used.add(index)
            return shared[index]
        return value
    if kind == "inlineStr":
        return inline or value
    if kind in ("str", "e", "d"):  # formula text, an error such as #N/A, an ISO date
        return value
    if kind == "b":
        return "TRUE" if value.strip() == "1" else "FALSE"
    if style in dates:
        return _date_text(value, date1904) or value
    return value


def _date_text(value: str, date1904: bool) -> str:
    """A date serial as ``MM/DD/YYYY`` (the time of day left out)."""
    try:
        serial = int(float(value))
    except (ValueError, OverflowError):
        return ""
    if not 0 <= serial <= _MAX_SERIAL:
        return ""
    if date1904:
        try:
            return (date(1904, 1, 1) + timedelta(days=serial)).strftime("%m/%d/%Y")
        except OverflowError:  # past 9999-12-31
            return ""
    if serial == 60:  # the 29 February 1900 Lotus 1-2-3 invented, and Excel shows
        return "02/29/1900"
    if serial == 0:  # Excel's "00/01/1900"
        return ""
    base = date(1899, 12, 31) if serial < 60 else date(1899, 12, 30)
    return (base + timedelta(days=serial)).strftime("%m/%d/%Y")
