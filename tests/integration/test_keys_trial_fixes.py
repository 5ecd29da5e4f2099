"""The operator trial, replayed: certificates made by ``openssl``, commands run as a process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.crypto_fixtures import smime_identity

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def securemail(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "securemail", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def test_cat_two_pems_imports_both_and_remove_says_what_it_did(tmp_path: Path) -> None:
    (tmp_path / "securemail.toml").write_text('[storage]\nurl = "sqlite:store.db"\n')
    (tmp_path / "smrsa.pem").write_bytes(smime_identity("sam@mail.example").cert_pem)
    # `openssl req -x509` marks the certificate CA:TRUE (basicConstraints) by default.
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                    "-keyout", str(tmp_path / "smder.key"), "-out", str(tmp_path / "smder.pem"),
                    "-subj", "/CN=Dee/emailAddress=dee@mail.example",
                    "-addext", "subjectAltName=email:dee@mail.example,email:dee@other.test"],
                   check=True, capture_output=True, timeout=120)
    assert b"CA:TRUE" in subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(tmp_path / "smder.pem")],
        check=True, capture_output=True, timeout=60).stdout
    (tmp_path / "two.pem").write_bytes((tmp_path / "smrsa.pem").read_bytes()
                                       + (tmp_path / "smder.pem").read_bytes())

    done = securemail("keys", "import", "two.pem", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("imported smime ") == 2, done.stdout
    keys = json.loads(securemail("keys", "list", "--json", cwd=tmp_path).stdout)
    dee = next(k for k in keys if "dee@mail.example" in k["addresses"])
    assert dee["usable"] is True and dee["reason"] is None

    done = securemail("keys", "remove", "dee@other.test", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (f"detached dee@other.test from key {dee['fingerprint']} (smime), which is still "
            "used for dee@mail.example") in done.stdout
    done = securemail("keys", "remove", "dee@mail.example", cwd=tmp_path)
    assert f"removed key {dee['fingerprint']} (smime) for dee@mail.example" in done.stdout

    export = securemail("audit", "export", cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    removals = [r for r in map(json.loads, export.stdout.splitlines()[1:])
                if r.get("kind") == "key-remove"]
    assert [(r["fingerprint"], r["key_kind"], r["reason_code"]) for r in removals] == [
        (dee["fingerprint"], "smime", "address-detached"),
        (dee["fingerprint"], "smime", "removed")]
