"""When the recipient's preferred key fails at send time: their other key, then
the portal (``on_encryption_error = "portal"``), never clear text; the audit
says what was done as well as what was decided."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import securemail
from securemail.audit.export import iter_export_records
from securemail.errors import RenderError
from securemail.model import Action, Status
from securemail.transport import MemoryTransport
from tests.integration.crypto_fixtures import Gpg, body_of, smime_identity

# An hour ahead of collection: keys made later in the run must already exist at NOW.
NOW = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
RAW = (b"From: Dr. Reed <reed@riverside.example>\r\nTo: jane@mail.example\r\n"
       b"Subject: Jane Roe - session notes\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
       b"Message-ID: <fb1@riverside.example>\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: text/plain; charset=utf-8\r\n\r\nNotes for Jane Roe: diagnosis.\r\n")


def _pgp_fails(*args: object, **kwargs: object) -> bytes:
    raise RenderError("the OpenPGP library failed")


def _jane_pgp_key(gpg: Gpg, folder: Path) -> None:
    """Jane's OpenPGP key (Ed25519 + Cv25519 subkey) exported to ``folder/jane.asc``."""
    jane = gpg.gen("Jane <jane@mail.example>", "ed25519", "cert", "1y")
    gpg.add_subkey(jane, "cv25519", "encr", "1y")
    (folder / "jane.asc").write_bytes(gpg.export(jane))


def _audited(relay: securemail.Relay) -> list[dict[str, object]]:
    return [r for r in iter_export_records(relay.audit.conn) if r.get("kind") == "message"]


async def test_a_failing_pgp_key_falls_back_to_the_recipients_smime_certificate(
        gpg: Gpg, make_config: Callable[..., Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _jane_pgp_key(gpg, tmp_path)
    ident = smime_identity("jane@mail.example")
    (tmp_path / "jane.pem").write_bytes(ident.cert_pem)
    (tmp_path / "jane.key").write_bytes(ident.key_pem)
    transport = MemoryTransport()
    relay = securemail.load(make_config(), transport=transport)
    try:
        relay.keyring.import_file(tmp_path / "jane.asc", NOW)
        relay.keyring.import_file(tmp_path / "jane.pem", NOW)
        monkeypatch.setattr("securemail.crypto.pgp.render_pgp_mime", _pgp_fails)
        outcome = await relay.send(RAW, mail_from="reed@riverside.example",
                                   rcpt_tos=["jane@mail.example"], now=NOW)
        [jane_out] = outcome.recipients
        assert (jane_out.action, jane_out.status) == (Action.ENCRYPT_SMIME, Status.DELIVERED)
        [sent] = transport.sent
        assert b"diagnosis" not in sent.data and b"application/pkcs7-mime" in sent.data
        (tmp_path / "sent.eml").write_bytes(sent.data)
        inner = subprocess.run(
            ["openssl", "cms", "-decrypt", "-binary", "-in", str(tmp_path / "sent.eml"),
             "-recip", str(tmp_path / "jane.pem"), "-inkey", str(tmp_path / "jane.key")],
            capture_output=True, timeout=60, check=True).stdout
        assert body_of(inner) == body_of(RAW)
        [record] = _audited(relay)
        assert (record["decided_action"], record["action"]) == ("encrypt-pgp", "encrypt-smime")
    finally:
        await relay.close()


async def test_the_portal_fallback_is_audited_as_the_portal(
        gpg: Gpg, make_config: Callable[..., Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_config()
    cfg.write_text(cfg.read_text().replace('unauthorised_recipients = "block"',
                                           'unauthorised_recipients = "block"\n'
                                           'on_encryption_error = "portal"'))
    _jane_pgp_key(gpg, tmp_path)
    transport = MemoryTransport()
    relay = securemail.load(cfg, transport=transport)
    try:
        relay.keyring.import_file(tmp_path / "jane.asc", NOW)
        monkeypatch.setattr("securemail.crypto.pgp.render_pgp_mime", _pgp_fails)
        outcome = await relay.send(RAW, mail_from="reed@riverside.example",
                                   rcpt_tos=["jane@mail.example"], now=NOW)
        [jane_out] = outcome.recipients
        assert (jane_out.action, jane_out.status) == (Action.PORTAL, Status.SEALED)
        [sent] = transport.sent
        assert b"diagnosis" not in sent.data and b"Jane Roe" not in sent.data
        [record] = _audited(relay)
        assert (record["decided_action"], record["action"]) == ("encrypt-pgp", "portal")
    finally:
        await relay.close()
