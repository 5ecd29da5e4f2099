"""One-time codes, lock-out, rate limits, sessions, replies and lifecycle."""

from __future__ import annotations

import email
from datetime import timedelta
from email import policy
from pathlib import Path

import pytest

from securemail.portal.codes import WebhookCodeChannel
from securemail.portal.service import CODES_PER_HOUR, MAX_FAILED_CODES, PortalDenied

from .portal_helpers import CLIENT, NOW, STAFF, Rig, last_code, make_rig, original


def sealed_rig(tmp: Path, **portal: object) -> tuple[Rig, str]:
    rig = make_rig(tmp, **portal)
    sealed = rig.service.seal(original(), message_id="<orig-1@riverside.example>",
                              sender=STAFF, recipient=CLIENT, now=NOW)
    return rig, sealed.id


async def test_code_email_goes_to_recipient_and_code_is_stored_hashed(tmp_path: Path) -> None:
    rig, pid = sealed_rig(tmp_path)
    await rig.service.request_code(pid, now=NOW)
    (sent,) = rig.transport.sent
    assert sent.rcpt_tos == (CLIENT,) and sent.mail_from == STAFF
    code = last_code(rig.transport)
    assert 6 <= len(code) <= 8
    msg = email.message_from_bytes(sent.data, policy=policy.default)
    assert "Jane" not in str(msg["Subject"]) and "results" not in sent.data.decode()
    stored = "\n".join(rig.conn.iterdump())
    assert code not in stored
    assert rig.audit.kinds() == ["code-sent"]
    assert all(code not in str(v) for e in rig.audit.events for v in e.values())


async def test_right_code_opens_once(tmp_path: Path) -> None:
    rig, pid = sealed_rig(tmp_path)
    await rig.service.request_code(pid, now=NOW)
    code = last_code(rig.transport)
    token = rig.service.verify_code(pid, code, now=NOW + timedelta(minutes=1))
    row, blob = rig.service.ciphertext(pid, token, now=NOW + timedelta(minutes=2))
    assert row.id == pid and blob
    with pytest.raises(PortalDenied) as exc:  # single use
        rig.service.verify_code(pid, code, now=NOW + timedelta(minutes=3))
    assert exc.value.reason == "wrong-code"
    assert rig.audit.kinds() == ["code-sent", "code-verified", "opened", "code-failed"]


async def test_code_expires_after_ten_minutes(tmp_path: Path) -> None:
    rig, pid = sealed_rig(tmp_path)
    await rig.service.request_code(pid, now=NOW)
    with pytest.raises(PortalDenied, match="wrong-code"):
        rig.service.verify_code(pid, last_code(rig.transport), now=NOW + timedelta(minutes=10))


async def test_new_code_replaces_the_old_one(tmp_path: Path) -> None:
    rig, pid = sealed_rig(tmp_path)
    await rig.service.request_code(pid, now=NOW)
    old = last_code(rig.transport)
    await rig.service.request_code(pid, now=NOW + timedelta(seconds=30))
    new = last_code(rig.transport)
    if old != new:
        with pytest.raises(PortalDenied, match="wrong-code"):
            rig.service.verify_code(pid, old, now=NOW + timedelta(minutes=1))
    assert rig.service.verify_code(pid, new, now=NOW + timedelta(minutes=1))


async def test_five_wrong_codes_lock_until_unlocked(tmp_path: Path) -> None:
    rig, pid = sealed_rig(tmp_path)
    await rig.service.request_code(pid, now=NOW)
    right = last_code(rig.transport)
    wrong = f"{(int(right) + 1) % 10**6:06d}"
    remaining = []
    for _ in range(MAX_FAILED_CODES - 1):
        with pytest.raises(PortalDenied) as exc:
            rig.service.verify_code(pid, wrong, now=NOW)
        remaining.append(exc.value.remaining)
    assert remaining == [4, 3, 2, 1]
    with pytest.raises(PortalDenied, match="locked"):
        rig.service.verify_code(pid, wrong, now=NOW)
    with pytest.raises(PortalDenied, match="locked"):  # even the right code
        rig.service.verify_code(pid, right, now=NOW)
    with pytest.raises(PortalDenied, match="locked"):  # and no new codes
        await rig.service.request_code(pid, now=NOW)
    assert rig.audit.events[-1]["status"] == "locked"
    assert rig.service.unlock(pid, NOW)
    await rig.service.request_code(pid, now=NOW + timedelta(minutes=1))
    assert rig.service.verify_code(pid, last_code(rig.transport), now=NOW + timedelta(minutes=1))


