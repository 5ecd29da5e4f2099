"""``securemail directory import [--replace] FILE`` / ``directory remove`` /
``directory list [--json]``."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import click

from securemail.cli.base import EXIT_PROBLEM, config_option, handle_errors

if TYPE_CHECKING:
    import sqlite3

    from securemail.audit.log import AdminEvent
    from securemail.config import Settings
    from securemail.directory import Directory, RemovedEntries


@click.group("directory")
def directory_group() -> None:
    """Clients, authorised contacts, consent and partners."""


def _open(config_path: str):  # type: ignore[no-untyped-def]
    from securemail.config import load_settings
    from securemail.store.sqlite import open_database

    settings = load_settings(config_path)
    return settings, open_database(settings.storage.sqlite_path)


def _removal_events(removed: RemovedEntries, *, file: str | None) -> list[AdminEvent]:
    """One ``directory-remove`` record per imported client or partner deleted."""
    events: list[AdminEvent] = []
    for cid in removed.clients:
        events.append(("directory-remove", {"client_id": cid, "count": 1, "file": file,
                                            "actor": "cli"}))
    for partner in removed.partners:
        events.append(("directory-remove", {"partner": partner, "count": 1, "file": file,
                                            "actor": "cli"}))
    return events


def _echo_removed(removed: RemovedEntries, settings: Settings) -> None:
    config_clients = {c.id for c in settings.directory.clients}
    config_partners = {p.name for p in settings.directory.partners}
    for kind, keys, in_config in (("client", removed.clients, config_clients),
                                  ("partner", removed.partners, config_partners)):
        for key in keys:
            back = (f" (the config file's entry for {kind} {key} is in force again)"
                    if key in in_config else "")
            click.echo(f"removed {kind} {key}{back}")


@directory_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--replace", is_flag=True,
              help="Make the imported entries exactly those in FILE: imported clients and"
                   " partners FILE does not list are removed. Entries in the config file are"
                   " never touched.")
@config_option
@handle_errors
def directory_import(file: str, replace: bool, config_path: str) -> None:
    """Import clients/partners from a CSV or TOML FILE (upsert by id / name).

    Without --replace, entries imported before and missing from FILE stay
    (remove them with --replace or `securemail directory remove`). The CSV
    columns are described in docs/configuration.md ("Directory files").
    """
    from securemail.audit import AuditLog
    from securemail.audit.admin_events import consent_change_events, note_recorded
    from securemail.config import load_settings
    from securemail.directory import (
        RemovedEntries,
        consent_changes,
        imported_keys,
        read_directory_file,
        replace_entries,
        store_entries,
    )

    entries = read_directory_file(file)  # validate before opening anything
    recorded = str(Path(file).resolve())  # as the records name it: unambiguous years later
    settings = load_settings(config_path)
    now = dt.datetime.now(dt.UTC)
    log = AuditLog.open(settings)  # a store whose signing key is wrong stops here

    notes: list[str] = []

    def change(conn: sqlite3.Connection
               ) -> tuple[tuple[RemovedEntries, RemovedEntries], list[AdminEvent]]:
        # The import and its audit records commit together, or not at all.
        before = _directory(settings, conn)
        left = RemovedEntries()
        if replace:
            count, removed = replace_entries(conn, entries, now.isoformat())
        else:
            removed = RemovedEntries()
            count = store_entries(conn, entries, now.isoformat())
            present = imported_keys(conn)
            left = RemovedEntries(
                tuple(sorted(set(present.clients) - {c.id for c in entries.clients})),
                tuple(sorted(set(present.partners) - {p.name for p in entries.partners})))
        fields: dict[str, str | int | None] = {"count": count, "file": recorded, "actor": "cli"}
        if replace:
            fields["reason_code"] = "replace"
        events: list[AdminEvent] = [("directory-import", fields)]
        events += _removal_events(removed, file=recorded)
        after = _directory(settings, conn)
        # The consent this file changed (what the config file says is recorded,
        # with that file's name, when serve starts or reloads).
        changed = note_recorded(conn, consent_changes(before, after))
        events += consent_change_events(changed, actor="cli", file=recorded)
        notes[:] = after.notes()
        return (removed, left), events

    try:
        removed, left = log.change_and_record(change, now=now)
    finally:
        log.close(now)
    click.echo(f"imported {len(entries.clients)} client(s) and {len(entries.partners)} "
               f"partner(s) from {file}")
    _echo_removed(removed, settings)
    if left:
        click.echo(f"note: {len(left.clients)} client(s) and {len(left.partners)} partner(s)"
                   f" imported earlier are not in {file} and stay authorised; to remove them,"
                   " import the full list with --replace or use `securemail directory remove`")
    for note in notes:
        click.echo(f"note: {note}")


@directory_group.command("remove")
@click.option("--client", "clients", multiple=True, metavar="ID",
              help="Id of an imported client to remove (repeatable).")
@click.option("--partner", "partners", multiple=True, metavar="NAME",
              help="Name of an imported partner to remove (repeatable).")
@config_option
@handle_errors
def directory_remove(clients: tuple[str, ...], partners: tuple[str, ...],
                     config_path: str) -> None:
    """Remove imported clients and partners (exit 1 if one of them is not imported).

    Entries in the config file's [[directory.*]] tables are not removed here:
    delete them from the config file.
    """
    from securemail.audit import AuditLog
    from securemail.audit.admin_events import consent_change_events, note_recorded
    from securemail.config import load_settings
    from securemail.directory import consent_changes, remove_entries

    if not clients and not partners:
        raise click.UsageError("name at least one --client ID or --partner NAME")
    settings = load_settings(config_path)
    now = dt.datetime.now(dt.UTC)
    log = AuditLog.open(settings)

    def change(conn: sqlite3.Connection) -> tuple[RemovedEntries, list[AdminEvent]]:
        # The removal and its audit records commit together, or not at all.
        before = _directory(settings, conn)
        removed = remove_entries(conn, clients, partners)
        events = _removal_events(removed, file=None)
        changed = note_recorded(conn, consent_changes(before, _directory(settings, conn)))
        events += consent_change_events(changed, actor="cli")
        return removed, events

    try:
        removed = log.change_and_record(change, now=now)
    finally:
        log.close(now)
    _echo_removed(removed, settings)
    config_clients = {c.id for c in settings.directory.clients}
    config_partners = {p.name for p in settings.directory.partners}
    missing = False
    for kind, asked, gone, in_config in (
            ("client", clients, removed.clients, config_clients),
            ("partner", partners, removed.partners, config_partners)):
        for key in dict.fromkeys(asked):
            if key in gone:
                continue
            missing = True
            if key in in_config:
                click.echo(f"securemail: {kind} {key} is in the config file {config_path}, not"
                           f" imported: delete its [[directory.{kind}s]] entry there", err=True)
            else:
                click.echo(f"securemail: no imported {kind} {key}", err=True)
    if missing:
        raise SystemExit(EXIT_PROBLEM)


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
        given = c.consent_unencrypted
        consent = "no consent" if given is None else (
            f"consent {given.granted} ({given.warning})"
            + (f", expires {given.expires}" if given.expires else ""))
        click.echo(f"client {c.id}: {', '.join(c.addresses)}; {consent}")
        for ct in c.contacts:
            click.echo(f"    contact {ct.address} ({ct.relation})")
    for p in d.partners:
        click.echo(f"partner {p.name}: {', '.join([*p.domains, *p.addresses])}")


commands: list[click.Command] = [directory_group]
