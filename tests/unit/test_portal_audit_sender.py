"""The audit's ``mail_from`` is the envelope sender everywhere; the client is
shown the author (``From``). Rows sealed before the envelope sender was kept
keep what they have."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from securemail.portal.store import DDL, PortalStore

from .portal_helpers import CLIENT, NOW, STAFF, make_rig, original

VERP = "bounce+77=jane.doe=mail.example@lists.riverside.example"


def test_notified_event_names_the_envelope_sender_not_the_author(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    sealed = rig.service.seal(original(), message_id="<orig-1@riverside.example>", sender=STAFF,
                              recipient=CLIENT, now=NOW, mail_from=VERP)
    row = rig.service.get(sealed.id)
    assert row is not None and (row.sender, row.envelope_sender) == (STAFF, VERP)
    event = rig.service.notified_event(sealed.id)
    assert event is not None and event[1]["mail_from"] == VERP
    # The null sender (MAIL FROM:<>) is recorded as such, not replaced by From.
    sealed = rig.service.seal(original(), message_id="<orig-2@riverside.example>", sender=STAFF,
                              recipient=CLIENT, now=NOW, mail_from="")
    event = rig.service.notified_event(sealed.id)
    assert event is not None and event[1]["mail_from"] == ""


def test_without_mail_from_the_sender_is_the_envelope_sender(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    sealed = rig.service.seal(original(), message_id="<o@riverside.example>", sender=STAFF,
                              recipient=CLIENT, now=NOW)
    event = rig.service.notified_event(sealed.id)
    assert event is not None and event[1]["mail_from"] == STAFF


def test_a_store_from_before_mail_from_and_reply_name_is_migrated(tmp_path: Path) -> None:
    old_ddl = (DDL.replace("    reply_name   TEXT,", "").replace("    mail_from    TEXT,", "")
               .replace("    used      TEXT,", "    used      TEXT")
               .replace("    consumed  TEXT ", "--"))
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    conn.executescript(old_ddl)
    columns = {r[1] for r in conn.execute("PRAGMA table_info(portal_messages)")}
    assert not {"reply_name", "mail_from"} & columns
    assert "consumed" not in {r[1] for r in conn.execute("PRAGMA table_info(portal_codes)")}
    conn.execute("INSERT INTO portal_messages (id, message_id, sender, recipient, created, "
                 "expires, size, ciphertext) VALUES ('old-row-0123456789', '<o@x>', ?, ?, "
                 "'2026-03-01T00:00:00.000000Z', '2026-03-31T00:00:00.000000Z', 1, x'01')",
                 (VERP, CLIENT))
    store = PortalStore(conn)
    assert {"reply_name", "mail_from"} <= {
        r[1] for r in conn.execute("PRAGMA table_info(portal_messages)")}
    assert "consumed" in {r[1] for r in conn.execute("PRAGMA table_info(portal_codes)")}
    row = store.get("old-row-0123456789")
    # An old row keeps what it has: its sender is both the envelope sender and the
    # reply address (what it was sealed with), and no display name is known.
    assert row is not None
    assert (row.mail_from, row.envelope_sender, row.reply_address, row.reply_name) == (
        None, VERP, VERP, None)
