"""Tamper-evident audit log: hash-chained records, signed checkpoints, exports.

The pipeline and the portal record through :class:`AuditLog`::

    audit = AuditLog.open(settings)
    await audit.record_outcome(envelope, outcome, config_digest=settings.digest,
                               instance_id="relay-1", now=datetime.now(UTC))
    audit.record_event("opened", now=datetime.now(UTC), portal_id=pid, recipient=addr)
    audit.close(datetime.now(UTC))     # writes a final signed checkpoint

Compliance verifies the store or an export with :func:`verify_store` and
:func:`verify_export`; see docs/compliance.md for the record format.
"""

from __future__ import annotations

from securemail.audit.chain import (
    ensure_signing_key,
    load_public_key,
    load_signing_key,
    public_key_pem,
)
from securemail.audit.export import CSV_COLUMNS, export_csv, export_jsonl
from securemail.audit.log import AuditLog, signing_key_path
from securemail.audit.records import ADMIN_EVENTS, EVENT_FIELDS, PORTAL_EVENTS
from securemail.audit.retention import PruneResult, prune, prune_preview
from securemail.audit.verify import VerifyReport, verify_export, verify_store

__all__ = [
    "ADMIN_EVENTS",
    "CSV_COLUMNS",
    "EVENT_FIELDS",
    "PORTAL_EVENTS",
    "AuditLog",
    "PruneResult",
    "VerifyReport",
    "ensure_signing_key",
    "export_csv",
    "export_jsonl",
    "load_public_key",
    "load_signing_key",
    "prune",
    "prune_preview",
    "public_key_pem",
    "signing_key_path",
    "verify_export",
    "verify_store",
]
