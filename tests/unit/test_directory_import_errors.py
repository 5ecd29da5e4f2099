"""Directory files that were imported wrongly instead of being refused.

1. A CSV value with an unterminated double quote silently swallowed the rows
   after it (and ``--replace`` then removed the clients in those rows).
2. A consent that expires before it was granted was accepted and audited as
   granted.
3. A misspelt required key was reported as the correct key missing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from securemail.cli.directory_cmd import directory_group
from securemail.config import load_settings
from securemail.directory import load_imported, read_directory_file
from securemail.errors import ConfigError, InputError
from securemail.store.sqlite import open_database

CONFIG = """\
[storage]
url = "sqlite:store.db"

[practice]
name = "Riverside Counseling"
domains = ["riverside.example"]
"""


def _config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "securemail.toml"
    cfg.write_text(CONFIG + extra, encoding="utf-8")
    return cfg


def _run(cfg: Path, *args: str) -> Result:
    return CliRunner().invoke(directory_group, [*args, "-c", str(cfg)])


def _imported(cfg: Path) -> list[str]:
    conn = open_database(load_settings(cfg).storage.sqlite_path)
    try:
        return [c.id for c in load_imported(conn).clients]
    finally:
        conn.close()


def _write(tmp_path: Path, name: str, text: str) -> Path:
    f = tmp_path / name
    f.write_bytes(text.encode("utf-8"))  # bytes: line ends exactly as written
    return f


def _error(path: Path) -> str:
    with pytest.raises((ConfigError, InputError)) as exc:
        read_directory_file(path)
    return str(exc.value)


# ----------------------------------------------------------------- 1. quotes

SWALLOWING = ('id,addresses,names\nc-10,a10@mail.test,"Ann\nc-11,b11@mail.test,Bob\n'
              "c-12,c12@mail.test,Cid\n")


def test_unterminated_quote_is_refused_and_nothing_is_imported(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    f = _write(tmp_path, "u.csv", SWALLOWING)
    result = _run(cfg, "import", str(f))
    assert result.exit_code == 2, result.output
    assert f"{f}: line 2: names: unterminated quote" in result.output
    assert "imported" not in result.output
    assert _imported(cfg) == []


def test_unterminated_quote_with_replace_removes_nobody(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    good = _write(tmp_path, "good.csv", "id,addresses\nc-11,b11@mail.test\nc-12,c12@mail.test\n")
    assert _run(cfg, "import", str(good)).exit_code == 0
    result = _run(cfg, "import", "--replace", str(_write(tmp_path, "u.csv", SWALLOWING)))
    assert result.exit_code == 2, result.output
    assert "line 2: names: unterminated quote" in result.output
    assert "removed" not in result.output
    assert _imported(cfg) == ["c-11", "c-12"]


@pytest.mark.parametrize("last", ['"c-2,b@mail.test\n', '"c-2,b@mail.test'])
def test_unterminated_quote_on_the_last_line_names_that_line(tmp_path: Path,
                                                             last: str) -> None:
    f = _write(tmp_path, "u.csv", "id,addresses,names\nc-1,a@mail.test,A\n" + last)
    message = _error(f)
    assert message.startswith(f"{f}: line 3: id: unterminated quote"), message
    assert "needs at least one address" not in message


def test_quote_closed_on_a_later_line_is_refused(tmp_path: Path) -> None:
    # The stray quote on line 2 pairs with the first quote on line 3.
    f = _write(tmp_path, "u.csv", 'id,addresses,names\nc-10,a10@mail.test,"Ann\n'
                                  'c-11,b11@mail.test,"Bob"\n')
    message = _error(f)
    assert message.startswith(f"{f}: line 2: names: unterminated quote"), message
    assert "line 3" in message


@pytest.mark.parametrize(("row", "key"), [
    ('c-10,a10@mail.test,"Ann\nSmith"\n', "line 2: names"),
    ('c-10,a10@mail.test,"Ann\r\nSmith"\r\n', "line 2: names"),
    ('c-10,"a10@mail.test\n",Ann\n', "line 2: addresses"),
    ('"c-10\n",a10@mail.test,Ann\n', "line 2: id"),
    ('c-10,a10@mail.test,"A\nB"\nc-11,"b@mail.test\n",Bob\n', "line 2: names"),
])
def test_a_value_with_a_line_break_is_refused(tmp_path: Path, row: str, key: str) -> None:
    f = _write(tmp_path, "u.csv", "id,addresses,names\n" + row)
    message = _error(f)
    assert message.startswith(f"{f}: {key}: contains a line break"), message


def test_line_break_is_reported_on_the_line_of_its_value(tmp_path: Path) -> None:
    f = _write(tmp_path, "u.csv", 'id,addresses,names\nc-1,"a@mail.test",A\n'
                                  'c-2,b@mail.test,"B\nC",\n')
    assert _error(f).startswith(f"{f}: line 3: names: contains a line break")


def test_text_after_a_closing_quote_is_refused(tmp_path: Path) -> None:
    f = _write(tmp_path, "u.csv", 'id,addresses,names\nc-10,a10@mail.test,"Ann" Roe\n')
    assert _error(f).startswith(f"{f}: line 2: names: text after the closing double quote")


def test_unterminated_quote_in_the_header(tmp_path: Path) -> None:
    f = _write(tmp_path, "u.csv", 'id,"addresses,names\nc-1,a@mail.test,A\n')
    assert _error(f).startswith(f"{f}: line 1: column 2: unterminated quote")


@pytest.mark.parametrize("encode", [
    lambda t: t.encode("utf-8"),
    lambda t: t.encode("utf-8-sig"),
    lambda t: t.replace("\n", "\r\n").encode("utf-8"),
    lambda t: t.replace("\n", "\r\n").encode("utf-16"),
], ids=["utf8", "bom", "crlf", "utf16"])
def test_legitimate_quoting_still_imports(tmp_path: Path,
                                          encode: Callable[[str], bytes]) -> None:
    text = ('id,addresses,names\n'
            'c-1,a@mail.test,"Smith, Tommy; Tommy ""T"" Smith"\n'
            '"c-2","b@mail.test",O"Brien\n'
            'c-3,c@mail.test,""\n')
    f = tmp_path / "ok.csv"
    f.write_bytes(encode(text))
    clients = read_directory_file(f).clients
    assert [(c.id, c.names) for c in clients] == [
        ("c-1", ("Smith, Tommy", 'Tommy "T" Smith')), ("c-2", ('O"Brien',)), ("c-3", ())]


# ----------------------------------------------------------------- 2. consent dates

CONSENT_HEADER = "id,addresses,consent_granted,consent_warning,consent_expires\n"


def test_csv_consent_expiring_before_it_was_granted_is_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    f = _write(tmp_path, "c.csv", CONSENT_HEADER + "c-ok,ok@client.test,,,\n"
                                  "c-cons,cons@client.test,2026-01-01,v1,2025-06-01\n")
    result = _run(cfg, "import", str(f))
    assert result.exit_code == 2, result.output
    assert f"{f}: line 3: consent_expires: is before consent_granted (2026-01-01)" \
        in result.output
    assert _imported(cfg) == []


def test_consent_may_end_on_the_day_it_was_granted(tmp_path: Path) -> None:
    f = _write(tmp_path, "c.csv", CONSENT_HEADER + "c-1,a@client.test,2026-01-01,v1,2026-01-01\n")
    consent = read_directory_file(f).clients[0].consent_unencrypted
    assert consent is not None and consent.expires == "2026-01-01"


def test_toml_consent_expiring_before_it_was_granted_is_refused(tmp_path: Path) -> None:
    f = _write(tmp_path, "d.toml", '[[clients]]\nid = "c-cons"\naddresses = ["c@client.test"]\n'
               'consent_unencrypted = { granted = 2026-01-01, warning = "v1",'
               ' expires = 2025-06-01 }\n')
    assert _error(f).startswith(
        f"{f}: clients[0].consent_unencrypted.expires: is before granted (2026-01-01)")


def test_config_consent_expiring_before_it_was_granted_is_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path, '\n[[directory.clients]]\nid = "c-cons"\n'
                            'addresses = ["c@client.test"]\n'
                            'consent_unencrypted = { granted = "2026-01-01", warning = "v1",'
                            ' expires = "2025-06-01" }\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    assert str(exc.value).startswith(
        f"{cfg}: directory.clients[0].consent_unencrypted.expires: is before granted"
        " (2026-01-01)")


# ----------------------------------------------------------------- 3. misspelt keys

UNKNOWN = "unknown key (check the spelling"


@pytest.mark.parametrize(("toml", "key"), [
    ('[[clients]]\nid = "t-3"\nadresses = ["x@mail.test"]\n', "clients[0].adresses"),
    ('[[clients]]\nidd = "t-3"\naddresses = ["x@mail.test"]\n', "clients[0].idd"),
    ('[[clients]]\nid = "t-3"\ncontacts = [{ adress = "x@mail.test" }]\n',
     "clients[0].contacts[0].adress"),
    ('[[clients]]\nid = "t-3"\naddresses = ["x@mail.test"]\n'
     'consent_unencrypted = { grantd = 2026-01-01, warning = "v1" }\n',
     "clients[0].consent_unencrypted.grantd"),
    ('[[clients]]\nid = "t-3"\naddresses = ["x@mail.test"]\n'
     'consent_unencrypted = { granted = 2026-01-01, warnign = "v1" }\n',
     "clients[0].consent_unencrypted.warnign"),
    ('[[partners]]\nnmae = "Lab"\ndomains = ["lab.test"]\n', "partners[0].nmae"),
    ('[[partners]]\nname = "Lab"\ndomain = ["lab.test"]\n', "partners[0].domain"),
    ('[directory]\nclient = []\n[[directory.clients]]\nid = "t-3"\naddresses = ["x@mail.test"]\n',
     "directory.client"),
])
def test_a_misspelt_key_is_reported_as_the_key_at_fault(tmp_path: Path, toml: str,
                                                        key: str) -> None:
    f = _write(tmp_path, "d.toml", toml)
    assert _error(f) == f"{f}: {key}: {UNKNOWN}; see docs/configuration.md)"


def test_cli_reports_the_misspelt_key_and_imports_nothing(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    f = _write(tmp_path, "d.toml", '[[clients]]\nid = "t-3"\nadresses = ["x@mail.test"]\n')
    result = _run(cfg, "import", str(f))
    assert result.exit_code == 2, result.output
    assert f"{f}: clients[0].adresses: unknown key" in result.output
    assert "needs at least one address" not in result.output
    assert _imported(cfg) == []


def test_config_reports_the_misspelt_key(tmp_path: Path) -> None:
    cfg = _config(tmp_path, '\n[[directory.clients]]\nid = "t-3"\nadresses = ["x@mail.test"]\n')
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    assert str(exc.value).startswith(f"{cfg}: directory.clients[0].adresses: unknown key")
