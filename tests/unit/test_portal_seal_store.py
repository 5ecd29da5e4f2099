"""Sealing for the portal: what is stored, and that nothing stored can open it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest

from securemail.crypto.seal import SealError, associated_data, decode_key, open_sealed
from securemail.errors import ConfigError
from securemail.portal.secret import SECRET_FILE

from .portal_helpers import CLIENT, NOW, SECRET_BODY, STAFF, make_rig, original


def test_seal_returns_link_with_key_in_fragment_only(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    sealed = rig.service.seal(original(), message_id="<orig-1@riverside.example>",
                              sender=STAFF, recipient=CLIENT, now=NOW)
    m = re.fullmatch(r"https://secure\.riverside\.example/m/([A-Za-z0-9_-]+)#([A-Za-z0-9_-]{43})",
                     sealed.url)
    assert m and m.group(1) == sealed.id
    assert len(base64.urlsafe_b64decode(sealed.id)) * 8 >= 128  # id has >= 128 random bits
    assert sealed.expires == NOW + timedelta(days=30)
    row = rig.service.get(sealed.id)
    assert row is not None
    assert (row.sender, row.recipient, row.state(NOW)) == (STAFF, CLIENT, "active")


def test_browser_format_holds_text_and_attachments(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    sealed = rig.service.seal(original(), message_id="<orig-1@riverside.example>",
                              sender=STAFF, recipient=CLIENT, now=NOW)
    key = decode_key(sealed.url.split("#")[1])
    blob = rig.service.store.ciphertext(sealed.id)
    assert blob is not None
    doc = json.loads(open_sealed(blob, key, aad=associated_data(
        sealed.id, "<orig-1@riverside.example>", CLIENT)))
    assert doc["v"] == 1 and doc["subject"] == "Jane Doe: your results"
    assert doc["text"].strip() == SECRET_BODY and doc["html"] is None
    (att,) = doc["attachments"]
    assert (att["name"], att["type"], att["size"]) == ("labs.pdf", "application/pdf", 16)
    assert base64.b64decode(att["data"]) == b"%PDF-secret-labs"


def test_stored_row_plus_every_server_secret_cannot_open_the_message(tmp_path: Path) -> None:
    """Everything the server keeps (database file, WAL, every table, the portal
    secret and any other file beside the store) neither contains the key nor
    any readable content, and no key derived from those secrets opens the blob."""
    rig = make_rig(tmp_path)
    sealed = rig.service.seal(original(), message_id="<orig-1@riverside.example>",
                              sender=STAFF, recipient=CLIENT, now=NOW)
    key = decode_key(sealed.url.split("#")[1])
    key_text = sealed.url.split("#")[1]
    # Exercise the access paths too: code sent, session opened.
    import asyncio

    asyncio.run(rig.service.request_code(sealed.id, now=NOW))
    from .portal_helpers import last_code

    token = rig.service.verify_code(sealed.id, last_code(rig.transport), now=NOW)
    rig.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    server_files = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    assert any(p.name == SECRET_FILE for p in server_files)
    everything = b"".join(p.read_bytes() for p in server_files)
    dump = "\n".join(rig.conn.iterdump()).encode()
    for needle in (key, key_text.encode(), base64.b64encode(key), key.hex().encode(),
                   SECRET_BODY.encode(), b"Jane Doe: your results", b"%PDF-secret-labs",
                   token.encode()):
        assert needle not in everything
        assert needle not in dump

    blob = rig.service.store.ciphertext(sealed.id)
    assert blob is not None
    aad = associated_data(sealed.id, "<orig-1@riverside.example>", CLIENT)
    secret = (tmp_path / "data" / SECRET_FILE).read_bytes()
    candidates = [secret, hashlib.sha256(secret).digest(),
                  hmac.new(secret, sealed.id.encode(), hashlib.sha256).digest(),
                  hashlib.sha256(sealed.id.encode()).digest()]
    for column in rig.conn.execute("SELECT * FROM portal_messages").fetchone():
        if isinstance(column, str | bytes):
            raw = column if isinstance(column, bytes) else column.encode()
            candidates.append(hashlib.sha256(raw).digest())
            if len(raw) >= 32:
                candidates.extend(raw[i:i + 32] for i in range(0, len(raw) - 31, 16))
    for candidate in candidates:
        with pytest.raises(SealError):
            open_sealed(blob, candidate, aad=aad)
    assert open_sealed(blob, key, aad=aad)  # the link's key does open it


def test_secret_file_is_private_and_reused(tmp_path: Path) -> None:
    make_rig(tmp_path)
    path = tmp_path / "data" / SECRET_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    first = path.read_bytes()
    make_rig(tmp_path)
    assert path.read_bytes() == first
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="portal secret is damaged"):
        make_rig(tmp_path)


def test_each_recipient_gets_its_own_key_and_id(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    a = rig.service.seal(original(), message_id="<m@x>", sender=STAFF, recipient=CLIENT, now=NOW)
    b = rig.service.seal(original(), message_id="<m@x>", sender=STAFF,
                         recipient="dad@mail.example", now=NOW)
    assert a.id != b.id and a.url.split("#")[1] != b.url.split("#")[1]
    blob_a = rig.service.store.ciphertext(a.id)
    assert blob_a is not None
    with pytest.raises(SealError):  # b's key cannot open a's message
        open_sealed(blob_a, decode_key(b.url.split("#")[1]),
                    aad=associated_data(a.id, "<m@x>", CLIENT))


def test_html_and_forwarded_message_extraction(tmp_path: Path) -> None:
    from securemail.portal.content import sealed_plaintext
    from securemail.testing import build_message

    raw = build_message(sender=STAFF, to=[CLIENT], subject="s", body="plain\r\nline",
                        html="<p>rich</p>",
                        attachments=[("../../etc/passwd", "text/plain", b"x"),
                                     ("", "image/png", b"\x89PNG")])
    doc = json.loads(sealed_plaintext(raw))
    assert doc["text"] == "plain\nline\n" and doc["html"].strip() == "<p>rich</p>"
    assert [a["name"] for a in doc["attachments"]] == ["passwd", "attachment-2.png"]


CORPUS = Path(__file__).resolve().parent.parent / "corpus"


def _messages() -> list[bytes]:
    forwarded = (b"From: a@riverside.example\r\nTo: b@mail.example\r\nSubject: fwd\r\n"
                 b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
                 b"--b\r\nContent-Type: text/html; charset=\"iso-8859-1\"\r\n\r\n<p>caf\xe9</p>\r\n"
                 b"--b\r\nContent-Type: message/rfc822\r\n\r\n"
                 b"From: c@x.example\r\nSubject: inner\r\n\r\ninner body\r\n"
                 b"--b\r\nContent-Type: text/plain; charset=\"x-unknown\"\r\n"
                 b"Content-Disposition: attachment; filename=\"../../notes.txt\"\r\n\r\nnotes\r\n"
                 b"--b--\r\n")
    return [original(), forwarded, *(p.read_bytes() for p in sorted(CORPUS.glob("*.eml")))]


@pytest.mark.parametrize("index", range(len(_messages())))
def test_sealed_document_is_what_the_email_package_reads(index: int,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # The header cache must not change what is read: compare with plain EmailMessage.
    from email.message import EmailMessage

    from securemail.portal import content

    raw = _messages()[index]
    fast = content.sealed_plaintext(raw)
    monkeypatch.setattr(content, "_ReadOnlyMessage", EmailMessage)
    assert fast == content.sealed_plaintext(raw)
    assert json.loads(fast)["v"] == 1


def test_a_store_from_an_earlier_release_gets_the_new_column(tmp_path: Path) -> None:
    import sqlite3

    from securemail.portal.store import DDL, PortalStore

    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    conn.executescript(DDL.replace(
        "    expiry_noted TEXT,              -- when the audit log got this message's"
        " \"expired\" event\n", ""))
    assert "expiry_noted" not in {r[1] for r in conn.execute("PRAGMA table_info(portal_messages)")}
    PortalStore(conn)
    assert "expiry_noted" in {r[1] for r in conn.execute("PRAGMA table_info(portal_messages)")}
