"""Retention: delete records older than the retention period, keep the rest verifiable.

Records are removed from the start of the chain only, up to (not including)
the first record at or after the cutoff, so what remains is one contiguous
stretch. In the same transaction a signed *prune checkpoint* is appended; it
names the seq and prev_hash the remaining chain starts from, which is how the
verifier tells a lawful prune from records deleted by hand.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta

from securemail.audit import store
from securemail.audit.chain import canonical, prune_message, record_hash, sign
from securemail.audit.log import AuditLog
from securemail.audit.records import RECORD_VERSION, format_time

__all__ = ["PruneResult", "prune", "prune_preview"]


@dataclass(frozen=True, slots=True)
class PruneResult:
    cutoff: str
    deleted: int
    first_seq: int | None  # where the chain now starts
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class _Plan:
    cutoff: str
    lo: int | None  # first stored seq (None: no records)
    keep: int  # first seq that stays
    first_prev: str
    head: store.Head


def _plan(conn: sqlite3.Connection, cutoff: str) -> _Plan:
    lo, _hi = store.bounds(conn)
    h = store.head(conn)
    if lo is None:
        return _Plan(cutoff, None, 0, "", h)
    keep = store.first_seq_at_or_after(conn, cutoff)
    if keep is None:
        keep = h.seq + 1  # everything is old: the prune record itself starts the chain
    before = store.record_before(conn, keep) if keep > lo else None
    return _Plan(cutoff, lo, keep, before.hash if before is not None else h.hash, h)


def _cutoff(now: datetime, retention_days: int) -> str:
    if retention_days <= 0:
        raise ValueError("retention_days must be positive")
    return format_time(now - timedelta(days=retention_days))


def prune_preview(conn: sqlite3.Connection, *, now: datetime,
                  retention_days: int) -> PruneResult:
    """What :func:`prune` would delete, read without writing anything."""
    plan = _plan(conn, _cutoff(now, retention_days))
    if plan.lo is None:
        return PruneResult(plan.cutoff, 0, None, True)
    if plan.keep <= plan.lo:
        return PruneResult(plan.cutoff, 0, plan.lo, True)
    return PruneResult(plan.cutoff, plan.keep - plan.lo, plan.keep, True)


def prune(audit: AuditLog, *, now: datetime, retention_days: int,
          dry_run: bool = False) -> PruneResult:
    """Delete records older than ``now - retention_days``."""
    cutoff = _cutoff(now, retention_days)
    at = format_time(now)

    def run(conn: sqlite3.Connection) -> PruneResult:
        if dry_run:
            return prune_preview(conn, now=now, retention_days=retention_days)
        plan = _plan(conn, cutoff)
        if plan.lo is None:
            return PruneResult(cutoff, 0, None)
        if plan.keep <= plan.lo:
            return PruneResult(cutoff, 0, plan.lo)
        keep, first_prev, h = plan.keep, plan.first_prev, plan.head
        deleted = store.delete_before(conn, keep)
        seq = h.seq + 1
        chainer = audit.chainer
        record = {
            "kind": "prune", "cutoff": cutoff, "deleted": deleted, "first_seq": keep,
            "first_prev_hash": first_prev, "covers_seq": h.seq, "covers_hash": h.hash,
            "key_id": chainer.kid, "instance_id": chainer.instance_id,
            "signature": sign(chainer.key, prune_message(keep, first_prev, h.seq, h.hash)),
            "v": RECORD_VERSION, "seq": seq, "at": at, "prev_hash": h.hash,
        }
        digest = record_hash(record)
        store.insert(conn, [(seq, "prune", at, h.hash, digest, canonical(record).decode())])
        chainer.set_head(conn, seq, digest, seq, at)
        return PruneResult(cutoff, deleted, keep, False)

    result: PruneResult = audit.run_in_transaction(run)
    return result
