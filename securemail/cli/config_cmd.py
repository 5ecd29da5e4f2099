"""``securemail config check``."""

from __future__ import annotations

import sys

import click

from securemail.cli.base import EXIT_PROBLEM, config_option, handle_errors


@click.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@config_option
@click.option("--strict", is_flag=True,
              help="Exit 1 when there are warnings (an example domain, an admin endpoint"
                   " off loopback, a setting that has no effect).")
@handle_errors
def config_check(config_path: str, strict: bool) -> None:
    """Validate the config and everything `serve` loads from it (users file,
    certificates, DKIM key, store and audit key), changing nothing; exit 2 with
    FILE: key: problem. Run it as the service user to check its permissions.

    Settings that work but are probably mistakes are printed as warnings on
    stderr; the exit status stays 0 unless --strict is given (then 1)."""
    from securemail.config import load_settings
    from securemail.preflight import check_runtime, config_warnings

    settings = load_settings(config_path)
    check_runtime(settings)
    warnings = config_warnings(settings)
    for line in warnings:
        click.echo(f"securemail: warning: {line}", err=True)
    n = len(settings.directory.clients)
    flagged = f", {len(warnings)} warning(s)" if warnings else ""
    click.echo(f"{config_path}: OK ({n} client(s) inline, mode {settings.policy.mode.value}, "
               f"upstream {settings.upstream.url.split('://')[0]}{flagged})")
    if warnings and strict:
        sys.exit(EXIT_PROBLEM)


commands: list[click.Command] = [config_group]
