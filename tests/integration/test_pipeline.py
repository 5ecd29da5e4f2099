"""The whole data path through `Relay.send`, with an in-memory upstream.

The SMTP listener and real upstream servers are covered in test_relay_*.py;
here the focus is what leaves, what is refused, and what is remembered.
"""

from __future__ import annotations

import datetime as dt
import email
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

import securemail
from securemail.errors import TemporaryFailure, UpstreamUnavailable
from securemail.model import Action, Status
from securemail.testing import build_message
from securemail.transport import DeliveryResult, MemoryTransport

DR = "dr.lee@riverside.example"
NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
PHI_BODY = "Jane Roe, SSN 123-45-6789, diagnosis F32.1 - keep taking sertraline."
PHI_SUBJECT = "Results for Jane Roe, DOB 04/12/1988"


@pytest.fixture
def capture() -> MemoryTransport:
    return MemoryTransport()


@pytest.fixture
async def relay(config_path: Path, capture: MemoryTransport):
    r = securemail.load(config_path, transport=capture)
    yield r
    await r.close()


async def test_staff_mail_passes_through_byte_for_byte(relay, capture) -> None:
    raw = build_message(sender=DR, to=["nurse@riverside.example"], body=PHI_BODY)
    outcome = await relay.send(raw, now=NOW)
    assert [(s.rcpt_tos, s.data) for s in capture.sent] == [(("nurse@riverside.example",), raw)]
    assert outcome.recipients[0].status is Status.DELIVERED


async def test_policy_block_raises_550_and_sends_nothing(relay, capture) -> None:
    raw = build_message(sender=DR, to=["jane@mail.example"], cc=["mom@mail.example"])
    with pytest.raises(securemail.Blocked) as exc:
        await relay.send(raw, now=NOW)
    assert capture.sent == []
    reply = exc.value.smtp_reply
    assert reply.startswith("550 5.7.1 ")
    assert "unauthorised-recipient" in reply and "mom@mail.example" in reply
    assert exc.value.verdict.blocked


async def test_malformed_message_gets_554(relay, capture) -> None:
    raw = (b"From: dr.lee@riverside.example\r\nTo: jane@mail.example)<collector@evil.example>\r\n"
           b"Subject: x\r\n\r\nhello\r\n")
    with pytest.raises(securemail.Blocked) as exc:
        await relay.send(raw, mail_from=DR, rcpt_tos=["jane@mail.example"], now=NOW)
    assert exc.value.smtp_reply.startswith("554 5.6.0")
    assert capture.sent == []


async def test_malformed_reply_says_which_header_and_the_check_agrees(relay, capture) -> None:
    # Outlook-style "Last, First <addr>" unquoted: two readings, so refused;
    # the sender learns which header, and no recipient is reported as invalid.
    raw = (b"From: dr.lee@riverside.example\r\nTo: Roe, Jane <jane@mail.example>\r\n"
           b"Subject: x\r\n\r\nhello\r\n")
    with pytest.raises(securemail.Blocked) as exc:
        await relay.send(raw, now=NOW)
    hint = " (put a display name holding a comma or other special character in double quotes)"
    assert exc.value.smtp_reply == ("554 5.6.0 Message not relayed: malformed-address"
                                    f" (To header cannot be parsed unambiguously{hint})")
    verdict = relay.check(raw)
    assert {d.reason for d in verdict.decisions} == {
        f"message not relayed: To header cannot be parsed unambiguously{hint}"}
    assert capture.sent == []


async def test_portal_recipient_gets_a_notification_not_the_message(relay, capture) -> None:
    raw = build_message(sender=DR, to=["jane@mail.example"], subject=PHI_SUBJECT, body=PHI_BODY)
    outcome = await relay.send(raw, now=NOW)
    (sent,) = capture.sent
    assert sent.rcpt_tos == ("jane@mail.example",)
    assert b"sertraline" not in sent.data and b"Jane Roe" not in sent.data
    assert b"04/12/1988" not in sent.data
    r = outcome.recipients[0]
    assert (r.action, r.status) == (Action.PORTAL, Status.SEALED) and r.portal_id
    assert r.portal_id.encode() in sent.data.replace(b"=\r\n", b"")


async def test_each_protected_recipient_gets_its_own_copy(relay, capture) -> None:
    raw = build_message(sender=DR, to=["jane@mail.example"], cc=["guardian@mail.example"],
                        body=PHI_BODY)
    outcome = await relay.send(raw, now=NOW)
    assert sorted(s.rcpt_tos for s in capture.sent) == [("guardian@mail.example",),
                                                        ("jane@mail.example",)]
    ids = {r.portal_id for r in outcome.recipients}
    assert len(ids) == 2 and None not in ids


