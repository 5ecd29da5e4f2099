"""Shared fixtures for the portal unit tests."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from securemail.audit.records import event_fields
from securemail.config import PortalSettings, PracticeSettings, Settings, StorageSettings
from securemail.portal.service import PortalService
from securemail.store.sqlite import open_database
from securemail.testing import build_message
from securemail.transport import MemoryTransport

STAFF = "dr.rivera@riverside.example"
CLIENT = "jane.doe@mail.example"
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
SECRET_BODY = "Diagnosis F41.1, MRN 99812, client Jane Doe; dose 20mg"


@dataclass
class AuditRecorder:
    """Records events after the audit module's own validation of kinds and fields."""

    events: list[dict[str, Any]] = field(default_factory=list)

    def record_event(self, kind: str, *, now: datetime, **fields: Any) -> None:
        self.events.append(event_fields(kind, fields))

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.events]


def make_settings(tmp: Path, **portal: Any) -> Settings:
    return Settings(
        path=str(tmp / "securemail.toml"),
        practice=PracticeSettings(name="Riverside Counselling", domains=("riverside.example",),
                                  phone="+1 555 0100", website="https://riverside.example"),
        storage=StorageSettings(url=f"sqlite:///{tmp / 'data' / 'securemail.db'}"),
        portal=PortalSettings(base_url="https://secure.riverside.example", **portal),
    )


@dataclass
class Pipeline:
    """Stands in for the relay pipeline that ``securemail serve`` passes the web
    app as ``reply_sender``: keeps each reply as ``(raw, mail_from, to)``."""

    sent: list[tuple[bytes, str, str]] = field(default_factory=list)

    async def __call__(self, raw: bytes, mail_from: str, to: str) -> None:
        self.sent.append((raw, mail_from, to))


@dataclass
class Rig:
    settings: Settings
    conn: sqlite3.Connection
    transport: MemoryTransport
    audit: AuditRecorder
    service: PortalService
    pipeline: Pipeline = field(default_factory=Pipeline)


def make_rig(tmp: Path, **portal: Any) -> Rig:
    settings = make_settings(tmp, **portal)
    conn = open_database(settings.storage.sqlite_path)
    transport = MemoryTransport()
    audit = AuditRecorder()
    return Rig(settings, conn, transport, audit,
               PortalService(settings, conn, transport, audit, None))


def original() -> bytes:
    return build_message(sender=STAFF, to=[CLIENT], subject="Jane Doe: your results",
                         body=SECRET_BODY,
                         attachments=[("labs.pdf", "application/pdf", b"%PDF-secret-labs")],
                         message_id="<orig-1@riverside.example>")


def last_code(transport: MemoryTransport) -> str:
    raw = transport.sent[-1].data.decode()
    match = re.search(r"^\s+(\d{6})\s*$", raw, re.M)
    assert match, "no code in the last email"
    return match.group(1)
