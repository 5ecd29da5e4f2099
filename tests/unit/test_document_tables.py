"""Tables in attachments (Excel workbooks, CSV, TSV): read row by row, values
beside their column headings, dates as dates.

A client roster exported to Excel used to leave in clear to an outsider:
Excel keeps each distinct text once, in the order it was first typed, so
"Jane" and "Roe" of one row were read far apart; a date of birth is a serial
number ("31120") that only its cell style makes a date; and "DOB" sits in
the heading row, rows away from the date under it.
"""

from __future__ import annotations

import datetime
import io
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemail.documents import document_text
from securemail.model import Action
from securemail.table_text import labelled_rows
from securemail.xlsx_rows import date_styles, shared_strings, sheet_rows
from tests.unit.test_document_text import decision, ooxml, plain_zip

openpyxl = pytest.importorskip("openpyxl")

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
MAIN = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
Cell = str | int | datetime.date


def excel_workbook(rows: list[list[Cell]], *, date_format_id: int = 14,
                   custom_format: str = "", date1904: bool = False) -> bytes:
    """An .xlsx written the way Excel writes one: text in the shared-strings
    part (each distinct text once, in first-typed order), dates as serial
    numbers with a date style (cellXfs index 1)."""
    shared: dict[str, int] = {}
    base = datetime.date(1904, 1, 1) if date1904 else datetime.date(1899, 12, 30)
    xml_rows = []
    for r, row in enumerate(rows, start=1):
        cells = []
        for c, value in enumerate(row):
            ref = f"{chr(65 + c)}{r}"
            if isinstance(value, str):
                index = shared.setdefault(value, len(shared))
                cells.append(f'<c r="{ref}" t="s"><v>{index}</v></c>')
            elif isinstance(value, datetime.date):
                cells.append(f'<c r="{ref}" s="1"><v>{(value - base).days}</v></c>')
            else:
                cells.append(f'<c r="{ref}"><v>{value}</v></c>')
        xml_rows.append(f'<row r="{r}">{"".join(cells)}</row>')
    strings = "".join(f"<si><t>{escape(s)}</t></si>" for s in shared)
    fmt_id = 164 if custom_format else date_format_id
    num_fmts = ('<numFmts count="1"><numFmt numFmtId="164" formatCode='
                f'{quoteattr(custom_format)}/></numFmts>' if custom_format else "")
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    sml = "application/vnd.openxmlformats-officedocument.spreadsheetml"
    parts = {
        "[Content_Types].xml":
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
            'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>'
            f'<Override PartName="/xl/workbook.xml" ContentType="{sml}.sheet.main+xml"/>'
            f'<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{sml}.worksheet+xml"/>'
            f'<Override PartName="/xl/sharedStrings.xml" ContentType="{sml}.sharedStrings+xml"/>'
            f'<Override PartName="/xl/styles.xml" ContentType="{sml}.styles+xml"/></Types>',
        "_rels/.rels":
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            f'<Relationship Id="rId1" Type="{rel}/officeDocument" Target="xl/workbook.xml"/>'
            "</Relationships>",
        "xl/_rels/workbook.xml.rels":
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            f'<Relationship Id="rId1" Type="{rel}/worksheet" Target="worksheets/sheet1.xml"/>'
            f'<Relationship Id="rId2" Type="{rel}/sharedStrings" Target="sharedStrings.xml"/>'
            f'<Relationship Id="rId3" Type="{rel}/styles" Target="styles.xml"/></Relationships>',
        "xl/workbook.xml": f'<workbook {MAIN} xmlns:r="{rel}"><workbookPr date1904='
                           f'"{int(date1904)}"/><sheets><sheet name="Clients" sheetId="1"'
                           ' r:id="rId1"/></sheets></workbook>',
        "xl/sharedStrings.xml": f'<sst {MAIN} count="{len(shared)}" uniqueCount="{len(shared)}">'
                                f"{strings}</sst>",
        "xl/styles.xml": f"<styleSheet {MAIN}>{num_fmts}<cellXfs count=\"2\">"
                         f'<xf numFmtId="0"/><xf numFmtId="{fmt_id}" applyNumberFormat="1"/>'
                         "</cellXfs></styleSheet>",
        "xl/worksheets/sheet1.xml": f"<worksheet {MAIN}><sheetData>{''.join(xml_rows)}"
                                    "</sheetData></worksheet>",
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, xml in parts.items():
            z.writestr(name, xml)
    return out.getvalue()


HEADINGS: list[Cell] = ["First name", "Last name", "Date of birth", "Phone", "Concern"]
ROSTER: list[list[Cell]] = [
    HEADINGS,
    ["Jane", "Smith", datetime.date(1990, 7, 1), "555-0100", "grief"],
    ["Sam", "Roe", datetime.date(1979, 1, 2), "555-0101", "grief"],
    ["Jane", "Roe", datetime.date(1985, 3, 14), "555-0102", "depression"],  # a directory client
]


def test_a_name_split_by_excels_shared_strings_is_read_in_its_row(config_path: Path) -> None:
    """The shared strings read "First name, Last name, ..., Jane, Smith, ...,
    Sam, Roe": Jane Roe appears only when row 4 is put back together."""
    data = excel_workbook(ROSTER)
    text = document_text(data, 100_000) or ""
    assert "Jane\tRoe\t03/14/1985\t555-0102" in text
    action, signals, _ = decision(config_path, data, "roster.xlsx", XLSX)
    assert action is Action.BLOCK
    assert {"phi-client-name", "phi-dob", "phi-keyword"} <= set(signals)


def test_dates_of_birth_under_a_heading_are_found(config_path: Path) -> None:
    """Nobody here is in the directory: "Date of birth" over a date column
    is what gives the roster away."""
    rows: list[list[Cell]] = [["Client", "Date of birth", "Diagnosis"],
                              ["Alex Vega", datetime.date(1988, 2, 29), "F41.1"]]
    action, signals, _ = decision(config_path, excel_workbook(rows), "list.xlsx", XLSX)
    assert action is Action.BLOCK
    assert "phi-dob" in signals


def test_a_workbook_saved_by_openpyxl_is_read_the_same_way(config_path: Path) -> None:
    """openpyxl writes text inline and its own date style: a second writer."""
    workbook = openpyxl.Workbook()
    for row in ROSTER:
        workbook.active.append(row)
    out = io.BytesIO()
    workbook.save(out)
    text = document_text(out.getvalue(), 100_000) or ""
    assert "Jane\tRoe\t03/14/1985" in text
    assert "Date of birth: 03/14/1985" in text
    action, signals, _ = decision(config_path, out.getvalue(), "roster.xlsx", XLSX)
    assert action is Action.BLOCK and "phi-dob" in signals


def test_a_staff_rota_still_goes_in_clear(config_path: Path) -> None:
    rows: list[list[Cell]] = [["Day", "Room", "Opens"], ["Monday", "Room 2", 9],
                              ["Tuesday", "Room 3", 10]]
    action, signals, _ = decision(config_path, excel_workbook(rows), "rota.xlsx", XLSX)
    assert action is Action.DELIVER, signals


@given(st.lists(st.lists(st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Cn")),
            min_size=1, max_size=12),
    st.integers(min_value=0, max_value=10**9),
    st.dates(min_value=datetime.date(1900, 3, 1), max_value=datetime.date(2100, 1, 1))),
    min_size=1, max_size=5), min_size=1, max_size=6))
