"""An administrative change and its audit records commit together, or not at all."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from securemail.audit import AuditLog, verify_store
from securemail.audit.log import Chainer
from securemail.cli.directory_cmd import directory_group
from securemail.cli.keys_cmd import keys_group
from securemail.config import load_settings
from securemail.directory import load_imported
from securemail.keys import Keyring
from tests.integration.crypto_fixtures import smime_identity
from tests.unit.test_audit_support import T0, envelope, make_settings, outcome, write_config

CONTACTS = '[[clients]]\nid = "c-7"\naddresses = ["pat@mail.example"]\n' \
           '[clients.consent_unencrypted]\ngranted = "2026-01-10"\nwarning = "v1"\n'


def _kinds(cfg: Path) -> list[str]:
    with sqlite3.connect(load_settings(cfg).storage.sqlite_path) as conn:
        return [r[0] for r in conn.execute("SELECT kind FROM audit_records ORDER BY seq")]


def _broken_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(self: Chainer, conn: sqlite3.Connection, items: object) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Chainer, "append", full_disk)


def test_directory_import_is_undone_when_its_audit_records_cannot_be_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_config(tmp_path)
    (tmp_path / "dir.toml").write_text(CONTACTS)
    _broken_audit(monkeypatch)
    result = CliRunner().invoke(directory_group, ["import", "-c", str(cfg),
                                                  str(tmp_path / "dir.toml")])
    assert result.exit_code == 1 and "imported" not in result.output
    monkeypatch.undo()
    with sqlite3.connect(load_settings(cfg).storage.sqlite_path) as conn:
        assert load_imported(conn).clients == ()  # no consent in force without its record
    # The same import with a working log: change and records land together.
    result = CliRunner().invoke(directory_group, ["import", "-c", str(cfg),
                                                  str(tmp_path / "dir.toml")])
    assert result.exit_code == 0, result.output
    assert _kinds(cfg)[:2] == ["directory-import", "consent-change"]


def test_directory_import_with_an_unreadable_signing_key_changes_nothing(
        tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text() + 'signing_key_file = "keydir"\n')
    (tmp_path / "keydir").mkdir()
    (tmp_path / "dir.toml").write_text(CONTACTS)
    result = CliRunner().invoke(directory_group, ["import", "-c", str(cfg),
                                                  str(tmp_path / "dir.toml")])
    assert result.exit_code == 2
    with sqlite3.connect(load_settings(cfg).storage.sqlite_path) as conn:
        assert load_imported(conn).clients == ()


def test_key_import_is_undone_when_its_audit_record_cannot_be_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_config(tmp_path)
    (tmp_path / "sam.pem").write_bytes(smime_identity("sam@mail.example").cert_pem)
    _broken_audit(monkeypatch)
    result = CliRunner().invoke(keys_group, ["import", "-c", str(cfg),
                                             str(tmp_path / "sam.pem")])
    assert result.exit_code == 1 and "imported" not in result.output
    monkeypatch.undo()
    keyring = Keyring(sqlite3.connect(load_settings(cfg).storage.sqlite_path))
    assert keyring.list(T0) == []
    result = CliRunner().invoke(keys_group, ["import", "-c", str(cfg),
                                             str(tmp_path / "sam.pem")])
    assert result.exit_code == 0, result.output
    assert "key-import" in _kinds(cfg)
    result = CliRunner().invoke(keys_group, ["remove", "-c", str(cfg), "sam@mail.example"])
    assert result.exit_code == 0 and _kinds(cfg)[-2:] == ["key-remove", "checkpoint"]


def test_nothing_to_record_writes_nothing(tmp_path: Path) -> None:
    # A message with no recipients used to sign a head over no record, and a
    # fresh store then failed verification as tampered.
    audit = AuditLog.open(make_settings(tmp_path))
    asyncio.run(audit.record_outcome(envelope([]), outcome([]), config_digest="d" * 64,
                                     instance_id="i", now=T0))
    audit.append_many([], now=T0)
    report = verify_store(audit.conn, audit.public_key)
    assert report.ok, report
    audit.close(T0)
