"""`audit verify`: the wrong public key, an empty file and CRLF line endings are
told apart from tampering (docs/compliance.md, "Verify" and "JSONL")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securemail.audit import AuditLog, public_key_pem, verify_export, verify_store
from securemail.audit.chain import key_id, record_hash
from securemail.cli.audit_cmd import audit_group
from securemail.errors import InputError
from tests.unit.test_audit_support import (
    read_lines,
    write_lines,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "compliance.md"




@pytest.fixture()
def other_pem(tmp_path: Path) -> Path:
    path = tmp_path / "other.pem"
    path.write_text(public_key_pem(Ed25519PrivateKey.generate().public_key()))
    return path


@pytest.fixture()
def right_pem(audit: AuditLog, tmp_path: Path) -> Path:
    path = tmp_path / "right.pem"
    path.write_text(public_key_pem(audit.public_key))
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(audit_group, list(args))
    return result.exit_code, result.output


# ------------------------------------------------------------------ wrong key


def test_an_intact_export_checked_with_the_wrong_key_says_wrong_key(
        audit: AuditLog, export: Path, other_pem: Path) -> None:
    code, out = run("verify", str(export), "--public-key", str(other_pem))
    assert code == 1, out  # verification did not succeed (INTERFACE.md: exit 1)
    assert out.startswith("WRONG KEY: ") and "TAMPERED" not in out, out
    ours, theirs = key_id(audit.public_key), out.split("the public key given is ")[1][:16]
    assert f"signed by key id {ours}" in out and theirs != ours
    # Which key is right is the compliance file's to say, not the export's.
    assert (f"compare both with the key id in your compliance file (if it is {theirs}, your"
            f" installation did not sign this; if it is {ours}, give that key") in out
    code, out = run("verify", str(export), "--public-key", str(other_pem), "--json")
    report = json.loads(out)
    assert code == 1 and report["status"] == "wrong-key" and report["ok"] is False
    assert report["signed_by"] == ours and report["key_id"] == theirs
    assert report["first_bad_seq"] is None and report["signed_seq"] is None


def test_a_tampered_export_is_tampered_whichever_key_is_given(
        audit: AuditLog, export: Path, other_pem: Path, right_pem: Path) -> None:
    lines = read_lines(export)
    lines[5]["recipient"] = "someone@else.example"  # not re-hashed: a plain edit
    write_lines(export, lines)
    for pem in (other_pem, right_pem):
        code, out = run("verify", str(export), "--public-key", str(pem))
        assert code == 1 and out.startswith("TAMPERED: ") and "first bad record 5" in out, out
    assert "not the key given" in run("verify", str(export), "--public-key", str(other_pem))[1]


def test_a_manifest_rewritten_to_name_another_key_is_tampering(
        audit: AuditLog, export: Path, right_pem: Path) -> None:
    # Claiming "signed by another key" must not hide edits from the right key:
    # its checkpoints still name the practice's key, which the manifest denies.
    lines = read_lines(export)
    lines[0]["export"]["key_id"] = "0" * 16
    lines[3]["recipient"] = "someone@else.example"
    records = lines[1:]
    for i in range(2, len(records)):  # what a forger does: re-hash, re-link, re-cover
        records[i]["prev_hash"] = records[i - 1]["hash"]
        if records[i]["kind"] == "checkpoint":
            records[i]["covers_hash"] = records[i - 1]["hash"]
        records[i]["hash"] = record_hash(records[i])
    lines[0]["export"]["last_hash"] = records[-1]["hash"]
    write_lines(export, lines)
    report = verify_export(export, audit.public_key)
    assert report.status == "tampered" and "checkpoint signed by another key" in report.problem


def test_a_store_checked_with_the_wrong_key_says_wrong_key(audit: AuditLog) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    report = verify_store(audit.conn, other, key_label="the public key given")
    assert report.status == "wrong-key", report.summary()
    assert report.summary().startswith(
        f"WRONG KEY: store: the store's checkpoints are signed by key id"
        f" {key_id(audit.public_key)}; the public key given is {key_id(other)}")
    assert verify_store(audit.conn, audit.public_key).ok


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n", b"\xef\xbb\xbf"])
def test_an_empty_export_file_is_bad_input(tmp_path: Path, right_pem: Path,
                                           content: bytes) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(content)
    code, out = run("verify", str(empty), "--public-key", str(right_pem))
    assert code == 2, out
    assert str(empty) in out and "empty" in out and "TAMPERED" not in out
    with pytest.raises(InputError):
        verify_export(empty, Ed25519PrivateKey.generate().public_key())


def test_a_csv_export_is_bad_input(audit: AuditLog, tmp_path: Path, right_pem: Path) -> None:
    from securemail.audit import export_csv

    path = tmp_path / "audit.csv"
    with path.open("w", newline="") as f:
        export_csv(audit.conn, f)
    code, out = run("verify", str(path), "--public-key", str(right_pem))
    assert code == 2 and "CSV export" in out and "TAMPERED" not in out, out


# ------------------------------------------------------------------ line endings


def test_an_export_saved_with_crlf_line_endings_verifies_and_says_so(
        export: Path, right_pem: Path) -> None:
    export.write_bytes(export.read_bytes().replace(b"\n", b"\r\n"))
    code, out = run("verify", str(export), "--public-key", str(right_pem))
    assert code == 0 and out.startswith("OK: "), out
    assert "converted to CRLF (accepted" in out
    report = json.loads(run("verify", str(export), "--public-key", str(right_pem), "--json")[1])
    assert report["ok"] and "CRLF" in report["note"]


def test_a_bom_and_crlf_from_a_windows_editor_are_accepted(
        audit: AuditLog, export: Path) -> None:
    export.write_bytes(b"\xef\xbb\xbf" + export.read_bytes().replace(b"\n", b"\r\n"))
    report = verify_export(export, audit.public_key)
    assert report.ok and "byte-order mark" in report.note and "CRLF" in report.note


def test_crlf_does_not_hide_an_edit(audit: AuditLog, export: Path) -> None:
    data = export.read_bytes().replace(b"\n", b"\r\n")
    export.write_bytes(data.replace(b"client3@", b"clientX@", 1))
    report = verify_export(export, audit.public_key)
    assert report.status == "tampered" and "CRLF" in report.note


def test_an_untouched_export_has_no_note(audit: AuditLog, export: Path) -> None:
    report = verify_export(export, audit.public_key)
    assert report.ok and report.note == "" and "note" not in report.summary()


def test_the_docs_say_what_the_verifier_does() -> None:
    docs = " ".join(DOCS.read_text().split())
    assert "CRLF line ends too" in docs and "WRONG KEY" in docs
    assert "An empty file" in docs
