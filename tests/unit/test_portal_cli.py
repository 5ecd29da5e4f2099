"""``securemail portal list / revoke / unlock / purge`` against a real store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from securemail.cli.portal_cmd import commands
from securemail.config import load_settings
from securemail.portal.service import PortalService, new_portal_id
from securemail.store.sqlite import open_database
from securemail.transport import MemoryTransport

from .portal_helpers import CLIENT, STAFF, original

CONFIG = """\
[practice]
name = "Riverside Counselling"
domains = ["riverside.example"]

[storage]
url = "sqlite:data/securemail.db"

[portal]
base_url = "https://secure.riverside.example"
"""


def setup(tmp: Path) -> tuple[str, str, str]:
    path = tmp / "securemail.toml"
    path.write_text(CONFIG)
    settings = load_settings(path)
    conn = open_database(settings.storage.sqlite_path)
    service = PortalService(settings, conn, MemoryTransport(), None, None)
    now = datetime.now(UTC)
    live = service.seal(original(), message_id="<a@x>", sender=STAFF, recipient=CLIENT,
                        now=now).id
    old = service.seal(original(), message_id="<b@x>", sender=STAFF, recipient=CLIENT,
                       now=now - timedelta(days=45)).id
    conn.close()
    return str(path), live, old


def run(*args: str) -> tuple[int, str, str]:
    root = click.Group("securemail", commands={c.name or "": c for c in commands})
    result = CliRunner().invoke(root, list(args), env={"SECUREMAIL_CONFIG": None})
    return result.exit_code, result.stdout, result.stderr


def test_list_revoke_purge(tmp_path: Path) -> None:
    config, live, old = setup(tmp_path)
    code, out, _ = run("portal", "list", "--json", "-c", config)
    assert code == 0
    rows = {r["id"]: r for r in json.loads(out)}
    assert {rows[live]["status"], rows[old]["status"]} == {"active", "expired"}
    assert rows[live]["recipient"] == CLIENT and rows[live]["sender"] == STAFF
    assert "Jane" not in out and "results" not in out

    code, out, _ = run("portal", "list", "-c", config)
    assert code == 0 and live in out and "active" in out

    assert run("portal", "revoke", live, "-c", config)[:2] == (0, f"revoked {live}\n")
    code, _, err = run("portal", "revoke", live, "-c", config)
    assert code == 1 and "already revoked" in err
    code, _, err = run("portal", "revoke", "no-such-id", "-c", config)
    assert code == 2 and "no sealed message with id no-such-id" in err

    assert run("portal", "purge", "-c", config)[:2] == (0, "purged 2 message(s)\n")
    rows = {r["id"]: r for r in json.loads(run("portal", "list", "--json", "-c", config)[1])}
    assert rows[live]["status"] == "revoked" and rows[live]["purged"]
    assert rows[old]["status"] == "expired" and rows[old]["purged"]
    assert run("portal", "purge", "-c", config)[:2] == (0, "purged 0 message(s)\n")


def test_unlock_needs_a_locked_message(tmp_path: Path) -> None:
    config, live, _ = setup(tmp_path)
    code, _, err = run("portal", "unlock", live, "-c", config)
    assert code == 1 and "is not locked (status: active)" in err, (code, err)


def test_missing_config_is_exit_2(tmp_path: Path) -> None:
    code, _, err = run("portal", "list", "-c", str(tmp_path / "nope.toml"))
    assert code == 2 and "nope.toml" in err


def test_portal_ids_never_read_as_options() -> None:
    # One token_urlsafe draw in 32 starts with "-" or "_"; 3,000 draws
    # without the redraw would all miss that with probability about 1e-41.
    ids = [new_portal_id() for _ in range(3000)]
    assert all(i[0].isalnum() and len(i) == 24 for i in ids)
    assert len(set(ids)) == len(ids)


def test_an_old_id_starting_with_a_dash_is_revoked_after_double_dash(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store from an earlier build may hold such ids: ``--`` reaches them."""
    from securemail.portal import service

    ids = iter(["-Hx3" + "a" * 20, "-Hx3" + "b" * 20])
    monkeypatch.setattr(service, "new_portal_id", lambda: next(ids))
    config, live, _ = setup(tmp_path)
    assert live.startswith("-Hx3")
    assert run("portal", "revoke", live, "-c", config)[0] == 2  # read as an option
    assert run("portal", "revoke", "-c", config, "--", live)[:2] == (0, f"revoked {live}\n")