async def test_code_requests_are_rate_limited_per_message(tmp_path: Path) -> None:
    rig, pid = sealed_rig(tmp_path)
    for i in range(CODES_PER_HOUR):
        await rig.service.request_code(pid, now=NOW + timedelta(minutes=i))
    with pytest.raises(PortalDenied, match="rate-limited"):
        await rig.service.request_code(pid, now=NOW + timedelta(minutes=10))
    assert len(rig.transport.sent) == CODES_PER_HOUR
    await rig.service.request_code(pid, now=NOW + timedelta(minutes=61))


async def test_session_times_out(tmp_path: Path) -> None:
    rig, pid = sealed_rig(tmp_path, session_minutes=15)
    await rig.service.request_code(pid, now=NOW)
    token = rig.service.verify_code(pid, last_code(rig.transport), now=NOW)
    rig.service.ciphertext(pid, token, now=NOW + timedelta(minutes=14))
    with pytest.raises(PortalDenied, match="no-session"):
        rig.service.ciphertext(pid, token, now=NOW + timedelta(minutes=15))
    with pytest.raises(PortalDenied, match="no-session"):
        rig.service.ciphertext(pid, "forged-token", now=NOW)


async def test_session_opens_only_its_own_message(tmp_path: Path) -> None:
    rig, pid = sealed_rig(tmp_path)
    other = rig.service.seal(original(), message_id="<o@x>", sender=STAFF,
                             recipient="dad@mail.example", now=NOW).id
    await rig.service.request_code(pid, now=NOW)
    token = rig.service.verify_code(pid, last_code(rig.transport), now=NOW)
    with pytest.raises(PortalDenied, match="no-session"):
        rig.service.ciphertext(other, token, now=NOW)


async def test_revoke_drops_ciphertext_and_access(tmp_path: Path) -> None:
    rig, pid = sealed_rig(tmp_path)
    await rig.service.request_code(pid, now=NOW)
    token = rig.service.verify_code(pid, last_code(rig.transport), now=NOW)
    assert rig.service.revoke(pid, NOW, actor="cli")
    assert not rig.service.revoke(pid, NOW)
    assert rig.service.store.ciphertext(pid) is None
    with pytest.raises(PortalDenied, match="revoked"):
        rig.service.ciphertext(pid, token, now=NOW)
    assert rig.audit.events[-1]["kind"] == "revoked" and rig.audit.events[-1]["actor"] == "cli"


def test_purge_deletes_expired_ciphertext_keeps_metadata(tmp_path: Path) -> None:
    rig, old = sealed_rig(tmp_path)
    fresh = rig.service.seal(original(), message_id="<n@x>", sender=STAFF, recipient=CLIENT,
                             now=NOW + timedelta(days=20)).id
    later = NOW + timedelta(days=31)
    assert rig.service.purge(later) == 1
    assert rig.service.store.ciphertext(old) is None
    assert rig.service.store.ciphertext(fresh) is not None
    states = {r.id: (r.state(later), r.purged is not None) for r in rig.service.list(later)}
    assert states == {old: ("expired", True), fresh: ("active", False)}
    assert rig.service.purge(later) == 0  # idempotent
    assert rig.audit.kinds() == ["purged"]


