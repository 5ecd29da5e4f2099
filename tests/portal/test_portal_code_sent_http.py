"""The landing page says when a code that still works was sent, so a second tab
(or a reload) can offer "I already have a code". It stays a read-only GET and
tells a link holder nothing more: not whether the code was used (that would
say the message was opened), nor about a code whose delivery failed."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from securemail.portal.service import PortalDenied
from tests.unit.portal_helpers import NOW, Rig, last_code
from tests.unit.portal_http import Clock, TestClient, csrf_token, seal


def offered(page: str) -> bool:
    """Whether the landing page offers "I already have a code" (the button is
    always there for the page's script; hidden when there is no such code)."""
    assert ">I already have a code</button>" in page
    return 'id="have-code" hidden' not in page


def codes(rig: Rig) -> list[tuple[object, ...]]:
    return list(rig.conn.execute("SELECT * FROM portal_codes ORDER BY rowid"))


def test_no_code_sent_no_offer(rig: Rig, client: TestClient) -> None:
    pid = seal(rig)
    page = client.get(f"/m/{pid}").text
    assert not offered(page) and ">Email me a code</button>" in page
    assert 'id="code-sent" data-valid-for="0" hidden' in page


def test_offer_while_the_code_works_and_the_get_changes_nothing(rig: Rig, client: TestClient,
                                                                clock: Clock) -> None:
    pid = seal(rig)
    token = csrf_token(client, pid)
    assert client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token}).status_code == 200
    clock[0] = NOW + timedelta(minutes=3)
    stored = codes(rig)
    page = client.get(f"/m/{pid}").text
    assert offered(page) and ">Email me a new code</button>" in page
    assert '<time id="code-sent-at" datetime="2026-03-02T09:30:00Z">09:30 UTC</time>' in page
    assert 'data-valid-for="420"' in page  # seven of its ten minutes left
    assert codes(rig) == stored and len(rig.transport.sent) == 1  # a GET sends nothing
    clock[0] = NOW + timedelta(minutes=10)
    assert not offered(client.get(f"/m/{pid}").text)  # expired: nothing to offer


def test_a_used_code_looks_the_same_until_it_would_have_expired(rig: Rig, client: TestClient,
                                                                clock: Clock) -> None:
    pid, other = seal(rig), seal(rig, message_id="<orig-2@riverside.example>")
    pages: dict[str, str] = {}
    for portal_id in (pid, other):
        token = csrf_token(client, portal_id)
        client.post(f"/m/{portal_id}/code", headers={"X-CSRF-Token": token})
        if portal_id == pid:
            r = client.post(f"/m/{pid}/verify", data={"code": last_code(rig.transport)},
                            headers={"X-CSRF-Token": token})
            assert r.status_code == 200
    # Another browser (no cookies) looks at both links a minute later.
    clock[0] = NOW + timedelta(minutes=1)
    client.cookies.clear()
    for portal_id in (pid, other):
        text = client.get(f"/m/{portal_id}").text
        pages[portal_id] = text.replace(portal_id, "ID").split('data-csrf="')[0]
        assert offered(text)
    assert pages[pid] == pages[other]  # opened or not: the page cannot tell


def test_no_offer_for_a_code_that_was_not_delivered(rig: Rig, client: TestClient,
                                                    clock: Clock) -> None:
    class Broken:
        name = "email"

        async def deliver(self, *, recipient: str, sender: str, code: str,
                          now: datetime) -> None:
            raise OSError("upstream down")

    pid = seal(rig)
    token = csrf_token(client, pid)
    assert client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token}).status_code == 200
    channel = rig.service.code_channel
    rig.service.code_channel = Broken()
    clock[0] = NOW + timedelta(minutes=1)
    r = client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token})
    assert r.json() == {"error": "delivery-failed"}
    # The first code was replaced by one that never arrived: nothing to offer.
    assert not offered(client.get(f"/m/{pid}").text)
    rig.service.code_channel = channel
    clock[0] = NOW + timedelta(minutes=2)
    client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token})
    assert offered(client.get(f"/m/{pid}").text)


async def test_service_code_sent(rig: Rig) -> None:
    pid = seal(rig)
    assert rig.service.code_sent(pid, now=NOW) is None
    await rig.service.request_code(pid, now=NOW)
    assert rig.service.code_sent(pid, now=NOW + timedelta(minutes=9)) == (
        NOW, NOW + timedelta(minutes=10))
    assert rig.service.code_sent(pid, now=NOW + timedelta(minutes=10)) is None
    rig.service.revoke(pid, NOW + timedelta(minutes=1))
    with pytest.raises(PortalDenied):
        rig.service.check(pid, NOW + timedelta(minutes=1))
    assert rig.service.code_sent(pid, now=NOW + timedelta(minutes=1)) is None
