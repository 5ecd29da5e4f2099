"""The report page as a compliance officer reads it: dates, message references,
times to the second, a sensible chart for a day or two, a definition per figure."""

from __future__ import annotations

import asyncio
import io
import json
import re
from dataclasses import replace
from datetime import timedelta
from html import escape
from pathlib import Path

from securemail.audit import AuditLog, export_jsonl
from securemail.audit.report import render_html, report_data
from securemail.model import Action, Role, Source
from tests.unit.test_audit_support import T0, decision, envelope, make_settings, outcome
from tests.unit.test_audit_support import record_messages as _record

MICROSECONDS = re.compile(r"\d{2}:\d{2}:\d{2}\.\d{6}")


def _page(tmp_path: Path, *days: int, since: str | None = None,
          until: str | None = None) -> tuple[str, list[dict[str, object]]]:
    audit = AuditLog.open(make_settings(tmp_path))
    for day in days or (0,):
        _record(audit, 3, start=T0 + timedelta(days=day, seconds=0.25))
    buf = io.StringIO()
    export_jsonl(audit.conn, audit.chainer.key, buf, now=T0)
    records = [json.loads(x) for x in buf.getvalue().splitlines()[1:]]
    html = render_html(report_data(audit.conn, now=T0 + timedelta(days=40, microseconds=7),
                                   since=since, until=until), practice="Riverside")
    audit.close(T0)
    return html, records


def _svg(html: str) -> str:
    start = html.index('aria-label="recipient decisions per day"')
    return html[start:html.index("</svg>", start)]


def test_the_period_names_dates_in_utc(tmp_path: Path) -> None:
    html, _ = _page(tmp_path, 0, 2)
    period = re.search(r'data-metric="period">([^<]*)<', html)
    assert period is not None
    assert period.group(1) == ("from 2026-03-02 09:00:00 UTC (first record) to"
                               " 2026-03-04 09:02:00 UTC (last record)")
    assert "first record to last record" not in html


def test_a_windowed_period_names_its_bounds(tmp_path: Path) -> None:
    html, _ = _page(tmp_path, 0, 2, since="2026-03-01T00:00:00.000000Z",
                    until="2026-04-01T00:00:00.000000Z")
    assert ('data-metric="period">from 2026-03-01 00:00:00 UTC to 2026-04-01 00:00:00 UTC'
            " (not included)<") in html


def test_times_are_shown_to_the_second_and_labelled_utc(tmp_path: Path) -> None:
    html, _ = _page(tmp_path)
    assert not MICROSECONDS.search(html), MICROSECONDS.search(html)
    assert "Generated 2026-04-11 09:00:00 UTC" in html
    assert "<th>Time (UTC)</th>" in html and "<td class=\"when\">2026-03-02 09:00:00</td>" in html


def test_each_unauthorised_row_names_its_message_as_the_export_does(tmp_path: Path) -> None:
    html, records = _page(tmp_path)
    rows = re.findall(r'<tr data-metric="unauthorised-row">(.*?)</tr>', html)
    third = [r for r in records if r.get("role") == "third-party"]
    assert len(rows) == len(third) == 3
    for row, rec in zip(rows, third, strict=True):
        assert f'<span data-field="message-id">{escape(str(rec["message_id"]))}</span>' in row
        assert f'sha256 {str(rec["message_sha256"])[:16]}</span>' in row
        assert str(rec["recipient"]) in row and str(rec["reason"]) in row


def test_the_unauthorised_row_shows_the_client_named_by_the_policy(tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path))
    ds = [decision("jane@mail.example", Action.BLOCK, ("unauthorised-recipient",)),
          decision("mom@mail.example", Action.BLOCK, ("unauthorised-recipient",),
                   role=Role.THIRD_PARTY, source=Source.CC)]
    ds[1] = replace(ds[1], reason="not an authorised contact of client c-1001")
    asyncio.run(audit.record_outcome(envelope(ds), outcome(ds, message_id="<x9@r.example>"),
                                     config_digest="", instance_id="", now=T0))
    html = render_html(report_data(audit.conn, now=T0))
    audit.close(T0)
    row = re.findall(r'<tr data-metric="unauthorised-row">(.*?)</tr>', html)
    assert len(row) == 1 and "client c-1001" in row[0] and "&lt;x9@r.example&gt;" in row[0]


def test_one_day_of_data_is_one_labelled_bar_not_a_full_width_block(tmp_path: Path) -> None:
    html, _ = _page(tmp_path)
    svg = _svg(html)
    widths = [int(w) for w in re.findall(r'<rect x="\d+" y="[\d.]+" width="(\d+)"', svg)]
    assert widths and max(widths) <= 60
    labels = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    assert labels.count("2026-03-02") == 1
    assert "Chart: 1 day (UTC)." in html


def test_a_few_days_show_every_day_including_empty_ones(tmp_path: Path) -> None:
    html, _ = _page(tmp_path, 0, 3)
    labels = re.findall(r"<text[^>]*>(\d{4}-\d{2}-\d{2})</text>", _svg(html))
    assert labels == ["2026-03-02", "2026-03-03", "2026-03-04", "2026-03-05"]
    assert "days without records are empty" in html


def test_many_days_label_the_ends_once_each(tmp_path: Path) -> None:
    html, _ = _page(tmp_path, *range(0, 40, 2))
    labels = re.findall(r"<text[^>]*>(\d{2}-\d{2})</text>", _svg(html))
    assert labels[0] == "03-02" and labels[-1] == "04-09" and len(set(labels)) == len(labels)
    assert 3 <= len(labels) <= 8


def test_every_headline_figure_says_what_it_counts(tmp_path: Path) -> None:
    html, _ = _page(tmp_path)
    summary = html[html.index("<h2>Summary</h2>"):html.index("</table>")]
    rows = re.findall(r"<tr><th>([^<]*)</th><td data-metric=[^>]*>[^<]*</td>"
                      r"<td class=\"def\">([^<]+)</td></tr>", summary)
    assert len(rows) == summary.count("data-metric=") >= 10
    meaning = dict(rows)
    assert "SHA-256" in meaning["Messages"] and "count once" in meaning["Messages"]
    assert "deferred" in meaning["Recipient decisions"]
    assert "Deferred attempts" in meaning


def test_the_page_stays_self_contained_and_content_free(tmp_path: Path) -> None:
    html, _ = _page(tmp_path, 0, 1)
    for needle in ("<script", "http://", "https://", "<link", "src=", "@import", "url("):
        assert needle not in html
    assert "@media print" in html and "Subject" not in html
