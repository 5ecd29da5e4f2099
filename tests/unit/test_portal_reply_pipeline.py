"""A client's reply leaves only through the relay pipeline (``reply_sender``),
the audit says where it went, and the page says so before it is sent."""

from __future__ import annotations

import email
import hashlib
import re
from collections.abc import Iterator

import pytest

from securemail.portal.app import create_app
from securemail.portal.service import PortalDenied
from securemail.testing import build_message
from tests.unit.portal_http import TestClient, seal

from .portal_helpers import CLIENT, NOW, STAFF, Rig, last_code

OUTSIDER = "outsider@elsewhere.example"
FRONT_DESK = "front.desk@riverside.example"


def with_reply_to(value: str) -> bytes:
    # Written out by hand: the header goes on the wire exactly as given.
    return (f"From: {STAFF}\r\nTo: {CLIENT}\r\nSubject: Your results\r\nReply-To: {value}\r\n"
            "Message-ID: <rt@riverside.example>\r\n\r\nMRN 99812\r\n").encode()


def client_for(rig: Rig, *, wired: bool) -> Iterator[TestClient]:
    app = create_app(rig.service, reply_sender=rig.pipeline if wired else None, now=lambda: NOW)
    with TestClient(app, base_url="https://testserver") as c:
        yield c


@pytest.fixture
def unwired(rig: Rig) -> Iterator[TestClient]:
    yield from client_for(rig, wired=False)


@pytest.fixture
def wired(rig: Rig) -> Iterator[TestClient]:
    yield from client_for(rig, wired=True)


def open_session(rig: Rig, client: TestClient, pid: str) -> tuple[str, str]:
    page = client.get(f"/m/{pid}")
    m = re.search(r'data-csrf="([0-9a-f]+)"', page.text)
    assert m
    token = m.group(1)
    assert client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token}).json() == {"ok": True}
    r = client.post(f"/m/{pid}/verify", data={"code": last_code(rig.transport)},
                    headers={"X-CSRF-Token": token})
    assert r.json() == {"ok": True}
    return token, page.text


def test_app_without_reply_sender_offers_no_reply_and_sends_nothing(
        rig: Rig, unwired: TestClient) -> None:
    pid = seal(rig, raw=with_reply_to(OUTSIDER))
    token, page = open_session(rig, unwired, pid)
    assert 'id="reply-form"' not in page
    assert "Replies cannot be sent from this page" in page
    sent_before = list(rig.transport.sent)
    r = unwired.post(f"/m/{pid}/reply", data={"body": "I am not coping, please call me"},
                     headers={"X-CSRF-Token": token})
    assert (r.status_code, r.json()) == (409, {"error": "no-reply"})
    # Nothing went upstream (to the outsider or anyone), nothing was sealed as a reply.
    assert rig.transport.sent == sent_before
    assert all(OUTSIDER not in m.rcpt_tos for m in rig.transport.sent)
    assert [r.kind for r in rig.service.list(NOW)] == ["message"]
    assert "replied" not in rig.audit.kinds()


async def test_service_reply_without_reply_sender_is_refused(rig: Rig) -> None:
    pid = seal(rig, raw=with_reply_to(OUTSIDER))
    await rig.service.request_code(pid, now=NOW)
    token = rig.service.verify_code(pid, last_code(rig.transport), now=NOW)
    sent_before = len(rig.transport.sent)
    with pytest.raises(PortalDenied) as denied:
        await rig.service.reply(pid, token, subject="Re", body="hello", attachment=None,
                                now=NOW, reply_sender=None)
    assert denied.value.reason == "no-reply"
    assert len(rig.transport.sent) == sent_before
    assert [r.kind for r in rig.service.list(NOW)] == ["message"]


