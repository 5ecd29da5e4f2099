"""Audit append speed: durable chained appends beside raw SQLite inserts of the same rows.

    python bench/audit.py [--seconds 3] [--max 20000] [--batch 100] [--dir DIR]

Both sides write to SQLite files opened the same way (WAL, synchronous=FULL,
so every commit is fsync'ed) in the same folder, in the same run, with the
exact same row bytes: the raw side inserts the rows the audit side produced.
What the ratio measures is everything the audit log adds on top of a plain
INSERT + COMMIT: building the canonical encoding, SHA-256 chaining, the
signed head (one Ed25519 signature per transaction), periodic checkpoints,
and the hand-off to the writer thread.

Loops stop after --max records or --seconds, whichever comes first.
Targets (issue 5): chaining and hashing cost <= 25% over the raw insert;
>= 5,000 records/s in batches.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securemail.audit import AuditLog
from securemail.audit.chain import canonical, head_message, sign
from securemail.audit.records import message_fields
from securemail.config import AuditSettings, Settings, StorageSettings
from securemail.model import (
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
from securemail.store.sqlite import open_database

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
RAW_DDL = """CREATE TABLE raw (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, at TEXT NOT NULL,
prev_hash TEXT NOT NULL, hash TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX raw_at ON raw (at); CREATE INDEX raw_kind ON raw (kind, at);"""


def sample_body() -> dict[str, Any]:
    """A typical per-recipient message record (what record_outcome builds)."""
    d = Decision("jane@mail.example", Source.TO, Role.CLIENT, Action.PORTAL, ("phi-unencrypted",),
                 "PHI for a client without a usable key: sent through the portal")
    verdict = Verdict("<20260601120000.1234@riverside.example>", Mode.ENFORCE, False, True, (d,))
    outcome = Outcome(verdict, (RecipientOutcome(d.address, d.action, Status.SEALED,
                                                 portal_id="Xq3v9TzP0bq1n8mW2cR7Lk4e",
                                                 upstream_reply="250 2.0.0"),),
                      "9f" * 32, TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", "ab" * 32))
    env = Envelope("therapist@riverside.example", (d.address,), peer="10.0.0.12",
                   auth_identity="therapist", tls=TLSInfo("TLSv1.3"))
    return message_fields(env, outcome, config_digest="c" * 64, instance_id="relay-1")[0]


def timed(step: Callable[[], int], seconds: float, limit: int) -> tuple[float, int]:
    """Run ``step`` (returns records written) until ``limit`` records or ``seconds``."""
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while count < limit and time.perf_counter() < deadline:
        count += step()
    return count / (time.perf_counter() - start), count


def audit_log(folder: Path, name: str) -> AuditLog:
    settings = Settings(path=str(folder / "securemail.toml"),
                        storage=StorageSettings(url=f"sqlite://{folder / name}"),
                        audit=AuditSettings(checkpoint_every=1000, checkpoint_seconds=300))
    return AuditLog.open(settings)


@dataclass
class Totals:
    """Seconds spent and records written by each side of an interleaved run."""

    records: int = 0
    transactions: int = 0
    audit: float = 0.0
    plain: float = 0.0
    raw: float = 0.0

    def rates(self) -> tuple[float, float, float]:
        return (self.records / self.audit, self.records / self.plain, self.records / self.raw)


def interleaved(folder: Path, tag: str, body: dict[str, Any], batch: int, seconds: float,
                limit: int) -> Totals:
    """Audit, plain and raw transactions take turns, so all three see the same disk.

    (fsync speed on a shared machine drifts by several times within a minute;
    measuring the sides one after the other compares the drift, not the code.)
    """
    log = audit_log(folder, f"audit-{tag}.db")
    raw, plain = open_database(folder / f"raw-{tag}.db"), open_database(folder / f"plain-{tag}.db")
    for conn in (raw, plain):
        conn.executescript(RAW_DDL)
    t = Totals()
    last = 0
    deadline = time.perf_counter() + seconds
    while t.records < limit and time.perf_counter() < deadline:
        start = time.perf_counter()
        log.append_many([body] * batch, now=NOW)
        t.audit += time.perf_counter() - start
        # The very rows the audit side wrote (checkpoints included), read untimed.
        rows = log.conn.execute("SELECT seq, kind, at, prev_hash, hash, body FROM audit_records"
                                " WHERE seq > ? ORDER BY seq", (last,)).fetchall()
        last = rows[-1][0]
        records = [json.loads(r[5]) for r in rows]
        start = time.perf_counter()
        raw.execute("BEGIN IMMEDIATE")
        raw.executemany("INSERT INTO raw VALUES (?,?,?,?,?,?)", rows)
        raw.execute("COMMIT")
        t.raw += time.perf_counter() - start
        start = time.perf_counter()
        plain.execute("BEGIN IMMEDIATE")
        plain.executemany("INSERT INTO raw VALUES (?,?,?,?,?,?)",
                          [(r[0], r[1], r[2], "", "", json.dumps(rec))
                           for r, rec in zip(rows, records, strict=True)])
        plain.execute("COMMIT")
        t.plain += time.perf_counter() - start
        t.records += len(rows)
        t.transactions += 1
    log.close(NOW)
    raw.close()
    plain.close()
    return t


def chain_cpu(body: dict[str, Any], count: int = 20000) -> float:
    """Microseconds of CPU per record for canonical encoding + SHA-256, no I/O."""
    start = time.perf_counter()
    prev = "0" * 64
    for seq in range(count):
        encoded = canonical({**body, "at": "2026-06-01T12:00:00.000000Z", "prev_hash": prev,
                             "seq": seq, "v": 1})
        prev = hashlib.sha256(encoded).hexdigest()
        encoded.decode()  # stored as text
    return (time.perf_counter() - start) / count * 1e6


def head_signature_cpu(count: int = 2000) -> float:
    """Microseconds of CPU for the one Ed25519 signature each transaction adds."""
    key = Ed25519PrivateKey.generate()
    start = time.perf_counter()
    for seq in range(count):
        sign(key, head_message(seq, "ab" * 32))
    return (time.perf_counter() - start) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="time cap per loop")
    parser.add_argument("--max", type=int, default=20000, help="record cap per loop")
    parser.add_argument("--batch", type=int, default=100, help="records per batch")
    parser.add_argument("--inflight", type=int, default=200,
                        help="concurrent record_outcome calls in the group-commit loop")
    parser.add_argument("--dir", type=Path, default=Path.cwd(),
                        help="folder for the bench stores (a real disk, not tmpfs)")
    args = parser.parse_args()
    body = sample_body()

    with tempfile.TemporaryDirectory(prefix="securemail-bench-", dir=args.dir) as tmp:
        folder = Path(tmp)
        print(f"stores in {folder}; WAL + synchronous=FULL; loops capped at {args.max} records"
              f" or {args.seconds:g} s; record body {len(canonical(body))} bytes")
        single = interleaved(folder, "single", body, 1, args.seconds, args.max)
        batched = interleaved(folder, "batch", body, args.batch, args.seconds, args.max)

        group = audit_log(folder, "group.db")
        envelope, outcome = _pipeline_inputs()

        async def inflight() -> int:
            await asyncio.gather(*(group.record_outcome(envelope, outcome, config_digest="c" * 64,
                                                        instance_id="relay-1", now=NOW)
                                   for _ in range(args.inflight)))
            return int(args.inflight)

        a_group, n_group = timed(lambda: asyncio.run(inflight()), args.seconds, args.max)
        group.close(NOW)

    chain_us, sign_us = chain_cpu(body), head_signature_cpu()
    print(f"  canonical JSON + SHA-256 chaining alone: {chain_us:.1f} us of CPU per record;"
          f" Ed25519 head signature: {sign_us:.1f} us per transaction")
    worst = 0.0
    for label, t in (("single durable appends (1 record/tx)", single),
                     (f"batches ({args.batch} records/tx)", batched)):
        audit, plain, raw = t.rates()
        print(f"  {label}, {t.records} records each side, interleaved:")
        print(f"    audit (chained, signed head)        {audit:10,.0f} records/s")
        print(f"    plain json.dumps + INSERT + COMMIT  {plain:10,.0f} records/s"
              f"   audit cost over it: {(plain / audit - 1) * 100:+6.1f}%")
        print(f"    raw INSERT + COMMIT, stored bytes   {raw:10,.0f} records/s"
              f"   audit cost over it: {(raw / audit - 1) * 100:+6.1f}%")
        worst = max(worst, raw / audit - 1)
        per_tx = t.records / max(1, t.transactions)
        raw_us, audit_us = 1e6 / raw, 1e6 / audit
        print(f"    per record: raw {raw_us:.1f} us, audit {audit_us:.1f} us; of the difference,"
              f" chaining + hashing {chain_us:.1f} us ({chain_us / raw_us * 100:.0f}% of raw),"
              f" head signature {sign_us / per_tx:.1f} us ({sign_us / per_tx / raw_us * 100:.0f}%)")
    print(f"  audit, {args.inflight} concurrent record_outcome (group commit):"
          f" {a_group:,.0f} records/s ({n_group} records)")
    print(f"target: chaining + hashing <= 25% over the raw insert: "
          f"{'meets' if worst <= 0.25 else 'MISSES'} (worst {worst * 100:+.1f}%)")
    in_batches = batched.rates()[0]
    print(f"target: >= 5,000 records/s in batches: {'meets' if in_batches >= 5000 else 'MISSES'}"
          f" ({in_batches:,.0f}/s; group commit of concurrent record_outcome: {a_group:,.0f}/s)")


def _pipeline_inputs() -> tuple[Envelope, Outcome]:
    d = Decision("jane@mail.example", Source.TO, Role.CLIENT, Action.DELIVER, ("client-consented",),
                 "the client consented to unencrypted email")
    verdict = Verdict("<b@riverside.example>", Mode.ENFORCE, False, False, (d,))
    outcome = Outcome(verdict, (RecipientOutcome(d.address, d.action, Status.DELIVERED,
                                                 upstream_reply="250 2.0.0"),),
                      "9f" * 32, TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", "ab" * 32))
    return Envelope("therapist@riverside.example", (d.address,)), outcome


if __name__ == "__main__":
    main()
