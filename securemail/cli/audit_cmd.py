"""``securemail audit``: export, verify, report, public-key, prune."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import click

from securemail.cli.base import EXIT_PROBLEM, config_option, handle_errors
from securemail.errors import ConfigError, InputError

__all__ = ["audit_group", "commands"]


def _settings(config_path: str) -> Any:
    from securemail.config import load_settings

    if not Path(config_path).exists():
        raise ConfigError(config_path, "", "file not found (use -c PATH or run `securemail init`)")
    return load_settings(config_path)


def _time_option(value: str | None, option: str) -> str | None:
    """An ISO date or date-time (UTC if no zone) in the records' time format."""
    if value is None:
        return None
    from securemail.audit.records import format_time

    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"{option}: not an ISO date or time: {value!r}") from None
    return format_time(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))


@click.group("audit")
def audit_group() -> None:
    """Tamper-evident audit records: export, verify, report, prune."""


@audit_group.command("export")
@config_option
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl",
              show_default=True)
@click.option("--since", help="ISO date/time (UTC unless a zone is given), inclusive.")
@click.option("--until", help="ISO date/time, exclusive.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File (default: stdout).")
@handle_errors
def export_cmd(config_path: str, fmt: str, since: str | None, until: str | None,
               output: str | None) -> None:
    """Export records; JSONL exports verify offline with the public key."""
    from securemail.audit import AuditLog, export_csv, export_jsonl, verify_store
    from securemail.audit.export import write_atomically

    lo, hi = _time_option(since, "--since"), _time_option(until, "--until")
    audit = AuditLog.open(_settings(config_path))
    try:
        # Signing an export vouches for it: never sign a store that fails verification.
        report = verify_store(audit.conn, audit.public_key)
        if not report.ok:
            click.echo(report.summary(), err=True)
            click.echo("securemail: export refused: the store does not verify", err=True)
            sys.exit(EXIT_PROBLEM)
        now = datetime.now(UTC)

        def write(f: IO[str]) -> int:
            if fmt == "csv":
                return export_csv(audit.conn, f, since=lo, until=hi)
            return export_jsonl(audit.conn, audit.chainer.key, f, now=now, since=lo, until=hi)

        count = write_atomically(Path(output), write) if output else write(sys.stdout)
    finally:
        audit.close(datetime.now(UTC))
    if output:
        click.echo(f"{count} record(s) written to {output}", err=True)


@audit_group.command("verify")
@config_option
@click.argument("export", required=False, type=click.Path(dir_okay=False))
@click.option("--public-key", "public_key", type=click.Path(dir_okay=False),
              help="PEM public key (from `audit public-key`); default: the store's own key.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def verify_cmd(config_path: str, export: str | None, public_key: str | None,
               as_json: bool) -> None:
    """Verify the store, or an EXPORT.jsonl; exit 1 naming the first bad record."""
    from securemail.audit import load_public_key, signing_key_path, verify_export, verify_store
    from securemail.store.sqlite import open_database

    settings = None
    if public_key:
        key = load_public_key(public_key)
    else:
        settings = _settings(config_path)
        path = signing_key_path(settings)
        if not path.exists():
            raise InputError(f"{path}: no audit signing key; pass --public-key FILE")
        key = load_public_key(path)
    if export:
        report = verify_export(export, key)
    else:
        settings = settings or _settings(config_path)
        conn = open_database(settings.storage.sqlite_path)
        try:
            report = verify_store(conn, key)
        finally:
            conn.close()
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else report.summary())
    if not report.ok:
        sys.exit(EXIT_PROBLEM)


@audit_group.command("report")
@config_option
@click.option("--since", help="ISO date/time, inclusive.")
@click.option("--until", help="ISO date/time, exclusive.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="report.html",
              show_default=True)
@handle_errors
def report_cmd(config_path: str, since: str | None, until: str | None, output: str) -> None:
    """Write a self-contained HTML report for compliance."""
    from securemail.audit.export import write_atomically
    from securemail.audit.report import render_html, report_data
    from securemail.store.sqlite import open_database

    settings = _settings(config_path)
    conn = open_database(settings.storage.sqlite_path)
    try:
        from securemail.audit import store

        store.prepare(conn)
        data = report_data(conn, now=datetime.now(UTC), since=_time_option(since, "--since"),
                           until=_time_option(until, "--until"))
    finally:
        conn.close()
    page = render_html(data, practice=settings.practice.name)
    write_atomically(Path(output), lambda f: f.write(page))
    click.echo(f"report written to {output}", err=True)


@audit_group.command("public-key")
@config_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File (default: stdout).")
@handle_errors
def public_key_cmd(config_path: str, output: str | None) -> None:
    """Print the Ed25519 public key that verifies checkpoints and exports."""
    from securemail.audit import ensure_signing_key, public_key_pem, signing_key_path
    from securemail.audit.chain import key_id

    public = ensure_signing_key(signing_key_path(_settings(config_path))).public_key()
    pem = public_key_pem(public)
    if output:
        Path(output).write_text(pem, encoding="ascii")
        click.echo(f"public key {key_id(public)} written to {output}", err=True)
    else:
        click.echo(pem, nl=False)
        click.echo(f"key id: {key_id(public)}", err=True)


@audit_group.command("prune")
@config_option
@click.option("--retention-days", type=click.IntRange(min=1),
              help="Default: audit.retention_days (six years).")
@click.option("--dry-run", is_flag=True, help="Only say how many records would go.")
@handle_errors
def prune_cmd(config_path: str, retention_days: int | None, dry_run: bool) -> None:
    """Delete records older than the retention period (a signed prune checkpoint remains)."""
    from securemail.audit import AuditLog, prune

    settings = _settings(config_path)
    audit = AuditLog.open(settings)
    try:
        result = prune(audit, now=datetime.now(UTC),
                       retention_days=retention_days or settings.audit.retention_days,
                       dry_run=dry_run)
    finally:
        audit.close(datetime.now(UTC))
    verb = "would delete" if result.dry_run else "deleted"
    click.echo(f"{verb} {result.deleted} record(s) older than {result.cutoff}")


commands: list[click.Command] = [audit_group]
