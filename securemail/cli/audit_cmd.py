"""``securemail audit``: export, verify, report, public-key, prune."""

from __future__ import annotations

import json
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import click

from securemail.cli.base import EXIT_PROBLEM, config_option, handle_errors
from securemail.errors import ConfigError, InputError, StoreError

__all__ = ["audit_group", "commands"]


def _settings(config_path: str) -> Any:
    from securemail.config import load_settings

    if not Path(config_path).exists():
        raise ConfigError(config_path, "", "file not found (use -c PATH or run `securemail init`)")
    return load_settings(config_path)


def _existing_store(settings: Any) -> sqlite3.Connection:
    """The store named by the config, opened for reading. Read commands never
    create a store, its tables or a signing key: a mistyped path is an error."""
    from securemail.audit import store
    from securemail.store.sqlite import open_for_reading

    path = settings.storage.sqlite_path
    if not path.is_file():
        raise InputError(f"{path}: no store here (storage.url in {settings.path}); check -c,"
                         " or start the relay once to create it")
    conn = open_for_reading(path)
    # A store that holds what its audit log recorded, without the log: the
    # verification says it was deleted (exit 1), not "not an audit store".
    if not store.has_audit_tables(conn) and not store.recorded_history(conn):
        conn.close()
        raise InputError(f"{path}: this store holds no audit records (storage.url in"
                         f" {settings.path})")
    return conn


def _signing_key(settings: Any) -> Any:
    from securemail.audit import load_signing_key, signing_key_path

    return load_signing_key(signing_key_path(settings))


def _verifying_key(settings: Any, public_key: str | None) -> tuple[Any, str]:
    """The key a read command verifies the store with, and how a wrong-key
    report names it: ``--public-key`` (an archive after ``audit new-chain``, a
    copy of the store away from the relay), else the store's signing key."""
    if public_key:
        return _load_public_key(public_key), f"the public key given ({public_key})"
    return _signing_key(settings).public_key(), _key_label(settings)


def _load_public_key(path: str) -> Any:
    """``--public-key``: warns when it is a private key (it works: the public
    key is derived; but whoever holds that file can sign records, so it must
    never travel to an auditor)."""
    from securemail.audit import load_public_key

    key = load_public_key(path)
    if b"PRIVATE KEY" in Path(path).read_bytes():
        click.echo(f"warning: {path} is a PRIVATE key (an audit signing key); give"
                   " compliance only the public key (`securemail audit public-key`)", err=True)
    return key


def _export_signing_key(settings: Any, public: Any) -> Any:
    """The private key that signs an export of a chain checked with ``public``."""
    from securemail.audit import load_signing_key, signing_key_path
    from securemail.audit.chain import key_id

    path = signing_key_path(settings)
    if path.exists():
        key = load_signing_key(path)
        if key_id(key.public_key()) == key_id(public):
            return key
    raise InputError(
        f"a JSONL export is signed with the private key of the chain it holds (key id"
        f" {key_id(public)}), and {path} is {'another key' if path.exists() else 'missing'}:"
        " export --format csv with --public-key, or hand over the store (or archive) file"
        " itself, which `securemail audit verify --public-key` checks")


def _key_label(settings: Any) -> str:
    """How a wrong-key report names the store's own signing key."""
    from securemail.audit import signing_key_path

    return f"the store's signing key ({signing_key_path(settings)})"


def _time_range(since: str | None, until: str | None) -> tuple[str | None, str | None]:
    lo, hi = _time_option(since, "--since"), _time_option(until, "--until")
    if lo is not None and hi is not None and lo >= hi:
        raise InputError(f"--since ({since}) must be before --until ({until})")
    return lo, hi


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
@click.option("--public-key", "public_key", type=click.Path(dir_okay=False),
              help="Verify with this PEM public key, not the store's signing key (an archive"
                   " after `audit new-chain`, a copy of the store without the private key).")
@handle_errors
def export_cmd(config_path: str, fmt: str, since: str | None, until: str | None,
               output: str | None, public_key: str | None) -> None:
    """Export records; JSONL exports verify offline with the public key."""
    from securemail.audit import export_csv, export_jsonl, verify_store
    from securemail.audit import store as audit_store
    from securemail.audit.export import write_atomically

    lo, hi = _time_range(since, until)
    settings = _settings(config_path)
    public, label = _verifying_key(settings, public_key)
    conn = _existing_store(settings)
    try:
        conn.execute("BEGIN")  # one snapshot: what is verified is what is exported
        # Signing an export vouches for it: never sign a store that fails verification.
        report = verify_store(conn, public, key_label=label)
        if not report.ok:
            click.echo(report.summary(), err=True)
            click.echo("securemail: export refused: the store does not verify", err=True)
            sys.exit(EXIT_PROBLEM)
        # Signed only with the private key of the chain just verified.
        key = _export_signing_key(settings, public) if fmt == "jsonl" else None
        now = datetime.now(UTC)

        def write(f: IO[str]) -> int:
            if key is None:
                return export_csv(conn, f, since=lo, until=hi)
            return export_jsonl(conn, key, f, now=now, since=lo, until=hi)

        count = write_atomically(Path(output), write) if output else write(sys.stdout)
        outside = audit_store.timed_outside(conn, lo, hi) if lo or hi else 0
        pruned = audit_store.pruned_note(conn, lo)
    finally:
        conn.close()  # read only: nothing to commit
    if output:
        click.echo(f"{count} record(s) written to {output}", err=True)
    if pruned:
        click.echo(f"note: {pruned}", err=True)
    if outside:
        click.echo(f"note: {outside} of them are timed outside --since/--until: they were"
                   " committed among the window's records (out of time order) and are kept"
                   " so that the export verifies", err=True)


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
    try:
        report = _verify(config_path, export, public_key)
    except (ConfigError, InputError, StoreError) as exc:
        if as_json:  # a script reading stdout gets an answer too (the exit code as ever)
            status = "error" if isinstance(exc, StoreError) else "bad-input"
            click.echo(json.dumps({"source": export or "store", "status": status,
                                   "ok": False, "problem": str(exc)}, indent=2))
        raise
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else report.summary())
    if not report.ok:
        sys.exit(EXIT_PROBLEM)


