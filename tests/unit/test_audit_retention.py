"""Pruning old records keeps the rest verifiable; hand deletions are still caught."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from securemail.audit import AuditLog, export_jsonl, prune, verify_export, verify_store
from tests.unit.test_audit_support import T0, make_settings, record_messages


def test_prune_keeps_the_remaining_chain_verifiable(tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path, checkpoint_every=4))
    record_messages(audit, 30, step=timedelta(days=100))  # ~8 years of history
    before = audit.conn.execute("SELECT COUNT(*) FROM audit_records").fetchone()[0]
    now = T0 + timedelta(days=3000)
    dry = prune(audit, now=now, retention_days=6 * 366, dry_run=True)
    assert dry.deleted > 0
    assert audit.conn.execute("SELECT COUNT(*) FROM audit_records").fetchone()[0] == before
    result = prune(audit, now=now, retention_days=6 * 366)
    assert result.deleted == dry.deleted and result.first_seq == dry.first_seq
    oldest = audit.conn.execute("SELECT MIN(at) FROM audit_records WHERE kind='message'").fetchone()
    assert oldest[0] >= result.cutoff
    report = verify_store(audit.conn, audit.public_key)
    assert report.ok, report.summary()
    assert report.first_seq == result.first_seq
    path = tmp_path / "after-prune.jsonl"
    with path.open("w") as f:
        export_jsonl(audit.conn, audit.chainer.key, f, now=now)
    assert verify_export(path, audit.public_key).ok
    # A later prune with nothing old enough deletes nothing and adds nothing.
    again = prune(audit, now=now, retention_days=6 * 366)
    assert again.deleted == 0
    # Deleting more by hand, beyond what the signed prune record allows, is caught.
    assert result.first_seq is not None
    audit.conn.execute("DELETE FROM audit_records WHERE seq < ?", (result.first_seq + 2,))
    bad = verify_store(audit.conn, audit.public_key)
    assert bad.status == "tampered" and bad.first_bad_seq == result.first_seq
    audit.close(now)


def test_prune_everything_old_leaves_a_verifiable_store(tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path))
    record_messages(audit, 5)
    result = prune(audit, now=T0 + timedelta(days=10), retention_days=1)
    assert result.deleted == 10
    audit.record_event("opened", now=T0 + timedelta(days=10), portal_id="p")
    report = verify_store(audit.conn, audit.public_key)
    assert report.ok, report.summary()
    assert report.records == 2  # the prune checkpoint and the new event
    audit.close(T0)


def test_a_window_reaching_back_past_a_prune_says_so(tmp_path: Path) -> None:
    # A report or export "from the start of the quarter" after a prune said
    # nothing about the records that were gone: it looked complete.
    from securemail.audit.records import format_time
    from securemail.audit.report import render_html, report_data
    from securemail.audit.store import pruned_note

    audit = AuditLog.open(make_settings(tmp_path, checkpoint_every=4))
    record_messages(audit, 30, step=timedelta(days=100))
    now = T0 + timedelta(days=3000)
    result = prune(audit, now=now, retention_days=6 * 366)
    assert pruned_note(audit.conn, None).startswith(f"records timed before {result.cutoff}")
    assert str(result.deleted) in pruned_note(audit.conn, None)
    assert pruned_note(audit.conn, format_time(T0)) != ""  # a window from before the cutoff
    assert pruned_note(audit.conn, result.cutoff) == ""  # one that starts after it
    page = render_html(report_data(audit.conn, now=now, since=format_time(T0)))
    assert 'data-metric="pruned"' in page and result.cutoff in page
    page = render_html(report_data(audit.conn, now=now, since=result.cutoff))
    assert 'data-metric="pruned"' not in page
    audit.close(now)
