"""``securemail directory import FILE`` / ``directory list [--json]``."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict
from typing import TYPE_CHECKING

import click

from securemail.cli.base import config_option, handle_errors

if TYPE_CHECKING:
    import sqlite3

    from securemail.audit.log import AdminEvent
    from securemail.directory import Directory


@click.group("directory")
def directory_group() -> None:
    """Clients, authorised contacts, consent and partners."""


def _open(config_path: str):  # type: ignore[no-untyped-def]
    from securemail.config import load_settings
    from securemail.store.sqlite import open_database

    settings = load_settings(config_path)
    return settings, open_database(settings.storage.sqlite_path)


@directory_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@config_option
@handle_errors
def directory_import(file: str, config_path: str) -> None:
    """Import clients/partners from a CSV or TOML FILE (upsert by id / name)."""
    from securemail.audit import AuditLog
    from securemail.audit.admin_events import consent_change_events
    from securemail.config import load_settings
    from securemail.directory import consent_changes, read_directory_file, store_entries

    entries = read_directory_file(file)  # validate before opening anything
    settings = load_settings(config_path)
    now = dt.datetime.now(dt.UTC)
    log = AuditLog.open(settings)  # a store whose signing key is wrong stops here

    def change(conn: sqlite3.Connection) -> tuple[int, list[AdminEvent]]:
        # The import and its audit records commit together, or not at all.
        before = _directory(settings, conn)
        count = store_entries(conn, entries, now.isoformat())
        events: list[AdminEvent] = [("directory-import", {"count": count, "file": file,
                                                          "actor": "cli"})]
        events += consent_change_events(consent_changes(before, _directory(settings, conn)),
                                        actor="cli", file=file)
        return count, events

    try:
        log.change_and_record(change, now=now)
    finally:
        log.close(now)
    click.echo(f"imported {len(entries.clients)} client(s) and {len(entries.partners)} "
               f"partner(s) from {file}")


def _directory(settings, conn) -> Directory:  # type: ignore[no-untyped-def]
    from securemail.directory import current_directory

    return current_directory(settings.practice.domains, settings.directory, conn)


@directory_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@config_option
@handle_errors
def directory_list(as_json: bool, config_path: str) -> None:
    """List the directory: config entries plus imported ones."""
    settings, conn = _open(config_path)
    d = _directory(settings, conn)
    if as_json:
        click.echo(json.dumps({
            "staff_domains": sorted(d.staff_domains),
            "clients": [asdict(c) for c in d.clients.values()],
            "partners": [asdict(p) for p in d.partners],
        }, indent=2))
        return
    click.echo(f"staff domains: {', '.join(sorted(d.staff_domains)) or '(none)'}")
    for c in d.clients.values():
        consent = (f"consent {c.consent_unencrypted.granted} ({c.consent_unencrypted.warning})"
                   if c.consent_unencrypted else "no consent")
        click.echo(f"client {c.id}: {', '.join(c.addresses)}; {consent}")
        for ct in c.contacts:
            click.echo(f"    contact {ct.address} ({ct.relation})")
    for p in d.partners:
        click.echo(f"partner {p.name}: {', '.join([*p.domains, *p.addresses])}")


commands: list[click.Command] = [directory_group]
