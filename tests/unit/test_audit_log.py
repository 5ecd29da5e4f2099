"""AuditLog appends: durable, group-committed, one chain across writers, no content."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import stat
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemail.audit import AuditLog, signing_key_path, store, verify_store
from securemail.audit.log import Chainer
from securemail.audit.records import event_fields, format_time, message_fields
from securemail.errors import StoreError
from securemail.model import Action, Encryption, Facts, PhiSignal, Role, Source, Verdict
from tests.unit.test_audit_support import (
    T0,
    decision,
    envelope,
    make_settings,
    outcome,
    record_messages,
)


def _rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as fresh:
        return fresh.execute("SELECT seq, kind, body FROM audit_records ORDER BY seq").fetchall()


def test_record_outcome_writes_one_durable_record_per_recipient(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    audit = AuditLog.open(settings)
    ds = [decision("jane@mail.example", Action.PORTAL, ("phi-unencrypted",)),
          decision("mom@mail.example", Action.BLOCK, ("unauthorised-recipient",),
                   role=Role.THIRD_PARTY, source=Source.CC)]
    asyncio.run(audit.record_outcome(envelope(ds), outcome(ds, portal_ids={
        "jane@mail.example": "p-123"}), config_digest="d" * 64, instance_id="relay-7", now=T0))
    # Visible to a brand-new connection as soon as the call returned.
    rows = _rows(settings.storage.sqlite_path)
    assert [r[1] for r in rows] == ["message", "message"]
    jane, mom = (json.loads(r[2]) for r in rows)
    assert jane["recipient"] == "jane@mail.example" and jane["outcome"] == "sealed"
    assert jane["portal_id"] == "p-123" and jane["action"] == "portal"
    assert mom["outcome"] == "blocked" and mom["rules"] == ["unauthorised-recipient"]
    assert mom["source"] == "cc" and mom["role"] == "third-party"
    for rec in (jane, mom):
        assert rec["at"] == "2026-03-02T09:00:00.000000Z"
        assert rec["mail_from"] == "therapist@riverside.example"
        assert rec["submitter"] == "therapist" and rec["mode"] == "enforce"
        assert rec["tls_version"] == "TLSv1.3" and rec["tls_peer_cert_sha256"] == "cd" * 32
        assert rec["config_sha256"] == "d" * 64 and rec["instance_id"] == "relay-7"
        assert rec["message_id"] == "<m1@riverside.example>"
    assert jane["event_id"] != mom["event_id"]
    audit.close(T0)


def test_signing_key_is_private_and_reused(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    first = AuditLog.open(settings)
    key_file = signing_key_path(settings)
    assert key_file == tmp_path / "audit-signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = AuditLog.open(settings)
    assert first.chainer.kid == second.chainer.kid
    first.close(T0)
    second.close(T0)


def test_concurrent_messages_are_group_committed(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    transactions = 0
    original = Chainer.append

    def counting(self: Chainer, conn: sqlite3.Connection, items: Any) -> int:
        nonlocal transactions
        transactions += 1
        return original(self, conn, items)

    monkeypatch.setattr(Chainer, "append", counting)
    audit = AuditLog.open(make_settings(tmp_path))

    async def burst() -> None:
        calls = []
        for i in range(200):
            ds = [decision(f"c{i}@mail.example", Action.DELIVER, ("ok",))]
            calls.append(audit.record_outcome(envelope(ds), outcome(ds), config_digest="",
                                              instance_id="", now=T0))
        await asyncio.gather(*calls)

    asyncio.run(burst())
    report = verify_store(audit.conn, audit.public_key)
    assert report.ok and report.records == 200
    assert transactions < 50, f"{transactions} transactions for 200 concurrent messages"
    audit.close(T0)


def test_two_writers_on_one_store_never_fork_the_chain(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, checkpoint_every=7)
    writers = [AuditLog.open(settings) for _ in range(3)]

    def work(log: AuditLog, n: int) -> None:
        for i in range(40):
            log.record_event("opened", now=T0 + timedelta(seconds=i), portal_id=f"w{n}-{i}")

    threads = [threading.Thread(target=work, args=(w, n)) for n, w in enumerate(writers)]
    for t in threads:
        t.start()
    reader = AuditLog.open(settings)
    while any(t.is_alive() for t in threads):  # verifying while others append is fine
        live = verify_store(reader.conn, reader.public_key)
        assert live.ok, live.summary()
    for t in threads:
        t.join()
    reader.close(T0)
    report = verify_store(writers[0].conn, writers[0].public_key)
    assert report.ok, report.summary()
    assert report.records - report.checkpoints == 120
    for w in writers:
        w.close(T0)


def test_a_rolled_back_append_leaves_no_gap_in_the_chain(tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path))
    audit.record_event("opened", now=T0, portal_id="first")

    def append_then_fail(conn: sqlite3.Connection) -> None:
        audit.chainer.append(conn, [(event_fields("opened", {"portal_id": "lost"}),
                                     format_time(T0))])
        raise RuntimeError("the commit did not happen")

    # The writer remembers the head it wrote; after a rollback that head is not
    # the store's, and the next append must chain after the stored one.
    with pytest.raises(RuntimeError):
        audit.run_in_transaction(append_then_fail)
    audit.record_event("opened", now=T0, portal_id="second")
    report = verify_store(audit.conn, audit.public_key)
    assert report.ok, report.summary()
    assert [json.loads(body).get("portal_id") for _, _, body in _rows(
        make_settings(tmp_path).storage.sqlite_path)] == ["first", "second"]
    audit.close(T0)


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7)),
                                               timezone(timedelta(hours=5, minutes=30)),
                                               timezone(timedelta(0), "UTC+0")])))
def test_record_times_are_utc_text_that_sorts_in_time_order(when: datetime) -> None:
    text = format_time(when)
    assert text == when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").rjust(27, "0")
    later = format_time(when + timedelta(microseconds=1))
    assert later > text


def test_close_writes_a_final_checkpoint_and_refuses_more(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    audit = AuditLog.open(settings)
    record_messages(audit, 3)
    audit.close(T0 + timedelta(hours=1))
    rows = _rows(settings.storage.sqlite_path)
    assert rows[-1][1] == "checkpoint" and '"reason":"close"' in rows[-1][2]
    with pytest.raises(StoreError):
        audit.record_event("opened", now=T0, portal_id="x")


def test_checkpoint_every_n_records(tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path, checkpoint_every=5, checkpoint_seconds=10**6))
    for i in range(12):
        audit.record_event("notified", now=T0, portal_id=str(i))
    kinds = [r.kind for r in store.iter_records(audit.conn)]
    assert [i + 1 for i, k in enumerate(kinds) if k == "checkpoint"] == [6, 12]
    audit.close(T0)


def test_checkpoint_after_t_seconds(tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path, checkpoint_every=1000, checkpoint_seconds=60))
    audit.record_event("notified", now=T0, portal_id="a")
    audit.record_event("notified", now=T0 + timedelta(seconds=30), portal_id="b")
    audit.record_event("notified", now=T0 + timedelta(seconds=61), portal_id="c")
    kinds = [r[0] for r in audit.conn.execute("SELECT kind FROM audit_records ORDER BY seq")]
    assert kinds == ["notified", "notified", "notified", "checkpoint"]
    audit.close(T0)


@pytest.mark.parametrize("field", ["subject", "body", "token", "code", "content",
                                   "attachment_name", "sms_code", "Subject"])
def test_event_fields_that_look_like_content_are_refused(tmp_path: Path, field: str) -> None:
    audit = AuditLog.open(make_settings(tmp_path))
    with pytest.raises(ValueError, match=field):
        audit.record_event("opened", now=T0, portal_id="p", **{field: "x"})
    assert audit.conn.execute("SELECT COUNT(*) FROM audit_records").fetchone()[0] == 0
    audit.close(T0)


def test_unknown_event_kind_is_refused(tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path))
    with pytest.raises(ValueError, match="unknown audit event kind"):
        audit.record_event("message", now=T0)
    audit.record_event("portal.opened", now=T0, portal_id="p")  # prefixed names accepted
    audit.close(T0)


PHI_MESSAGE = """\
From: therapist@riverside.example
To: jane@mail.example
Cc: mom@mail.example
Subject: Jane Roe session notes F32.1 major depressive disorder
Message-ID: <phi-1@riverside.example>

