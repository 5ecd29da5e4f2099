"""``securemail serve`` and ``securemail init``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from securemail.cli.base import EXIT_BAD_INPUT, default_config_path, fail, handle_errors
from securemail.init import DEFAULT_INIT_DOMAIN


@click.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Configuration file [default: $SECUREMAIL_CONFIG or ./securemail.toml; "
                   "with neither, the embedded demo in ./securemail-data/].")
@click.option("--no-portal", is_flag=True, help="Run the SMTP relay only.")
@click.option("--portal-only", is_flag=True, help="Run the portal only (no SMTP listeners).")
@handle_errors
def serve(config_path: str | None, no_portal: bool, portal_only: bool) -> None:
    """Run the SMTP relay and the portal in one process.

    Without any config file, starts the embedded demo: relay on 127.0.0.1:2525,
    portal on http://127.0.0.1:8080, outgoing mail in a Maildir folder."""
    from securemail.logs import configure_logging
    from securemail.serve import ensure_demo, serve_forever

    if no_portal and portal_only:
        fail("--no-portal and --portal-only cannot be combined", EXIT_BAD_INPUT)
    demo = False
    if config_path is None:
        config_path = default_config_path()
        explicit = bool(os.environ.get("SECUREMAIL_CONFIG"))
        if not explicit and not Path(config_path).exists():
            demo = True
            config_path = str(ensure_demo(Path.cwd()))
    if not Path(config_path).exists():
        fail(f"{config_path}: file not found (use -c PATH or run `securemail init`)")
    configure_logging()
    try:
        status = serve_forever(Path(config_path), smtp=not portal_only, portal=not no_portal,
                               demo=demo)
    except KeyboardInterrupt:
        status = 0
    except OSError as exc:
        # Usually a port already in use: say which setting to change.
        fail(f"{config_path}: cannot listen ({exc.strerror or exc}); "
             "check relay.listen, portal.listen and relay.admin_listen")
    if status:
        sys.exit(status)


@click.command()
@click.argument("directory", type=click.Path(file_okay=False), default=".")
@click.option("--domain", default=DEFAULT_INIT_DOMAIN, show_default=True,
              help="The practice's mail domain (staff addresses, DKIM).")
@click.option("--name", "practice_name", default="Our practice", show_default=True,
              help="The practice's name, shown in notifications.")
@click.option("--selector", default="sm1", show_default=True, help="DKIM selector.")
@click.option("--dkim-kind", type=click.Choice(["rsa", "ed25519"]), default="rsa",
              show_default=True, help="DKIM key type (RSA is understood everywhere).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the store and its generated secrets (audit signing key,"
                   " portal secret); default: DIRECTORY.")
@handle_errors
def init(directory: str, domain: str, practice_name: str, selector: str, dkim_kind: str,
         data_dir: str | None) -> None:
    """Write a commented production securemail.toml into DIRECTORY, create the
    store and a DKIM key, and print the DNS record to publish."""
    from securemail.init import initialise

    result = initialise(Path(directory), domain=domain, practice_name=practice_name,
                        selector=selector, dkim_kind=dkim_kind,
                        data_dir=Path(data_dir) if data_dir else None)
    click.echo(result.report())


commands: list[click.Command] = [serve, init]