def test_reply_goes_to_the_pipeline_and_the_audit_says_where(rig: Rig, wired: TestClient) -> None:
    pid = seal(rig, raw=with_reply_to(FRONT_DESK))
    token, page = open_session(rig, wired, pid)
    assert 'id="reply-form"' in page
    upstream_before = len(rig.transport.sent)
    r = wired.post(f"/m/{pid}/reply", data={"body": "Thanks"}, headers={"X-CSRF-Token": token})
    assert r.json() == {"ok": True}
    assert len(rig.transport.sent) == upstream_before  # not around the pipeline
    ((raw, mail_from, to),) = rig.pipeline.sent
    assert to == FRONT_DESK and b"Thanks" in raw
    (replied,) = [e for e in rig.audit.events if e["kind"] == "replied"]
    assert replied["reply_to"] == FRONT_DESK
    assert replied["recipient"] == CLIENT
    assert "Thanks" not in str(replied)
    # It names the reply as the reply's own message record does (sent as dr -> dr).
    assert replied["message_sha256"] == hashlib.sha256(raw).hexdigest()
    assert replied["message_id"] == email.message_from_bytes(raw)["Message-ID"].strip()


@pytest.mark.parametrize(("header", "shown"), [
    ('"Front Desk" <front.desk@riverside.example>',
     "Front Desk &lt;front.desk@riverside.example&gt;"),
    ("front.desk@riverside.example", "<strong>front.desk@riverside.example</strong>"),
    ('"Desk &amp; Co" <front.desk@riverside.example>',
     "Desk &amp;amp; Co &lt;front.desk@riverside.example&gt;"),
    ("=?utf-8?q?Caf=C3=A9_=E2=80=AE_Desk?= <front.desk@riverside.example>",
     "Café Desk &lt;front.desk@riverside.example&gt;"),
    # A name holding markup or another address is not shown: only the address.
    ('"<b>Desk</b>" <front.desk@riverside.example>',
     "<strong>front.desk@riverside.example</strong>"),
    ('"Dr Rivera <dr.rivera@riverside.example>" <front.desk@riverside.example>',
     "<strong>front.desk@riverside.example</strong>"),
    ("=?utf-8?q?Dr_Rivera_=3Cdr=2Erivera=40riverside=2Eexample=3E?="
     " <front.desk@riverside.example>", "<strong>front.desk@riverside.example</strong>"),
])
def test_page_says_where_the_reply_goes(rig: Rig, wired: TestClient, header: str,
                                        shown: str) -> None:
    pid = seal(rig, raw=with_reply_to(header))
    page = wired.get(f"/m/{pid}").text
    m = re.search(r'<p id="reply-to">Your reply goes to (.*?)\.</p>', page)
    assert m, page
    assert shown in m.group(1)
    assert "<b>" not in m.group(1)


def test_page_names_from_when_there_is_no_reply_to(rig: Rig, wired: TestClient) -> None:
    raw = build_message(sender=f'"Dr. Rivera" <{STAFF}>', to=[CLIENT], subject="s", body="b",
                        message_id="<from@riverside.example>")
    pid = seal(rig, raw=raw)
    page = wired.get(f"/m/{pid}").text
    assert f"Your reply goes to <strong>Dr. Rivera &lt;{STAFF}&gt;</strong>" in page


def test_a_raw_utf8_name_is_shown_as_written(rig: Rig, wired: TestClient) -> None:
    # SMTPUTF8 mail carries 8-bit header bytes, not encoded words.
    raw = (f'From: "Dr José Rivera" <{STAFF}>\r\nTo: {CLIENT}\r\nSubject: s\r\n'
           "Message-ID: <u8@riverside.example>\r\n\r\nb\r\n").encode()
    pid = seal(rig, raw=raw)
    page = wired.get(f"/m/{pid}").text
    assert f"Your reply goes to <strong>Dr José Rivera &lt;{STAFF}&gt;</strong>" in page


def test_a_folded_from_keeps_its_name(rig: Rig, wired: TestClient) -> None:
    # Long or non-ASCII From headers are folded over two lines by mail programs.
    raw = (f'From: "Dr. Ana Rivera, PsyD"\r\n <{STAFF}>\r\nTo: {CLIENT}\r\nSubject: s\r\n'
           "Message-ID: <fold@riverside.example>\r\n\r\nb\r\n").encode()
    pid = seal(rig, raw=raw)
    page = wired.get(f"/m/{pid}").text
    assert f"Your reply goes to <strong>Dr. Ana Rivera, PsyD &lt;{STAFF}&gt;</strong>" in page
