"""`securemail audit ...`: exit 0 if all is well, 1 naming the first bad record, 2 on bad input."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from securemail.audit import AuditLog
from securemail.cli.audit_cmd import audit_group
from securemail.config import load_settings
from tests.unit.test_audit_support import T0, record_messages, write_config


def _store(tmp_path: Path) -> Path:
    cfg = write_config(tmp_path, checkpoint_every=5)
    audit = AuditLog.open(load_settings(cfg))
    record_messages(audit, 8)
    audit.close(T0)
    return cfg


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(audit_group, list(args))
    return result.exit_code, result.output


def test_export_and_verify_offline_with_the_public_key(tmp_path: Path) -> None:
    cfg = _store(tmp_path)
    code, _ = run("public-key", "-c", str(cfg), "-o", str(tmp_path / "audit.pub"))
    assert code == 0 and "BEGIN PUBLIC KEY" in (tmp_path / "audit.pub").read_text()
    code, out = run("export", "-c", str(cfg), "-o", str(tmp_path / "e.jsonl"))
    assert code == 0, out
    code, out = run("verify", str(tmp_path / "e.jsonl"), "--public-key",
                    str(tmp_path / "audit.pub"), "-c", str(tmp_path / "no-such.toml"))
    assert code == 0 and out.startswith("OK"), out

    lines = (tmp_path / "e.jsonl").read_text().splitlines(keepends=True)
    del lines[4]  # seq 4
    (tmp_path / "e.jsonl").write_text("".join(lines))
    code, out = run("verify", str(tmp_path / "e.jsonl"), "--public-key",
                    str(tmp_path / "audit.pub"), "--json")
    assert code == 1
    assert '"first_bad_seq": 4' in out and '"status": "tampered"' in out


def test_verify_store_and_refuse_to_export_a_tampered_store(tmp_path: Path) -> None:
    cfg = _store(tmp_path)
    code, out = run("verify", "-c", str(cfg))
    assert code == 0 and "OK: store" in out
    with sqlite3.connect(tmp_path / "store.db") as db:
        db.execute("UPDATE audit_records SET body = replace(body, 'client3', 'clienX')"
                   " WHERE seq = 8")
    code, out = run("verify", "-c", str(cfg))
    assert code == 1 and "TAMPERED" in out and "first bad record 8" in out
    code, out = run("export", "-c", str(cfg), "-o", str(tmp_path / "e.jsonl"))
    assert code == 1 and not (tmp_path / "e.jsonl").exists()


def test_csv_report_and_prune(tmp_path: Path) -> None:
    cfg = _store(tmp_path)
    code, _ = run("export", "-c", str(cfg), "--format", "csv", "-o", str(tmp_path / "a.csv"))
    assert code == 0
    with (tmp_path / "a.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert sum(r["kind"] == "message" for r in rows) == 16
    code, _ = run("report", "-c", str(cfg), "-o", str(tmp_path / "r.html"))
    assert code == 0 and 'data-metric="messages">8<' in (tmp_path / "r.html").read_text()
    code, out = run("prune", "-c", str(cfg), "--retention-days", "1")
    assert code == 0 and "deleted" in out
    code, out = run("verify", "-c", str(cfg))
    assert code == 0, out


def test_bad_input_exits_2(tmp_path: Path) -> None:
    cfg = _store(tmp_path)
    code, out = run("export", "-c", str(cfg), "--since", "last tuesday")
    assert code == 2 and "--since" in out
    code, out = run("verify", str(tmp_path / "missing.jsonl"), "--public-key", str(cfg))
    assert code == 2 and "Ed25519" in out
    # --json: a script reading stdout gets an answer, not an empty string.
    assert run("public-key", "-c", str(cfg), "-o", str(tmp_path / "audit.pub"))[0] == 0
    code, out = run("verify", str(tmp_path / "missing.jsonl"), "--public-key",
                    str(tmp_path / "audit.pub"), "--json")
    answer, _ = json.JSONDecoder().raw_decode(out)
    assert code == 2 and answer["status"] == "bad-input" and answer["ok"] is False
    assert "missing.jsonl" in answer["problem"], answer


def _max_seq(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT MAX(seq) FROM audit_records").fetchone()[0])


def test_read_commands_on_a_mistyped_store_create_nothing(tmp_path: Path) -> None:
    cfg = _store(tmp_path)
    elsewhere = tmp_path / "typo"
    elsewhere.mkdir()
    wrong = elsewhere / "securemail.toml"
    wrong.write_text(cfg.read_text().replace("store.db", "stroe.db"))  # beside the config
    assert "stroe.db" in wrong.read_text()
    for args in (("verify",), ("export", "-o", str(tmp_path / "x.jsonl")),
                 ("report", "-o", str(tmp_path / "x.html")), ("public-key",),
                 ("prune", "--dry-run"), ("prune",)):
        code, out = run(*args, "-c", str(wrong))
        assert code == 2, (args, out)
        assert "stroe.db" in out or "audit-signing.key" in out, (args, out)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["securemail.toml"]


def test_export_report_and_dry_run_leave_the_store_as_it_was(tmp_path: Path) -> None:
    cfg = _store(tmp_path)
    audit = AuditLog.open(load_settings(cfg))
    record_messages(audit, 2)  # records after the last checkpoint, as a running relay has
    db = tmp_path / "store.db"
    before = _max_seq(db)
    assert run("export", "-c", str(cfg), "-o", str(tmp_path / "e.jsonl"))[0] == 0
    assert run("export", "-c", str(cfg), "--format", "csv", "-o", str(tmp_path / "e.csv"))[0] == 0
    assert run("report", "-c", str(cfg), "-o", str(tmp_path / "r.html"))[0] == 0
    code, out = run("prune", "-c", str(cfg), "--retention-days", "1", "--dry-run")
    assert code == 0 and "would delete" in out
    assert _max_seq(db) == before
    with (tmp_path / "e.csv").open(newline="") as f:
        assert len(list(csv.DictReader(f))) == before  # the CSV and JSONL agree
    assert len((tmp_path / "e.jsonl").read_text().splitlines()) == before + 1
    audit.close(T0)


def test_report_refuses_a_store_that_does_not_verify(tmp_path: Path) -> None:
    cfg = _store(tmp_path)
    code, _ = run("report", "-c", str(cfg), "-o", str(tmp_path / "ok.html"))
    page = (tmp_path / "ok.html").read_text()
    assert code == 0 and 'data-metric="integrity">Integrity check: OK: store' in page
    with sqlite3.connect(tmp_path / "store.db") as db:
        changed = db.execute("UPDATE audit_records SET body = replace(body, '\"action\":"
                             "\"block\"', '\"action\":\"deliver\"') WHERE seq = 2").rowcount
        assert changed == 1 and '"action":"deliver"' in db.execute(
            "SELECT body FROM audit_records WHERE seq = 2").fetchone()[0]
    code, out = run("report", "-c", str(cfg), "-o", str(tmp_path / "bad.html"))
    assert code == 1 and "TAMPERED" in out and "report refused" in out
    assert not (tmp_path / "bad.html").exists()


def test_export_lines_must_be_canonical(tmp_path: Path) -> None:
    """A duplicate key: json.loads keeps the last value, grep and other parsers the first."""
    cfg = _store(tmp_path)
    run("public-key", "-c", str(cfg), "-o", str(tmp_path / "audit.pub"))
    run("export", "-c", str(cfg), "-o", str(tmp_path / "e.jsonl"))
    lines = (tmp_path / "e.jsonl").read_text().splitlines(keepends=True)
    assert lines[2].startswith('{"action":')
    lines[2] = '{"recipient":"nobody@else.example",' + lines[2][1:]
    (tmp_path / "e.jsonl").write_text("".join(lines))
    code, out = run("verify", str(tmp_path / "e.jsonl"), "--public-key",
                    str(tmp_path / "audit.pub"))
    assert code == 1 and "line 3" in out and "canonical form" in out, out


def test_time_range_must_not_be_reversed(tmp_path: Path) -> None:
    cfg = _store(tmp_path)
    code, out = run("export", "-c", str(cfg), "--since", "2026-11-30", "--until", "2026-11-29")
    assert code == 2 and "--since" in out and "before --until" in out


def test_the_store_is_owner_only(tmp_path: Path) -> None:
    _store(tmp_path)
    for f in tmp_path.glob("store.db*"):
        if f.name.endswith(".writers"):  # the writers' lock: empty, readable for flock
            assert f.stat().st_size == 0
            continue
        assert f.stat().st_mode & 0o777 == 0o600, f


def test_prune_refuses_a_store_that_does_not_verify(tmp_path: Path) -> None:
    cfg = _store(tmp_path)
    with sqlite3.connect(tmp_path / "store.db") as db:
        db.execute("UPDATE audit_records SET body = replace(body, 'client3', 'clienX')"
                   " WHERE seq = 8")
    for extra in ([], ["--dry-run"]):
        code, out = run("prune", "-c", str(cfg), "--retention-days", "1", *extra)
        assert code == 1 and "prune refused" in out, out
    with sqlite3.connect(tmp_path / "store.db") as db:  # the evidence is still there
        assert db.execute("SELECT COUNT(*) FROM audit_records WHERE seq = 8").fetchone()[0] == 1


def test_an_output_path_that_cannot_be_written_is_exit_2_naming_it(tmp_path: Path) -> None:
    cfg = _store(tmp_path)
    for args in (["export", "-o"], ["report", "-o"], ["public-key", "-o"]):
        target = tmp_path / "no-such-folder" / "out.file"
        code, out = run(*args, str(target), "-c", str(cfg))
        assert code == 2 and str(target) in out and "Traceback" not in out, out
        assert not target.parent.exists()  # a mistyped folder is not created
    code, out = run("public-key", "-o", str(tmp_path), "-c", str(cfg))  # a folder
    assert code == 2 and "Traceback" not in out, out
    code, out = run("public-key", "-o", str(tmp_path / "audit.pub"), "-c", str(cfg))
    assert code == 0 and (tmp_path / "audit.pub").stat().st_mode & 0o777 == 0o644
    code, out = run("export", "-o", str(tmp_path / "e.jsonl"), "-c", str(cfg))
    assert code == 0 and (tmp_path / "e.jsonl").stat().st_mode & 0o777 == 0o600


def test_an_export_window_says_when_it_carries_records_timed_outside_it(tmp_path: Path) -> None:
    from datetime import timedelta

    cfg = write_config(tmp_path)
    audit = AuditLog.open(load_settings(cfg))
    record_messages(audit, 2, start=T0)
    record_messages(audit, 1, start=T0 - timedelta(days=40))  # a clock that was wrong
    record_messages(audit, 2, start=T0 + timedelta(minutes=5))
    audit.close(T0)
    code, out = run("export", "-c", str(cfg), "-o", str(tmp_path / "w.jsonl"),
                    "--since", T0.date().isoformat())
    assert code == 0, out
    assert "note: 2 of them are timed outside --since/--until" in out  # 2 recipients
    code, out = run("verify", str(tmp_path / "w.jsonl"), "-c", str(cfg))
    assert code == 0, out


def test_new_chain_from_the_command_line(tmp_path: Path) -> None:
    cfg = _store(tmp_path)
    (tmp_path / "audit-signing.key").unlink()
    code, out = run("verify", "-c", str(cfg))
    assert code == 2  # read commands need the key too: nothing to verify against
    code, out = run("new-chain", "-c", str(cfg), "--reason", "lost-key")
    assert code == 0, out
    assert "archived" in out and "new chain started" in out
    code, out = run("verify", "-c", str(cfg))
    assert code == 0 and out.startswith("OK"), out
    assert len(list(tmp_path.glob("audit-archive-*.db"))) == 1


def test_a_new_store_behind_a_symlink_is_owner_only_too(tmp_path: Path) -> None:
    import os

    from securemail.store.sqlite import open_database

    (tmp_path / "volume").mkdir()
    link = tmp_path / "store.db"
    link.symlink_to(tmp_path / "volume" / "store.db")  # dangling until the first start
    old = os.umask(0o022)
    try:
        open_database(link).execute("CREATE TABLE t (x)").connection.close()
    finally:
        os.umask(old)
    for f in (tmp_path / "volume").iterdir():
        assert f.stat().st_mode & 0o777 == 0o600, f


def test_verify_warns_when_given_the_private_signing_key(tmp_path: Path) -> None:
    # It verified silently: the workflow let the private key travel to auditors.
    from securemail.audit import signing_key_path

    cfg = _store(tmp_path)
    private = signing_key_path(load_settings(cfg))
    code, out = run("export", "-c", str(cfg), "-o", str(tmp_path / "e.jsonl"))
    assert code == 0, out
    code, out = run("verify", str(tmp_path / "e.jsonl"), "--public-key", str(private),
                    "-c", str(cfg))
    assert code == 0, out
    assert "is a PRIVATE key (an audit signing key)" in out
    code, out = run("report", "-c", str(cfg), "-o", str(tmp_path / "r.html"), "--public-key",
                    str(private))  # the same warning wherever it is given
    assert code == 0 and "is a PRIVATE key (an audit signing key)" in out, out


def test_a_wiped_audit_log_does_not_verify_while_the_store_holds_what_it_recorded(
        tmp_path: Path) -> None:
    from tests.unit.test_directory_maintenance import JANE, TOM, _config, _csv
    from tests.unit.test_directory_maintenance import _run as directory

    cfg = _config(tmp_path)
    assert directory(cfg, "import", str(_csv(tmp_path, JANE, TOM))).exit_code == 0
    code, out = run("verify", "-c", str(cfg))
    assert code == 0 and out.startswith("OK: store: records 1..3 verified"), out

    with sqlite3.connect(tmp_path / "store.db") as db:
        db.execute("DELETE FROM audit_records")
        db.execute("DELETE FROM audit_head")
        held = db.execute("SELECT COUNT(*) FROM directory_entries").fetchone()[0]
    code, out = run("verify", "-c", str(cfg))
    assert code == 1 and held == 2, out
    assert out.startswith("TAMPERED: store: first bad record 1: the audit log is empty, but the"
                          " store holds 2 imported directory entries, each recorded in the"
                          " audit log when it was made: its records were deleted"), out
    with sqlite3.connect(tmp_path / "store.db") as db:  # nothing left that it recorded
        db.execute("DELETE FROM directory_entries")
    code, out = run("verify", "-c", str(cfg))
    assert code == 0 and "OK: store: no records verified" in out, out


def test_the_archive_of_a_lost_key_is_reported_and_exported_with_the_old_public_key(
        tmp_path: Path) -> None:
    cfg = _store(tmp_path)
    old_public = tmp_path / "old.pub"
    assert run("public-key", "-c", str(cfg), "-o", str(old_public))[0] == 0
    old_private = tmp_path / "audit-signing.key"
    kept = old_private.read_bytes()
    old_private.unlink()
    assert run("new-chain", "-c", str(cfg), "--reason", "lost-key")[0] == 0
    [archive] = tmp_path.glob("audit-archive-*.db")
    arch = tmp_path / "archive.toml"
    arch.write_text(cfg.read_text().replace("store.db", archive.name))

    code, out = run("report", "-c", str(arch), "-o", str(tmp_path / "r.html"))
    assert code == 1 and "WRONG KEY" in out  # the new key did not sign the archive
    for fmt in ("jsonl", "csv"):  # nor did the old key sign the new chain: a wrong key, 1
        code, out = run("export", "-c", str(cfg), "--format", fmt, "--public-key",
                        str(old_public), "-o", str(tmp_path / f"x.{fmt}"))
        assert code == 1 and "WRONG KEY" in out and "export refused" in out, out
    code, out = run("report", "-c", str(arch), "-o", str(tmp_path / "r.html"),
                    "--public-key", str(old_public))
    assert code == 0, out
    assert 'data-metric="messages">8<' in (tmp_path / "r.html").read_text()
    code, out = run("export", "-c", str(arch), "--format", "csv", "-o", str(tmp_path / "a.csv"),
                    "--public-key", str(old_public))
    assert code == 0, out
    with (tmp_path / "a.csv").open(newline="") as f:
        assert sum(r["kind"] == "message" for r in csv.DictReader(f)) == 16
    code, out = run("export", "-c", str(arch), "-o", str(tmp_path / "a.jsonl"),
                    "--public-key", str(old_public))
    assert code == 2 and not (tmp_path / "a.jsonl").exists()
    assert "a JSONL export is signed with the private key of the chain it holds" in out
    assert "export --format csv with --public-key" in out

    # Rotation: the old private key is still at hand, so the archive's JSONL is signed.
    (tmp_path / "old.key").write_bytes(kept)
    (tmp_path / "old.key").chmod(0o600)
    arch.write_text(arch.read_text() + 'signing_key_file = "old.key"\n')
    code, out = run("export", "-c", str(arch), "-o", str(tmp_path / "a.jsonl"),
                    "--public-key", str(old_public))
    assert code == 0, out
    code, out = run("verify", str(tmp_path / "a.jsonl"), "--public-key", str(old_public))
    assert code == 0 and out.startswith("OK"), out


def test_an_export_reaching_back_before_a_prune_says_so_in_its_signed_manifest(
        tmp_path: Path) -> None:
    cfg = _store(tmp_path)
    assert run("public-key", "-c", str(cfg), "-o", str(tmp_path / "audit.pub"))[0] == 0
    code, out = run("prune", "-c", str(cfg), "--retention-days", "1")
    assert code == 0 and "deleted" in out, out
    for since in (None, T0.date().isoformat()):  # from the start, or a day the prune took
        window = ["--since", since] if since else []
        code, out = run("export", "-c", str(cfg), "-o", str(tmp_path / "e.jsonl"), *window)
        assert code == 0, out
        manifest = json.loads((tmp_path / "e.jsonl").read_text().splitlines()[0])["export"]
        assert manifest["pruned"].startswith("records timed before ")
        assert manifest["pruned"] in out  # as the command's own note says it
        code, out = run("verify", str(tmp_path / "e.jsonl"), "--public-key",
                        str(tmp_path / "audit.pub"))
        assert code == 0 and out.startswith("OK"), out
        assert f"note: the export says {manifest['pruned']}" in out
    code, out = run("export", "-c", str(cfg), "-o", str(tmp_path / "e.jsonl"),
                    "--since", "2100-01-01")  # after the cutoff: nothing is missing
    assert code == 0, out
    assert "pruned" not in json.loads((tmp_path / "e.jsonl").read_text().splitlines()[0])["export"]


def test_a_duplicated_key_is_named_by_the_records_place_not_its_value(tmp_path: Path) -> None:
    cfg = _store(tmp_path)
    assert run("public-key", "-c", str(cfg), "-o", str(tmp_path / "audit.pub"))[0] == 0
    assert run("export", "-c", str(cfg), "-o", str(tmp_path / "e.jsonl"))[0] == 0
    lines = (tmp_path / "e.jsonl").read_text().splitlines(keepends=True)
    assert '"seq":5,' in lines[5]
    lines[5] = lines[5].rstrip("\n")[:-1] + ',"seq":999}\n'  # JSON parsers keep the last
    (tmp_path / "e.jsonl").write_text("".join(lines))
    code, out = run("verify", str(tmp_path / "e.jsonl"), "--public-key",
                    str(tmp_path / "audit.pub"))
    assert code == 1 and "first bad record 5 (line 6)" in out, out


def test_a_log_found_wiped_starts_a_new_chain_that_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The relay logged the wipe, then its own next record made the store verify
    # OK again: the wipe was on record nowhere.
    import logging

    from tests.unit.test_directory_maintenance import JANE, _config, _csv
    from tests.unit.test_directory_maintenance import _run as directory

    cfg = _config(tmp_path)
    assert directory(cfg, "import", str(_csv(tmp_path, JANE))).exit_code == 0
    with caplog.at_level(logging.ERROR, logger="securemail.audit"):
        AuditLog.open(load_settings(cfg)).close(T0)
    assert not caplog.records  # a log with records: nothing to say
    with sqlite3.connect(tmp_path / "store.db") as db:
        db.execute("DELETE FROM audit_records")
        db.execute("DELETE FROM audit_head")
    with caplog.at_level(logging.ERROR, logger="securemail.audit"):
        for _ in range(2):  # the second opener finds the new chain: nothing more
            AuditLog.open(load_settings(cfg)).close(T0)
    [error] = caplog.messages
    assert "is empty, but the store holds 1 imported directory entry" in error
    assert "restore the store from a backup" in error

    with sqlite3.connect(tmp_path / "store.db") as db:
        first = json.loads(db.execute("SELECT body FROM audit_records WHERE seq = 1").fetchone()[0])
        consent_table = db.execute("SELECT name FROM sqlite_master WHERE name ="
                                   " 'consent_recorded'").fetchone()
    assert (first["kind"], first["reason_code"], first["count"]) == ("chain-start",
                                                                      "found-empty", 1)
    assert consent_table is None  # Jane's consent is recorded again, in the new chain
    code, out = run("verify", "-c", str(cfg))
    assert code == 0 and out.startswith("OK: store"), out
    assert ("note: record 1 (" in out and "says the audit log was found empty while the store"
            " held 1 row(s) recorded in it: the records before it were deleted" in out), out
    code, out = run("export", "-c", str(cfg), "-o", str(tmp_path / "e.jsonl"))
    assert code == 0, out
    code, out = run("verify", str(tmp_path / "e.jsonl"), "-c", str(cfg))
    assert code == 0 and "says the audit log was found empty" in out, out


def test_dropped_audit_tables_are_tampering_while_the_store_holds_what_they_recorded(
        tmp_path: Path) -> None:
    from tests.unit.test_directory_maintenance import JANE, _config, _csv
    from tests.unit.test_directory_maintenance import _run as directory

    cfg = _config(tmp_path)
    assert directory(cfg, "import", str(_csv(tmp_path, JANE))).exit_code == 0
    with sqlite3.connect(tmp_path / "store.db") as db:
        db.execute("DROP TABLE audit_records")
        db.execute("DROP TABLE audit_head")
    code, out = run("verify", "-c", str(cfg))
    assert code == 1, out
    assert out.startswith("TAMPERED: store: first bad record 1: the audit tables are gone, but"
                          " the store holds 1 imported directory entry"), out