async def test_shadow_mode_delivers_unchanged_and_keeps_the_verdict(make_config) -> None:
    capture = MemoryTransport()
    relay = securemail.load(make_config(mode="shadow"), transport=capture)
    raw = build_message(sender=DR, to=["jane@mail.example"], cc=["mom@mail.example"])
    outcome = await relay.send(raw, now=NOW)
    await relay.close()
    assert [s.data for s in capture.sent] == [raw]
    assert outcome.verdict.mode.value == "shadow" and outcome.verdict.blocked
    assert {r.address: r.status for r in outcome.recipients} == {
        "jane@mail.example": Status.DELIVERED, "mom@mail.example": Status.DELIVERED}


async def test_restricted_marker_is_stripped_before_anything_leaves(relay, capture) -> None:
    raw = build_message(sender=DR, to=["nurse@riverside.example"],
                        headers={"X-Securemail-Restricted": "psychotherapy-notes"})
    await relay.send(raw, now=NOW)
    (sent,) = capture.sent
    assert b"x-securemail-restricted" not in sent.data.lower()
    assert email.message_from_bytes(sent.data)["Subject"] == "Message"


async def test_strip_mode_delivers_the_rest_and_tells_the_sender(make_config) -> None:
    capture = MemoryTransport()
    relay = securemail.load(make_config(unauthorised="strip"), transport=capture)
    raw = build_message(sender=DR, to=["nurse@riverside.example"], cc=["mom@mail.example"],
                        subject=PHI_SUBJECT, body=PHI_BODY)
    outcome = await relay.send(raw, now=NOW)
    await relay.close()
    assert {r.address: r.status for r in outcome.recipients} == {
        "nurse@riverside.example": Status.DELIVERED, "mom@mail.example": Status.BLOCKED}
    delivered, notice = capture.sent
    assert delivered.rcpt_tos == ("nurse@riverside.example",)
    assert notice.mail_from == "" and notice.rcpt_tos == (DR,)
    text = notice.data.decode()
    assert "mom@mail.example" in text and "unauthorised-recipient" in text
    assert "sertraline" not in text and "Jane Roe" not in text


class FlakyUpstream:
    """An upstream that is down for some recipients on the first attempt."""

    def __init__(self, down_for: Sequence[str]) -> None:
        self.down_for = set(down_for)
        self.accepted: list[tuple[str, bytes]] = []

    async def send(self, mail_from: str, rcpt_tos: Sequence[str], data: bytes) -> DeliveryResult:
        if self.down_for & set(rcpt_tos):
            self.down_for -= set(rcpt_tos)
            raise UpstreamUnavailable("connection refused")
        self.accepted.extend((r, data) for r in rcpt_tos)
        return DeliveryResult(accepted=tuple(rcpt_tos))

    async def close(self) -> None:
        return None


async def test_retry_after_451_delivers_each_recipient_exactly_once(config_path: Path) -> None:
    upstream = FlakyUpstream(down_for=["guardian@mail.example"])
    relay = securemail.load(config_path, transport=upstream)
    raw = build_message(sender=DR, to=["jane@mail.example", "nurse@riverside.example"],
                        cc=["guardian@mail.example"])
    with pytest.raises(TemporaryFailure) as exc:
        await relay.send(raw, now=NOW)
    assert exc.value.smtp_reply.startswith("451 4.3.0")
    first = sorted(r for r, _ in upstream.accepted)
    assert first == ["jane@mail.example", "nurse@riverside.example"]
    outcome = await relay.send(raw, now=NOW)  # the sender retries the same bytes
    await relay.close()
    assert sorted(r for r, _ in upstream.accepted) == [
        "guardian@mail.example", "jane@mail.example", "nurse@riverside.example"]
    assert {r.status for r in outcome.recipients} <= {Status.DELIVERED, Status.SEALED}


async def test_upstream_refusal_of_everyone_is_permanent(config_path: Path) -> None:
    class Refusing(MemoryTransport):
        async def send(self, mail_from, rcpt_tos, data):  # type: ignore[no-untyped-def]
            return DeliveryResult(accepted=(), refused={r: "550 5.1.1" for r in rcpt_tos})

    relay = securemail.load(config_path, transport=Refusing())
    raw = build_message(sender=DR, to=["nurse@riverside.example"])
    with pytest.raises(securemail.PermanentFailure) as exc:
        await relay.send(raw, now=NOW)
    await relay.close()
    assert exc.value.smtp_reply.startswith("550")


