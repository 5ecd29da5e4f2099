"""Directory matching rules and imports."""

from __future__ import annotations

from pathlib import Path

import pytest

from securemail.config import load_settings
from securemail.directory import (
    AddressError,
    Directory,
    load_imported,
    normalise_address,
    read_directory_file,
    store_entries,
)
from securemail.errors import ConfigError
from securemail.model import Role
from securemail.store.sqlite import open_database


def test_domain_case_and_idn_forms_are_equal() -> None:
    forms = ["kim@bücher.example", "kim@BÜCHER.example", "kim@xn--bcher-kva.example",
             "kim@XN--BCHER-KVA.EXAMPLE", "Kim@Bücher.Example"]
    assert {normalise_address(f) for f in forms} == {"kim@xn--bcher-kva.example"}


def test_plus_tags_and_dots_are_significant() -> None:
    assert normalise_address("jane+x@mail.example") != normalise_address("jane@mail.example")
    assert normalise_address("j.ane@mail.example") != normalise_address("jane@mail.example")


@pytest.mark.parametrize("bad", ["jane", "jane@", "@mail.example", "ja ne@mail.example",
                                 '"jane"@mail.example', "jane@mail..example", "jane@-x.example",
                                 "jane@mail.example.", "jane@[10.0.0.1]", "jane\r\n@x.example",
                                 "jane@xn--zz.example"])
def test_rejected_addresses(bad: str) -> None:
    with pytest.raises(AddressError):
        normalise_address(bad)


def test_roles(config_path: Path) -> None:
    s = load_settings(config_path)
    d = Directory(s.practice.domains, s.directory)
    assert d.identify("dr@riverside.example").role is Role.STAFF
    assert d.identify("jane@mail.example").client_ids == ("c-1001",)
    assert d.identify("guardian@mail.example").role is Role.CONTACT
    assert d.identify("x@billing-partner.example").role is Role.PARTNER
    assert d.identify("mom@mail.example").role is Role.THIRD_PARTY
    assert d.identify("sam@mail.example").consent is not None
    assert d.identify("jane@mail.example").consent is None


def test_csv_import_round_trip(config_path: Path, tmp_path: Path) -> None:
    csv_file = tmp_path / "clients.csv"
    csv_file.write_text(
        "kind,id,name,addresses,domains,contacts,consent_granted,consent_warning\n"
        "client,c-2001,,Ann@Mail.Example,,dad@mail.example (parent);aunt@mail.example,"
        "2026-02-01,v2\n"
        "partner,,Lab Co,,lab.example,,,\n", encoding="utf-8")
    entries = read_directory_file(csv_file)
    conn = open_database(tmp_path / "store.db")
    assert store_entries(conn, entries, "2026-06-01T00:00:00+00:00") == 2
    s = load_settings(config_path)
    d = Directory(s.practice.domains, s.directory).with_imported(load_imported(conn))
    assert d.identify("ann@mail.example").role is Role.CLIENT
    assert d.identify("ann@mail.example").consent is not None
    assert d.identify("dad@mail.example").client_ids == ("c-2001",)
    assert d.identify("aunt@mail.example").role is Role.CONTACT
    assert d.identify("x@lab.example").role is Role.PARTNER
    assert d.identify("jane@mail.example").role is Role.CLIENT  # config entries kept


def test_toml_import(tmp_path: Path) -> None:
    f = tmp_path / "dir.toml"
    f.write_text('[[clients]]\nid = "c-9"\naddresses = ["z@z.example"]\n', encoding="utf-8")
    assert read_directory_file(f).clients[0].id == "c-9"


def test_csv_error_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.csv"
    f.write_text("id,addresses\nc-1,not-an-address\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        read_directory_file(f)
    assert str(exc.value).startswith(f"{f}: line 2: addresses:")


def test_directory_import_audits_each_consent_change(tmp_path: Path) -> None:
    import json
    import sqlite3

    from click.testing import CliRunner

    from securemail.cli.directory_cmd import directory_group
    from tests.unit.test_audit_support import write_config

    cfg = write_config(tmp_path)
    csv_file = tmp_path / "clients.csv"
    header = "kind,id,name,addresses,domains,contacts,consent_granted,consent_warning\n"

    def import_rows(*rows: str) -> list[tuple[str, str, str | None]]:
        csv_file.write_text(header + "".join(r + "\n" for r in rows), encoding="utf-8")
        result = CliRunner().invoke(directory_group, ["import", str(csv_file), "-c", str(cfg)])
        assert result.exit_code == 0, result.output
        with sqlite3.connect(tmp_path / "store.db") as db:
            bodies = [json.loads(b) for (b,) in db.execute(
                "SELECT body FROM audit_records WHERE kind = 'consent-change' ORDER BY seq")]
        return [(b["client_id"], b["consent"], b.get("warning")) for b in bodies]

    granted = "client,c-2001,,ann@mail.example,,,2026-02-01,v2"
    assert import_rows(granted, "client,c-2002,,bo@mail.example,,,,") == [
        ("c-2001", "granted", "v2")]
    assert import_rows(granted) == [("c-2001", "granted", "v2")]  # unchanged: nothing new
    assert import_rows("client,c-2001,,ann@mail.example,,,,") == [
        ("c-2001", "granted", "v2"), ("c-2001", "withdrawn", None)]


def test_every_import_moves_the_version_even_at_the_same_time(tmp_path: Path) -> None:
    """A relay notices a consent withdrawal even if the clock stood still or stepped back."""
    from securemail.directory import imported_version

    conn = open_database(tmp_path / "store.db")
    f = tmp_path / "c.csv"
    f.write_text("id,addresses,consent_granted,consent_warning\nc-1,a@mail.example,2026-01-01,v1\n")
    store_entries(conn, read_directory_file(f), "2026-06-01T00:00:00+00:00")
    first = imported_version(conn)
    f.write_text("id,addresses\nc-1,a@mail.example\n")  # consent withdrawn, same count
    store_entries(conn, read_directory_file(f), "2026-06-01T00:00:00+00:00")  # same stamp
    assert imported_version(conn) == first + 1


def test_a_child_with_no_email_is_listed_through_a_guardian(make_config, tmp_path: Path
                                                           ) -> None:
    cfg = make_config(extra="""
[[directory.clients]]
id = "c-3001"
names = ["Robin Young"]
contacts = [{ address = "parent@home.example", relation = "guardian" }]
""")
    s = load_settings(cfg)
    d = Directory(s.practice.domains, s.directory)
    guardian = d.identify("parent@home.example")
    assert (guardian.role, guardian.client_ids) == (Role.CONTACT, ("c-3001",))
    assert ("Robin Young", "c-3001") in d.client_names
    csv_file = tmp_path / "kids.csv"
    csv_file.write_text("id,addresses,contacts\nc-3002,,dad@home.example (father)\n"
                        "c-3003,,\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"line 3: addresses: needs at least one address"):
        read_directory_file(csv_file)


def test_consent_needs_an_address_of_the_clients_own(make_config) -> None:
    cfg = make_config(extra="""
[[directory.clients]]
id = "c-3001"
contacts = [{ address = "parent@home.example", relation = "guardian" }]
consent_unencrypted = { granted = "2026-01-10", warning = "v1" }
""")
    with pytest.raises(ConfigError, match="consent_unencrypted: consent covers the client's own"):
        load_settings(cfg)
