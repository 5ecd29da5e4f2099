"""Tables in attachments (Excel workbooks, CSV, TSV): read row by row, values
beside their column headings, dates as dates.

A client roster exported to Excel used to leave in clear to an outsider:
Excel keeps each distinct text once, in the order it was first typed, so
"Jane" and "Roe" of one row were read far apart; a date of birth is a serial
number ("31120") that only its cell style makes a date; and "DOB" sits in
the heading row, rows away from the date under it.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemail import xlsx_rows
from securemail.documents import Unreadable, document_text
from securemail.model import Action
from securemail.table_text import (
    MAX_REPEAT,
    labelled_rows,
    labelled_tables,
    markup_tables,
    with_labelled_rows,
)
from securemail.xlsx_rows import (
    TooLarge,
    date_styles,
    digit_patterns,
    shared_strings,
    sheet_text,
    uses_1904,
)
from tests.unit.test_document_text import decision, ooxml, plain_zip

openpyxl = pytest.importorskip("openpyxl")

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
MAIN = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
Cell = str | int | datetime.date


def excel_workbook(rows: list[list[Cell]], *, date_format_id: int = 14,
                   custom_format: str = "", date1904: bool = False,
                   date_cell_style_for_numbers: bool = False) -> bytes:
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
            else:  # a number: styled like the dates when asked (a custom number format)
                style = ' s="1"' if date_cell_style_for_numbers else ""
                cells.append(f'<c r="{ref}"{style}><v>{value}</v></c>')
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
    assert "DOB: 03/14/1985" in text
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
    (0, "h:mm", "31120"), (0, "0.00", "31120"), (0, '"day "0', "day 31120")])
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
    uses any more (a deleted row) is still in the file sent, and so is a
    phonetic guide (furigana of a name)."""
    data = ooxml({
        "xl/sharedStrings.xml": f"<sst {MAIN}><si><t>Jane Roe intake</t></si><si><r><t>Mo</t>"
                                "</r><r><t>nday</t></r><rPh><t>guide</t></rPh></si></sst>",
        "xl/worksheets/sheet1.xml": f'<worksheet {MAIN}><sheetData><row r="1"><c t="s"><v>1</v>'
                                    "</c></row></sheetData><headerFooter><oddHeader>&amp;CDr"
                                    " Lee's caseload</oddHeader></headerFooter></worksheet>"})
    text = document_text(data, 100_000) or ""
    assert "Jane Roe intake" in text and "Dr Lee's caseload" in text and "guide" in text
    assert "\nMonday\n" in text + "\n"  # the row, without its phonetic guide


@pytest.mark.parametrize("cell", [
    # A formula (openpyxl writes no cached value, XlsxWriter a 0).
    '<c r="A1"><f>HYPERLINK("mailto:x@y","Jane Roe DOB 03/14/1985")</f><v>0</v></c>',
    '<c r="A1" t="inlineStr"><v>Jane Roe DOB 03/14/1985</v></c>',  # text where Excel puts none
    '<c r="A1" t="inlineStr"><is><t>X</t><rPh><t>Jane Roe DOB 03/14/1985</t></rPh></is></c>',
    '<c r="A1" t="s"><v>0</v><is><t>Jane Roe DOB 03/14/1985</t></is></c>',  # both
    '<x:c r="A1" t="inlineStr"><x:is><x:t>Jane Roe DOB 03/14/1985</x:t></x:is></x:c>',  # prefixed
    "Jane Roe DOB 03/14/1985",  # text between cells
])
def test_no_text_of_a_worksheet_is_left_unread(cell: str) -> None:
    data = ooxml({"xl/sharedStrings.xml": f"<sst {MAIN}><si><t>s</t></si></sst>",
                  "xl/worksheets/sheet1.xml": f'<worksheet {MAIN}><sheetData><row r="1">{cell}'
                                              "</row></sheetData></worksheet>"})
    assert "Jane Roe DOB 03/14/1985" in (document_text(data, 100_000) or "")


