"""``securemail config check``."""

from __future__ import annotations

import click

from securemail.cli.base import config_option, handle_errors


@click.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@config_option
@handle_errors
def config_check(config_path: str) -> None:
    """Validate the config and everything `serve` loads from it (users file,
    certificates, DKIM key, store and audit key), changing nothing; exit 2 with
    FILE: key: problem. Run it as the service user to check its permissions."""
    from securemail.config import load_settings
    from securemail.preflight import check_runtime

    settings = load_settings(config_path)
    check_runtime(settings)
    n = len(settings.directory.clients)
    click.echo(f"{config_path}: OK ({n} client(s) inline, mode {settings.policy.mode.value}, "
               f"upstream {settings.upstream.url.split('://')[0]})")


commands: list[click.Command] = [config_group]
