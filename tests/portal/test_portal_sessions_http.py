"""Sessions over HTTP (Starlette TestClient): one session per message, a
browser cookie that survives a cross-site click, sliding expiry with a cap."""

from __future__ import annotations

from datetime import timedelta

import pytest

from securemail.portal.app import session_cookie
from securemail.portal.service import SESSION_MAX_MINUTES, PortalDenied
from tests.unit.portal_helpers import NOW, Rig, last_code
from tests.unit.portal_http import Clock, TestClient, seal
from tests.unit.portal_http import csrf_token as csrf_of


def open_session(rig: Rig, client: TestClient, pid: str) -> str:
    token = csrf_of(client, pid)
    assert client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token}).json() == {"ok": True}
    r = client.post(f"/m/{pid}/verify", data={"code": last_code(rig.transport)},
                    headers={"X-CSRF-Token": token})
    assert r.status_code == 200, r.text
    return token


def test_two_messages_open_at_once_in_one_browser(rig: Rig, client: TestClient) -> None:
    a = seal(rig, message_id="<a@riverside.example>")
    b = seal(rig, message_id="<b@riverside.example>")
    token_a = open_session(rig, client, a)
    open_session(rig, client, b)
    # Opening B did not end A: both read, and A can still reply.
    assert client.get(f"/m/{a}/sealed").status_code == 200
    assert client.get(f"/m/{b}/sealed").status_code == 200
    r = client.post(f"/m/{a}/reply", data={"body": "about A"}, headers={"X-CSRF-Token": token_a})
    assert r.json() == {"ok": True}
    # Each session still opens only its own message.
    assert client.cookies.get(session_cookie(a)) != client.cookies.get(session_cookie(b))
    client.cookies.set(session_cookie(b), client.cookies.get(session_cookie(a)) or "")
    assert client.get(f"/m/{b}/sealed").json() == {"error": "no-session"}


def test_session_cookie_per_message_is_host_strict(rig: Rig, client: TestClient) -> None:
    pid = seal(rig)
    token = csrf_of(client, pid)
    client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token})
    r = client.post(f"/m/{pid}/verify", data={"code": last_code(rig.transport)},
                    headers={"X-CSRF-Token": token})
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"__Host-sm_session-{pid}=")
    for attr in ("HttpOnly", "Path=/", "SameSite=strict", "Secure",
                 f"Max-Age={SESSION_MAX_MINUTES * 60}"):
        assert attr in cookie
    assert "Domain" not in cookie
    assert r.json() == {"ok": True}
    r = client.post(f"/m/{pid}/session", headers={"X-CSRF-Token": token})
    assert r.json() == {"ok": True, "expires_in": 900, "final": False,
                        "max_minutes": SESSION_MAX_MINUTES}


def test_browser_cookie_is_lax_and_kept_on_a_second_visit(rig: Rig, client: TestClient) -> None:
    pid = seal(rig)
    r = client.get(f"/m/{pid}")
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("__Host-sm_browser=")
    for attr in ("HttpOnly", "Path=/", "SameSite=lax", "Secure"):
        assert attr in cookie
    first = client.cookies.get("__Host-sm_browser")
    token = csrf_of(client, pid)  # the link clicked again: the cookie came back
    assert client.cookies.get("__Host-sm_browser") == first
    assert client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token}).json() == {"ok": True}


def test_activity_extends_the_session_up_to_the_cap(rig: Rig, client: TestClient,
                                                    clock: Clock) -> None:
    pid = seal(rig)
    token = open_session(rig, client, pid)
    # Without activity the session ends after session_minutes (15).
    clock[0] = NOW + timedelta(minutes=10)
    r = client.post(f"/m/{pid}/session", headers={"X-CSRF-Token": token})
    assert r.json() == {"ok": True, "expires_in": 900, "final": False,
                        "max_minutes": SESSION_MAX_MINUTES}
    clock[0] = NOW + timedelta(minutes=20)  # past the first 15 minutes: still open
    assert client.get(f"/m/{pid}/sealed").status_code == 200
    for minutes in (24, 38, 52):
        clock[0] = NOW + timedelta(minutes=minutes)
        assert client.post(f"/m/{pid}/session", headers={"X-CSRF-Token": token}).status_code == 200
    r = client.post(f"/m/{pid}/session", headers={"X-CSRF-Token": token})
    assert r.json()["final"] is True
    assert r.json()["expires_in"] == (SESSION_MAX_MINUTES - 52) * 60
    clock[0] = NOW + timedelta(minutes=SESSION_MAX_MINUTES)
    assert client.get(f"/m/{pid}/sealed").json() == {"error": "no-session"}
    r = client.post(f"/m/{pid}/session", headers={"X-CSRF-Token": token})
    assert r.status_code == 401 and r.json() == {"error": "no-session"}


def test_keep_alive_needs_csrf_and_a_session(rig: Rig, client: TestClient) -> None:
    pid = seal(rig)
    token = csrf_of(client, pid)
    assert client.post(f"/m/{pid}/session", data={"csrf": "0" * 64}).status_code == 403
    assert client.post(f"/m/{pid}/session", headers={"X-CSRF-Token": token}).json() == {
        "error": "no-session"}


async def test_an_ended_session_is_not_revived(rig: Rig) -> None:
    pid = seal(rig)
    await rig.service.request_code(pid, now=NOW)
    token = rig.service.verify_code(pid, last_code(rig.transport), now=NOW)
    with pytest.raises(PortalDenied, match="no-session"):
        rig.service.keep_alive(pid, token, now=NOW + timedelta(minutes=15))
    with pytest.raises(PortalDenied, match="no-session"):
        rig.service.ciphertext(pid, token, now=NOW + timedelta(minutes=16))
