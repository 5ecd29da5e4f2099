"""Shared CLI plumbing: the root group, config loading, exit codes.

Exit status: 0 success; 1 the command worked and found a problem; 2 bad input
or configuration, with one line naming the file and key at fault.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from securemail.errors import ConfigError, InputError, SecuremailError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_PROBLEM, EXIT_BAD_INPUT = 0, 1, 2


def default_config_path() -> str:
    return os.environ.get("SECUREMAIL_CONFIG") or "securemail.toml"


config_option = click.option(
    "-c", "--config", "config_path", type=click.Path(dir_okay=False),
    default=default_config_path, show_default="$SECUREMAIL_CONFIG or ./securemail.toml",
    help="Configuration file.",
)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    click.echo(f"securemail: {message}", err=True)
    sys.exit(code)


def _demo_hint(exc: SecuremailError) -> str:
    """A missing default config where ``securemail serve`` made its demo: say
    where the demo's config is (serve finds it on its own; other commands
    need ``-c``)."""
    demo = Path("securemail-data") / "securemail.toml"
    if (isinstance(exc, ConfigError) and not exc.key and exc.problem.startswith("file not found")
            and exc.file == default_config_path() and demo.is_file()):
        return f"; the demo that `securemail serve` made is used with: -c {demo}"
    return ""


def handle_errors(fn: F) -> F:
    """Turn securemail errors into one line on stderr and exit 2 (or 1)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, InputError) as exc:
            fail(str(exc) + _demo_hint(exc))
        except SecuremailError as exc:
            # Temporary faults (store, upstream): the message names no content.
            fail(f"{type(exc).__name__}: {exc}", EXIT_PROBLEM)

    return wrapper  # type: ignore[return-value]


def load_relay(config_path: str) -> Any:
    """``securemail.load`` with the CLI's error handling (missing file -> exit 2)."""
    from securemail.relay import load

    if not Path(config_path).exists():
        raise ConfigError(config_path, "", "file not found (use -c PATH or run `securemail init`)")
    return load(config_path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="securemail")
def cli() -> None:
    """securemail: a HIPAA-minded secure email relay for practices."""


def main() -> None:
    from securemail.cli import register

    register.add_all(cli)
    cli()
