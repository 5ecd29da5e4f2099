"""PGP/MIME output opened by real GnuPG: keys from gpg (Ed25519/Cv25519, RSA-3072) and PGPy."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from securemail.crypto import pgp
from securemail.errors import RenderError
from securemail.keys import Keyring
from securemail.store.sqlite import open_database
from tests.integration.crypto_fixtures import (
    Gpg,
    attachments,
    body_of,
    corpus,
    parsed,
    pgpy_secret_key,
)

# An hour ahead of collection: keys made later in the run must already exist at NOW.
NOW = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
CORPUS = corpus()
ARMOR = re.compile(rb"-----BEGIN PGP MESSAGE-----\r\n.*?-----END PGP MESSAGE-----\r\n", re.S)


@pytest.fixture(scope="module")
def gpg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gpg]:
    g = Gpg.create(tmp_path_factory.mktemp("gnupg") / "home")
    g.gen("Client Ed <client-ed@mail.example>", "ed25519", "cert")
    g.add_subkey(g.fingerprint("client-ed@mail.example"), "cv25519", "encr", "2y")
    g.gen("Client RSA <client-rsa@mail.example>", "rsa3072", "cert")
    g.add_subkey(g.fingerprint("client-rsa@mail.example"), "rsa3072", "encr")
    g.gen("Archive <archive@riverside.example>", "future-default", "default", "never")
    public, secret = pgpy_secret_key("Client PGPy", "client-pgpy@mail.example")
    g.run("--import", input=secret)
    (g.home / "pgpy.asc").write_bytes(public)
    yield g
    g.close()


@pytest.fixture(scope="module")
def keyring(gpg: Gpg, tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    ring = Keyring(open_database(tmp_path_factory.mktemp("store") / "keys.db"))
    for who in ("client-ed", "client-rsa"):
        path = gpg.home / f"{who}.asc"
        path.write_bytes(gpg.export(gpg.fingerprint(f"{who}@mail.example")))
        ring.import_file(path, NOW)
    ring.import_file(gpg.home / "pgpy.asc", NOW)
    return ring


def _armored(out: bytes) -> bytes:
    """The ciphertext part of a PGP/MIME message, checked against RFC 3156's structure."""
    msg = parsed(out)
    assert msg.get_content_type() == "multipart/encrypted"
    assert msg.get_param("protocol") == "application/pgp-encrypted"
    control, data = list(msg.iter_parts())
    assert control.get_content_type() == "application/pgp-encrypted"
    assert str(control.get_payload()).strip() == "Version: 1"
    assert data.get_content_type() == "application/octet-stream"
    found: list[bytes] = ARMOR.findall(out)
    assert len(found) == 1
    return found[0]


# Every corpus message to every kind of key; the 5 MiB one once (it is about size, not keys).
CASES = [(name, who) for name in sorted(CORPUS)
         for who in ("client-ed", "client-rsa", "client-pgpy")
         if name != "big" or who == "client-ed"]


@pytest.mark.parametrize(("name", "who"), CASES)
def test_gpg_opens_every_corpus_message(gpg: Gpg, keyring: Keyring, who: str,
                                        name: str) -> None:
    raw = CORPUS[name]
    keys = keyring.pgp_keys(f"{who}@mail.example", NOW)
    assert len(keys) == 1

    out = pgp.render_pgp_mime(raw, keys)

    assert b"\n" not in out.replace(b"\r\n", b"")  # CRLF only, ready for DKIM
    inner = gpg.decrypt(_armored(out))
    # The decrypted entity carries the original body byte for byte ...
    assert body_of(inner) == body_of(raw)
    assert attachments(inner) == attachments(raw)
    # ... under the real headers, marked as RFC 9788 protected.
    entity = parsed(inner)
    original = parsed(raw)
    for field in ("Subject", "From", "To", "Cc", "Date", "Message-ID"):
        assert entity[field] == original[field]
    assert entity.get_param("hp") == "cipher"
    assert entity.get_param("protected-headers") == "v1"