@settings(max_examples=60, deadline=None)
@pytest.mark.filterwarnings("ignore:Workbook contains no default style")
def test_rows_match_what_openpyxl_reads(rows: list[list[Cell]]) -> None:
    """Our rows of an Excel-style workbook equal what a real reader finds in it."""
    data = excel_workbook(rows)
    sheet = openpyxl.load_workbook(io.BytesIO(data)).active
    expected = [[v.strftime("%m/%d/%Y") if isinstance(v, datetime.datetime) else
                 "" if v is None else str(v) for v in row]
                for row in sheet.iter_rows(values_only=True)]
    for row in expected:  # openpyxl pads every row to the widest
        while row and not row[-1]:
            row.pop()
    text = document_text(data, 1_000_000) or ""
    for row in expected:
        assert "\t".join(row) in text


@pytest.mark.parametrize(("fmt_id", "custom", "shown"), [
    (14, "", "03/14/1985"), (15, "", "03/14/1985"), (22, "", "03/14/1985"),
    (0, "yyyy-mm-dd", "03/14/1985"), (0, "[$-409]d mmmm yyyy;@", "03/14/1985"),
    (0, "mmm-yy", "03/14/1985"), (0, '"Due "dd/mm', "03/14/1985"),
    (20, "", "31120"),  # h:mm, a time: the number stays
    (0, "h:mm", "31120"), (0, "0.00", "31120"), (0, '"day "0', "31120")])
