"""Portal POSTs over HTTP (Starlette TestClient) and in real chromium: download
audit range, IPv6 rate-limit keys, stale codes, network drops."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from securemail.portal.app import CLIENT_POSTS, _client_key, create_app
from securemail.portal.codes import CODE_MINUTES
from securemail.testing import build_message
from tests.unit.portal_helpers import CLIENT, NOW, STAFF, Rig, last_code, original
from tests.unit.portal_http import Clock, TestClient, csrf_token

from .conftest import Portal


class ClientFromHeader:
    """Lets a test choose the peer address of each request (``x-test-peer``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            peer = dict(scope["headers"]).get(b"x-test-peer")
            if peer:
                scope = dict(scope, client=(peer.decode(), 40000))
        await self.app(scope, receive, send)


@pytest.fixture
def client(rig: Rig, clock: Clock) -> Iterator[TestClient]:
    app = ClientFromHeader(create_app(rig.service, now=lambda: clock[0]))
    with TestClient(app, base_url="https://testserver") as c:
        yield c


landing = csrf_token



def open_session(rig: Rig, client: TestClient, raw: bytes) -> tuple[str, str]:
    pid = rig.service.seal(raw, message_id="<orig-1@riverside.example>", sender=STAFF,
                           recipient=CLIENT, now=NOW).id
    token = landing(client, pid)
    client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token})
    r = client.post(f"/m/{pid}/verify", data={"code": last_code(rig.transport)},
                    headers={"X-CSRF-Token": token})
    assert r.status_code == 200
    return pid, token


def test_downloaded_index_is_range_checked(rig: Rig, client: TestClient) -> None:
    pid, token = open_session(rig, client, original())  # one attachment
    for bad in ("-1", "1", "99999999999", "1e3", " 0", "+0", ""):
        r = client.post(f"/m/{pid}/downloaded", data={"index": bad},
                        headers={"X-CSRF-Token": token})
        assert r.status_code == 400, bad
    assert client.post(f"/m/{pid}/downloaded", headers={"X-CSRF-Token": token}).status_code == 400
    assert client.post(f"/m/{pid}/downloaded",
                       data={"index": "0"}, headers={"X-CSRF-Token": token}).json() == {"ok": True}
    recorded = [e["attachment_index"] for e in rig.audit.events if e["kind"] == "downloaded"]
    assert recorded == [0]


def test_downloaded_on_a_message_without_attachments(rig: Rig, client: TestClient) -> None:
    raw = build_message(sender=STAFF, to=[CLIENT], subject="s", body="b",
                        message_id="<orig-1@riverside.example>")
    pid, token = open_session(rig, client, raw)
    assert client.post(f"/m/{pid}/downloaded",
                       data={"index": "0"}, headers={"X-CSRF-Token": token}).status_code == 400
    assert not [e for e in rig.audit.events if e["kind"] == "downloaded"]


def test_ipv6_clients_are_limited_per_64(rig: Rig, client: TestClient) -> None:
    pid = rig.service.seal(original(), message_id="<orig-1@riverside.example>", sender=STAFF,
                           recipient=CLIENT, now=NOW).id
    token = landing(client, pid)
    # Every request from a different address of one /64.
    codes = [client.post(f"/m/{pid}/verify", data={"code": "1"},
                         headers={"X-CSRF-Token": token,
                                  "x-test-peer": f"2001:db8:1:2::{n:x}"}).status_code
             for n in range(1, CLIENT_POSTS + 1)]
    assert 429 not in codes
    r = client.post(f"/m/{pid}/verify", data={"code": "1"},
                    headers={"X-CSRF-Token": token,
                             "x-test-peer": "2001:db8:1:2:ffff:ffff:ffff:fffe"})
    assert r.status_code == 429
    # Another /64 (and an IPv4 client) has its own allowance.
    r = client.post(f"/m/{pid}/verify", data={"code": "1"},
                    headers={"X-CSRF-Token": token, "x-test-peer": "2001:db8:1:3::1"})
    assert r.status_code != 429


def test_client_key() -> None:
    assert _client_key("2001:db8:1:2:aaaa::1") == _client_key("2001:db8:1:2::ffff")
    assert _client_key("2001:db8:1:2::1") != _client_key("2001:db8:1:3::1")
    assert _client_key("::ffff:192.0.2.7") == _client_key("192.0.2.7") == "192.0.2.7"
    assert _client_key("192.0.2.7") != _client_key("192.0.2.8")
    assert _client_key("") == "unknown"