def test_outside_shows_nothing_of_subject_or_content(gpg: Gpg, keyring: Keyring) -> None:
    raw = CORPUS["utf8"]
    out = pgp.render_pgp_mime(raw, keyring.pgp_keys("client-ed@mail.example", NOW))
    outer = parsed(out)
    assert outer["Subject"] == "..."
    assert outer["From"] == parsed(raw)["From"]
    assert outer["To"] == parsed(raw)["To"]
    assert "X-Practice-Client" not in outer  # application headers stay inside only
    assert "séance".encode() not in out and b"Rendez" not in out
    inner = parsed(gpg.decrypt(_armored(out)))
    assert inner["X-Practice-Client"] == "c-1001"
    assert "Subject: ..." in inner.get_all("HP-Outer", [])


def test_one_ciphertext_names_only_its_recipient_plus_archive(gpg: Gpg, keyring: Keyring
                                                              ) -> None:
    ed = keyring.pgp_keys("client-ed@mail.example", NOW)
    rsa = keyring.pgp_keys("client-rsa@mail.example", NOW)
    alone = gpg.recipients_of(_armored(pgp.render_pgp_mime(CORPUS["dots"], ed)))
    assert alone == {ed[0].key_id}
    assert rsa[0].key_id not in alone

    archive_path = gpg.home / "archive.asc"
    archive_path.write_bytes(gpg.export(gpg.fingerprint("archive@riverside.example")))
    archive = pgp.load_archive_key(archive_path)
    out = pgp.render_pgp_mime(CORPUS["dots"], ed, archive)
    archived = _armored(out)
    assert gpg.recipients_of(archived) == {ed[0].key_id, archive.recipient(NOW).key_id}  # type: ignore[union-attr]
    # The practice can read what it sent with the archive key alone.
    only_archive = Gpg.create(gpg.home.parent / "archive-only")
    secret = gpg.run("--armor", "--export-secret-keys",
                     gpg.fingerprint("archive@riverside.example")).stdout
    only_archive.run("--import", input=secret)
    try:
        assert body_of(only_archive.decrypt(archived)) == body_of(CORPUS["dots"])
    finally:
        only_archive.close()


def test_lf_input_is_sent_as_crlf(gpg: Gpg, keyring: Keyring) -> None:
    raw = CORPUS["dots"].replace(b"\r\n", b"\n")
    out = pgp.render_pgp_mime(raw, keyring.pgp_keys("client-rsa@mail.example", NOW))
    assert b"\n" not in out.replace(b"\r\n", b"")
    assert body_of(gpg.decrypt(_armored(out))) == body_of(CORPUS["dots"])


@pytest.mark.parametrize("who", ["client-ed", "client-rsa"])
def test_armor_without_crc_opens_for_every_length(gpg: Gpg, keyring: Keyring, who: str) -> None:
    # Three consecutive sizes cover every length mod 3, including the one
    # where the base64 would end without "=" padding (see openpgp_packets.padded_length).
    keys = keyring.pgp_keys(f"{who}@mail.example", NOW)
    for size in (1000, 1001, 1002):
        armored = pgp.armor(pgp.encrypt(b"x" * size, keys))
        lines = armored.split(b"\r\n")
        assert all(len(line) <= 76 for line in lines)
        assert not any(line.startswith(b"=") and len(line) == 5 for line in lines)  # no CRC
        assert gpg.decrypt(armored) == b"x" * size


# ------------------------------------------------------------- fail closed


@pytest.mark.parametrize("target", [
    "securemail.crypto.pgp.PKESessionKeyV3.encrypt_sk",  # PGPy, public-key part
    "securemail.crypto.openpgp_packets.Cipher",          # cryptography, symmetric part
])
def test_library_error_becomes_render_error(keyring: Keyring, monkeypatch: pytest.MonkeyPatch,
                                            target: str) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Your diagnosis leaked")

    monkeypatch.setattr(target, boom)
    with pytest.raises(RenderError) as caught:
        pgp.render_pgp_mime(CORPUS["utf8"], keyring.pgp_keys("client-ed@mail.example", NOW))
    assert "diagnosis" not in str(caught.value) and caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_bad_key_becomes_render_error() -> None:
    broken = pgp.PgpRecipient("0" * 40, "0" * 16, object())
    with pytest.raises(RenderError):
        pgp.render_pgp_mime(CORPUS["dots"], [broken])


