"""Submission users: who may log in, and which sender addresses each may use.

The users file (``[submission] users_file``) is TOML::

    [[users]]
    name = "frontdesk"                      # the AUTH login name
    password_hash = "$argon2id$v=19$..."    # argon2 hash (argon2-cffi)
    addresses = ["frontdesk@riverside.example", "@billing.riverside.example"]

An entry in ``addresses`` is either one address, or ``@domain`` for any
address in that domain. Make a hash with::

    python -c "from argon2 import PasswordHasher; print(PasswordHasher().hash(input()))"

Password checks run in a worker thread (argon2 is deliberately slow) and an
unknown user costs the same as a wrong password, so timing says nothing about
which names exist.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from securemail.directory import AddressError, normalise_address, normalise_domain
from securemail.errors import ConfigError

__all__ = ["SubmissionUser", "UserDirectory", "load_users"]

_hasher = PasswordHasher()
# Verified against when the name is unknown, so both paths cost the same.
_DUMMY_HASH = _hasher.hash("securemail-no-such-user")


@dataclass(frozen=True, slots=True)
class SubmissionUser:
    name: str
    password_hash: str
    addresses: tuple[str, ...]

    def may_send_as(self, address: str) -> bool:
        """True when ``address`` is one of this user's, or in one of its @domains
        (compared normalised: case, and IDN domains in either spelling)."""
        try:
            addr = normalise_address(address.strip())
        except AddressError:
            return False
        domain = "@" + addr.rpartition("@")[2]
        return any(a == addr or a == domain for a in self.addresses)


class UserDirectory:
    """The users file, loaded once; ``authenticate`` checks a login."""

    def __init__(self, users: Mapping[str, SubmissionUser]) -> None:
        self.users = dict(users)

    async def authenticate(self, name: str, password: str) -> SubmissionUser | None:
        user = self.users.get(name)
        hashed = user.password_hash if user else _DUMMY_HASH
        ok = await asyncio.to_thread(_verify, hashed, password)
        return user if ok and user is not None else None


def _verify(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def load_users(path: str | Path) -> UserDirectory:
    """Read the users file; errors name the file and the key at fault."""
    name = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(name, "", "users file not found (submission.users_file)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(name, "", f"cannot read users file ({type(exc).__name__})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, "", f"TOML syntax error: {exc}") from None
    extra = sorted(set(data) - {"users"})
    if extra:
        raise ConfigError(name, extra[0], "unknown key (expected [[users]] tables)")
    raw = data.get("users", [])
    if not isinstance(raw, list):
        raise ConfigError(name, "users", "must be an array of tables ([[users]])")
    users: dict[str, SubmissionUser] = {}
    for i, entry in enumerate(raw):
        users_key = f"users[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(name, users_key, "must be a table")
        unknown = sorted(set(entry) - {"name", "password_hash", "addresses"})
        if unknown:
            raise ConfigError(name, f"{users_key}.{unknown[0]}", "unknown key")
        uname = entry.get("name")
        if not isinstance(uname, str) or not uname:
            raise ConfigError(name, f"{users_key}.name", "is required (a string)")
        if uname in users:
            raise ConfigError(name, f"{users_key}.name", f'duplicate user "{uname}"')
        hashed = entry.get("password_hash")
        if not isinstance(hashed, str) or not hashed.startswith("$argon2"):
            raise ConfigError(name, f"{users_key}.password_hash",
                              "must be an argon2 hash (starts with $argon2)")
        addrs = entry.get("addresses")
        if not isinstance(addrs, list) or not addrs or not all(isinstance(a, str) for a in addrs):
            raise ConfigError(name, f"{users_key}.addresses",
                              'needs at least one address or "@domain"')
        if bad := next((a for a in addrs if "@" not in a), None):
            raise ConfigError(name, f"{users_key}.addresses",
                              f'"{bad[:80]}" is not an address (name@domain) or "@domain"')
        try:
            normalised = tuple(_normalise_entry(a) for a in addrs)
        except AddressError as exc:
            raise ConfigError(name, f"{users_key}.addresses", str(exc)) from None
        users[uname] = SubmissionUser(uname, hashed, normalised)
    return UserDirectory(users)


def _normalise_entry(entry: str) -> str:
    """``user@domain`` or ``@domain``, in the form addresses are compared in."""
    entry = entry.strip()
    if entry.startswith("@"):
        return "@" + normalise_domain(entry[1:])
    return normalise_address(entry)
