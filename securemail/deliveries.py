"""Which recipients of a message upstream already accepted (idempotent retries).

Written only when a message is deferred (451): the sender's retry then skips
recipients that were already delivered or sealed. Keyed by the SHA-256 of the
raw message bytes and the recipient.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Mapping

from securemail.errors import StoreError
from securemail.model import Status
from securemail.store.sqlite import ensure_schema, transaction

__all__ = ["DeliveryLedger"]

_DDL = """
CREATE TABLE IF NOT EXISTS deliveries (
    message_sha256 TEXT NOT NULL,
    recipient TEXT NOT NULL,
    status TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (message_sha256, recipient)
);
"""


class DeliveryLedger:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        ensure_schema(conn, _DDL)

    def completed(self, digest: str) -> dict[str, Status]:
        try:
            rows = self.conn.execute(
                "SELECT recipient, status FROM deliveries WHERE message_sha256 = ?", (digest,)
            ).fetchall()
        except sqlite3.Error:
            raise StoreError("cannot read the delivery ledger") from None
        return {r: Status(s) for r, s in rows}

    def record(self, digest: str, statuses: Mapping[str, Status], now: dt.datetime) -> None:
        """Durable before it returns (synchronous=FULL commit)."""
        if not statuses:
            return
        try:
            with transaction(self.conn):
                self.conn.executemany(
                    "INSERT OR REPLACE INTO deliveries VALUES (?, ?, ?, ?)",
                    [(digest, a, s.value, now.isoformat()) for a, s in statuses.items()],
                )
        except sqlite3.Error:
            raise StoreError("cannot write the delivery ledger") from None

    def forget(self, digest: str) -> None:
        """After the retry succeeded; the audit log keeps the history."""
        try:
            with transaction(self.conn):
                self.conn.execute("DELETE FROM deliveries WHERE message_sha256 = ?", (digest,))
        except sqlite3.Error:
            raise StoreError("cannot write the delivery ledger") from None