Jane Roe, DOB 1990-04-12, SSN 123-45-6789, MRN A99-1234567.
Diagnosis: F32.1 major depressive disorder; started sertraline 50mg.
"""
PHI_STRINGS = ["Jane Roe", "1990-04-12", "123-45-6789", "A99-1234567", "F32.1", "depressive",
               "sertraline", "session notes"]


def test_a_message_full_of_phi_leaves_no_trace_of_its_text(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    audit = AuditLog.open(settings)
    raw = PHI_MESSAGE.encode()
    ds = [decision("jane@mail.example", Action.PORTAL, ("phi-unencrypted",)),
          decision("mom@mail.example", Action.BLOCK, ("unauthorised-recipient",),
                   role=Role.THIRD_PARTY, source=Source.CC)]
    base = outcome(ds, message_id="<phi-1@riverside.example>",
                   sha=hashlib.sha256(raw).hexdigest(), portal_ids={"jane@mail.example": "p9"})
    signals = (PhiSignal("phi-ssn", "body"), PhiSignal("phi-icd10", "subject"))
    facts = Facts("<phi-1@riverside.example>", "therapist@riverside.example", Encryption.NONE,
                  (), ("c-1001",), signals)
    verdict = Verdict(base.verdict.message_id, base.verdict.mode, False, True,
                      base.verdict.decisions, facts)
    full = type(base)(verdict, base.recipients, base.message_sha256, base.upstream_tls)
    asyncio.run(audit.record_outcome(envelope(ds), full, config_digest="", instance_id="",
                                     now=T0))
    audit.record_event("opened", now=T0, portal_id="p9", recipient="jane@mail.example")
    audit.close(T0)
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("store"))
    assert b"phi-1@riverside.example" in stored  # the records are there...
    assert b"phi-icd10" in stored  # ...with detector ids...
    for text in PHI_STRINGS:  # ...but none of the message's text
        assert text.encode() not in stored, text


def test_a_failing_batch_fails_its_callers_and_the_writer_keeps_going(tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path))
    ds = [decision("jane@mail.example", Action.DELIVER, ("ok",))]
    broken = outcome(ds, message_id=b"<not text>")  # type: ignore[arg-type]

    async def run() -> None:
        with pytest.raises(TypeError):
            await audit.record_outcome(envelope(ds), broken, config_digest="", instance_id="",
                                       now=T0)
        await audit.record_outcome(envelope(ds), outcome(ds), config_digest="", instance_id="",
                                   now=T0)

    asyncio.run(run())
    report = verify_store(audit.conn, audit.public_key)
    assert report.ok and report.records == 1
    audit.close(T0)


def test_record_bodies_are_built_in_canonical_key_order() -> None:
    # Not needed for correctness (canonical() sorts), but sorted input is what
    # keeps the per-record encoding cheap; a reordered literal would slow every append.
    ds = [decision("c@mail.example", Action.DELIVER, ("client-consented",)),
          decision("o@mail.example", Action.BLOCK, ("unauthorised-recipient",))]
    rows = message_fields(envelope(ds), outcome(ds), config_digest="c" * 64, instance_id="i")
    rows.append(event_fields("opened", {"portal_id": "p", "recipient": "c@mail.example"}))
    assert len(rows) == 3 and all(list(r) == sorted(r) for r in rows)
