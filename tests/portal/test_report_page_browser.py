"""The audit report as a compliance officer opens it: in chromium, from a file."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from securemail.audit import AuditLog
from securemail.audit.report import render_html, report_data
from tests.unit.test_audit_report import _populate
from tests.unit.test_audit_support import T0, make_settings


def test_the_report_fits_a_narrow_window_and_loads_nothing_from_the_network(
        tmp_path: Path, browser: Any) -> None:
    def make() -> str:  # in a thread: Playwright's sync API holds this one's event loop
        audit = AuditLog.open(make_settings(tmp_path))
        try:
            _populate(audit)
            return render_html(report_data(audit.conn, now=T0 + timedelta(days=30)))
        finally:
            audit.close(T0)

    with ThreadPoolExecutor(1) as pool:
        html = pool.submit(make).result()
    report = tmp_path / "report.html"
    report.write_text(html, encoding="utf-8")
    assert "<svg" in html
    context = browser.new_context(viewport={"width": 400, "height": 800})
    try:
        page = context.new_page()
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        page.goto(report.as_uri())
        # The charts shrink to the window (a 720 px chart made the page scroll sideways).
        assert page.evaluate("document.documentElement.scrollWidth") <= 400
        assert page.locator("svg").count() >= 2
        assert requested == [report.as_uri()]  # self-contained: no fonts, images, scripts
    finally:
        context.close()