async def test_expired_message_refuses_codes_and_records_it(tmp_path: Path) -> None:
    rig, pid = sealed_rig(tmp_path, expiry_days=1)
    with pytest.raises(PortalDenied, match="expired"):
        await rig.service.request_code(pid, now=NOW + timedelta(days=1))
    assert rig.transport.sent == [] and rig.audit.kinds() == ["expired"]
    # Later visits to the dead link are refused the same way but not recorded
    # again: one event per message, however often the link is tried.
    for day in (2, 3, 30):
        with pytest.raises(PortalDenied, match="expired"):
            rig.service.check(pid, NOW + timedelta(days=day))
    assert rig.audit.kinds() == ["expired"]


async def test_reply_goes_to_sender_and_is_sealed(tmp_path: Path) -> None:
    from securemail.portal.content import Attachment

    rig, pid = sealed_rig(tmp_path)
    await rig.service.request_code(pid, now=NOW)
    token = rig.service.verify_code(pid, last_code(rig.transport), now=NOW)
    got: list[tuple[bytes, str, str]] = []

    async def reply_sender(raw: bytes, mail_from: str, rcpt_to: str) -> None:
        got.append((raw, mail_from, rcpt_to))

    sealed = await rig.service.reply(pid, token, subject="Re: results", body="Thanks!",
                                     attachment=Attachment("card.png", "image/png", b"PNG"),
                                     now=NOW, reply_sender=reply_sender)
    ((raw, mail_from, rcpt_to),) = got
    assert (mail_from, rcpt_to) == (STAFF, STAFF)
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["Reply-To"] == CLIENT and msg["In-Reply-To"] == "<orig-1@riverside.example>"
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    row = rig.service.get(sealed.id)
    assert row is not None and (row.kind, row.parent_id, row.recipient) == ("reply", pid, STAFF)
    assert rig.audit.kinds()[-1] == "replied"


async def test_reply_failure_is_reported_not_swallowed(tmp_path: Path) -> None:
    rig, pid = sealed_rig(tmp_path)
    await rig.service.request_code(pid, now=NOW)
    token = rig.service.verify_code(pid, last_code(rig.transport), now=NOW)

    async def refusing(raw: bytes, mail_from: str, rcpt_to: str) -> None:
        raise RuntimeError("relay said 451")

    with pytest.raises(PortalDenied, match="delivery-failed"):
        await rig.service.reply(pid, token, subject="", body="x", attachment=None, now=NOW,
                                reply_sender=refusing)
    assert "replied" not in rig.audit.kinds()


async def test_webhook_channel_plugs_in(tmp_path: Path) -> None:
    from securemail.config import Settings
    from securemail.portal.service import PortalService

    posted: list[tuple[str, bytes]] = []
    channel = WebhookCodeChannel("https://sms.example/send",
                                 post=lambda url, body: posted.append((url, body)))
    rig = make_rig(tmp_path)
    settings: Settings = rig.settings
    service = PortalService(settings, rig.conn, rig.transport, None, None, code_channel=channel)
    pid = service.seal(original(), message_id="<m@x>", sender=STAFF, recipient=CLIENT,
                       now=NOW).id
    await service.request_code(pid, now=NOW)
    ((url, body),) = posted
    import json

    doc = json.loads(body)
    assert url == "https://sms.example/send" and doc["recipient"] == CLIENT
    assert service.verify_code(pid, doc["code"], now=NOW)
    assert rig.transport.sent == []


async def test_code_email_is_dkim_signed_when_a_signer_is_set(tmp_path: Path) -> None:
    import dkim
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from securemail.dkim import DkimSigner, public_record

    key = ed25519.Ed25519PrivateKey.generate()
    rig, pid = sealed_rig(tmp_path)
    rig.service.signer = DkimSigner(domain="riverside.example", selector="s1", private_key=key)
    await rig.service.request_code(pid, now=NOW)
    data = rig.transport.sent[-1].data
    assert data.startswith(b"DKIM-Signature:")
    record = public_record(key).encode()

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s1._domainkey.riverside.example."
        return record

    assert dkim.verify(data, dnsfunc=dns)  # type: ignore[attr-defined]