def test_parts_whose_names_differ_only_in_case_are_all_read() -> None:
    data = ooxml({"xl/worksheets/sheet1.xml": f'<worksheet {MAIN}><sheetData><row><c t='
                                              '"inlineStr"><is><t>Dx F32.1</t></is></c></row>'
                                              "</sheetData></worksheet>",
                  "xl/Worksheets/Sheet1.xml": f'<worksheet {MAIN}><sheetData><row><c t='
                                              '"inlineStr"><is><t>MRN 448812</t></is></c></row>'
                                              "</sheetData></worksheet>"})
    text = document_text(data, 100_000) or ""
    assert "Dx F32.1" in text and "MRN 448812" in text


def test_a_small_workbook_that_unfolds_past_the_limit_is_unreadable_at_once() -> None:
    """A thousand cells showing one 1 MB shared string: 1 GB of text from a
    3 KB file. It is past the scan limit as soon as the limit is passed."""
    import time

    data = ooxml({"xl/sharedStrings.xml": f"<sst {MAIN}><si><t>{'Jane Roe ' * 110_000}</t></si>"
                                          "</sst>",
                  "xl/worksheets/sheet1.xml": f"<worksheet {MAIN}><sheetData><row>"
                                              + '<c t="s"><v>0</v></c>' * 1000
                                              + "</row></sheetData></worksheet>"})
    started = time.process_time()
    with pytest.raises(Unreadable, match="past the scan limit"):
        document_text(data, 2 * 1024 * 1024)
    assert time.process_time() - started < 2.0


