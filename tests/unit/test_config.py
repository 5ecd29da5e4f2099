"""Config errors name the file and the key; unknown keys are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from securemail.config import load_settings
from securemail.errors import ConfigError
from securemail.model import Mode


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "securemail.toml"
    p.write_text(text, encoding="utf-8")
    return p


def error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    return str(exc.value).replace(str(path), "securemail.toml")


def test_interface_example_loads(config_path: Path) -> None:
    s = load_settings(config_path)
    assert s.practice.domains == ("riverside.example",)
    assert s.policy.mode is Mode.ENFORCE
    assert s.directory.clients[0].contacts[0].address == "guardian@mail.example"
    assert s.directory.clients[1].consent_unencrypted is not None
    assert s.directory.clients[2].addresses == ("kim@xn--bcher-kva.example",)
    assert s.storage.sqlite_path == config_path.parent / "data" / "securemail.db"
    assert len(s.digest) == 64


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, ""))
    assert s.policy.unauthorised_recipients == "block"
    assert s.portal.expiry_days == 30


def test_bad_choice_names_file_key_and_value(tmp_path: Path) -> None:
    msg = error(tmp_path, '[policy]\nunauthorised_recipients = "stripp"\n')
    assert msg == ('securemail.toml: policy.unauthorised_recipients: must be "block" or "strip", '
                   'got "stripp"')


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    assert error(tmp_path, '[policy]\nmdoe = "shadow"\n').startswith(
        "securemail.toml: policy.mdoe: unknown key")


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    assert "securemail.toml: polcy: unknown section" in error(tmp_path, "[polcy]\nmode='x'\n")


def test_wrong_type(tmp_path: Path) -> None:
    assert error(tmp_path, "[portal]\nexpiry_days = \"30\"\n") == \
        "securemail.toml: portal.expiry_days: must be an integer, got a string"


def test_bad_address_in_directory(tmp_path: Path) -> None:
    msg = error(tmp_path, '[[directory.clients]]\nid = "c1"\naddresses = ["jane(at)mail"]\n')
    assert msg.startswith("securemail.toml: directory.clients[0].addresses[0]: ")


def test_unknown_key_in_contact(tmp_path: Path) -> None:
    msg = error(tmp_path, '[[directory.clients]]\nid = "c1"\naddresses = ["j@x.example"]\n'
                'contacts = [{ address = "p@x.example", relashun = "parent" }]\n')
    assert msg.startswith("securemail.toml: directory.clients[0].contacts[0].relashun: unknown key")


def test_consent_needs_a_warning_version(tmp_path: Path) -> None:
    msg = error(tmp_path, '[[directory.clients]]\nid = "c1"\naddresses = ["j@x.example"]\n'
                'consent_unencrypted = { granted = "2026-01-10" }\n')
    assert "directory.clients[0].consent_unencrypted.warning: is required" in msg


def test_bad_consent_date(tmp_path: Path) -> None:
    msg = error(tmp_path, '[[directory.clients]]\nid = "c1"\naddresses = ["j@x.example"]\n'
                'consent_unencrypted = { granted = "last tuesday", warning = "v1" }\n')
    assert "consent_unencrypted.granted: must be a date" in msg


def test_tls_none_only_for_loopback(tmp_path: Path) -> None:
    msg = error(tmp_path, '[upstream]\nurl = "smtp://mail.example.com:25"\ntls = "none"\n')
    assert msg.startswith("securemail.toml: upstream.tls: \"none\" is only allowed for a loopback")


def test_syntax_error_names_file(tmp_path: Path) -> None:
    assert error(tmp_path, "[policy\n").startswith("securemail.toml: TOML syntax error")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.toml")


def test_duplicate_client_id(tmp_path: Path) -> None:
    text = '[[directory.clients]]\nid = "c1"\naddresses = ["a@x.example"]\n' * 2
    assert 'duplicate client id "c1"' in error(tmp_path, text)


def test_bad_plugin_spec(tmp_path: Path) -> None:
    assert "policy.plugins[0]: must be \"module:attribute\"" in error(
        tmp_path, '[policy]\nplugins = ["not a spec"]\n')


def test_bad_regex(tmp_path: Path) -> None:
    assert "policy.mrn_pattern: not a valid regular expression" in error(
        tmp_path, '[policy]\nmrn_pattern = "(unclosed"\n')


@pytest.mark.parametrize(("text", "key", "problem"), [
    ('[portal]\nnotify_from = "not an address"\n', "portal.notify_from", ""),
    ('[practice]\nname = "Riverside\\nBcc: evil@attacker.example"\n', "practice.name",
     "one line"),
    ('[portal]\nsender_name = "Front\\r\\nDesk"\n', "portal.sender_name", "one line"),
    ('[relay]\nhostname = "mx\\u0000.example"\n', "relay.hostname", "one line"),
    ('[relay]\nhostname = "relais.zürich.example"\n', "relay.hostname", "xn--"),
    ('[upstream]\nurl = "smtp://127.0.0.1:99999"\ntls = "none"\n', "upstream.url", "1-65535"),
    ('[relay]\nlisten = "127.0.0.1:70000"\n', "relay.listen", "port must be 1-65535"),
])
def test_values_that_would_break_headers_or_delivery_are_refused(
        tmp_path: Path, text: str, key: str, problem: str) -> None:
    # Each of these used to pass `config check` and then defer mail forever
    # (an unusable notification header) or fail only at the first delivery.
    message = error(tmp_path, text)
    assert f": {key}: " in message and problem in message


def test_an_upstream_url_without_a_port_means_port_25(tmp_path: Path) -> None:
    from securemail.transport.smtp import SMTPTransport

    cfg = write(tmp_path, '[upstream]\nurl = "smtp://smarthost.example"\n')
    assert SMTPTransport(load_settings(cfg).upstream).port == 25


def test_notify_from_is_kept_as_an_address(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[portal]\nnotify_from = "Notify@Riverside.example"\n')
    assert load_settings(cfg).portal.notify_from == "notify@riverside.example"


def test_an_absolute_store_path_in_a_missing_folder_is_refused(tmp_path: Path) -> None:
    """A typo in /var/lib/securemail/... must not start a second, empty audit log."""
    from securemail.config import load_settings
    from securemail.errors import ConfigError

    missing = tmp_path / "securemial" / "securemail.db"
    cfg = tmp_path / "securemail.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite://{missing}"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert err.value.key == "storage.url" and str(missing.parent) in str(err.value)
    assert not missing.parent.exists()
    missing.parent.mkdir()
    assert load_settings(cfg).storage.sqlite_path == missing


@pytest.mark.parametrize(("value", "ok"), [
    ("[::1]:2525", True), ("127.0.0.1:2525", True), ("relay.lan:2525", True),
    ("::1:2525", False), ("fe80::1:25", False), ("[::1]:0", False), ("host:99999", False)])
def test_an_ipv6_listen_address_must_be_in_brackets(tmp_path: Path, value: str,
                                                     ok: bool) -> None:
    """ "::1:2525" could be [::1]:2525 or [::1:2525] on a default port: refused,
    not guessed."""
    from securemail.config import load_settings
    from securemail.errors import ConfigError

    cfg = tmp_path / "securemail.toml"
    cfg.write_text(f'[relay]\nlisten = "{value}"\n')
    if ok:
        assert load_settings(cfg).relay.listen == value
        return
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert err.value.key == "relay.listen"
    if value.count(":") > 1 and not value.startswith("["):
        assert "brackets" in str(err.value)
