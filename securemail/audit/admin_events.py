"""Administrative audit events that more than one entry point records.

``config-loaded`` when ``securemail serve`` starts or reloads (SIGHUP), and
``consent-change`` for each client whose consent to unencrypted email changed,
whether through the config file or ``securemail directory import``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from securemail.audit.log import AdminEvent, AuditLog
from securemail.directory import ConsentChange

__all__ = ["consent_change_events", "record_config_loaded", "record_consent_changes"]


def record_config_loaded(audit: AuditLog, *, config_sha256: str, instance_id: str, reason: str,
                         status: str, now: datetime) -> None:
    """``reason``: start | reload; ``status``: ok | failed (the old config keeps running)."""
    audit.record_event("config-loaded", now=now, config_sha256=config_sha256,
                       instance_id=instance_id, reason_code=reason, status=status, actor="serve")


def record_consent_changes(audit: AuditLog, changes: Sequence[ConsentChange], *, actor: str,
                           now: datetime, file: str | None = None) -> None:
    for kind, fields in consent_change_events(changes, actor=actor, file=file):
        audit.record_event(kind, now=now, **fields)


def consent_change_events(changes: Sequence[ConsentChange], *, actor: str,
                          file: str | None = None) -> list[AdminEvent]:
    """One ``consent-change`` event per client whose consent changed."""
    events: list[AdminEvent] = []
    for change in changes:
        consent = change.consent
        events.append(("consent-change", {
            "client_id": change.client_id, "actor": actor, "file": file,
            "consent": "granted" if consent is not None else "withdrawn",
            "warning": consent.warning if consent is not None else None,
            "expires": consent.expires if consent is not None else None}))
    return events
