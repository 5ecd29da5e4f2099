"""Exports: JSONL round trip, ranges, CSV that spreadsheets (and csv) read."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from pathlib import Path

from securemail.audit import CSV_COLUMNS, AuditLog, export_csv, export_jsonl, verify_export
from tests.unit.test_audit_support import T0, make_settings, record_messages


def _export(audit: AuditLog, path: Path, **kw: str) -> int:
    with path.open("w") as f:
        return export_jsonl(audit.conn, audit.chainer.key, f, now=T0, **kw)


def test_export_verify_round_trip_with_only_the_public_key(tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path, checkpoint_every=4))
    record_messages(audit, 10)
    audit.record_event("opened", now=T0, portal_id="p1", recipient="client1@mail.example")
    path = tmp_path / "all.jsonl"
    count = _export(audit, path)
    public = audit.public_key
    audit.close(T0)
    (tmp_path / "store.db").unlink()  # offline: the store is gone
    report = verify_export(path, public)
    assert report.ok, report.summary()
    assert report.records == count and report.checkpoints >= 5
    lines = path.read_text().splitlines()
    assert len(lines) == count + 1
    assert json.loads(lines[0])["export"]["records"] == count


def test_partial_export_by_time_verifies(tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path, checkpoint_every=3))
    record_messages(audit, 20, step=timedelta(hours=1))
    path = tmp_path / "part.jsonl"
    since = (T0 + timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    until = (T0 + timedelta(hours=9)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    count = _export(audit, path, since=since, until=until)
    records = [json.loads(x) for x in path.read_text().splitlines()[1:]]
    messages = [r for r in records if r["kind"] == "message"]
    assert {r["at"][:13] for r in messages} == {f"2026-03-02T{h:02d}" for h in range(14, 18)}
    assert len(messages) == 8 and count == len(records)
    report = verify_export(path, audit.public_key)
    assert report.ok, report.summary()
    assert report.first_seq is not None and report.first_seq > 1
    audit.close(T0)


def test_empty_export_verifies(tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path))
    path = tmp_path / "empty.jsonl"
    assert _export(audit, path) == 0
    assert verify_export(path, audit.public_key).ok
    audit.close(T0)


def test_csv_parses_with_python_csv_and_matches_records(tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path, checkpoint_every=5))
    record_messages(audit, 6)
    audit.record_event("code-failed", now=T0, portal_id="p1", attempts=3, status="locked")
    audit.record_event("opened", now=T0, portal_id="p1", recipient="=cmd|' /C calc'!A0")
    out = io.StringIO()
    count = export_csv(audit.conn, out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(rows) == count == audit.conn.execute(
        "SELECT COUNT(*) FROM audit_records").fetchone()[0]
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    messages = [r for r in rows if r["kind"] == "message"]
    assert len(messages) == 12
    blocked = [r for r in messages if r["action"] == "block"]
    assert len(blocked) == 6 and all(r["rules"] == "unauthorised-recipient" for r in blocked)
    failed = next(r for r in rows if r["kind"] == "code-failed")
    assert json.loads(failed["details"]) == {"attempts": 3, "category": "portal",
                                             "status": "locked"}
    opened = next(r for r in rows if r["kind"] == "opened")
    assert opened["recipient"].startswith("'=")  # no formula runs in a spreadsheet
    assert [int(r["seq"]) for r in rows] == list(range(1, count + 1))
    audit.close(T0)