def test_which_number_formats_show_a_date(fmt_id: int, custom: str, shown: str) -> None:
    data = excel_workbook([["Client", "DOB"], ["Vega", datetime.date(1985, 3, 14)]],
                          date_format_id=fmt_id, custom_format=custom)
    assert f"DOB: {shown}" in (document_text(data, 100_000) or "")


def test_a_1904_workbook_counts_from_1904() -> None:
    data = excel_workbook([["Client", "DOB"], ["Vega", datetime.date(1985, 3, 14)]],
                          date1904=True)
    assert "DOB: 03/14/1985" in (document_text(data, 100_000) or "")


def test_page_headers_and_unused_shared_strings_are_still_read() -> None:
    """A sheet's page header is outside its cells; a shared string no cell
    uses any more (a deleted row) is still in the file sent."""
    data = ooxml({
        "xl/sharedStrings.xml": f"<sst {MAIN}><si><t>Jane Roe intake</t></si><si><r><t>Mo</t>"
                                "</r><r><t>nday</t></r><rPh><t>guide</t></rPh></si></sst>",
        "xl/worksheets/sheet1.xml": f'<worksheet {MAIN}><sheetData><row r="1"><c t="s"><v>1</v>'
                                    "</c></row></sheetData><headerFooter><oddHeader>&amp;CDr"
                                    " Lee's caseload</oddHeader></headerFooter></worksheet>"})
    text = document_text(data, 100_000) or ""
    assert "Jane Roe intake" in text and "Dr Lee's caseload" in text
    assert "\nMonday\n" in text + "\n"  # the row: the phonetic guide is not shown


def test_a_csv_attachment_is_read_with_its_headings(config_path: Path) -> None:
    csv = b"last,first,dob,notes\r\nVega,Alex,02/29/1988,depression\r\n"
    action, signals, _ = decision(config_path, csv, "export.csv", "text/csv")
    assert action is Action.BLOCK and "phi-dob" in signals


def test_a_semicolon_csv_in_a_zip_is_read_with_its_headings(config_path: Path) -> None:
    data = plain_zip({"export/clients.csv":
                      b"Name;Geburtsdatum;DOB;Dx\nAlex Vega;x;1988-02-29;F43.1\n"})
    action, signals, _ = decision(config_path, data, "export.zip", "application/zip")
    assert action is Action.BLOCK and "phi-dob" in signals


def test_malformed_workbook_parts_give_what_can_be_read() -> None:
    assert shared_strings(b"<sst><si><t>a</t><si><t>b") == ["a"]
    assert date_styles(b'<cellXfs><xf numFmtId="x"/><xf numFmtId="14"/>') == {1}
    assert sheet_rows(b'<row><c t="s"><v>7</v></c><c><v>1</v></row><row><c/><c><v>2',
                      ["a"], frozenset(), limit=100) == [["", "1"], ["", "2"]]


@given(st.binary(max_size=600))
@settings(max_examples=200, deadline=None)
def test_any_bytes_as_workbook_parts_never_raise(data: bytes) -> None:
    shared_strings(data)
    date_styles(data)
    sheet_rows(data, ["x"], frozenset({0, 1}), date1904=True, limit=1000)


@given(st.lists(st.lists(st.text(max_size=20), max_size=6), max_size=20),
       st.integers(min_value=0, max_value=500))
@settings(max_examples=200, deadline=None)
def test_labelled_rows_stay_within_the_limit(rows: list[list[str]], limit: int) -> None:
    assert len(labelled_rows(rows, limit)) <= limit


def test_a_heading_row_needs_two_text_cells_without_digits() -> None:
    assert labelled_rows([["Total", "2024"], ["a", "b"]], 1000) == ""
    assert labelled_rows([["Only"], ["a"]], 1000) == ""
    assert labelled_rows([["", "Name", "", "DOB", "Dx"], ["1", "Alex", "", "03/14/1985", "F41.1"]],
                         1000) == "DOB: 03/14/1985; Dx: F41.1"
    assert labelled_rows([["Name", "Room"], ["Alex", "2"]], 1000) == ""  # nothing to label