def test_no_recipient_and_malformed_message_are_render_errors(keyring: Keyring) -> None:
    with pytest.raises(RenderError):
        pgp.render_pgp_mime(CORPUS["dots"], [])
    keys = keyring.pgp_keys("client-ed@mail.example", NOW)
    with pytest.raises(RenderError):
        pgp.render_pgp_mime(b"Subject: x\r\nnot a header\r\n\r\nbody\r\n", keys)


def test_expired_archive_key_is_a_render_error(gpg: Gpg, keyring: Keyring) -> None:
    archive_path = gpg.home / "archive-ed.asc"
    archive_path.write_bytes(gpg.export(gpg.fingerprint("client-ed@mail.example")))
    archive = pgp.load_archive_key(archive_path)
    later = NOW + dt.timedelta(days=3 * 365)
    with pytest.raises(RenderError):
        pgp.render_pgp_mime(CORPUS["dots"], keyring.pgp_keys("client-rsa@mail.example", NOW),
                            archive, now=later)


def test_unreadable_archive_key_names_the_file(tmp_path: Path) -> None:
    from securemail.errors import ConfigError

    bad = tmp_path / "archive.asc"
    bad.write_bytes(b"not a key")
    with pytest.raises(ConfigError, match=r"archive\.asc: encryption\.archive_key_file"):
        pgp.load_archive_key(bad)



# ------------------------------------------------------------- through the relay


async def test_relay_encrypts_per_recipient_then_falls_back_to_portal_at_expiry(
        gpg: Gpg, make_config: Callable[..., Path]) -> None:
    import securemail
    from securemail.model import Action, Status
    from securemail.transport import MemoryTransport

    jane = gpg.gen("Jane <jane@mail.example>", "ed25519", "cert", "1y")
    gpg.add_subkey(jane, "cv25519", "encr", "1y")
    (gpg.home / "jane.asc").write_bytes(gpg.export(jane))
    transport = MemoryTransport()
    relay = securemail.load(make_config(), transport=transport)
    try:
        [key] = relay.keyring.import_file(gpg.home / "jane.asc", NOW)
        raw = (b"From: Dr. Reed <reed@riverside.example>\r\nTo: jane@mail.example\r\n"
               b"Cc: colleague@riverside.example\r\nSubject: Jane Roe - session notes\r\n"
               b"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <n1@riverside.example>\r\n"
               b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
               b"Notes for Jane Roe: diagnosis discussed.\r\n")
        outcome = await relay.send(raw, mail_from="reed@riverside.example",
                                   rcpt_tos=["jane@mail.example",
                                             "colleague@riverside.example"], now=NOW)
        by_address = {r.address: r for r in outcome.recipients}
        assert by_address["jane@mail.example"].action is Action.ENCRYPT_PGP
        assert by_address["jane@mail.example"].status is Status.DELIVERED
        [to_jane] = [m for m in transport.sent if m.rcpt_tos == ("jane@mail.example",)]
        assert b"Jane Roe" not in to_jane.data and b"diagnosis" not in to_jane.data
        inner = gpg.decrypt(_armored(to_jane.data))
        assert body_of(inner) == body_of(raw)
        assert parsed(inner)["Subject"] == "Jane Roe - session notes"
        # The ciphertext names Jane's key only: the staff Cc has its own copy.
        assert gpg.recipients_of(_armored(to_jane.data)) == {
            r.key_id for r in relay.keyring.pgp_keys("jane@mail.example", NOW)}

        # Once the key has expired the same message goes through the portal instead.
        assert key.expires is not None
        later = await relay.send(raw, mail_from="reed@riverside.example",
                                 rcpt_tos=["jane@mail.example"], now=key.expires)
        assert later.recipients[0].action is Action.PORTAL
        assert later.recipients[0].status is Status.SEALED
    finally:
        await relay.close()
