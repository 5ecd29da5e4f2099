"""``securemail portal``: list, revoke, unlock and purge sealed messages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click

from securemail.cli.base import EXIT_PROBLEM, config_option, fail, handle_errors


@contextmanager
def _service(config_path: str) -> Iterator[Any]:
    """A PortalService over the store, recording to the audit log; sends nothing."""
    from securemail.audit import AuditLog
    from securemail.config import load_settings
    from securemail.portal.service import PortalService
    from securemail.store.sqlite import open_database
    from securemail.transport import MemoryTransport

    settings = load_settings(config_path)
    conn = open_database(settings.storage.sqlite_path)
    audit = AuditLog.open(settings)
    try:
        yield PortalService(settings, conn, MemoryTransport(), audit, None)
    finally:
        audit.close(datetime.now(UTC))
        conn.close()


def _iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


@click.group("portal")
def portal_group() -> None:
    """Sealed messages on the pickup portal."""


@portal_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array on stdout.")
@config_option
@handle_errors
def list_cmd(as_json: bool, config_path: str) -> None:
    """List sealed messages (metadata only: no content is stored readable)."""
    now = datetime.now(UTC)
    with _service(config_path) as service:
        rows = service.list(now)
    items = [{
        "id": r.id, "kind": r.kind, "parent_id": r.parent_id, "message_id": r.message_id,
        "status": r.state(now),
        "sender": r.sender, "recipient": r.recipient, "created": _iso(r.created),
        "expires": _iso(r.expires), "opened": _iso(r.opened), "revoked": _iso(r.revoked),
        "purged": _iso(r.purged), "locked": _iso(r.locked), "failed_codes": r.failed_codes,
        "attachments": r.attachments, "size": r.size,
    } for r in rows]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("No sealed messages.")
        return
    click.echo(f"{'ID':<26} {'STATUS':<8} {'CREATED':<20} {'EXPIRES':<20} {'OPENED':<20} "
               "SENDER -> RECIPIENT")
    for i in items:
        # OPENED: when the recipient first decrypted it, "-" if never.
        click.echo(f"{i['id']:<26} {i['status']:<8} {i['created']:<20} {i['expires']:<20} "
                   f"{i['opened'] or '-':<20} {i['sender']} -> {i['recipient']}")


@portal_group.command("revoke")
@click.argument("portal_id")
@config_option
@handle_errors
def revoke_cmd(portal_id: str, config_path: str) -> None:
    """Withdraw a sealed message now; its ciphertext is deleted at once."""
    now = datetime.now(UTC)
    with _service(config_path) as service:
        row = service.get(portal_id)
        if row is None:
            fail(f"no sealed message with id {portal_id} (see `securemail portal list`)")
        if not service.revoke(portal_id, now, actor="cli"):
            fail(f"{portal_id} was already revoked", EXIT_PROBLEM)
    click.echo(f"revoked {portal_id}")


@portal_group.command("unlock")
@click.argument("portal_id")
@config_option
@handle_errors
def unlock_cmd(portal_id: str, config_path: str) -> None:
    """Re-issue a message locked after five wrong codes (the link keeps working)."""
    now = datetime.now(UTC)
    with _service(config_path) as service:
        row = service.get(portal_id)
        if row is None:
            fail(f"no sealed message with id {portal_id} (see `securemail portal list`)")
        if not service.unlock(portal_id, now):
            fail(f"{portal_id} is not locked (status: {row.state(now)})", EXIT_PROBLEM)
    click.echo(f"unlocked {portal_id}")


@portal_group.command("purge")
@config_option
@handle_errors
def purge_cmd(config_path: str) -> None:
    """Delete the ciphertext of expired and revoked messages; keep their metadata."""
    with _service(config_path) as service:
        count = service.purge(datetime.now(UTC))
    click.echo(f"purged {count} message(s)")


commands: list[click.Command] = [portal_group]
