"""Builders shared by the audit tests (no tests here)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from securemail.audit import AuditLog, export_jsonl
from securemail.audit.chain import canonical, record_hash
from securemail.config import AuditSettings, Settings, StorageSettings
from securemail.model import (
    HELD_WITH_OFFENDER,
    Action,
    Decision,
    Envelope,
    Mode,
    Outcome,
    RecipientOutcome,
    Role,
    Source,
    Status,
    TLSInfo,
    Verdict,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def make_settings(tmp_path: Path, **audit: Any) -> Settings:
    return Settings(
        path=str(tmp_path / "securemail.toml"),
        storage=StorageSettings(url=f"sqlite://{tmp_path / 'store.db'}"),
        audit=AuditSettings(**audit),
    )


def write_config(tmp_path: Path, checkpoint_every: int = 1000) -> Path:
    cfg = tmp_path / "securemail.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:store.db"\n[audit]\n'
                   f"checkpoint_every = {checkpoint_every}\n")
    return cfg


def decision(address: str, action: Action, rules: tuple[str, ...], *,
             role: Role = Role.CLIENT, source: Source = Source.TO,
             reason: str | None = None) -> Decision:
    """As the policy decides: a client or staff member blocked by
    unauthorised-recipient is held back with the offender, unless ``reason``
    says otherwise (a client whose copy concerns another family)."""
    if reason is None:
        held = "unauthorised-recipient" in rules and role is not Role.THIRD_PARTY
        reason = (f"{HELD_WITH_OFFENDER} someone@else.example, who may not receive it" if held
                  else f"rule {rules[0]} applied")
    return Decision(address, source, role, action, rules, reason)


STATUS_FOR = {Action.DELIVER: Status.DELIVERED, Action.ENCRYPT_PGP: Status.DELIVERED,
              Action.ENCRYPT_SMIME: Status.DELIVERED, Action.PORTAL: Status.SEALED,
              Action.BLOCK: Status.BLOCKED}


def outcome(decisions: list[Decision], *, message_id: str = "<m1@riverside.example>",
            sha: str = "ab" * 32, portal_ids: dict[str, str] | None = None,
            mode: Mode = Mode.ENFORCE) -> Outcome:
    portal_ids = portal_ids or {}
    verdict = Verdict(message_id, mode, False, True, tuple(decisions))
    recips = tuple(
        RecipientOutcome(d.address, d.action, STATUS_FOR[d.action],
                         portal_id=portal_ids.get(d.address),
                         upstream_reply=None if d.action is Action.BLOCK else "250 2.0.0")
        for d in decisions)
    return Outcome(verdict, recips, sha, TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", "cd" * 32))


def envelope(decisions: list[Decision]) -> Envelope:
    return Envelope("therapist@riverside.example", tuple(d.address for d in decisions),
                    peer="127.0.0.1", auth_identity="therapist",
                    tls=TLSInfo("TLSv1.3", None, None))


def record_messages(audit: AuditLog, count: int, *, start: datetime = T0,
                    step: timedelta = timedelta(minutes=1)) -> None:
    """``count`` messages of two recipients each: one delivered, one blocked."""

    async def run() -> None:
        for i in range(count):
            ds = [decision(f"client{i}@mail.example", Action.DELIVER, ("client-consented",)),
                  decision(f"other{i}@mail.example", Action.BLOCK, ("unauthorised-recipient",),
                           role=Role.THIRD_PARTY, source=Source.CC)]
            await audit.record_outcome(envelope(ds), outcome(ds, sha=f"{i:064x}"),
                                       config_digest="c" * 64, instance_id="test-1",
                                       now=start + i * step)

    asyncio.run(run())


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_lines(path: Path, objs: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(o, sort_keys=True, separators=(",", ":")) + "\n"
                            for o in objs))


def rechain(records: list[dict[str, Any]], start: int) -> None:
    """Recompute hashes and prev_hash links from index ``start`` on (what a forger does)."""
    for i in range(start, len(records)):
        if i > 0:
            records[i]["prev_hash"] = records[i - 1]["hash"]
        records[i]["hash"] = record_hash(records[i])
    assert canonical(records[-1])  # still encodable


@pytest.fixture()
def audit(tmp_path: Path) -> Any:
    """An audit log with 24 message records and 2 checkpoints, then 4 unsigned."""
    log = AuditLog.open(make_settings(tmp_path, checkpoint_every=10, checkpoint_seconds=86400))
    record_messages(log, 12)
    yield log
    log.close(T0)


@pytest.fixture()
def export(audit: AuditLog, tmp_path: Path) -> Path:
    """``audit`` exported as JSONL."""
    path = tmp_path / "export.jsonl"
    with path.open("w") as f:
        export_jsonl(audit.conn, audit.chainer.key, f, now=T0)
    return path
