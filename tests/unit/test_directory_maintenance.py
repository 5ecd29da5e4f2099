"""Directory maintenance: removing entries, mirroring a file, and a forgiving, strict CSV.

1. Nobody could ever be removed: ``directory remove`` and ``import --replace``
   (audited like an import, consent withdrawals included).
2. Duplicate client ids / partner names in a CSV kept only the last row.
3. The CSV format: forgiving headers, errors that say what to do.
4. Addresses with invisible characters could never match any message.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from securemail.audit import AuditLog, verify_store
from securemail.audit.log import Chainer
from securemail.cli.directory_cmd import directory_group
from securemail.config import load_settings
from securemail.directory import (
    Directory,
    load_imported,
    read_directory_file,
    store_entries,
)
from securemail.errors import ConfigError, InputError, SecuremailError
from securemail.model import Role
from securemail.store.sqlite import open_database

HEADER = "kind,id,name,addresses,domains,contacts,consent_granted,consent_warning\n"
NOW = "2026-06-01T00:00:00+00:00"

CONFIG_DIRECTORY = """
[practice]
name = "Riverside Counseling"
domains = ["riverside.example"]

[[directory.clients]]
id = "c-cfg"
addresses = ["cfg@mail.example"]

[[directory.clients]]
id = "c-both"
addresses = ["both-config@mail.example"]
"""


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "securemail.toml"
    cfg.write_text('[storage]\nurl = "sqlite:store.db"\n' + CONFIG_DIRECTORY, encoding="utf-8")
    return cfg


def _csv(tmp_path: Path, *rows: str, name: str = "clients.csv",
         header: str = HEADER) -> Path:
    f = tmp_path / name
    f.write_text(header + "".join(r + "\n" for r in rows), encoding="utf-8")
    return f


def _run(cfg: Path, *args: str) -> Result:
    return CliRunner().invoke(directory_group, [*args, "-c", str(cfg)])


def _records(cfg: Path, *kinds: str) -> list[dict[str, Any]]:
    with sqlite3.connect(load_settings(cfg).storage.sqlite_path) as conn:
        bodies = [json.loads(b) for (b,) in conn.execute(
            "SELECT body FROM audit_records ORDER BY seq")]
    return [b for b in bodies if b["kind"] in kinds]


def _imported(cfg: Path) -> tuple[list[str], list[str]]:
    with sqlite3.connect(load_settings(cfg).storage.sqlite_path) as conn:
        d = load_imported(conn)
    return [c.id for c in d.clients], [p.name for p in d.partners]


def _error(path: Path) -> str:
    with pytest.raises((ConfigError, InputError)) as exc:
        read_directory_file(path)
    return str(exc.value)


JANE = "client,c-1,,jane@mail.example,,,2026-01-10,v1"
TOM = "client,c-2,,tom@mail.example,,mom@mail.example (parent),,"
BILLING = "partner,,Billing Co,,billing.example,,,"
OLD_BILLING = "partner,,Old Billing Co,,oldba.example,,,"


# ----------------------------------------------------------------- 1. removal


def test_remove_deletes_imported_entries_and_audits_it(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert _run(cfg, "import", str(_csv(tmp_path, JANE, TOM, BILLING))).exit_code == 0
    result = _run(cfg, "remove", "--client", "c-1", "--partner", "Billing Co")
    assert result.exit_code == 0, result.output
    assert "removed client c-1" in result.output
    assert "removed partner Billing Co" in result.output
    assert _imported(cfg) == (["c-2"], [])
    removals = _records(cfg, "directory-remove")
    assert [(r.get("client_id"), r.get("partner"), r["actor"]) for r in removals] == [
        ("c-1", None, "cli"), (None, "Billing Co", "cli")]
    # c-1 had consent: its removal withdraws it, on the record like an import would.
    consent = _records(cfg, "consent-change")
    assert [(r["client_id"], r["consent"]) for r in consent] == [
        ("c-1", "granted"), ("c-1", "withdrawn")]
    audit = AuditLog.open(load_settings(cfg))
    try:
        report = verify_store(audit.conn, audit.public_key)
        assert report.ok, report
    finally:
        audit.close(datetime.now(UTC))


def test_remove_the_removed_client_is_no_longer_authorised(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    _run(cfg, "import", str(_csv(tmp_path, TOM)))
    settings = load_settings(cfg)
    assert _run(cfg, "remove", "--client", "c-2").exit_code == 0
    conn = open_database(settings.storage.sqlite_path)
    d = Directory(settings.practice.domains, settings.directory).with_imported(
        load_imported(conn))
    assert d.identify("mom@mail.example").role is Role.THIRD_PARTY
    assert d.identify("tom@mail.example").role is Role.THIRD_PARTY


def test_remove_unknown_or_config_entry_exits_1_and_says_why(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    _run(cfg, "import", str(_csv(tmp_path, JANE)))
    result = _run(cfg, "remove", "--client", "c-1", "--client", "c-nope", "--client", "c-cfg",
                  "--partner", "Nobody")
    assert result.exit_code == 1
    assert "removed client c-1" in result.output
    assert "no imported client c-nope" in result.output
    assert "no imported partner Nobody" in result.output
    assert "client c-cfg is in the config file" in result.output
    assert "[[directory.clients]]" in result.output
    assert _imported(cfg) == ([], [])
    # Nothing removed: no record at all.
    before = len(_records(cfg, "directory-remove"))
    assert _run(cfg, "remove", "--client", "c-nope").exit_code == 1
    assert len(_records(cfg, "directory-remove")) == before


def test_remove_needs_a_target(tmp_path: Path) -> None:
    result = _run(_config(tmp_path), "remove")
    assert result.exit_code == 2
    assert "--client" in result.output


def test_remove_of_an_imported_override_brings_the_config_entry_back(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    _run(cfg, "import", str(_csv(tmp_path, "client,c-both,,both-import@mail.example,,,,")))
    result = _run(cfg, "remove", "--client", "c-both")
    assert result.exit_code == 0, result.output
    assert "config file's entry for client c-both is in force again" in result.output
    listing = _run(cfg, "list").output
    assert "both-config@mail.example" in listing and "both-import" not in listing


def test_replace_mirrors_the_file(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    _run(cfg, "import", str(_csv(tmp_path, JANE, TOM, OLD_BILLING)))
    # A plain re-import of the new export keeps the removed ones, and says so.
    new_export = _csv(tmp_path, TOM, BILLING, name="export.csv")
    plain = _run(cfg, "import", str(new_export))
    assert plain.exit_code == 0
    assert "not in" in plain.output and "--replace" in plain.output
    assert _imported(cfg) == (["c-1", "c-2"], ["Billing Co", "Old Billing Co"])

    result = _run(cfg, "import", "--replace", str(new_export))
    assert result.exit_code == 0, result.output
    assert "removed client c-1" in result.output
    assert "removed partner Old Billing Co" in result.output
    assert _imported(cfg) == (["c-2"], ["Billing Co"])
    # Config-file entries are never touched.
    listing = _run(cfg, "list").output
    assert "client c-cfg" in listing and "client c-both" in listing
    imports = _records(cfg, "directory-import")
    assert imports[-1]["reason_code"] == "replace"
    assert "reason_code" not in imports[0]
    removals = _records(cfg, "directory-remove")
    assert [(r.get("client_id"), r.get("partner"), r["file"]) for r in removals] == [
        ("c-1", None, str(new_export)), (None, "Old Billing Co", str(new_export))]
    consent = _records(cfg, "consent-change")
    assert [(r["client_id"], r["consent"]) for r in consent][-1] == ("c-1", "withdrawn")


def test_replace_with_the_same_file_removes_nothing(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    f = _csv(tmp_path, JANE, TOM)
    _run(cfg, "import", str(f))
    result = _run(cfg, "import", "--replace", str(f))
    assert result.exit_code == 0 and "removed" not in result.output
    assert _records(cfg, "directory-remove") == []


def test_removal_and_its_records_commit_together(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path)
    _run(cfg, "import", str(_csv(tmp_path, JANE, TOM)))

    def full_disk(self: Chainer, conn: sqlite3.Connection, items: object) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Chainer, "append", full_disk)
    assert _run(cfg, "remove", "--client", "c-1").exit_code == 1
    assert _run(cfg, "import", "--replace", str(_csv(tmp_path, TOM, name="b.csv"))
                ).exit_code == 1
    monkeypatch.undo()
    assert _imported(cfg) == (["c-1", "c-2"], [])  # consent still on file, with its record


def test_store_level_remove_and_replace(tmp_path: Path) -> None:
    from securemail.directory import remove_entries, replace_entries

    conn = open_database(tmp_path / "store.db")
    store_entries(conn, read_directory_file(_csv(tmp_path, JANE, TOM, BILLING)), NOW)
    removed = remove_entries(conn, ["c-1", "c-x"], ["Nobody"])
    assert (removed.clients, removed.partners) == (("c-1",), ())
    count, removed = replace_entries(conn, read_directory_file(
        _csv(tmp_path, JANE, name="b.csv")), NOW)
    assert count == 1
    assert (removed.clients, removed.partners) == (("c-2",), ("Billing Co",))
    assert [c.id for c in load_imported(conn).clients] == ["c-1"]


# ----------------------------------------------------------------- 2. duplicates


def test_duplicate_client_id_is_refused_with_both_lines(tmp_path: Path) -> None:
    f = _csv(tmp_path, "client,c-1,,dana@mail.example,,,,",
             "client,c-2,,bo@mail.example,,,,",
             "client,c-1,,dana.poe@work.example,,,2026-03-01,v1")
    message = _error(f)
    assert "line 4: id" in message and "duplicate client id" in message
    assert "line 2" in message
    cfg = _config(tmp_path)
    result = _run(cfg, "import", str(f))
    assert result.exit_code == 2 and "line 4" in result.output and "line 2" in result.output
    assert _imported(cfg) == ([], [])


def test_duplicate_partner_name_is_refused(tmp_path: Path) -> None:
    message = _error(_csv(tmp_path, BILLING, "partner,,Billing Co,,other.example,,,"))
    assert "line 3: name" in message and "duplicate partner name" in message
    assert "line 2" in message


def test_duplicate_partner_name_in_toml_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "d.toml"
    f.write_text('[[partners]]\nname = "B"\ndomains = ["b.example"]\n'
                 '[[partners]]\nname = "B"\ndomains = ["c.example"]\n', encoding="utf-8")
    assert "duplicate partner name" in _error(f)


# ----------------------------------------------------------------- 3. CSV format


def test_header_is_case_and_whitespace_insensitive(tmp_path: Path) -> None:
    f = _csv(tmp_path, "c-3005,e@mail.example,,2026-01-01,v1,Q R",
             header=" ID , Addresses,CONTACTS,Consent Granted,consent_warning ,Names\n")
    entries = read_directory_file(f)
    assert entries.clients[0].id == "c-3005"
    assert entries.clients[0].addresses == ("e@mail.example",)
    assert entries.clients[0].consent_unencrypted is not None
    assert entries.clients[0].names == ("Q R",)


def test_unknown_column_lists_the_accepted_ones(tmp_path: Path) -> None:
    f = _csv(tmp_path, "77,c-1,x@mail.example,2001-01-01",
             header="Client ID,id,addresses,Date of Birth\n")
    message = _error(f)
    assert '"Client ID"' in message and '"Date of Birth"' in message
    for column in ("kind", "id", "name", "addresses", "domains", "contacts", "consent_granted",
                   "consent_warning", "consent_expires", "names"):
        assert column in message.partition("accepted")[2]


def test_missing_required_column_and_repeated_column(tmp_path: Path) -> None:
    assert 'missing column "addresses"' in _error(
        _csv(tmp_path, "c-1", header="id\n"))
    assert 'column "id" appears twice' in _error(
        _csv(tmp_path, "c-1,c-1,a@mail.example", header="id,ID,addresses\n"))


def test_semicolon_delimited_file_says_how_to_save_it(tmp_path: Path) -> None:
    f = _csv(tmp_path, "c-3007;g@mail.example;;;;Q R",
             header="id;addresses;contacts;consent_granted;consent_warning;names\n")
    message = _error(f)
    assert "separated by a semicolon" in message
    assert "CSV UTF-8 (Comma delimited)" in message


def test_utf16_with_bom_is_read(tmp_path: Path) -> None:
    f = tmp_path / "u16.csv"
    f.write_bytes("id,addresses,names\r\nc-3008,h@mail.example,Zoë R\r\n".encode("utf-16"))
    entries = read_directory_file(f)
    assert entries.clients[0].addresses == ("h@mail.example",)
    assert entries.clients[0].names == ("Zoë R",)


def test_other_encodings_say_how_to_save_the_file(tmp_path: Path) -> None:
    f = tmp_path / "nobom.csv"
    f.write_bytes("id,addresses\nc-1,a@mail.example\n".encode("utf-16-le"))
    message = _error(f)
    assert "UTF-16" in message and "CSV UTF-8" in message
    f = tmp_path / "latin.csv"
    f.write_bytes("id,addresses,names\nc-1,a@mail.example,Zoë\n".encode("cp1252"))
    message = _error(f)
    assert "line 2" in message and "not UTF-8" in message and "CSV UTF-8" in message
    assert "UnicodeDecodeError" not in message


@pytest.mark.parametrize(("row", "key"), [
    ("client,c-1,,not-an-address,,,,", "line 2: addresses:"),
    ("client,c-1,,a@mail.example,,bad contact,,", "line 2: contacts:"),
    ("client,c-1,,a@mail.example,,x@@mail.example (parent),,", "line 2: contacts:"),
    ("client,c-1,,a@mail.example,,,01/10/2026,v1", "line 2: consent_granted:"),
    ("client,c-1,,a@mail.example,,,2026-01-10,", "line 2: consent_warning:"),
    ("client,c-1,,a@mail.example,,,,v1", "line 2: consent_granted:"),
    ("client,,,a@mail.example,,,,", "line 2: id:"),
    ("client,c-1,,,,,,", "line 2: addresses:"),
    ("person,c-1,,a@mail.example,,,,", "line 2: kind:"),
    ("partner,,,,billing.example,,,", "line 2: name:"),
    ("partner,,B,,bad_domain!,,,", "line 2: domains:"),
    ("partner,,B,,,,,", "line 2: domains:"),
    ("partner,c-1,B,,b.example,,,", "line 2: id:"),
    ("client,c-1,Jane Roe,a@mail.example,,,,", "line 2: name:"),
    ("client,c-1,,a@mail.example,mail.example,,,", "line 2: domains:"),
    ('client,c-1,,"a@mail.example, b@mail.example",,,,', "line 2: addresses:"),
])
def test_errors_name_the_line_and_the_column(tmp_path: Path, row: str, key: str) -> None:
    message = _error(_csv(tmp_path, row))
    assert message.startswith(f"{tmp_path / 'clients.csv'}: {key}"), message


def test_a_row_with_more_values_than_columns_is_refused(tmp_path: Path) -> None:
    message = _error(_csv(tmp_path, "c-1,a@mail.example,b@mail.example",
                          header="id,addresses\n"))
    assert message.startswith(f"{tmp_path / 'clients.csv'}: line 2:")
    assert "double quotes" in message


def test_blank_rows_are_skipped_and_lines_are_counted_from_the_file(tmp_path: Path) -> None:
    f = tmp_path / "lines.csv"
    f.write_text('id,addresses,names\r\nc-1,a@mail.example,"Roe, Ann"\r\n\r\n,,\r\n\r\n'
                 "c-2,bad,C D\r\n", encoding="utf-8")
    assert _error(f).startswith(f"{f}: line 6: addresses:")
    # A value may no longer span lines (no id, address or name has a line
    # break): tests/unit/test_directory_import_errors.py.


def test_documented_example_file_imports(tmp_path: Path) -> None:
    """The example in docs/configuration.md is a working file."""
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text("utf-8")
    example = doc.split("```csv\n", 1)[1].split("```", 1)[0]
    f = tmp_path / "example.csv"
    f.write_text(example, encoding="utf-8")
    entries = read_directory_file(f)
    assert len(entries.clients) >= 2 and len(entries.partners) >= 1
    assert any(c.contacts for c in entries.clients)
    assert any(c.consent_unencrypted for c in entries.clients)


# ----------------------------------------------------------------- 4. invisible characters


@pytest.mark.parametrize("char", ["\u200b", "\u00ad", "\u202e", "\u2060", "\ufeff", "\u00a0",
                                  "\u0007", "\u2028"])
@pytest.mark.parametrize(("row", "key"), [
    ("client,c-1,,ja{c}ne@mail.example,,,,", "line 2: addresses:"),
    ("client,c-1,,jane@mail.example,,mo{c}m@mail.example (parent),,", "line 2: contacts:"),
    ("client,c-1,,jane@mail{c}.example,,,,", "line 2: addresses:"),
    ("partner,,B,,bill{c}ing.example,,,", "line 2: domains:"),
    ("partner,,B,b{c}@billing.example,,,,", "line 2: addresses:"),
    ("client,c-{c}1,,jane@mail.example,,,,", "line 2: id:"),
])
def test_invisible_characters_are_refused(tmp_path: Path, char: str, row: str,
                                          key: str) -> None:
    f = _csv(tmp_path, row.replace("{c}", char))
    message = _error(f)
    assert message.startswith(f"{f}: {key}"), message
    if not char.isspace():  # NBSP and U+2028 may already be refused as "not plain"
        assert f"U+{ord(char):04X}" in message


def test_invisible_characters_in_the_config_file_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "securemail.toml"
    cfg.write_text('[[directory.clients]]\nid = "c-1"\naddresses = ["ja\u200bne@mail.example"]\n',
                   encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    assert "directory.clients[0].addresses[0]" in str(exc.value)
    assert "U+200B" in str(exc.value)


def test_the_trial_file_with_a_zero_width_space_is_not_imported(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    f = tmp_path / "dir6_invisible.csv"
    f.write_text("id,addresses,names\r\nc-5001,ja\u200bne2@mail.example,Zed Zero\r\n",
                 encoding="utf-8")
    result = _run(cfg, "import", str(f))
    assert result.exit_code == 2
    assert "line 2: addresses" in result.output and "ZERO WIDTH SPACE" in result.output
    assert _imported(cfg) == ([], [])


def test_plain_utf8_addresses_still_import(tmp_path: Path) -> None:
    entries = read_directory_file(_csv(
        tmp_path, "client,c-1,,zoë@bücher.example,,vater@bücher.example (parent),,"))
    assert entries.clients[0].addresses == ("zoë@xn--bcher-kva.example",)


def test_errors_are_securemail_errors(tmp_path: Path) -> None:
    with pytest.raises(SecuremailError):
        read_directory_file(_csv(tmp_path, header="", name="empty.csv"))


def test_list_shows_when_a_consent_expires(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    header = HEADER.rstrip("\n") + ",consent_expires\n"
    rows = _csv(tmp_path, "client,c-9,,maria@mail.example,,,2026-02-01,v2,2027-02-01",
                header=header)
    assert _run(cfg, "import", str(rows)).exit_code == 0
    listing = _run(cfg, "list").output
    assert "client c-9: maria@mail.example; consent 2026-02-01 (v2), expires 2027-02-01" \
        in listing


def test_an_import_records_the_files_full_path(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # "clients.csv" on record says nothing years later about which one it was.
    cfg = _config(tmp_path)
    _csv(tmp_path, JANE)
    monkeypatch.chdir(tmp_path)
    assert _run(cfg, "import", "clients.csv").exit_code == 0
    [imported] = _records(cfg, "directory-import")
    assert imported["file"] == str(tmp_path.resolve() / "clients.csv")