def _verify(config_path: str, export: str | None, public_key: str | None) -> Any:
    from securemail.audit import load_public_key, signing_key_path, verify_export, verify_store

    settings = None
    label = "the public key given"
    if public_key:
        key = _load_public_key(public_key)
    else:
        if export and not Path(config_path).exists():
            raise InputError(f"{export}: pass --public-key FILE (the key from `securemail audit"
                             " public-key`) to verify an export away from the relay")
        settings = _settings(config_path)
        path = signing_key_path(settings)
        if not path.exists():
            raise InputError(f"{path}: no audit signing key; pass --public-key FILE")
        key = load_public_key(path)
        label = _key_label(settings)
    if export:
        return verify_export(export, key)
    conn = _existing_store(settings or _settings(config_path))
    try:
        return verify_store(conn, key, key_label=label)
    finally:
        conn.close()


@audit_group.command("report")
@config_option
@click.option("--since", help="ISO date/time, inclusive.")
@click.option("--until", help="ISO date/time, exclusive.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="report.html",
              show_default=True)
@click.option("--public-key", "public_key", type=click.Path(dir_okay=False),
              help="Verify with this PEM public key, not the store's signing key (an archive"
                   " after `audit new-chain`, a copy of the store without the private key).")
@handle_errors
def report_cmd(config_path: str, since: str | None, until: str | None, output: str,
               public_key: str | None) -> None:
    """Write a self-contained HTML report for compliance (of a store that verifies)."""
    from securemail.audit import verify_store
    from securemail.audit.export import write_atomically
    from securemail.audit.report import render_html, report_data

    lo, hi = _time_range(since, until)
    settings = _settings(config_path)
    public, label = _verifying_key(settings, public_key)
    conn = _existing_store(settings)
    try:
        conn.execute("BEGIN")  # the figures come from the records that were verified
        verified = verify_store(conn, public, key_label=label)
        if not verified.ok:
            click.echo(verified.summary(), err=True)
            click.echo("securemail: report refused: the store does not verify", err=True)
            sys.exit(EXIT_PROBLEM)
        data = report_data(conn, now=datetime.now(UTC), since=lo, until=hi)
    finally:
        conn.close()
    data.integrity = verified.summary()
    page = render_html(data, practice=settings.practice.name)
    write_atomically(Path(output), lambda f: f.write(page))
    click.echo(f"report written to {output}", err=True)


@audit_group.command("public-key")
@config_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File (default: stdout).")
@handle_errors
def public_key_cmd(config_path: str, output: str | None) -> None:
    """Print the Ed25519 public key that verifies checkpoints and exports."""
    from securemail.audit import public_key_pem
    from securemail.audit.chain import key_id

    public = _signing_key(_settings(config_path)).public_key()
    pem = public_key_pem(public)
    if output:
        from securemail.audit.export import write_atomically

        write_atomically(Path(output), lambda f: f.write(pem), mode=0o644)  # public
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
    from securemail.audit import AuditLog, prune, prune_preview, verify_store

    settings = _settings(config_path)
    days = retention_days or settings.audit.retention_days
    key = _signing_key(settings)  # both must exist already: never create them here
    conn = _existing_store(settings)
    # A prune signs a new start for the chain: never over a store that fails
    # verification, which would delete the evidence of what was done to it.
    verified = verify_store(conn, key.public_key(), key_label=_key_label(settings))
    if not verified.ok:
        conn.close()
        click.echo(verified.summary(), err=True)
        click.echo("securemail: prune refused: the store does not verify", err=True)
        sys.exit(EXIT_PROBLEM)
    if dry_run:
        try:
            result = prune_preview(conn, now=datetime.now(UTC), retention_days=days)
        finally:
            conn.close()
    else:
        conn.close()
        audit = AuditLog.open(settings)
        try:
            result = prune(audit, now=datetime.now(UTC), retention_days=days)
        finally:
            audit.close(datetime.now(UTC))
    verb = "would delete" if result.dry_run else "deleted"
    click.echo(f"{verb} {result.deleted} record(s) older than {result.cutoff}")


@audit_group.command("new-chain")
@config_option
@click.option("--reason", type=click.Choice(["lost-key", "rotation"]), required=True,
              help="lost-key: the signing key is gone; rotation: you moved the old key away.")
@handle_errors
def new_chain_cmd(config_path: str, reason: str) -> None:
    """Archive the audit chain and start a new one (stop the relay first).

    For a store whose signing key is lost: the old chain moves, unchanged, to
    an archive file beside the store (it verifies with the old public key);
    the new chain starts with a record naming where the old one ended, signed
    with the key at [audit] signing_key_file (generated if missing).
    """
    from securemail.audit.new_chain import start_new_chain

    result = start_new_chain(_settings(config_path), reason=reason, now=datetime.now(UTC))
    click.echo(f"archived {result.archived_records} record(s) (seq up to {result.previous_seq},"
               f" signed by {result.previous_signer or 'unknown'}) to {result.archive}")
    if result.signer == result.previous_signer:
        click.echo(f"new chain started, signed by the same key {result.signer}")
    else:
        click.echo(f"new chain started, signed by key {result.signer}: give compliance the"
                   " new public key (`securemail audit public-key`)")


commands: list[click.Command] = [audit_group]
