"""`securemail check`, `config check` and `directory` as a user runs them (subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from securemail.testing import build_message

DR = "dr.lee@riverside.example"


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "securemail", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=60)


def eml(tmp_path: Path, name: str = "m.eml", **kw) -> Path:
    p = tmp_path / name
    p.write_bytes(build_message(sender=DR, **kw))
    return p


def test_check_json_has_the_interface_shape(config_path: Path, tmp_path: Path) -> None:
    msg = eml(tmp_path, to=["jane@mail.example"], cc=["mom@mail.example"],
              body="SSN 123-45-6789, diagnosis F32.1")
    r = run("check", msg, "--json", "-c", config_path)
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert {"message_id", "mode", "encrypted", "phi", "blocked", "recipients"} <= set(out)
    assert out["mode"] == "enforce" and out["blocked"] is True and out["phi"] is True
    assert out["encrypted"] is False
    mom = next(x for x in out["recipients"] if x["address"] == "mom@mail.example")
    assert mom == {"address": "mom@mail.example", "source": "cc", "role": "third-party",
                   "action": "block", "rules": ["unauthorised-recipient"],
                   "reason": "not an authorised contact of client c-1001"}


def test_check_table_and_exit_zero(config_path: Path, tmp_path: Path) -> None:
    msg = eml(tmp_path, to=["jane@mail.example"])
    r = run("check", msg, "-c", config_path)
    assert r.returncode == 0, r.stderr
    assert "jane@mail.example" in r.stdout and "portal" in r.stdout
    assert "Result: no recipient blocked" in r.stdout


def test_check_envelope_options_override_headers(config_path: Path, tmp_path: Path) -> None:
    msg = eml(tmp_path, to=["jane@mail.example"])
    r = run("check", msg, "--json", "--to", "jane@mail.example", "--to", "spy@evil.example",
            "-c", config_path)
    out = json.loads(r.stdout)
    spy = next(x for x in out["recipients"] if x["address"] == "spy@evil.example")
    assert spy["source"] == "bcc" and spy["action"] == "block"
    assert r.returncode == 1


def test_check_unreadable_file_exits_2_with_one_line(config_path: Path, tmp_path: Path) -> None:
    r = run("check", tmp_path / "missing.eml", "-c", config_path)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "missing.eml: file not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_bad_envelope_address_is_bad_input(config_path: Path, tmp_path: Path) -> None:
    msg = eml(tmp_path, to=["jane@mail.example"])
    for option in ("--to", "--from"):
        r = run("check", msg, option, "bad address", "-c", config_path)
        assert r.returncode == 2, r.stdout  # not 1 ("blocked")
        assert r.stderr.startswith(f"securemail: {option}: not a plain email address")


def test_check_with_broken_config_names_file_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "securemail.toml"
    cfg.write_text('[policy]\nunauthorised_recipients = "stripp"\n')
    r = run("check", eml(tmp_path, to=["a@b.example"]), "-c", cfg)
    assert r.returncode == 2
    assert r.stderr.strip() == (f'securemail: {cfg}: policy.unauthorised_recipients: must be '
                                '"block" or "strip", got "stripp"')


def test_config_check(config_path: Path, tmp_path: Path) -> None:
    assert run("config", "check", "-c", config_path).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("[relay]\nlisten = 'nowhere'\n")
    r = run("config", "check", "-c", bad)
    assert r.returncode == 2 and "relay.listen" in r.stderr


def test_config_from_environment(config_path: Path, tmp_path: Path) -> None:
    import os

    env = {**os.environ, "SECUREMAIL_CONFIG": str(config_path)}
    r = subprocess.run([sys.executable, "-m", "securemail", "config", "check"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr


def test_directory_import_changes_the_verdict(config_path: Path, tmp_path: Path) -> None:
    msg = eml(tmp_path, to=["jane@mail.example"], cc=["mom@mail.example"])
    assert run("check", msg, "-c", config_path).returncode == 1
    csv_file = tmp_path / "contacts.csv"
    csv_file.write_text("id,addresses,contacts\nc-1001,jane@mail.example,"
                        "guardian@mail.example (parent);mom@mail.example (mother)\n")
    r = run("directory", "import", csv_file, "-c", config_path)
    assert r.returncode == 0, r.stderr
    assert run("check", msg, "-c", config_path).returncode == 0
    listing = json.loads(run("directory", "list", "--json", "-c", config_path).stdout)
    jane = next(c for c in listing["clients"] if c["id"] == "c-1001")
    assert {c["address"] for c in jane["contacts"]} == {"guardian@mail.example",
                                                        "mom@mail.example"}