def test_replaced_and_expired_codes_are_not_counted_as_guesses(rig: Rig, client: TestClient,
                                                               clock: Clock) -> None:
    pid = rig.service.seal(original(), message_id="<orig-1@riverside.example>", sender=STAFF,
                           recipient=CLIENT, now=NOW).id
    token = landing(client, pid)
    client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token})
    first = last_code(rig.transport)
    client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token})
    second = last_code(rig.transport)
    if first == second:
        pytest.skip("the two random codes happened to be equal")
    # The replaced code: a kinder message, no failure counted.
    r = client.post(f"/m/{pid}/verify", data={"code": first}, headers={"X-CSRF-Token": token})
    assert (r.status_code, r.json()) == (400, {"error": "stale-code"})
    assert rig.service.get(pid).failed_codes == 0  # type: ignore[union-attr]
    # A code this message never had is still a wrong guess.
    never = next(f"{n:06d}" for n in range(10**6) if f"{n:06d}" not in (first, second))
    r = client.post(f"/m/{pid}/verify", data={"code": never}, headers={"X-CSRF-Token": token})
    assert r.json() == {"error": "wrong-code", "remaining": 4}
    # The newest code, once expired, is stale too.
    clock[0] = NOW + timedelta(minutes=CODE_MINUTES, seconds=1)
    r = client.post(f"/m/{pid}/verify", data={"code": second}, headers={"X-CSRF-Token": token})
    assert r.json() == {"error": "stale-code"}
    assert rig.service.get(pid).failed_codes == 1  # type: ignore[union-attr]
    assert [e["kind"] for e in rig.audit.events].count("code-failed") == 1
    # Stale codes never open anything, and a fresh code still works.
    client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token})
    r = client.post(f"/m/{pid}/verify", data={"code": last_code(rig.transport)},
                    headers={"X-CSRF-Token": token})
    assert r.json() == {"ok": True}


def test_stale_codes_do_not_help_brute_force(rig: Rig, client: TestClient) -> None:
    """Five guesses that are not codes of this message still lock it."""
    pid = rig.service.seal(original(), message_id="<orig-1@riverside.example>", sender=STAFF,
                           recipient=CLIENT, now=NOW).id
    token = landing(client, pid)
    client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token})
    right = last_code(rig.transport)
    wrong = [f"{(int(right) + n) % 10**6:06d}" for n in range(1, 6)]
    answers = [client.post(f"/m/{pid}/verify", data={"code": w},
                           headers={"X-CSRF-Token": token}).json()["error"]
               for w in wrong]
    assert answers == ["wrong-code"] * 4 + ["locked"]


@pytest.mark.browser
def test_stale_code_message_in_the_browser(portal: Portal, page: Any) -> None:
    raw = build_message(sender=STAFF, to=[CLIENT], subject="s", body="b",
                        message_id="<stale@riverside.example>")
    sealed, link = portal.seal_and_notify(raw, message_id="<stale@riverside.example>")
    page.goto(link)
    before = len(portal.capture.messages)
    page.get_by_role("button", name="Email me a code").click()
    page.locator("#code").wait_for(state="visible")
    first = portal.code_for(before)
    before = len(portal.capture.messages)
    page.get_by_role("button", name="Send me a new code").click()
    second = portal.code_for(before)
    if first == second:
        pytest.skip("the two random codes happened to be equal")
    page.fill("#code", first)
    page.get_by_role("button", name="Open message").click()
    error = page.locator("#code-error")
    error.wait_for(state="visible")
    assert "expired, or a newer code was sent" in error.inner_text()
    assert "not right" not in error.inner_text()
    assert portal.service.get(sealed.id).failed_codes == 0  # type: ignore[union-attr]


@pytest.mark.browser
def test_network_drop_during_send_shows_an_error_and_reenables(portal: Portal,
                                                               page: Any) -> None:
    raw = build_message(sender=STAFF, to=[CLIENT], subject="s", body="b",
                        message_id="<drop@riverside.example>")
    _, link = portal.seal_and_notify(raw, message_id="<drop@riverside.example>")
    page.goto(link)
    # Asking for a code while the connection is down.
    page.route("**/code", lambda route: route.abort("connectionreset"))
    page.get_by_role("button", name="Email me a code").click()
    start_error = page.locator("#start-error")
    start_error.wait_for(state="visible")
    assert "could not reach the server" in start_error.inner_text()
    assert page.get_by_role("button", name="Email me a code").is_enabled()
    page.unroute("**/code")
    before = len(portal.capture.messages)
    page.get_by_role("button", name="Email me a code").click()
    page.locator("#code").wait_for(state="visible")
    page.fill("#code", portal.code_for(before))
    page.get_by_role("button", name="Open message").click()
    page.locator("#reply-body").wait_for(state="visible")
    # Sending a reply while the connection is down.
    page.route("**/reply", lambda route: route.abort("internetdisconnected"))
    page.fill("#reply-body", "Hello")
    page.get_by_role("button", name="Send reply").click()
    error = page.locator("#reply-error")
    error.wait_for(state="visible")
    assert "could not reach the server" in error.inner_text()
    assert page.locator("#reply-send").is_enabled()
