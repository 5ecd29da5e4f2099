"""A reload (SIGHUP) applies every setting it reports as loaded, or says which
wait for a restart; a config that `config check` would refuse is refused.

Before, a reload logged "configuration reloaded" and audited the new config's
digest while the portal kept the old link address and expiry, a portal turned
off kept sealing, a new archive key was not used, and a missing audit signing
key file was accepted (the next start then failed).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import securemail
from securemail.errors import ConfigError
from securemail.model import Action, Status
from securemail.transport import MemoryTransport
from tests.integration.crypto_fixtures import Gpg
from tests.integration.test_encryption_fallback import NOW, RAW


def edit(cfg: Path, old: str, new: str) -> None:
    text = cfg.read_text()
    assert old in text
    cfg.write_text(text.replace(old, new))


async def send_to_jane(relay: securemail.Relay) -> securemail.Outcome:
    return await relay.send(RAW, mail_from="reed@riverside.example",
                            rcpt_tos=["jane@mail.example"], now=NOW)


async def test_portal_link_and_expiry_follow_a_reload(make_config: Callable[..., Path]) -> None:
    cfg = make_config()
    transport = MemoryTransport()
    relay = securemail.load(cfg, transport=transport)
    try:
        await send_to_jane(relay)
        assert b"http://127.0.0.1:8080/m/" in transport.sent[-1].data
        edit(cfg, 'base_url = "http://127.0.0.1:8080"',
             'base_url = "https://portal.riverside.example"\nexpiry_days = 3')
        relay.reload()
        outcome = await send_to_jane(relay)
        notice = transport.sent[-1].data
        assert b"https://portal.riverside.example/m/" in notice
        assert b"http://127.0.0.1:8080" not in notice
        [jane] = outcome.recipients
        [row] = [r for r in relay.portal.list(NOW) if r.id == jane.portal_id]
        assert row.expires - NOW < dt.timedelta(days=3, minutes=1)
    finally:
        await relay.close()


async def test_a_portal_turned_off_by_a_reload_seals_nothing_more(
        make_config: Callable[..., Path]) -> None:
    cfg = make_config()
    transport = MemoryTransport()
    relay = securemail.load(cfg, transport=transport)
    try:
        edit(cfg, "enabled = true", "enabled = false")
        relay.reload()
        with pytest.raises(securemail.Blocked) as blocked:
            await send_to_jane(relay)
        [d] = blocked.value.verdict.decisions
        assert d.action is Action.BLOCK and "portal-disabled" in d.rules
        assert transport.sent == [] and relay.portal.list(NOW) == []
    finally:
        await relay.close()


async def test_an_archive_key_added_by_a_reload_is_in_the_next_ciphertext(
        gpg: Gpg, make_config: Callable[..., Path], tmp_path: Path) -> None:
    jane = gpg.gen("Jane <jane@mail.example>", "ed25519", "cert", "1y")
    gpg.add_subkey(jane, "cv25519", "encr", "1y")
    (tmp_path / "jane.asc").write_bytes(gpg.export(jane))
    archive = gpg.gen("Archive <archive@riverside.example>", "future-default", "default", "1y")
    (tmp_path / "archive.asc").write_bytes(gpg.export(archive))
    cfg = make_config()
    transport = MemoryTransport()
    relay = securemail.load(cfg, transport=transport)
    try:
        relay.keyring.import_file(tmp_path / "jane.asc", NOW)
        await send_to_jane(relay)
        assert len(gpg.recipients_of(transport.sent[-1].data)) == 1
        edit(cfg, "[storage]", '[encryption]\narchive_key_file = "archive.asc"\n\n[storage]')
        relay.reload()
        outcome = await send_to_jane(relay)
        assert outcome.recipients[0].status is Status.DELIVERED
        assert len(gpg.recipients_of(transport.sent[-1].data)) == 2  # Jane's and the archive's
    finally:
        await relay.close()


@pytest.mark.parametrize(("old", "new", "key"), [
    ("[storage]", '[encryption]\narchive_key_file = "missing.asc"\n\n[storage]',
     "encryption.archive_key_file"),
    ("[storage]", '[audit]\nsigning_key_file = "/nonexistent/a.key"\n\n[storage]',
     "audit signing key (audit.signing_key_file) is missing"),
])
async def test_a_reload_refuses_what_config_check_refuses(
        make_config: Callable[..., Path], old: str, new: str, key: str) -> None:
    cfg = make_config()
    transport = MemoryTransport()
    relay = securemail.load(cfg, transport=transport)
    try:
        relay.record_config_loaded("start")  # a store with records: its key is needed
        running = relay.settings
        edit(cfg, old, new)
        with pytest.raises(ConfigError) as refused:
            relay.reload()
        assert key in str(refused.value)
        assert relay.settings is running  # the running config stays in force
        assert (await send_to_jane(relay)).recipients[0].status is Status.SEALED
    finally:
        await relay.close()


async def test_settings_a_reload_cannot_apply_are_named_in_a_warning(
        make_config: Callable[..., Path], caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_config()
    relay = securemail.load(cfg, transport=MemoryTransport())
    try:
        store = relay.settings.storage.sqlite_path
        edit(cfg, 'url = "sqlite:data/securemail.db"', 'url = "sqlite:data/other.db"')
        with caplog.at_level(logging.WARNING, logger="securemail.relay"):
            relay.reload()
        [warning] = [m for m in caplog.messages if "after a restart" in m]
        assert re.search(r"storage\.url = 'sqlite:///\S+/data/other\.db'", warning)
        assert str(cfg) in warning
        assert relay.audit.conn.execute("PRAGMA database_list").fetchone()[2] == str(store)
    finally:
        await relay.close()


@contextlib.asynccontextmanager
async def started(cfg: Path) -> AsyncIterator[securemail.Relay]:
    """A relay on ``cfg`` that has recorded its start, as ``securemail serve`` does."""
    relay = securemail.load(cfg, transport=MemoryTransport())
    try:
        relay.record_config_loaded("start")
        yield relay
    finally:
        await relay.close()


def _consent_changes(relay: securemail.Relay) -> list[tuple[str, str, str, str]]:
    import json

    from securemail.audit.store import iter_records

    bodies = [json.loads(r.body) for r in iter_records(relay.audit.conn)]
    return [(b["client_id"], b["consent"], b["actor"], Path(b["file"]).name) for b in bodies
            if b["kind"] == "consent-change"]


async def test_a_directory_import_then_a_reload_records_the_consent_once(
        make_config: Callable[..., Path], tmp_path: Path) -> None:
    # The import recorded the consent (actor cli, its file); a SIGHUP soon after
    # recorded it again, as if it came from securemail.toml.
    from click.testing import CliRunner

    from securemail.cli.directory_cmd import directory_group

    cfg = make_config()
    async with started(cfg) as relay:  # the config's own consent, on record at start
        at_start = [("c-1002", "granted", "serve", "securemail.toml"),
                    ("c-1003", "granted", "serve", "securemail.toml")]
        assert _consent_changes(relay) == at_start
        csv_file = tmp_path / "dir.csv"
        csv_file.write_text("id,addresses,consent_granted,consent_warning\n"
                            "c-2002,lee@mail.example,2026-11-01,v1\n")
        done = CliRunner().invoke(directory_group, ["import", str(csv_file), "-c", str(cfg)])
        assert done.exit_code == 0, done.output
        imported = ("c-2002", "granted", "cli", "dir.csv")
        assert _consent_changes(relay) == [*at_start, imported]
        relay.reload()
        assert _consent_changes(relay) == [*at_start, imported]  # the reload adds none


async def test_consent_edited_in_the_config_and_applied_by_a_restart_is_recorded(
        make_config: Callable[..., Path]) -> None:
    # Only a SIGHUP reload recorded it: a restart (or the first start) put consent
    # in force, and mail went in clear on it, with no consent-change on record.
    cfg = make_config()
    async with started(cfg) as relay:
        before = _consent_changes(relay)
    edit(cfg, 'consent_unencrypted = { granted = "2026-01-10", warning = "v1" }\n', "")
    edit(cfg, 'warning = "v1", expires = "2026-03-01"', 'warning = "v2", expires = "2027-03-01"')
    async with started(cfg) as relay:  # the restart
        assert _consent_changes(relay) == [*before,
                                           ("c-1002", "withdrawn", "serve", "securemail.toml"),
                                           ("c-1003", "granted", "serve", "securemail.toml")]
        relay.record_config_loaded("start")  # unchanged: nothing more
        assert len(_consent_changes(relay)) == len(before) + 2


async def test_an_upgraded_store_does_not_record_its_consent_again(
        make_config: Callable[..., Path]) -> None:
    # A store whose consent was recorded before the store kept what is on record
    # (its consent-change records carry no grant date): the first start after the
    # upgrade records nothing new, and a real change afterwards still is.
    import json

    from securemail.audit.store import iter_records

    cfg = make_config()
    relay = securemail.load(cfg, transport=MemoryTransport())
    try:
        for cid, warning, expires in (("c-1002", "v1", None), ("c-1003", "v1", "2026-03-01")):
            relay.audit.record_event("consent-change", now=NOW, client_id=cid, actor="reload",
                                     consent="granted", warning=warning, expires=expires,
                                     file="securemail.toml")
        relay.record_config_loaded("start")
        assert len(_consent_changes(relay)) == 2  # the two written before the upgrade
    finally:
        await relay.close()
    edit(cfg, 'warning = "v1", expires = "2026-03-01"', 'warning = "v2", expires = "2027-03-01"')
    async with started(cfg) as relay:
        bodies = [json.loads(r.body) for r in iter_records(relay.audit.conn)]
        [new] = [b for b in bodies if b["kind"] == "consent-change"][2:]
        assert (new["client_id"], new["granted"], new["warning"], new["expires"]) == (
            "c-1003", "2026-01-10", "v2", "2027-03-01")


async def test_a_new_chain_records_the_consent_in_force_again(
        make_config: Callable[..., Path]) -> None:
    # The consent on record went to the archive with the old chain: the new
    # chain had no consent-change for consent it then relied on.
    from datetime import UTC, datetime

    from securemail.audit.new_chain import start_new_chain
    from securemail.config import load_settings

    cfg = make_config()
    async with started(cfg) as relay:
        assert len(_consent_changes(relay)) == 2
    start_new_chain(load_settings(cfg), reason="rotation", now=datetime.now(UTC))
    async with started(cfg) as relay:
        assert [c[0] for c in _consent_changes(relay)] == ["c-1002", "c-1003"]
