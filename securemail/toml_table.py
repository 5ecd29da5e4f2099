"""Reading one TOML table with precise errors: ``FILE: dotted.key: problem``.

:class:`Table` remembers which keys were read, so that leftovers (typos) are
reported as unknown keys instead of being ignored.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from typing import TypeVar

from securemail.errors import ConfigError

__all__ = [
    "Table",
    "read_address",
    "read_date",
    "read_domain",
    "read_host_port",
    "read_section",
    "read_tables",
]

T = TypeVar("T")


class Table:
    """One TOML table; remembers which keys were read so leftovers are errors."""

    def __init__(self, file: str, prefix: str, data: object) -> None:
        self.file = file
        self.prefix = prefix
        if not isinstance(data, Mapping):
            raise ConfigError(file, prefix, f"must be a table, got {kind_of(data)}")
        self.data: Mapping[str, object] = data
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), problem)

    def get(self, name: str, kind: type[T], default: T) -> T:
        self.seen.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        if kind is int and isinstance(value, bool):
            raise self.error(name, f"must be an integer, got {kind_of(value)}")
        if not isinstance(value, kind):
            raise self.error(name, f"must be {article_for(kind)}, got {kind_of(value)}")
        return value

    def text(self, name: str, default: str) -> str:
        return self.get(name, str, default)

    def line(self, name: str, default: str) -> str:
        """Text that goes into a mail header or an SMTP greeting: one line, no
        control characters (a CR/LF would start a header of its own)."""
        value = self.text(name, default)
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise self.error(name, "must be one line of text (no line breaks or control"
                                   " characters)")
        return value

    def positive(self, name: str, default: int) -> int:
        value = self.get(name, int, default)
        if value <= 0:
            raise self.error(name, f"must be a positive integer, got {value}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.text(name, default)
        if value not in choices:
            options = " or ".join(f'"{c}"' for c in choices)
            raise self.error(name, f'must be {options}, got "{value}"')
        return value

    def strings(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.get(name, list, list(default))
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{name}[{i}]", f"must be a string, got {kind_of(item)}")
        return tuple(value)

    def table(self, name: str) -> Table:
        self.seen.add(name)
        return Table(self.file, self.key(name), self.data.get(name, {}))

    def finish(self) -> None:
        extra = sorted(set(self.data) - self.seen)
        if extra:
            raise self.error(extra[0],
                             "unknown key (check the spelling; see docs/configuration.md)")


def kind_of(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def article_for(kind: type) -> str:
    return {bool: "true or false", int: "an integer", str: "a string", list: "a list",
            dict: "a table"}.get(kind, kind.__name__)


def read_host_port(t: Table, name: str, default: str, *, allow_empty: bool = False) -> str:
    value = t.text(name, default)
    if allow_empty and not value:
        return value
    # An IPv6 address goes in brackets ("[::1]:2525"); unbracketed, "::1:2525"
    # could be read two ways and is refused rather than guessed.
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([0-9A-Za-z.-]+):(\d{1,5})", value)
    if not m:
        hint = ' (an IPv6 address goes in brackets: "[::1]:2525")' if value.count(":") > 1 \
            else ""
        raise t.error(name, f'must be "HOST:PORT", got "{value}"{hint}')
    port = m.group(2) or m.group(4)
    if not 0 < int(port) < 65536:
        raise t.error(name, f"port must be 1-65535, got {port}")
    return value


def read_date(t: Table, name: str, value: object) -> str:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value).isoformat()
        except ValueError:
            pass
    raise t.error(name, f"must be a date (YYYY-MM-DD), got {value!r}")


def read_address(t: Table, name: str, value: str) -> str:
    from securemail.directory import AddressError, normalise_address

    try:
        return normalise_address(value)
    except AddressError as exc:
        raise t.error(name, str(exc)) from None


def read_domain(t: Table, name: str, value: str) -> str:
    from securemail.directory import AddressError, normalise_domain

    try:
        return normalise_domain(value)
    except AddressError as exc:
        raise t.error(name, str(exc)) from None


def read_section(root: Table, name: str, build: Callable[[Table], T]) -> T:
    t = root.table(name)
    result = build(t)
    t.finish()
    return result


def read_tables(t: Table, name: str) -> list[Table]:
    raw = t.get(name, list, [])
    return [Table(t.file, f"{t.key(name)}[{i}]", item) for i, item in enumerate(raw)]
