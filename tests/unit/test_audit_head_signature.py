"""The signed chain head: renewed at most every ``audit.head_sign_ms`` under load,
never left behind for longer while the writer runs, and checked by ``verify``."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from securemail.audit import AuditLog, store, verify_store
from securemail.audit.chain import head_message, signature_valid
from securemail.config import load_settings
from securemail.errors import ConfigError
from securemail.model import Action
from tests.unit.test_audit_support import T0, decision, envelope, make_settings, outcome


def _signed_and_last(audit: AuditLog) -> tuple[int, int]:
    """(seq the signed head names, seq of the newest record)."""
    last = store.last_record(audit.conn)
    return store.head(audit.conn).seq, last[0] if last else 0


def _wait_until_signed(audit: AuditLog, seconds: float) -> tuple[int, int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        signed, last = _signed_and_last(audit)
        if signed == last:
            break
        time.sleep(0.01)
    return _signed_and_last(audit)


def test_head_sign_ms_0_signs_every_transaction(tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path, head_sign_ms=0))
    for i in range(5):
        audit.record_event("opened", now=T0, portal_id=f"p{i}")
        h = store.head(audit.conn)
        assert (h.seq, h.hash) == store.last_record(audit.conn) and h.seq == i + 1
        assert signature_valid(audit.public_key, h.signature, head_message(h.seq, h.hash))
    audit.close(T0)


def test_a_burst_is_covered_by_one_signature_then_signed_when_the_period_ends(
        tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path, head_sign_ms=300))
    for i in range(20):
        audit.record_event("opened", now=T0, portal_id=f"p{i}")
    assert _signed_and_last(audit) == (1, 20), "only the first append of the period signs"
    lagging = verify_store(audit.conn, audit.public_key)
    assert lagging.ok, lagging.summary()
    assert lagging.head_lag == 19 and "not covered by the signed head" in lagging.summary()
    # Nothing else is written: the writer thread signs the rest when the period ends.
    assert _wait_until_signed(audit, 3.0) == (20, 20)
    h = store.head(audit.conn)
    assert signature_valid(audit.public_key, h.signature, head_message(20, h.hash))
    settled = verify_store(audit.conn, audit.public_key)
    assert settled.ok and settled.head_lag == 0 and "not covered" not in settled.summary()
    audit.close(T0)


def test_group_committed_messages_get_their_head_signed_within_the_period(
        tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path, head_sign_ms=200))

    async def messages() -> None:
        for i in range(30):  # one after the other: one transaction each
            ds = [decision(f"c{i}@mail.example", Action.DELIVER, ("ok",))]
            await audit.record_outcome(envelope(ds), outcome(ds), config_digest="",
                                       instance_id="", now=T0)

    asyncio.run(messages())
    started = time.monotonic()
    assert _wait_until_signed(audit, 3.0) == (30, 30)
    assert time.monotonic() - started < 1.0
    audit.close(T0)


def test_a_checkpoint_always_signs_the_head(tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path, head_sign_ms=60_000, checkpoint_every=5))
    for i in range(5):
        audit.record_event("opened", now=T0, portal_id=f"p{i}")
    assert _signed_and_last(audit) == (6, 6)  # 5 records + the checkpoint after them
    audit.record_event("opened", now=T0, portal_id="p5")
    assert _signed_and_last(audit) == (6, 7)
    audit.close(T0)


def test_a_cut_below_the_signed_record_is_caught(tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path, head_sign_ms=60_000))
    for i in range(10):
        audit.record_event("opened", now=T0, portal_id=f"p{i}")
    audit.run_in_transaction(audit.chainer.sign_pending)  # signed at 10
    for i in range(10, 15):
        audit.record_event("opened", now=T0, portal_id=f"p{i}")
    assert _signed_and_last(audit) == (10, 15)
    audit.conn.execute("DELETE FROM audit_records WHERE seq > 8")
    report = verify_store(audit.conn, audit.public_key)
    assert report.status == "tampered" and report.first_bad_seq == 9
    assert "tail cut: records 9..10" in report.problem


def test_records_past_the_signed_head_are_named_not_hidden(tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path, head_sign_ms=0))
    for i in range(4):
        audit.record_event("opened", now=T0, portal_id=f"p{i}")
    audit.close(T0)  # a store at rest: signed to its last record
    reopened = AuditLog.open(make_settings(tmp_path, head_sign_ms=60_000))
    at_rest = verify_store(reopened.conn, reopened.public_key)
    assert at_rest.ok and at_rest.head_lag == 0
    # Someone appends a record by hand: the chain accepts it, the summary says
    # no signature covers it.
    reopened.record_event("opened", now=T0, portal_id="late")  # signs (first of period)
    reopened.record_event("opened", now=T0, portal_id="later")  # within the period: not
    report = verify_store(reopened.conn, reopened.public_key)
    assert report.ok and report.head_lag == 1
    assert "appended without the signing key" in report.summary()
    reopened.close(T0)


def test_a_head_naming_another_record_is_caught(tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path, head_sign_ms=0))
    for i in range(4):
        audit.record_event("opened", now=T0, portal_id=f"p{i}")
    h = store.head(audit.conn)
    audit.conn.execute("UPDATE audit_head SET hash = ?", ("ab" * 32,))
    report = verify_store(audit.conn, audit.public_key)
    assert report.status == "tampered" and "does not verify" in report.problem
    audit.conn.execute("UPDATE audit_head SET hash = ?", (h.hash,))
    assert verify_store(audit.conn, audit.public_key).ok
    audit.close(T0)


def test_close_signs_whatever_trails(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, head_sign_ms=60_000, checkpoint_every=3)
    audit = AuditLog.open(settings)
    for i in range(7):
        audit.record_event("opened", now=T0, portal_id=f"p{i}")
    audit.close(T0)
    with sqlite3.connect(settings.storage.sqlite_path) as db:
        signed = db.execute("SELECT seq FROM audit_head").fetchone()[0]
        last = db.execute("SELECT MAX(seq) FROM audit_records").fetchone()[0]
        kind = db.execute("SELECT kind FROM audit_records WHERE seq = ?", (last,)).fetchone()[0]
    assert signed == last and kind == "checkpoint"


@pytest.mark.parametrize("value", ["-1", "3600001", '"1s"'])
def test_a_bad_head_sign_ms_names_the_file_and_key(tmp_path: Path, value: str) -> None:
    cfg = tmp_path / "securemail.toml"
    cfg.write_text(f"[audit]\nhead_sign_ms = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "audit.head_sign_ms" in str(err.value) and str(cfg) in str(err.value)
