"""``securemail users add FILE NAME --address A`` / ``users hash``: the submission
users file without hand-made argon2 hashes.

The password is read from the terminal (twice, not echoed) or, with
``--password-stdin``, from one line of standard input (for provisioning tools).
It is never taken from the command line, where other users could see it.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path

import click

from securemail.cli.base import handle_errors
from securemail.errors import ConfigError, InputError

__all__ = ["commands", "users_group"]

MIN_PASSWORD_LENGTH = 12


@click.group("users")
def users_group() -> None:
    """Accounts of the submission listener (apps and mail clients)."""


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise InputError("the two passwords differ")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InputError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
    return password


def _toml(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, with non-ASCII kept as is;
    DEL, which JSON leaves alone and TOML refuses, escaped too)."""
    try:
        text.encode("utf-8")
    except UnicodeError:
        raise InputError(f"{text!r}: not valid UTF-8 text") from None
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _hash(password: str) -> str:
    from argon2 import PasswordHasher

    return str(PasswordHasher().hash(password))


@users_group.command("add")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("name")
@click.option("--address", "addresses", multiple=True, required=True, metavar="ADDR",
              help='An address the user may send as, or "@domain"; repeat for more.')
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
@handle_errors
def users_add(file: str, name: str, addresses: tuple[str, ...], password_stdin: bool) -> None:
    """Add user NAME to the users FILE (created, mode 0640, if missing).

    The file is checked as `serve` reads it, before and after; reload the relay
    (`systemctl reload securemail`) to use the new account.
    """
    from securemail.smtp_auth import load_users

    path = Path(os.path.realpath(file))  # a symlinked file is updated where it lives
    if not path.parent.is_dir():
        raise InputError(f"{file}: folder {path.parent} does not exist")
    existing = 0
    if path.exists():
        users = load_users(path)  # a broken file is reported, not appended to
        if name in users.users:
            raise InputError(f"{file}: user {name!r} already exists")
        existing = len(users.users)
    if not name or not name.isprintable() or any(c.isspace() for c in name):
        raise InputError(f"user name {name!r}: use letters, digits and punctuation, no spaces")
    before = path.read_bytes() if path.exists() else b""
    eol = b"\r\n" if b"\r\n" in before else b"\n"  # keep the file's line endings
    lines = ["", "[[users]]", f"name = {_toml(name)}",
             f"password_hash = {_toml(_hash(_read_password(password_stdin)))}",
             f"addresses = [{', '.join(_toml(a) for a in addresses)}]", ""]
    if before and not before.endswith(b"\n"):
        before += eol
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise InputError(f"{file}: cannot write beside it"
                         f" ({exc.strerror or type(exc).__name__})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(before + eol.join(line.encode("utf-8") for line in lines))
        try:
            load_users(tmp)  # the result must load exactly as serve will read it
        except ConfigError as exc:
            if exc.key.startswith(f"users[{existing}]") or not before.strip():  # the new entry
                option = "--address" if exc.key.endswith(".addresses") else "the new user"
                raise InputError(f"{option}: {exc.problem}") from None
            raise ConfigError(file, exc.key, f"{exc.problem} (the file must use [[users]]"
                                             " tables for users add to append to it)") from None
        if path.exists():  # same mode, owner and group as before (root:securemail 0640)
            st = path.stat()
            os.chmod(tmp, st.st_mode & 0o777)
            if os.geteuid() == 0:
                os.chown(tmp, st.st_uid, st.st_gid)
        else:
            os.chmod(tmp, 0o640)  # whatever the umask
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"{file}: cannot write ({exc.strerror or type(exc).__name__})") \
            from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    click.echo(f"added user {name} to {file}; reload the relay to use it", err=True)


@users_group.command("hash")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
@handle_errors
def users_hash(password_stdin: bool) -> None:
    """Print the argon2 hash of a password, for a users file's password_hash."""
    click.echo(_hash(_read_password(password_stdin)))


commands: list[click.Command] = [users_group]
