"""Administrative audit events that more than one entry point records.

``config-loaded`` when ``securemail serve`` starts or reloads (SIGHUP), and
``consent-change`` for each client whose consent to unencrypted email is not
the one the log last recorded for them, whether it came from the config file
(at a start or a reload) or ``securemail directory import``.

The consent as last recorded is kept in the ``consent_recorded`` table and
updated in the transaction that records the change: so a consent written into
the config file and put in force by a restart, or present at the very first
start, is on record before any message relies on it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime

from securemail.audit.log import AdminEvent, AuditLog
from securemail.directory import ConsentChange, Directory
from securemail.model import Consent
from securemail.store.sqlite import ensure_schema

__all__ = ["consent_change_events", "note_recorded", "record_config_loaded", "unrecorded_consent"]

_DDL = """
CREATE TABLE IF NOT EXISTS consent_recorded (
    client_id TEXT PRIMARY KEY,
    consent   TEXT NOT NULL
);
"""


def record_config_loaded(audit: AuditLog, *, config_sha256: str, instance_id: str, reason: str,
                         status: str, now: datetime, directory: Directory | None = None,
                         file: str | None = None) -> None:
    """``reason``: start | reload; ``status``: ok | failed (the old config keeps running).
    With ``directory`` (the one now in force, read from ``file``), the consent
    changes it brings are recorded in the same transaction."""

    def change(conn: sqlite3.Connection) -> tuple[None, list[AdminEvent]]:
        events: list[AdminEvent] = [("config-loaded", {
            "config_sha256": config_sha256, "instance_id": instance_id, "reason_code": reason,
            "status": status, "actor": "serve"})]
        if directory is not None:
            events += consent_change_events(unrecorded_consent(conn, directory),
                                            actor="serve", file=file)
        return None, events

    audit.change_and_record(change, now=now)


def unrecorded_consent(conn: sqlite3.Connection, directory: Directory) -> list[ConsentChange]:
    """Clients whose consent in ``directory`` is not the one last recorded
    (granted, changed, or withdrawn: ``None``), marked as recorded now: call
    inside the transaction that appends their ``consent-change`` events."""
    _prepare(conn)
    recorded = dict(conn.execute("SELECT client_id, consent FROM consent_recorded"))
    in_force = {cid: client.consent_unencrypted for cid, client in directory.clients.items()
                if client.consent_unencrypted is not None}
    return note_recorded(conn, [
        ConsentChange(cid, in_force.get(cid)) for cid in sorted(recorded.keys() | in_force.keys())
        if not _same(recorded.get(cid), in_force.get(cid))])


def note_recorded(conn: sqlite3.Connection, changes: list[ConsentChange]
                  ) -> list[ConsentChange]:
    """Mark ``changes`` as recorded (inside the transaction that appends their
    events); returns them."""
    _prepare(conn)
    for change in changes:
        if change.consent is None:
            conn.execute("DELETE FROM consent_recorded WHERE client_id = ?", (change.client_id,))
        else:
            conn.execute("INSERT INTO consent_recorded (client_id, consent) VALUES (?, ?)"
                         " ON CONFLICT(client_id) DO UPDATE SET consent = excluded.consent",
                         (change.client_id, _text(change.consent)))
    return changes


def _prepare(conn: sqlite3.Connection) -> None:
    """Create the table; in a store from a version without it, from the
    consent-change records the log holds (the latest per client), so an
    upgrade does not record every consent in force a second time."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'"
                    " AND name = 'consent_recorded'").fetchone():
        return
    ensure_schema(conn, _DDL)
    latest: dict[str, str | None] = {}
    for (body,) in conn.execute("SELECT body FROM audit_records WHERE kind = 'consent-change'"
                                " ORDER BY seq"):
        rec = json.loads(body)
        latest[str(rec["client_id"])] = (
            json.dumps([rec.get("granted"), rec.get("warning"), rec.get("expires")])
            if rec.get("consent") == "granted" else None)
    conn.executemany("INSERT INTO consent_recorded (client_id, consent) VALUES (?, ?)",
                     [(cid, text) for cid, text in latest.items() if text is not None])


def _same(recorded: str | None, consent: Consent | None) -> bool:
    """Whether ``consent`` is the one on record. Records before the grant date
    was recorded have none: their warning version and expiry decide."""
    if recorded is None or consent is None:
        return recorded is None and consent is None
    granted, warning, expires = json.loads(recorded)
    return ((granted is None or granted == consent.granted)
            and (warning, expires) == (consent.warning, consent.expires))


def _text(consent: Consent | None) -> str | None:
    return None if consent is None else json.dumps([consent.granted, consent.warning,
                                                    consent.expires])


def consent_change_events(changes: Sequence[ConsentChange], *, actor: str,
                          file: str | None = None) -> list[AdminEvent]:
    """One ``consent-change`` event per client whose consent changed."""
    events: list[AdminEvent] = []
    for change in changes:
        consent = change.consent
        events.append(("consent-change", {
            "client_id": change.client_id, "actor": actor, "file": file,
            "consent": "granted" if consent is not None else "withdrawn",
            "granted": consent.granted if consent is not None else None,
            "warning": consent.warning if consent is not None else None,
            "expires": consent.expires if consent is not None else None}))
    return events
