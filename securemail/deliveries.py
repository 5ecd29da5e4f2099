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
from securemail.store.sqlite import describe_fault, ensure_schema, transaction

__all__ = ["DeliveryLedger"]

_DDL = """
CREATE TABLE IF NOT EXISTS deliveries (
    message_sha256 TEXT NOT NULL,
    recipient TEXT NOT NULL,
    status TEXT NOT NULL,
    at TEXT NOT NULL,
    portal_id TEXT,  -- a sealed copy's id, so that the retry reports it too
    PRIMARY KEY (message_sha256, recipient)
);
"""


# How long a deferred message's accepted recipients are remembered: longer than
# any sender keeps retrying (Postfix's maximal_queue_lifetime is 5 days). A row
# left behind (its retry never came, or could not be cleared) then stops
# counting: identical bytes sent again later are delivered again.
RETRY_WINDOW = dt.timedelta(days=7)


def _oldest_retry(now: dt.datetime | None) -> str:
    return _stamp((now or dt.datetime.now(dt.UTC)) - RETRY_WINDOW)


def _stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat()  # comparable as text


class DeliveryLedger:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        ensure_schema(conn, _DDL)
        _add_portal_id(conn)

    def completed(self, digest: str, now: dt.datetime | None = None) -> dict[str, Status]:
        try:
            rows = self.conn.execute(
                "SELECT recipient, status FROM deliveries WHERE message_sha256 = ? AND at >= ?",
                (digest, _oldest_retry(now)),
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the delivery ledger ({describe_fault(exc)})") from None
        return {r: Status(s) for r, s in rows}

    def portal_ids(self, digest: str, now: dt.datetime | None = None) -> dict[str, str]:
        """The sealed copies' ids of the recipients :meth:`completed` names."""
        try:
            rows = self.conn.execute(
                "SELECT recipient, portal_id FROM deliveries WHERE message_sha256 = ?"
                " AND portal_id IS NOT NULL AND at >= ?", (digest, _oldest_retry(now))).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the delivery ledger ({describe_fault(exc)})") from None
        return {r: str(p) for r, p in rows}

    def record(self, digest: str, statuses: Mapping[str, Status], now: dt.datetime,
               portal_ids: Mapping[str, str] | None = None) -> None:
        """Durable before it returns (synchronous=FULL commit)."""
        if not statuses:
            return
        ids = portal_ids or {}
        try:
            with transaction(self.conn):
                # Rows past any sender's retry window only wait to be cleared.
                self.conn.execute("DELETE FROM deliveries WHERE at < ?", (_oldest_retry(now),))
                self.conn.executemany(
                    "INSERT OR REPLACE INTO deliveries (message_sha256, recipient, status, at,"
                    " portal_id) VALUES (?, ?, ?, ?, ?)",
                    [(digest, a, s.value, _stamp(now), ids.get(a))
                     for a, s in statuses.items()],
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the delivery ledger ({describe_fault(exc)})") from None

    def forget(self, digest: str) -> None:
        """After the retry succeeded; the audit log keeps the history."""
        try:
            with transaction(self.conn):
                self.conn.execute("DELETE FROM deliveries WHERE message_sha256 = ?", (digest,))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the delivery ledger ({describe_fault(exc)})") from None


def _add_portal_id(conn: sqlite3.Connection) -> None:
    """Stores made before the ledger kept portal ids get the column."""
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(deliveries)")}
        if "portal_id" not in columns:
            conn.execute("ALTER TABLE deliveries ADD COLUMN portal_id TEXT")
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc):  # another process added it meanwhile
            raise StoreError("cannot update the delivery ledger's table") from None