@pytest.mark.parametrize("hostile", [
    b"<" + b"a" * 3000 + b"b" * 3000,  # a tag that never ends, over and over
    b"<a:" + b"b" * 70 + b" " + b"c" * 4000,
    b"<c " + b"x=" * 3000,
])
def test_hostile_xml_is_read_in_linear_time(hostile: bytes) -> None:
    import time

    part = hostile * (4_000_000 // len(hostile))  # a backtracking tokenizer: 5 s and more
    started = time.process_time()
    with contextlib.suppress(TooLarge):
        sheet_text(part, [], frozenset(), limit=10**8)
    assert time.process_time() - started < 1.0


def test_a_part_with_more_tags_than_the_bound_is_too_large(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xlsx_rows, "MAX_TOKENS", 10_000)  # the real bound costs seconds
    sheet_text(b"<c/>" * 9_999, [], frozenset(), limit=10**9)
    with pytest.raises(TooLarge):
        sheet_text(b"<c/>" * 10_001, [], frozenset(), limit=10**9)


def test_a_csv_larger_than_the_limit_is_not_parsed_into_memory() -> None:
    import tracemalloc

    big = "DOB,Dx\n" + "03/14/1985,F32.1\n" * 1_000_000  # 17 MB
    tracemalloc.start()
    try:
        assert with_labelled_rows(big, "x.csv", 2 * 1024 * 1024) == big  # no room: as it is
        labelled = with_labelled_rows(big[:1_000_000], "x.csv", 2 * 1024 * 1024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 1_000_000 < len(labelled) <= 2 * 1024 * 1024
    assert peak < 20 * 1024 * 1024  # rows are read one at a time, not kept (a list: ~100 MB)


@pytest.mark.parametrize(("serial", "shown"), [
    (1, "01/01/1900"), (59, "02/28/1900"), (60, "02/29/1900"), (61, "03/01/1900"),
    (31120, "03/14/1985"), (0, "0"), (-5, "-5"), (3_000_000, "3000000"), ("1e308", "1e308"),
    ("x", "x")])
def test_date_serials_as_excel_shows_them(serial: object, shown: str) -> None:
    sheet = (f'<sheetData><row><c t="inlineStr"><is><t>DOB</t></is></c><c t="inlineStr"><is>'
             f'<t>Name</t></is></c></row><row><c s="1"><v>{serial}</v></c></row></sheetData>')
    rows = sheet_text(sheet.encode(), [], frozenset({1}), limit=1000).rows
    assert rows[1] == [shown]


def test_a_date_1904_serial_and_elapsed_time() -> None:
    assert sheet_text(b'<row><c s="1"><v>29658</v></c></row>', [], frozenset({1}), limit=100,
                      date1904=True).rows == [["03/14/1985"]]
    styles = ('<numFmts><numFmt numFmtId="164" formatCode="[h]:mm"/><numFmt numFmtId="165"'
              ' formatCode="[Red][$-409]mm/dd/yyyy"/></numFmts><cellXfs><xf numFmtId="164"/>'
              '<xf numFmtId="165"/><xf numFmtId="46"/></cellXfs>')
    assert date_styles(styles.encode()) == {1}  # a duration is not a date


def test_malformed_workbook_parts_give_what_can_be_read() -> None:
    assert shared_strings(b"<sst><si><t>a</t><si><t>b", 100).strings == ["a", "b"]
    assert date_styles(b'<cellXfs><xf numFmtId="x"/><xf numFmtId="14"/>') == {1}
    assert sheet_text(b'<row><c t="s"><v>7</v></c><c><v>1</v></row><row><c/><c><v>2',
                      ["a"], frozenset(), limit=100).rows == [["7", "1"], ["", "2"]]
    # A digit Python reads as one and int() does not ("²"): a value, not an error.
    assert sheet_text('<row><c t="s" s="²"><v>²</v></c></row>'.encode(), ["a"], frozenset(),
                      limit=100).rows == [["²"]]


@given(st.binary(max_size=600))
@settings(max_examples=300, deadline=None)
def test_any_bytes_as_workbook_parts_never_raise(data: bytes) -> None:
    shared_strings(data, 10_000)
    date_styles(data)
    uses_1904(data)
    sheet = sheet_text(data, ["x", "y"], frozenset({0, 1}), date1904=True, limit=10_000)
    assert sheet.used <= {0, 1}


@given(st.lists(st.lists(st.text(max_size=20), max_size=6), max_size=20),
       st.integers(min_value=0, max_value=500))
@settings(max_examples=200, deadline=None)
def test_labelled_rows_stay_within_the_limit(rows: list[list[str]], limit: int) -> None:
    assert len(labelled_rows(rows, limit)) <= limit


def test_which_rows_are_headings() -> None:
    assert labelled_rows([["Total", "2024"], ["a", "b"]], 1000) == ""
    assert labelled_rows([["Only DOB"], ["03/14/1985"]], 1000) == ""
    assert labelled_rows([["", "Name", "", "DOB", "ICD-10"],
                          ["1", "Alex", "", "03/14/1985", "F41.1"]],
                         1000) == "DOB: 03/14/1985; Diagnosis: F41.1"
    assert labelled_rows([["Name", "Room"], ["Alex", "2"]], 1000) == ""  # nothing to label
    # A title row above the heading row; a heading with a format hint.
    assert labelled_rows([["Practice", "Riverside Counselling"], [],
                          ["Client", "Date of birth (MM/DD/YYYY)", "Medical record #"],
                          ["Alex Vega", "03/14/1985", "448812"]],
                         1000) == "DOB: 03/14/1985; MRN: 448812"
    # A heading row far down is not one (the first rows were the data).
    assert labelled_rows([["a", "b"]] * 30 + [["Name", "DOB"], ["Alex", "03/14/1985"]],
                         1000) == ""


def test_a_dob_heading_with_a_format_hint_counts(config_path: Path) -> None:
    data = excel_workbook([["Client", "Date of birth (MM/DD/YYYY)", "Presenting concern"],
                           ["Alex Vega", datetime.date(1985, 3, 14), "insomnia, anxiety"]])
    action, signals, _ = decision(config_path, data, "intake.xlsx", XLSX)
    assert action is Action.BLOCK and "phi-dob" in signals


def test_a_csv_attachment_is_read_with_its_headings(config_path: Path) -> None:
    csv = b"last,first,dob,notes\r\nVega,Alex,02/29/1988,depression\r\n"
    action, signals, _ = decision(config_path, csv, "export.csv", "text/csv")
    assert action is Action.BLOCK and "phi-dob" in signals


def test_a_semicolon_csv_in_a_zip_is_read_with_its_headings(config_path: Path) -> None:
    data = plain_zip({"export/clients.csv":
                      b"Name;Geburtsdatum;DOB;Dx\nAlex Vega;x;1988-02-29;F43.1\n"})
    action, signals, _ = decision(config_path, data, "export.zip", "application/zip")
    assert action is Action.BLOCK and "phi-dob" in signals


def test_an_ssn_formatted_cell_shows_its_leading_zero(config_path: Path) -> None:
    """Excel's "Social Security Number" format is 000-00-0000 over a number:
    012-34-5678 is stored as 12345678."""
    rows: list[list[Cell]] = [["Client", "SSN", "Dx"], ["Alex Vega", 12345678, "F41.1"]]
    data = excel_workbook(rows, custom_format="000\\-00\\-0000", date_cell_style_for_numbers=True)
    text = document_text(data, 100_000) or ""
    assert "Alex Vega\t012-34-5678\tF41.1" in text and "SSN: 012-34-5678" in text
    action, signals, _ = decision(config_path, data, "ssn.xlsx", XLSX)
    assert action is Action.BLOCK and "phi-ssn" in signals


@pytest.mark.parametrize(("code", "value", "shown"), [
    ("000\\-00\\-0000", "12345678", "012-34-5678"), ("00000", "2134", "02134"),
    ("00000\\-0000", "21341234", "02134-1234"),
    ("(000) 000\\-0000", "5551234567", "(555) 123-4567"), ('"day "0', "31120", "day 31120"),
    ("000\\-00\\-0000", "1234567890", "1234-56-7890"),  # more digits than zeros: Excel's way
    ("0.00", "12345678", "12345678"), ("#,##0", "12345678", "12345678"),
    ("[<=9999999]###-####;(###) ###-####", "5551234567", "5551234567"),
    ("000\\-00\\-0000", "12.5", "12.5")])
def test_digit_formats(code: str, value: str, shown: str) -> None:
    styles = (f'<numFmts><numFmt numFmtId="164" formatCode={quoteattr(code)}/></numFmts>'
              '<cellXfs><xf numFmtId="0"/><xf numFmtId="164"/></cellXfs>').encode()
    patterns = digit_patterns(styles)
    sheet = sheet_text(f'<row><c s="1"><v>{value}</v></c></row>'.encode(), [], frozenset(),
                       limit=100, patterns=patterns)
    assert sheet.rows == [[shown]]


# ------------------------------------------- tables in HTML, Word, OpenDocument


def test_an_html_roster_in_the_body_is_read_with_its_headings(config_path: Path) -> None:
    """An export pasted from the records system: "DOB" heads a column."""
    from email.message import EmailMessage

    from tests.unit.policy_helpers import verdict_for
    from tests.unit.test_document_text import OUTSIDER, SENDER

    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, OUTSIDER, "list"
    msg.set_content("See below.")
    msg.add_alternative("<table><tr><th>Client<th>DOB<th>Concern<tr><td>Alex Vega"
                        "<td>03/14/1985<td>depression</table>", subtype="html")
    verdict = verdict_for(config_path, msg.as_bytes(), SENDER, [OUTSIDER])
    assert verdict.decisions[0].action is Action.BLOCK
    assert verdict.facts is not None
    assert "phi-dob" in {s.detector for s in verdict.facts.phi_signals}


def test_a_word_table_is_read_with_its_headings(config_path: Path) -> None:
    from tests.unit.test_document_text import docx, para

    def row(*cells: str) -> str:
        return "<w:tr>" + "".join(f"<w:tc>{para(c)}</w:tc>" for c in cells) + "</w:tr>"

    data = docx("<w:tbl>" + row("Client", "Date of birth", "Dx") + row("Alex Vega", "3/14/1985",
                                                                      "F41.1") + "</w:tbl>")
    assert "DOB: 3/14/1985; Diagnosis: F41.1" in (document_text(data, 100_000) or "")
    action, signals, _ = decision(config_path, data, "list.docx", "application/vnd."
                                  "openxmlformats-officedocument.wordprocessingml.document")
    assert action is Action.BLOCK and {"phi-dob", "phi-icd10"} <= set(signals)


def test_opendocument_repeated_and_empty_cells_keep_their_columns() -> None:
    cell = '<table:table-cell><text:p>{}</text:p></table:table-cell>'
    gap = '<table:table-cell table:number-columns-repeated="2"/>'
    content = ("<office:document-content><table:table><table:table-row>" + cell.format("Client")
               + gap + cell.format("DOB") + "</table:table-row><table:table-row>"
               + cell.format("Alex") + gap + cell.format("03/14/85")
               + '<table:table-cell table:number-columns-repeated="16384"/>'
               + "</table:table-row></table:table></office:document-content>")
    assert markup_tables(content, 1000) == [[["Client", "", "", "DOB"],
                                             ["Alex", "", "", "03/14/85"] + [""] * MAX_REPEAT]]
    assert labelled_tables(content, 1000) == "DOB: 03/14/85"


def test_nested_and_unclosed_html_tables() -> None:
    markup = ("<table><tr><td>Layout<table><tr><th>Name<th>MRN<tr><td>Alex<td>448812</table>"
              "<td>right</tr></table><table><tr><td>x")
    tables = markup_tables(markup, 1000)
    assert [["Name", "MRN"], ["Alex", "448812"]] in tables
    assert [["x"]] in tables
    assert labelled_tables(markup, 1000) == "MRN: 448812"


@pytest.mark.parametrize("hostile", [
    "<td " + "a" * 5000, "<table><tr>" + "<td>" * 1000, "<" + "x:" * 3000])
def test_hostile_markup_is_read_in_linear_time(hostile: str) -> None:
    import time

    markup = "<table> DOB " + hostile * (3_000_000 // len(hostile))
    started = time.process_time()
    labelled_tables(markup, 10**7)
    assert time.process_time() - started < 3.0


@given(st.text(alphabet="<>/tdrhable: xDOB1", max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_markup_gives_tables_without_raising(markup: str) -> None:
    for rows in markup_tables(markup, 1000):
        assert all(isinstance(cell, str) for row in rows for cell in row)
    assert len(labelled_tables(markup, 200)) <= 200



def test_cdata_text_is_read() -> None:
    """openpyxl and Excel read CDATA sections as text; so do we."""
    sheet = (b'<row><c t="inlineStr"><is><t><![CDATA[Jane Roe]]></t></is></c>'
             b"<c><v><![CDATA[12]]></v></c></row>")
    assert sheet_text(sheet, [], frozenset(), limit=100).rows == [["Jane Roe", "12"]]
    shared = shared_strings(b"<sst><si><t><![CDATA[SSN 123-45-6789 & co]]></t></si></sst>", 100)
    assert shared.strings == ["SSN 123-45-6789 & co"]


def test_text_outside_a_shared_string_is_kept() -> None:
    shared = shared_strings(b"<sst><si/><t>Jane Roe</t>stray<si><t>a</t></si></sst>", 100)
    assert shared.strings == ["", "a"] and shared.other == ["Jane Roe", "stray"]


def test_a_1904_serial_past_the_year_9999_stays_a_number() -> None:
    rows = sheet_text(b'<row><c s="1"><v>2958000</v></c></row>', [], frozenset({1}),
                      limit=100, date1904=True).rows
    assert rows == [["2958000"]]


def test_sheets_share_one_limit() -> None:
    """400 sheets of 10,000 characters each: 4 MB, past a 2 MiB limit
    together though each is far within it."""
    sheet = f"<worksheet {MAIN}><sheetData><row><c t=\"inlineStr\"><is><t>{'x' * 10_000}</t>" \
            "</is></c></row></sheetData></worksheet>"
    data = ooxml({f"xl/worksheets/sheet{i}.xml": sheet for i in range(400)})
    with pytest.raises(Unreadable, match="past the scan limit"):
        document_text(data, 2 * 1024 * 1024)


def test_spanning_cells_keep_the_columns_under_their_headings() -> None:
    html_table = ("<table><tr><th colspan=2>Name<th>DOB<th>Dx<tr><td>Alex<td>Vega"
                  "<td>03/14/1985<td>F41.1</table>")
    assert labelled_tables(html_table, 1000) == "DOB: 03/14/1985; Diagnosis: F41.1"
    word = ("<w:tbl><w:tr><w:tc><w:tcPr><w:gridSpan w:val=\"2\"/></w:tcPr><w:p><w:t>Name</w:t>"
            "</w:p></w:tc><w:tc><w:p><w:t>DOB</w:t></w:p></w:tc></w:tr><w:tr><w:tc><w:p><w:t>"
            "Alex</w:t></w:p></w:tc><w:tc><w:p><w:t>Vega</w:t></w:p></w:tc><w:tc><w:p><w:t>"
            "03/14/1985</w:t></w:p></w:tc></w:tr></w:tbl>")
    assert labelled_tables(word, 1000) == "DOB: 03/14/1985"


@pytest.mark.parametrize(("headings", "expected"), [
    (["#", "Client", "DOB"], "DOB: x"),
    (["Client", "SS#", "DX1"], "SSN: 03/14/1985; Diagnosis: x"),
    (["Client", "Diag Code", "Chart #"], "Diagnosis: 03/14/1985; MRN: x"),
    (["Client", "Please enter the date of birth exactly as it appears on the insurance card "
      "provided by the client", "DOB"], "DOB: x"),
])
def test_headings_as_records_systems_write_them(headings: list[str], expected: str) -> None:
    assert labelled_rows([headings, ["1", "03/14/1985", "x"]], 1000) == expected


def test_repeated_empty_cells_count_against_the_limit() -> None:
    row = "<table:table-row>" + '<table:table-cell table:number-columns-repeated="50"/>' * 2000
    markup = "<table:table>" + row * 50 + "</table:table>"
    tables = markup_tables(markup, 10_000)
    assert sum(len(r) for t in tables for r in t) <= 10_000 + MAX_REPEAT
    assert all(len(r) <= 500 for t in tables for r in t)


def test_one_document_shares_one_token_budget() -> None:
    from securemail.table_text import token_budget

    markup = "<table><tr><th>Name<th>DOB<tr><td>a<td>03/14/1985</table>"
    with token_budget(30):
        assert labelled_tables(markup, 1000) == "DOB: 03/14/1985"  # 14 tokens
        assert labelled_tables(markup, 1000) == "DOB: 03/14/1985"
        assert labelled_tables(markup, 1000) == ""  # the budget is spent


def test_excels_unicode_text_export_is_read_as_a_table(config_path: Path) -> None:
    """Excel's "Unicode Text" is UTF-16, tab-separated, named .txt."""
    table = "Client\tDate of birth\tDiagnosis\r\nAlex Vega\t03/14/1985\tF41.1\r\n"
    data = "\ufeff".encode("utf-16-le") + table.encode("utf-16-le")
    action, signals, _ = decision(config_path, data, "export.txt", "text/plain")
    assert action is Action.BLOCK and "phi-dob" in signals


def test_a_cell_comment_is_not_run_into_its_author() -> None:
    comments = ('<comments><authors><author>AP</author></authors><commentList><comment ref="A1"'
                ' authorId="0"><text><r><t>Lan Thi Nguyen - ADHD</t></r></text></comment>'
                "</commentList></comments>")
    text = document_text(ooxml({"xl/comments1.xml": comments}), 100_000) or ""
    assert "APLan" not in text and "Lan Thi Nguyen" in text
