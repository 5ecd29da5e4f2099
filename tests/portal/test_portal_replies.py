"""Where a client's reply goes, and what happens when it cannot go anywhere:
through the real relay pipeline, real SMTP to the capture and (for what the
client sees) real headless chromium."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from securemail.errors import MalformedMessage
from securemail.portal.service import PortalDenied
from securemail.testing import build_message

from .conftest import CLIENT, STAFF, Portal

FRONT_DESK = "front.desk@riverside.example"
VERP = "bounces+jane.doe=mail.example@lists.riverside.example"
BODY = "Your session notes (diagnosis F41.1) are attached."


def phi_message(*, reply_to: str | None = None, sender: str | None = STAFF,
                message_id: str) -> bytes:
    raw = build_message(sender=STAFF, to=[CLIENT], subject="Session notes", body=BODY,
                        message_id=message_id)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if sender is None:
        lines = [line for line in lines if not line.lower().startswith(b"from:")]
    if reply_to:
        lines.append(b"Reply-To: " + reply_to.encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def relay_to_portal(portal: Portal, raw: bytes, mail_from: str) -> str:
    outcome = portal.run(portal.relay.send(raw, mail_from=mail_from, rcpt_tos=[CLIENT],
                                           now=datetime.now(UTC)))
    (result,) = outcome.recipients
    assert (result.action.value, result.status.value) == ("portal", "sealed")
    assert result.portal_id
    return result.portal_id


def session(portal: Portal, pid: str) -> str:
    before = len(portal.capture.messages)
    portal.run(portal.service.request_code(pid, now=datetime.now(UTC)))
    return portal.service.verify_code(pid, portal.code_for(before), now=datetime.now(UTC))


def reply(portal: Portal, pid: str, token: str, sender: Any = None) -> None:
    async def relay_sender(raw: bytes, mail_from: str, rcpt_to: str) -> None:
        await portal.relay.send(raw, mail_from=mail_from, rcpt_tos=[rcpt_to])

    portal.run(portal.service.reply(pid, token, subject="Re: Session notes", body="Thanks!",
                                    attachment=None, now=datetime.now(UTC),
                                    reply_sender=sender or relay_sender))


def notice_for(portal: Portal, pid: str) -> str:
    got = portal.capture.wait_for(lambda m: pid.encode() in m.data.replace(b"=\r\n", b""))
    text = got.message.get_body(preferencelist=("plain",))
    assert text is not None
    return str(text.get_content())


def test_reply_goes_to_reply_to_not_the_verp_envelope_sender(portal: Portal) -> None:
    pid = relay_to_portal(portal, phi_message(reply_to=FRONT_DESK, message_id="<verp@r.example>"),
                          VERP)
    # The notice names the author (From), not the bounce address.
    text = notice_for(portal, pid)
    assert f"sent by {STAFF}" in " ".join(text.split())
    assert "bounces+" not in text
    before = len(portal.capture.messages)
    reply(portal, pid, session(portal, pid))
    got = portal.capture.wait_for(lambda m: m in portal.capture.messages[before:]
                                  and b"Thanks!" in m.data)
    assert got.rcpt_tos == [FRONT_DESK]
    assert got.message["To"] == FRONT_DESK


def test_reply_without_reply_to_goes_to_from(portal: Portal) -> None:
    pid = relay_to_portal(portal, phi_message(message_id="<verp2@r.example>"), VERP)
    before = len(portal.capture.messages)
    reply(portal, pid, session(portal, pid))
    got = portal.capture.wait_for(lambda m: m in portal.capture.messages[before:]
                                  and b"Thanks!" in m.data)
    assert got.rcpt_tos == [STAFF]


def test_null_sender_is_sealed_notified_and_answerable(portal: Portal) -> None:
    """MAIL FROM:<> (an auto-reply): sealed and notified, not a 451 loop."""
    pid = relay_to_portal(portal, phi_message(message_id="<null@r.example>"), "")
    assert f"sent by {STAFF}" in " ".join(notice_for(portal, pid).split())
    row = portal.service.get(pid)
    assert row is not None and row.reply_address == STAFF
    before = len(portal.capture.messages)
    reply(portal, pid, session(portal, pid))
    got = portal.capture.wait_for(lambda m: m in portal.capture.messages[before:]
                                  and b"Thanks!" in m.data)
    assert got.rcpt_tos == [STAFF]


def test_failed_notice_leaves_no_active_sealed_row(portal: Portal,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime.now(UTC)
    ids_before = {r.id for r in portal.service.list(now)}

    def broken(*args: Any, **kwargs: Any) -> bytes:
        raise IndexError("template trouble")

    monkeypatch.setattr(portal.service, "notification", broken)
    with pytest.raises(Exception):  # noqa: B017 (a temporary failure, whichever)
        portal.run(portal.relay.send(phi_message(message_id="<orphan@r.example>"),
                                     mail_from=STAFF, rcpt_tos=[CLIENT], now=now))
    new = [r for r in portal.service.list(now) if r.id not in ids_before]
    assert [r.state(now) for r in new if r.state(now) == "active"] == []


def test_permanently_refused_reply_says_so_and_leaves_no_active_row(portal: Portal) -> None:
    pid = relay_to_portal(portal, phi_message(message_id="<blocked@r.example>"), STAFF)
    token = session(portal, pid)

    async def refusing(raw: bytes, mail_from: str, rcpt_to: str) -> None:
        raise MalformedMessage("blocked by policy")

    async def outage(raw: bytes, mail_from: str, rcpt_to: str) -> None:
        raise OSError("upstream down")

    now = datetime.now(UTC)
    with pytest.raises(PortalDenied) as denied:
        reply(portal, pid, token, refusing)
    assert denied.value.reason == "undeliverable"
    with pytest.raises(PortalDenied) as denied:
        reply(portal, pid, token, outage)
    assert denied.value.reason == "delivery-failed"
    replies = [r for r in portal.service.list(now) if r.parent_id == pid]
    assert len(replies) == 2
    assert [r.state(now) for r in replies] == ["revoked", "revoked"]
    assert all(portal.service.store.ciphertext(r.id) is None for r in replies)
    # Each failed attempt is on record, linked to the message and the client
    # (before, a blocked reply left only a "message" record naming the sender).
    import json

    from securemail.audit.store import iter_records

    failed = [json.loads(r.body) for r in iter_records(portal.relay.db)]
    failed = [b for b in failed if b["kind"] == "reply-failed" and b.get("portal_id") == pid]
    assert [(b["recipient"], b["reply_to"], b["reason_code"]) for b in failed] == [
        (CLIENT, STAFF, "undeliverable"), (CLIENT, STAFF, "delivery-failed")]


@pytest.mark.browser
def test_page_without_reply_address_offers_no_reply(portal: Portal, page: Any) -> None:
    raw = phi_message(sender=None, message_id="<noaddr@r.example>")
    now = datetime.now(UTC)
    sealed = portal.service.seal(raw, message_id="<noaddr@r.example>", sender="",
                                 recipient=CLIENT, now=now)
    assert portal.service.get(sealed.id).reply_address == ""  # type: ignore[union-attr]
    # The notice can still be built and names a real From address.
    note = portal.service.notification(sealed, sender="", recipient=CLIENT, now=now)
    assert b"From: Riverside Counselling <postmaster@riverside.example>" in note
    portal.run(portal.transport.send("postmaster@riverside.example", [CLIENT], note))
    link = portal.link_from_notification(sealed.id)
    page.goto(link)
    portal.enter_code(page)
    page.locator("#reply-none").wait_for(state="visible")
    assert "contact Riverside Counselling another way" in page.locator("#reply-none").inner_text()
    assert page.locator("#reply-form").count() == 0
    with pytest.raises(PortalDenied) as denied:
        reply(portal, sealed.id, session(portal, sealed.id))
    assert denied.value.reason == "no-reply"


@pytest.mark.browser
def test_refused_reply_tells_the_client_to_use_another_way(portal: Portal, page: Any,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    sealed, link = portal.seal_and_notify(phi_message(message_id="<refused@r.example>"),
                                          message_id="<refused@r.example>")

    async def refusing(*args: Any, **kwargs: Any) -> Any:
        raise PortalDenied("undeliverable")

    monkeypatch.setattr(portal.service, "reply", refusing)
    page.goto(link)
    portal.enter_code(page)
    page.fill("#reply-body", "Hello")
    page.get_by_role("button", name="Send reply").click()
    error = page.locator("#reply-error")
    error.wait_for(state="visible")
    assert "could not be delivered" in error.inner_text()
    assert "contact the practice another way" in error.inner_text()
    assert "try again in a minute" not in error.inner_text()
    assert page.locator("#reply-send").is_enabled()


def test_audit_mail_from_is_the_envelope_sender_on_every_record(portal: Portal) -> None:
    """The message record and the signed ``notified`` event of one message name
    the same envelope sender (not the unauthenticated From the client is shown);
    the ``replied`` event says where the reply went."""
    import json

    from securemail.audit.store import iter_records

    pid = relay_to_portal(portal, phi_message(reply_to=FRONT_DESK, message_id="<env@r.example>"),
                          VERP)
    bodies = [json.loads(r.body) for r in iter_records(portal.relay.db)]
    (notified,) = [b for b in bodies if b.get("portal_id") == pid and b["kind"] == "notified"]
    (message,) = [b for b in bodies if b.get("message_id") == "<env@r.example>"
                  and b["kind"] == "message"]
    assert notified["mail_from"] == message["mail_from"] == VERP
    assert portal.service.get(pid).sender == STAFF  # type: ignore[union-attr]
    reply(portal, pid, session(portal, pid))
    bodies = [json.loads(r.body) for r in iter_records(portal.relay.db)]
    (replied,) = [b for b in bodies if b.get("portal_id") == pid and b["kind"] == "replied"]
    assert replied["reply_to"] == FRONT_DESK and replied["recipient"] == CLIENT


OTHER_CLIENT = "bob.smith@mail.example"  # not the practice's


def test_a_reply_to_naming_someone_outside_the_practice_is_not_where_replies_go(
        portal: Portal) -> None:
    # A Reply-To at another client (or a personal mailbox) used to receive the
    # client's answer, sealed to them "from the practice": replies go only to
    # the practice. Here the author (From) is staff: the reply goes there.
    pid = relay_to_portal(portal, phi_message(reply_to=OTHER_CLIENT,
                                              message_id="<rt-other@r.example>"), STAFF)
    row = portal.service.get(pid)
    assert row is not None and row.reply_address == STAFF
    before = len(portal.capture.messages)
    reply(portal, pid, session(portal, pid))
    got = portal.capture.wait_for(lambda m: m in portal.capture.messages[before:]
                                  and b"Thanks!" in m.data)
    assert got.rcpt_tos == [STAFF]
    assert not any(OTHER_CLIENT in m.rcpt_tos for m in portal.capture.messages)


def test_a_message_with_no_practice_address_to_answer_takes_no_reply(portal: Portal) -> None:
    now = datetime.now(UTC)
    raw = phi_message(reply_to=OTHER_CLIENT, message_id="<rt-none@r.example>")
    raw = raw.replace(f"From: {STAFF}".encode(), b"From: helper@mail.example")
    sealed = portal.service.seal(raw, message_id="<rt-none@r.example>",
                                 sender="helper@mail.example", recipient=CLIENT, now=now)
    assert portal.service.get(sealed.id).reply_address == ""  # type: ignore[union-attr]
    # A row stored with an outside reply address (sealed before this check, or
    # by a library caller) is not answered there either.
    old = portal.service.seal(raw, message_id="<rt-old@r.example>", sender=STAFF,
                              recipient=CLIENT, now=now, reply_to=OTHER_CLIENT)
    before = len(portal.capture.messages)
    for pid in (sealed.id, old.id):
        with pytest.raises(PortalDenied) as denied:
            reply(portal, pid, session(portal, pid))
        assert denied.value.reason == "no-reply"
    assert not any(OTHER_CLIENT in m.rcpt_tos for m in portal.capture.messages[before:])
