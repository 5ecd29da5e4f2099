"""`securemail users add|hash`: accounts an operator makes work for real logins."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from securemail.smtp_auth import load_users


def users(*args: str, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "securemail", "users", *args,
                           "--password-stdin"], input=password + "\n", capture_output=True,
                          text=True, timeout=60)


def test_an_added_user_can_log_in_and_nothing_else_can(tmp_path: Path) -> None:
    file = tmp_path / "users.toml"
    r = users("add", str(file), "ehr-app", "--address", "appointments@riverside.example",
              "--address", "@billing.riverside.example", password="correct horse battery")
    assert r.returncode == 0, r.stderr
    r = users("add", str(file), "desk", "--address", "desk@riverside.example",
              password="another long password")
    assert r.returncode == 0, r.stderr
    assert file.stat().st_mode & 0o777 == 0o640
    assert "correct horse" not in file.read_text()
    directory = load_users(file)  # exactly how serve reads it
    ok = asyncio.run(directory.authenticate("ehr-app", "correct horse battery"))
    assert ok is not None and ok.may_send_as("invoices@billing.riverside.example")
    assert asyncio.run(directory.authenticate("ehr-app", "another long password")) is None
    assert asyncio.run(directory.authenticate("desk", "another long password")) is not None


def test_refusals_leave_the_file_as_it_was(tmp_path: Path) -> None:
    file = tmp_path / "users.toml"
    assert users("add", str(file), "desk", "--address", "desk@riverside.example",
                 password="another long password").returncode == 0
    before = file.read_bytes()
    for args, password, expected in [
        (["desk", "--address", "x@riverside.example"], "yet another password", "already exists"),
        (["new", "--address", "x@riverside.example"], "short", "at least 12"),
        # named as the address it is, not "needs at least one address"
        (["new", "--address", "not an address"], "yet another password",
         '--address: "not an address" is not an address (name@domain) or "@domain"'),
        (["two words", "--address", "x@riverside.example"], "yet another password", "no spaces"),
    ]:
        r = users("add", str(file), *args, password=password)
        assert r.returncode == 2 and expected in r.stderr, r.stderr
        assert str(file) in r.stderr or expected in ("at least 12", "no spaces") \
            or expected.startswith("--address: ")
    assert file.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["users.toml"]  # no temp file left


def test_hash_prints_a_hash_the_users_file_accepts(tmp_path: Path) -> None:
    r = users("hash", password="correct horse battery")
    assert r.returncode == 0 and r.stdout.startswith("$argon2id$")
    file = tmp_path / "users.toml"
    file.write_text(f'[[users]]\nname = "x"\npassword_hash = "{r.stdout.strip()}"\n'
                    'addresses = ["x@riverside.example"]\n')
    assert asyncio.run(load_users(file).authenticate("x", "correct horse battery")) is not None


def test_adding_keeps_the_files_owner_mode_and_line_endings(tmp_path: Path) -> None:
    import os

    file = tmp_path / "users.toml"
    file.write_bytes(b"# accounts for the front desk\r\n[[users]]\r\nname = \"desk\"\r\n"
                     b"password_hash = \"$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaA\"\r\n"
                     b"addresses = [\"desk@riverside.example\"]")  # no final newline
    file.chmod(0o640)
    if os.geteuid() == 0:
        os.chown(file, 0, 1)  # root:daemon, like root:securemail
    r = users("add", str(file), "zoë", "--address", "zoe@riverside.example",
              password="correct horse battery")
    assert r.returncode == 0, r.stderr
    data = file.read_bytes()
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF throughout
    assert data.startswith(b"# accounts for the front desk\r\n")
    st = file.stat()
    assert st.st_mode & 0o777 == 0o640
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (0, 1)
    names = set(load_users(file).users)
    assert names == {"desk", "zoë"}


def test_a_new_file_is_0640_whatever_the_umask(tmp_path: Path) -> None:
    file = tmp_path / "users.toml"
    r = subprocess.run(["sh", "-c", f"umask 077; {sys.executable} -m securemail users add"
                        f" {file} desk --address desk@riverside.example --password-stdin"],
                       input="correct horse battery\n", capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert file.stat().st_mode & 0o777 == 0o640


def test_a_symlinked_users_file_is_updated_where_it_lives(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "users.toml"
    assert users("add", str(real), "desk", "--address", "desk@riverside.example",
                 password="another long password").returncode == 0
    link = tmp_path / "users.toml"
    link.symlink_to(real)
    r = users("add", str(link), "bob", "--address", "bob@riverside.example",
              password="correct horse battery")
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and set(load_users(real).users) == {"desk", "bob"}


def test_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    r = users("add", str(tmp_path / "nope" / "users.toml"), "desk", "--address",
              "desk@riverside.example", password="another long password")
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_a_file_in_another_layout_is_named_not_the_new_user(tmp_path: Path) -> None:
    file = tmp_path / "users.toml"
    file.write_text('users = [{ name = "desk", password_hash = "$argon2id$v=19$m=65536,t=3,'
                    'p=4$c2FsdHNhbHQ$aGFzaA", addresses = ["desk@riverside.example"] }]\n')
    r = users("add", str(file), "bob", "--address", "bob@riverside.example",
              password="correct horse battery")
    assert r.returncode == 2 and str(file) in r.stderr and "[[users]]" in r.stderr, r.stderr
    assert "the new user" not in r.stderr and "Traceback" not in r.stderr


def test_control_characters_in_an_address_are_named_as_the_address(tmp_path: Path) -> None:
    r = users("add", str(tmp_path / "users.toml"), "bob", "--address",
              "bo\x7fb@riverside.example", password="correct horse battery")
    assert r.returncode == 2 and r.stderr.startswith("securemail: --address:"), r.stderr
    assert not (tmp_path / "users.toml").exists()
