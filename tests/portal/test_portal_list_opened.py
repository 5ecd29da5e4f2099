"""``securemail portal list`` says whether (and when) each message was opened."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from securemail.config import load_settings
from securemail.portal.service import PortalService
from securemail.store.sqlite import open_database
from securemail.transport import MemoryTransport
from tests.unit.portal_helpers import CLIENT, STAFF, last_code, original
from tests.unit.test_portal_cli import CONFIG, run


async def test_opened_column_and_json(tmp_path: Path) -> None:
    path = tmp_path / "securemail.toml"
    path.write_text(CONFIG)
    settings = load_settings(path)
    conn = open_database(settings.storage.sqlite_path)
    transport = MemoryTransport()
    service = PortalService(settings, conn, transport, None, None)
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    seen = service.seal(original(), message_id="<a@x>", sender=STAFF, recipient=CLIENT,
                        now=now).id
    unseen = service.seal(original(), message_id="<b@x>", sender=STAFF, recipient=CLIENT,
                          now=now).id
    await service.request_code(seen, now=now)
    token = service.verify_code(seen, last_code(transport), now=now)
    service.ciphertext(seen, token, now=now + timedelta(minutes=1))
    conn.close()
    opened_at = (now + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

    code, out, _ = run("portal", "list", "-c", str(path))
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == ["ID", "STATUS", "CREATED", "EXPIRES", "OPENED", "SENDER", "->",
                              "RECIPIENT"]
    by_id = {line.split()[0]: line.split() for line in lines}
    assert by_id[seen][4] == opened_at
    assert by_id[unseen][4] == "-"
    assert by_id[seen][5:] == [STAFF, "->", CLIENT]

    rows = {r["id"]: r for r in json.loads(run("portal", "list", "--json", "-c", str(path))[1])}
    assert rows[seen]["opened"] == opened_at and rows[unseen]["opened"] is None
    assert rows[seen]["locked"] is None and rows[seen]["attachments"] == 1
    # The front desk finds "the lab results email" by its Message-ID.
    assert (rows[seen]["message_id"], rows[unseen]["message_id"]) == ("<a@x>", "<b@x>")
