"""Each kind of tampering is caught, and the first bad record is named."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securemail.audit import AuditLog, verify_export, verify_store
from securemail.audit.chain import checkpoint_message, key_id, sign
from tests.unit.test_audit_support import (
    read_lines,
    rechain,
    write_lines,
)


def test_untouched_store_and_export_verify(audit: AuditLog, export: Path) -> None:
    store = verify_store(audit.conn, audit.public_key)
    assert store.ok, store.summary()
    assert (store.first_seq, store.last_seq, store.checkpoints) == (1, 26, 2)
    assert store.unsigned_tail == 4
    offline = verify_export(export, audit.public_key)
    assert offline.ok, offline.summary()
    assert offline.records == 26


# ------------------------------------------------------------------ exports


def _tampered(path: Path, lines: list[dict[str, Any]], audit: AuditLog) -> Any:
    write_lines(path, lines)
    report = verify_export(path, audit.public_key)
    assert report.status == "tampered", report.summary()
    return report


def test_export_flipped_bit_names_record(audit: AuditLog, export: Path) -> None:
    raw = bytearray(export.read_bytes())
    lines = raw.split(b"\n")
    offset = sum(len(x) + 1 for x in lines[:8]) + lines[8].index(b"@mail.example")
    raw[offset] ^= 0x02  # '@' -> 'B': still valid JSON, different address
    export.write_bytes(bytes(raw))
    report = verify_export(export, audit.public_key)
    assert report.status == "tampered"
    assert (report.first_bad_seq, report.first_bad_line) == (8, 9)
    assert "altered" in report.problem


def test_export_deleted_record(audit: AuditLog, export: Path) -> None:
    lines = read_lines(export)
    del lines[5]  # seq 5
    report = _tampered(export, lines, audit)
    assert report.first_bad_seq == 5 and "missing" in report.problem


def test_export_inserted_record_even_with_recomputed_hashes(
        audit: AuditLog, export: Path) -> None:
    lines = read_lines(export)
    forged = dict(lines[5], recipient="forged@mail.example", event_id="forged")
    lines.insert(5, forged)  # becomes seq 5, linked to seq 4; the rest renumbered
    for rec in lines[6:]:
        rec["seq"] += 1
    records = lines[1:]
    for i in range(4, len(records)):  # a careful forger: links, hashes, checkpoint fields
        records[i]["prev_hash"] = records[i - 1]["hash"]
        if records[i]["kind"] == "checkpoint":
            records[i]["covers_seq"] = records[i]["seq"] - 1
            records[i]["covers_hash"] = records[i]["prev_hash"]
        rechain(records, i)
    report = _tampered(export, lines, audit)
    # Without the private key the forger cannot re-sign the next checkpoint.
    assert report.first_bad_seq == 12 and "signature" in report.problem
    # Records 1..11 chain, but the forgery sits among them: only what a valid
    # signature covers is claimed to verify.
    assert report.signed_seq is None and report.last_seq == 11
    assert "records 1..11 chain correctly but no valid signature vouches" in report.summary()
    assert "records up to 11 verify" not in report.summary()


def test_export_inserted_record_keeping_hashes(audit: AuditLog, export: Path) -> None:
    lines = read_lines(export)
    forged = dict(lines[5], recipient="forged@mail.example")
    rechain([lines[4], forged], 1)
    lines.insert(6, forged)  # a second "seq 5" after the real one
    report = _tampered(export, lines, audit)
    assert (report.first_bad_seq, report.first_bad_line) == (5, 7)


def test_export_reordered_records(audit: AuditLog, export: Path) -> None:
    lines = read_lines(export)
    lines[3], lines[4] = lines[4], lines[3]  # seq 3 and 4 swapped
    report = _tampered(export, lines, audit)
    assert report.first_bad_seq == 3


def test_export_tail_cut_after_last_checkpoint(audit: AuditLog, export: Path) -> None:
    lines = read_lines(export)
    last_cp = max(r["seq"] for r in lines[1:] if r.get("kind") == "checkpoint")
    kept = [lines[0]] + [r for r in lines[1:] if r["seq"] <= last_cp]
    report = _tampered(export, kept, audit)
    assert report.first_bad_seq == last_cp + 1 and "tail cut" in report.problem


def test_export_checkpoint_signed_by_another_key(audit: AuditLog, export: Path) -> None:
    lines = read_lines(export)
    other = Ed25519PrivateKey.generate()
    cp = next(r for r in lines[1:] if r.get("kind") == "checkpoint")
    cp["key_id"] = key_id(other.public_key())
    cp["signature"] = sign(other, checkpoint_message(cp["covers_seq"], cp["covers_hash"]))
    rechain(lines[1:], cp["seq"] - 1)
    report = _tampered(export, lines, audit)
    assert report.first_bad_seq == cp["seq"] and "another key" in report.problem


def test_export_verified_with_another_key_fails(export: Path) -> None:
    # Intact but signed by another key: reported as the wrong key, not as tampering
    # (tests/unit/test_audit_verify_wrong_key.py has the rest).
    report = verify_export(export, Ed25519PrivateKey.generate().public_key())
    assert report.status == "wrong-key" and not report.ok and report.first_bad_seq is None
    assert "signed by key id" in report.problem


def test_torn_last_line_is_incomplete_tail(audit: AuditLog, export: Path) -> None:
    data = export.read_bytes()
    export.write_bytes(data[: len(data) - 40])  # a crash or interrupted copy
    report = verify_export(export, audit.public_key)
    assert report.status == "incomplete-tail", report.summary()
    assert report.last_seq == 25 and report.first_bad_seq == 26


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_flipped_bit_in_an_export_is_caught(
        audit: AuditLog, export: Path, data: st.DataObject) -> None:
    original = export.read_bytes()
    position = data.draw(st.integers(0, len(original) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(original)
    flipped[position] ^= 1 << bit
    target = export.with_name("flipped.jsonl")
    target.write_bytes(bytes(flipped))
    assert not verify_export(target, audit.public_key).ok


# ------------------------------------------------------------------ store


def _db(audit: AuditLog) -> sqlite3.Connection:
    return audit.conn


def test_store_flipped_bit(audit: AuditLog) -> None:
    body = _db(audit).execute("SELECT body FROM audit_records WHERE seq = 7").fetchone()[0]
    _db(audit).execute("UPDATE audit_records SET body = ? WHERE seq = 7",
                       (body.replace("@mail", "@mbil", 1),))
    report = verify_store(audit.conn, audit.public_key)
    assert report.status == "tampered" and report.first_bad_seq == 7


def test_store_deleted_record(audit: AuditLog) -> None:
    _db(audit).execute("DELETE FROM audit_records WHERE seq = 9")
    report = verify_store(audit.conn, audit.public_key)
    assert report.first_bad_seq == 9 and "missing" in report.problem


def test_store_deleted_first_records_without_prune(audit: AuditLog) -> None:
    _db(audit).execute("DELETE FROM audit_records WHERE seq <= 3")
    report = verify_store(audit.conn, audit.public_key)
    assert report.first_bad_seq == 1 and "prune" in report.problem


def test_store_reordered_records(audit: AuditLog) -> None:
    db = _db(audit)
    cols = "kind=?, at=?, prev_hash=?, hash=?, body=?"
    select = "SELECT kind, at, prev_hash, hash, body FROM audit_records WHERE seq=?"
    a = db.execute(select, (4,)).fetchone()
    b = db.execute(select, (5,)).fetchone()
    db.execute(f"UPDATE audit_records SET {cols} WHERE seq=4", b)
    db.execute(f"UPDATE audit_records SET {cols} WHERE seq=5", a)
    report = verify_store(audit.conn, audit.public_key)
    assert report.first_bad_seq == 4


def test_store_tail_cut_after_last_checkpoint(audit: AuditLog) -> None:
    _db(audit).execute("DELETE FROM audit_records WHERE seq > 22")  # last checkpoint is 22
    report = verify_store(audit.conn, audit.public_key)
    assert report.first_bad_seq == 23 and "tail cut" in report.problem


def test_store_checked_with_another_key(audit: AuditLog) -> None:
    report = verify_store(audit.conn, Ed25519PrivateKey.generate().public_key())
    assert report.status == "wrong-key" and not report.ok and report.checkpoints == 0
    assert report.signed_by == key_id(audit.public_key) and "signed by key id" in report.problem


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_deleted_or_swapped_record_is_named(
        audit: AuditLog, export: Path, data: st.DataObject) -> None:
    lines = read_lines(export)
    index = data.draw(st.integers(1, len(lines) - 2))
    seq = lines[index]["seq"]
    swap = data.draw(st.booleans())
    if swap:
        lines[index], lines[index + 1] = lines[index + 1], lines[index]
    else:
        del lines[index]
    target = export.with_name("edited.jsonl")
    write_lines(target, lines)
    report = verify_export(target, audit.public_key)
    assert report.status == "tampered" and report.first_bad_seq == seq, report.summary()


def test_a_forged_last_record_is_named_on_its_own_line(audit: AuditLog, export: Path) -> None:
    # The last record, changed and re-hashed after the last checkpoint: the
    # report said "line N+1" (past the end) instead of the record's line.
    import hashlib

    from securemail.audit.chain import canonical

    lines = read_lines(export)
    last = dict(lines[-1])
    last["recipient"] = "someone-else@mail.example"
    last["hash"] = hashlib.sha256(canonical(last)).hexdigest()
    lines[-1] = last
    report = _tampered(export, lines, audit)
    assert report.first_bad_seq == last["seq"]
    assert report.first_bad_line == len(lines)  # the manifest is line 1


def test_a_bad_manifest_is_named_as_the_manifest(audit: AuditLog, export: Path) -> None:
    lines = read_lines(export)
    lines[0] = {**lines[0], "signature": lines[0]["signature"][::-1]}
    report = _tampered(export, lines, audit)
    assert ": bad manifest (line 1): " in report.summary()
    assert "record ?" not in report.summary()
