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

__all__ = ["PruneResult", "prune"]


@dataclass(frozen=True, slots=True)
class PruneResult:
    cutoff: str
    deleted: int
    first_seq: int | None  # where the chain now starts
    dry_run: bool = False


def prune(audit: AuditLog, *, now: datetime, retention_days: int,
          dry_run: bool = False) -> PruneResult:
    """Delete records older than ``now - retention_days``."""
    if retention_days <= 0:
        raise ValueError("retention_days must be positive")
    cutoff = format_time(now - timedelta(days=retention_days))
    at = format_time(now)

    def run(conn: sqlite3.Connection) -> PruneResult:
        lo, _hi = store.bounds(conn)
        h = store.head(conn)
        if lo is None:
            return PruneResult(cutoff, 0, None, dry_run)
        keep = store.first_seq_at_or_after(conn, cutoff)
        if keep is None:
            keep = h.seq + 1  # everything is old: the prune record itself starts the chain
        if keep <= lo:
            return PruneResult(cutoff, 0, lo, dry_run)
        before = store.record_before(conn, keep)
        first_prev = before.hash if before is not None else h.hash
        if dry_run:
            return PruneResult(cutoff, keep - lo, keep, True)
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