async def test_a_message_full_of_phi_leaves_no_trace_in_the_store(config_path: Path,
                                                                   tmp_path: Path) -> None:
    capture = MemoryTransport()
    relay = securemail.load(config_path, transport=capture)
    secret_words = ["sertraline", "Jane Roe", "04/12/1988", "123-45-6789", "F32.1"]
    portal_msg = build_message(sender=DR, to=["jane@mail.example"], subject=PHI_SUBJECT,
                               body=PHI_BODY)
    blocked = build_message(sender=DR, to=["jane@mail.example"], cc=["mom@mail.example"],
                            subject=PHI_SUBJECT, body=PHI_BODY)
    await relay.send(portal_msg, now=NOW)
    with pytest.raises(securemail.Blocked):
        await relay.send(blocked, now=NOW)
    await relay.close()
    data_dir = relay.settings.storage.sqlite_path.parent
    for f in data_dir.rglob("*"):
        if f.is_file():
            content = f.read_bytes()
            for word in secret_words:
                assert word.encode() not in content, (f.name, word)


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
async def test_everything_that_leaves_is_dkim_signed(make_config, tmp_path: Path,
                                                     kind: str) -> None:
    import dkim

    from securemail.dkim import generate_key

    pem, txt = generate_key(kind)
    (tmp_path / "dkim.key").write_bytes(pem)
    cfg = make_config(unauthorised="strip", extra="""
        [dkim]
        domain = "riverside.example"
        selector = "sm1"
        key_file = "dkim.key"
        """)
    capture = MemoryTransport()
    relay = securemail.load(cfg, transport=capture)
    raw = build_message(sender=DR, to=["nurse@riverside.example", "jane@mail.example"],
                        cc=["mom@mail.example"], body=PHI_BODY)
    await relay.send(raw, now=NOW)
    await relay.close()

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"sm1._domainkey.riverside.example."
        return txt.encode()

    # pass-through, portal notification, and the sender notice: all signed, all verify
    assert len(capture.sent) == 3
    for sent in capture.sent:
        assert sent.data.startswith(b"DKIM-Signature:")
        assert dkim.verify(sent.data, dnsfunc=dns), sent.rcpt_tos
        assert not dkim.verify(sent.data + b"tampered\r\n", dnsfunc=dns)


async def test_library_accepts_an_email_message_object(relay, capture) -> None:
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = DR, "nurse@riverside.example", "Rota"
    msg.set_content("Shift swap on Friday.")
    assert not relay.check(msg).blocked
    outcome = await relay.send(msg, now=NOW)
    assert outcome.delivered == ("nurse@riverside.example",)
    assert b"Shift swap on Friday." in capture.sent[0].data


async def test_bcc_list_never_leaves(relay, capture) -> None:
    raw = build_message(sender=DR, to=["vendor@supplies.example"],
                        bcc=["nurse@riverside.example", "office@riverside.example"],
                        body="Office closed Monday.")
    await relay.send(raw, now=NOW)
    assert capture.sent
    for sent in capture.sent:
        assert b"\nbcc:" not in sent.data.lower() and not sent.data.lower().startswith(b"bcc:")
        assert b"nurse@riverside.example" not in sent.data


async def test_audit_failure_after_delivery_does_not_duplicate_on_retry(
        config_path: Path) -> None:
    upstream = FlakyUpstream(down_for=[])
    relay = securemail.load(config_path, transport=upstream)
    real = relay.audit.record_outcome
    calls = 0

    async def failing_once(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:
            raise securemail.StoreError("database is locked")
        return await real(*args, **kwargs)

    relay.audit.record_outcome = failing_once
    raw = build_message(sender=DR, to=["nurse@riverside.example"])
    with pytest.raises(TemporaryFailure):
        await relay.send(raw, now=NOW)
    await relay.send(raw, now=NOW)
    await relay.close()
    assert [r for r, _ in upstream.accepted] == ["nurse@riverside.example"]


async def test_undelivered_notification_revokes_its_seal(config_path: Path) -> None:
    upstream = FlakyUpstream(down_for=["jane@mail.example"])
    relay = securemail.load(config_path, transport=upstream)
    raw = build_message(sender=DR, to=["jane@mail.example"], body=PHI_BODY)
    with pytest.raises(TemporaryFailure):
        await relay.send(raw, now=NOW)
    outcome = await relay.send(raw, now=NOW)
    rows = relay.portal.list(NOW)
    live = [r for r in rows if r.revoked is None]
    assert len(rows) == 2 and len(live) == 1
    assert live[0].id == outcome.recipients[0].portal_id
    await relay.close()
    conn = sqlite3.connect(relay.settings.storage.sqlite_path)
    bodies = [b for (b,) in conn.execute("SELECT body FROM audit_records WHERE kind != 'message'")]
    assert sum('"notified"' in b for b in bodies) == 1  # only the notice that left
    assert sum('"revoked"' in b for b in bodies) == 1
