"""`securemail init`: bad options leave nothing behind; values are valid TOML."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import securemail.init as init_module
from securemail.cli.config_cmd import config_group
from securemail.cli.serve_cmd import init
from securemail.config import load_settings
from securemail.dkim import generate_key
from securemail.errors import InputError, StoreError
from securemail.init import production_config, toml_string


def run_init(target: Path, *args: str) -> Result:
    return CliRunner().invoke(init, [str(target), *args])


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--domain", "not a domain", "--domain: 'not a domain' is not a domain name"),
    ("--domain", "clinic.org\nevil", "--domain: 'clinic.org\\nevil' is not a domain name"),
    ("--selector", "bad selector", "--selector: 'bad selector' is not a valid DKIM selector"),
    ("--selector", 'sm1"', "--selector: 'sm1\"' is not a valid DKIM selector"),
    ("--name", "Riverside\nCounseling", "--name: must be one line of text"),
    ("--name", "Riverside\tCounseling", "--name: must be one line of text"),
])
def test_a_bad_option_is_named_and_nothing_is_written(tmp_path: Path, option: str, value: str,
                                                      expected: str) -> None:
    target = tmp_path / "bad"
    result = run_init(target, "--data-dir", str(tmp_path / "var" / "lib"), option, value)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "securemail.toml" not in result.output  # the option, not a file, is at fault
    assert not target.exists() and not (tmp_path / "var").exists()
    retry = run_init(target, "--domain", "clinic.org", "--data-dir", str(tmp_path / "var"))
    assert retry.exit_code == 0, retry.output
    assert load_settings(target / "securemail.toml").practice.domains == ("clinic.org",)


def test_a_bad_option_leaves_an_existing_folder_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "etc"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    result = run_init(target, "--domain", "not a domain")
    assert result.exit_code == 2 and "--domain:" in result.output
    assert tree(target) == {"notes.txt"}
    retry = run_init(target, "--domain", "clinic.org")
    assert retry.exit_code == 0, retry.output
    assert (target / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("name", [
    'Smith "Family" Counseling\\Therapy',
    "O'Brien & Zoë's Café \\n not a newline",
    'C:\\Practice\\"quoted"\\',
    "Ünïcödé Praxis für Psychotherapie 心理",
])
def test_the_practice_name_is_written_as_a_toml_string(tmp_path: Path, name: str) -> None:
    target = tmp_path / "q1"
    result = run_init(target, "--domain", "clinic.org", "--name", name)
    assert result.exit_code == 0, result.output
    cfg = target / "securemail.toml"
    assert load_settings(cfg).practice.name == name
    check = CliRunner().invoke(config_group, ["check", "-c", str(cfg)])
    assert check.exit_code == 0, check.output


def test_a_data_dir_with_quotes_and_backslashes_is_written_as_a_toml_string(
        tmp_path: Path) -> None:
    data = tmp_path / 'we"ird\\dir'
    result = run_init(tmp_path / "etc", "--domain", "clinic.org", "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    settings = load_settings(tmp_path / "etc" / "securemail.toml")
    assert settings.storage.sqlite_path == data.resolve() / "securemail.db"
    assert settings.storage.sqlite_path.exists()


def test_the_domain_is_written_in_the_form_the_config_stores(tmp_path: Path) -> None:
    result = run_init(tmp_path / "etc", "--domain", "Clinic.ORG")
    assert result.exit_code == 0, result.output
    settings = load_settings(tmp_path / "etc" / "securemail.toml")
    assert settings.practice.domains == ("clinic.org",)
    assert settings.portal.base_url == "https://secure.clinic.org"


def test_a_failure_after_writing_began_removes_only_what_this_run_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "etc"
    target.mkdir()
    key = generate_key("rsa")[0]
    (target / "dkim.key").write_bytes(key)  # the practice's key from before: kept
    (target / "notes.txt").write_text("mine")
    real_create_store = init_module._create_store

    def store_fails_half_way(cfg: Path) -> str:
        real_create_store(cfg)  # the store and its secrets exist now...
        raise StoreError("disk full")  # ...and then something fails

    monkeypatch.setattr(init_module, "_create_store", store_fails_half_way)
    data = tmp_path / "var" / "lib" / "securemail"
    result = run_init(target, "--domain", "clinic.org", "--data-dir", str(data))
    assert result.exit_code != 0
    assert "disk full" in result.output
    assert tree(target) == {"dkim.key", "notes.txt"}
    assert (target / "dkim.key").read_bytes() == key
    assert not (tmp_path / "var").exists()

    monkeypatch.setattr(init_module, "_create_store", real_create_store)
    retry = run_init(target, "--domain", "clinic.org", "--data-dir", str(data))
    assert retry.exit_code == 0, retry.output
    assert (target / "dkim.key").read_bytes() == key
    assert load_settings(target / "securemail.toml").storage.sqlite_path.exists()


def test_a_failed_store_in_the_config_folder_removes_the_new_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "etc"
    real_create_store = init_module._create_store

    def store_fails_half_way(cfg: Path) -> str:
        real_create_store(cfg)
        raise StoreError("disk full")

    monkeypatch.setattr(init_module, "_create_store", store_fails_half_way)
    result = run_init(target, "--domain", "clinic.org")
    assert result.exit_code != 0
    assert not target.exists()


@pytest.mark.parametrize("value", [
    "", "plain", 'a"b', "a\\b", "\\u0041", "line\nbreak", "tab\there", "\r\b\f\x00\x1f\x7f",
    "ünïcödé ☃ 🙂", '"""', "'''", "# not a comment",
])
def test_toml_string_round_trips(value: str) -> None:
    assert tomllib.loads(f"v = {toml_string(value)}")["v"] == value


def test_production_config_is_valid_toml_whatever_the_name() -> None:
    name = 'Smith "Family" Counseling\\Therapy\n'
    data = tomllib.loads(production_config(domain="clinic.org", practice_name=name,
                                           selector="sm1", dkim=False))
    assert data["practice"]["name"] == name


def test_a_value_the_config_would_refuse_is_an_option_error() -> None:
    text = production_config(domain="clinic.org", practice_name="P", selector="-bad",
                             dkim=True)
    with pytest.raises(InputError, match=r"^--selector: "):
        init_module._check_text(text, Path("etc/securemail.toml"))
