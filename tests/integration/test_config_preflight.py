"""`securemail config check` loads what `serve` loads, and changes nothing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from securemail.audit import AuditLog
from securemail.audit.chain import ensure_signing_key
from securemail.config import load_settings
from tests.integration.relay_support import make_certs
from tests.unit.test_audit_support import T0, record_messages

HASH = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("pw")


def check(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "securemail", "config", "check", "-c",
                           str(cfg)], capture_output=True, text=True, timeout=60)


def _config(tmp_path: Path, users: str | None = None, extra: str = "") -> Path:
    certs = make_certs(tmp_path)
    (tmp_path / "users.toml").write_text(users if users is not None else (
        f'[[users]]\nname = "desk"\npassword_hash = "{HASH}"\n'
        'addresses = ["desk@riverside.example"]\n'))
    cfg = tmp_path / "securemail.toml"
    cfg.write_text(f"""
[practice]
domains = ["riverside.example"]
[submission]
enabled = true
tls_cert = "{certs.cert_file}"
tls_key = "{certs.key_file}"
users_file = "users.toml"
[storage]
url = "sqlite:data/securemail.db"
{extra}""")
    return cfg


def test_a_working_config_passes_and_nothing_is_created(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    r = check(cfg)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "data").exists()  # no store, no generated secrets


@pytest.mark.parametrize(("users", "expected"), [
    ("[[users]\n", "TOML syntax error"),
    ('[[users]]\nname = "x"\npassword_hash = "plain"\naddresses = ["x@riverside.example"]\n',
     "users[0].password_hash"),
    ('[[users]]\nname = "x"\npasword_hash = "h"\n', "users[0].pasword_hash"),
])
def test_a_users_file_serve_would_refuse_fails_the_check(tmp_path: Path, users: str,
                                                         expected: str) -> None:
    r = check(_config(tmp_path, users))
    assert r.returncode == 2 and expected in r.stderr and "users.toml" in r.stderr, r.stderr


def test_missing_certificate_key_is_named(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    (tmp_path / "server.key").unlink()
    r = check(cfg)
    assert r.returncode == 2 and "submission.tls_key" in r.stderr and "server.key" in r.stderr


def test_a_certificate_that_is_not_one_fails_the_check(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    (tmp_path / "server.pem").write_text("not a certificate")
    r = check(cfg)
    assert r.returncode == 2 and "submission.tls_cert" in r.stderr


def test_webhook_code_channel_is_refused_for_serve(tmp_path: Path) -> None:
    r = check(_config(tmp_path, extra='[portal]\ncode_channel = "webhook"\n'))
    assert r.returncode == 2 and "portal.code_channel" in r.stderr


def test_a_used_store_without_its_signing_key_fails_the_check(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    audit = AuditLog.open(load_settings(cfg))
    record_messages(audit, 2)
    audit.close(T0)
    key = tmp_path / "data" / "audit-signing.key"
    shutil.move(key, tmp_path / "elsewhere.key")
    r = check(cfg)
    assert r.returncode == 2 and str(key) in r.stderr and "missing" in r.stderr
    assert not key.exists()
    ensure_signing_key(key)  # another key
    r = check(cfg)
    assert r.returncode == 2 and "did not sign" in r.stderr
