"""Configs that load but are unsafe: example domains, open-relay networks, an
admin endpoint off loopback, a CA bundle that is ignored; and the config that
`securemail init` writes."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from securemail.cli.config_cmd import config_group
from securemail.cli.serve_cmd import init
from securemail.config import load_settings
from securemail.init import production_config
from securemail.preflight import config_warnings, reserved_domain
from tests.unit.test_config import error as config_error
from tests.unit.test_config import write as config_file

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


STORAGE = '\n[storage]\nurl = "sqlite:data/securemail.db"\n'


def write(tmp_path: Path, text: str) -> Path:
    return config_file(tmp_path, text + STORAGE)


def error(tmp_path: Path, text: str) -> str:
    return config_error(tmp_path, text + STORAGE)


def warnings(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    return [w.replace(str(path), "securemail.toml") for w in config_warnings(load_settings(path))]


def config_check(path: Path, *args: str) -> Result:
    return CliRunner().invoke(config_group, ["check", "-c", str(path), *args])


# ------------------------------------------------------------ 1. example domains

@pytest.mark.parametrize("domain", ["riverside.example", "example.com", "mail.example.org",
                                    "example.net", "clinic.test", "x.invalid", "localhost",
                                    "Riverside.EXAMPLE."])
def test_reserved_example_domains_are_recognised(domain: str) -> None:
    assert reserved_domain(domain)


@pytest.mark.parametrize("domain", ["riverside-counseling.org", "example.co.uk",
                                    "myexample.com", "testing.org", "contest.org"])
def test_real_domains_are_not_reserved(domain: str) -> None:
    assert not reserved_domain(domain)


def test_an_example_practice_domain_is_a_warning_naming_the_key(tmp_path: Path) -> None:
    found = warnings(tmp_path, '[practice]\ndomains = ["riverside-counseling.org",'
                               ' "riverside.example"]\n')
    assert len(found) == 1
    assert found[0].startswith("securemail.toml: practice.domains[1]: riverside.example is a"
                               " reserved example domain")


def test_config_check_warns_about_an_example_domain_and_strict_fails(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[practice]\ndomains = ["riverside.example"]\n')
    plain = config_check(cfg)
    assert plain.exit_code == 0, plain.output
    assert (f"securemail: warning: {cfg}: practice.domains[0]: riverside.example is a reserved"
            " example domain") in plain.stderr
    assert "1 warning(s)" in plain.stdout
    strict = config_check(cfg, "--strict")
    assert strict.exit_code == 1 and "practice.domains[0]" in strict.stderr


def test_the_embedded_demo_config_only_warns(tmp_path: Path) -> None:
    from securemail.serve import ensure_demo

    cfg = ensure_demo(tmp_path)
    result = config_check(cfg)
    assert result.exit_code == 0, result.output
    assert "practice.domains[0]: practice.example is a reserved example domain" in result.stderr


def test_init_without_domain_says_loudly_that_the_domain_is_an_example(tmp_path: Path) -> None:
    result = CliRunner().invoke(init, [str(tmp_path / "etc")])
    assert result.exit_code == 0, result.output
    assert "WARNING: riverside.example is a reserved example domain" in result.output
    cfg = tmp_path / "etc" / "securemail.toml"
    assert "# CHANGE THIS: riverside.example" in cfg.read_text()
    check = config_check(cfg)
    assert check.exit_code == 0, check.output
    keys = re.findall(r": ([a-z_.\[\]0-9]+): riverside\.example is", check.stderr)
    assert "practice.domains[0]" in keys
    assert config_check(cfg, "--strict").exit_code == 1


def test_init_with_the_practice_domain_writes_a_config_without_warnings(tmp_path: Path) -> None:
    result = CliRunner().invoke(init, [str(tmp_path / "etc"), "--domain",
                                       "riverside-counseling.org"])
    assert result.exit_code == 0, result.output
    assert "WARNING" not in result.output
    cfg = tmp_path / "etc" / "securemail.toml"
    assert "CHANGE THIS" not in cfg.read_text()
    check = config_check(cfg, "--strict")
    assert check.exit_code == 0, check.output
    assert check.stderr == ""


# ------------------------------------------------------------ 2. open relay

@pytest.mark.parametrize("net", ["0.0.0.0/0", "::/0"])
def test_a_zero_prefix_trusted_network_is_an_open_relay(tmp_path: Path, net: str) -> None:
    assert error(tmp_path, f'[relay]\ntrusted_networks = ["{net}"]\n') == (
        f"securemail.toml: relay.trusted_networks[0]: {net} trusts every address: that is an"
        " open relay")


@pytest.mark.parametrize("net", ["0.0.0.0/1", "64.0.0.0/2", "128.0.0.0/7", "2000::/3",
                                 "2001::/16"])
def test_a_very_wide_trusted_network_is_refused(tmp_path: Path, net: str) -> None:
    msg = error(tmp_path, f'[relay]\ntrusted_networks = ["127.0.0.0/8", "{net}"]\n')
    assert msg.startswith(f"securemail.toml: relay.trusted_networks[1]: {net} is wider than /")
    assert "open relay" in msg


@pytest.mark.parametrize("net", ["10.0.0.0/8", "192.168.0.0/16", "203.0.113.7",
                                 "2001:db8::/32", "fc00::/7", "fe80::/10", "::1/128"])
def test_practice_sized_trusted_networks_load(tmp_path: Path, net: str) -> None:
    s = load_settings(write(tmp_path, f'[relay]\ntrusted_networks = ["{net}"]\n'))
    assert s.relay.trusted_networks == (net,)


# ------------------------------------------------------------ 3. CA bundle ignored

def test_a_ca_file_with_tls_none_is_a_warning(tmp_path: Path) -> None:
    found = warnings(tmp_path, '[upstream]\nurl = "smtp://127.0.0.1:10026"\ntls = "none"\n'
                               'ca_file = "internal-ca.pem"\n')
    assert found == ['securemail.toml: upstream.ca_file: is only used with tls = "required";'
                     ' with tls = "none" it is ignored: remove it, or set tls = "required"'
                     " to verify the upstream with it"]


def test_a_ca_file_with_a_maildir_upstream_is_a_warning(tmp_path: Path) -> None:
    found = warnings(tmp_path, '[upstream]\nurl = "maildir://outbox"\nca_file = "ca.pem"\n')
    assert len(found) == 1 and found[0].startswith("securemail.toml: upstream.ca_file: is only"
                                                   " used by an smtp:// upstream")


def test_a_missing_ca_file_names_the_config_file_first(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[upstream]\nurl = "smtp://127.0.0.1:20587"\ntls = "required"\n'
                          'ca_file = "missing-ca.pem"\n')
    result = config_check(cfg)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"securemail: {cfg}: upstream.ca_file: "
                                    f"{tmp_path / 'missing-ca.pem'}: cannot load the CA bundle (")


# ------------------------------------------------------------ 4. admin endpoint

@pytest.mark.parametrize("listen", ["0.0.0.0:9025", "[::]:9025", "192.0.2.10:9025",
                                    "monitor.internal:9025"])
def test_an_admin_endpoint_off_loopback_is_a_warning(tmp_path: Path, listen: str) -> None:
    found = warnings(tmp_path, f'[relay]\nadmin_listen = "{listen}"\n')
    assert len(found) == 1
    assert found[0].startswith(f"securemail.toml: relay.admin_listen: {listen} is not a"
                               " loopback address: /metrics and /readyz are unauthenticated")


@pytest.mark.parametrize("listen", ["", "127.0.0.1:9025", "[::1]:9025", "localhost:9025"])
def test_an_admin_endpoint_on_loopback_is_fine(tmp_path: Path, listen: str) -> None:
    assert warnings(tmp_path, f'[relay]\nadmin_listen = "{listen}"\n') == []


# ------------------------------------------------------------ 6. the init template

def _documented_keys() -> set[tuple[str, str]]:
    keys: set[tuple[str, str]] = set()
    section: str | None = None
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            m = re.match(r"## `\[(\w+)\]`", line)
            section = m.group(1) if m else None
            continue
        row = re.match(r"\| `(\w+)` \|", line)
        if section and row:
            keys.add((section, row.group(1)))
    return keys


def test_the_init_template_has_every_documented_key() -> None:
    documented = _documented_keys()
    assert ("portal", "forwarded_allow_ips") in documented
    data = tomllib.loads(production_config(domain="riverside-counseling.org",
                                           practice_name="Riverside Counseling",
                                           selector="sm1", dkim=True))
    missing = sorted(f"{s}.{k}" for s, k in documented if k not in data.get(s, {}))
    assert missing == []
    assert data["portal"]["forwarded_allow_ips"] == ["127.0.0.1", "::1"]


def test_init_with_an_example_domain_does_not_call_it_the_default(tmp_path: Path) -> None:
    result = CliRunner().invoke(init, [str(tmp_path / "etc"), "--domain", "clinic.example"])
    assert result.exit_code == 0, result.output
    assert "WARNING: clinic.example is a reserved example domain" in result.output
    assert "--domain is not given" not in result.output
