"""The web app over HTTP (Starlette TestClient): headers, cookies, CSRF, limits."""

from __future__ import annotations

import re
from datetime import timedelta

from securemail.portal.app import CLIENT_POSTS
from tests.unit.portal_http import Clock, TestClient, seal
from tests.unit.portal_http import csrf_token as landing

from .portal_helpers import NOW, STAFF, Rig, last_code


def test_security_headers_on_every_kind_of_response(rig: Rig, client: TestClient) -> None:
    pid = seal(rig)
    for r in (client.get(f"/m/{pid}"), client.get("/m/nope"), client.get("/"),
              client.get("/static/portal.js"), client.get(f"/m/{pid}/sealed"),
              client.post(f"/m/{pid}/code")):
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self';" in csp
        assert "frame-ancestors 'none'" in csp and "http" not in csp  # no other origins
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["strict-transport-security"].startswith("max-age=")


def test_pages_have_no_inline_script(rig: Rig, client: TestClient) -> None:
    html = client.get(f"/m/{seal(rig)}").text
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts == [(' src="/static/portal.js"', "")]
    assert not re.search(r"<[^>]+\son[a-z]+=", html)  # no inline event handlers


def test_get_never_sends_or_creates_anything(rig: Rig, client: TestClient) -> None:
    pid = seal(rig)
    for _ in range(3):
        client.get(f"/m/{pid}")
        client.get(f"/m/{pid}/sealed")
    assert rig.transport.sent == []
    assert rig.conn.execute("SELECT COUNT(*) FROM portal_codes").fetchone()[0] == 0
    assert rig.audit.events == []


def test_csrf_is_required_on_every_post(rig: Rig, client: TestClient) -> None:
    pid = seal(rig)
    token = landing(client, pid)
    for path in ("code", "verify", "reply", "downloaded"):
        assert client.post(f"/m/{pid}/{path}", data={"code": "123456"}).status_code == 403
        assert client.post(f"/m/{pid}/{path}",
                           data={"csrf": "0" * 64, "code": "1"}).status_code == 403
    # The right token in the form body is not enough: it must be the header
    # (checked before the body is read).
    for path in ("code", "verify", "session", "reply", "downloaded"):
        r = client.post(f"/m/{pid}/{path}", data={"csrf": token, "code": "123456"})
        assert (r.status_code, r.json()) == (403, {"error": "csrf"})
    # A token for another message does not work either.
    other = seal(rig)
    assert client.post(f"/m/{other}/code", headers={"X-CSRF-Token": token}).status_code == 403
    # Nor from a browser without the cookie the token is bound to.
    client.cookies.clear()
    assert client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token}).status_code == 403
    assert rig.transport.sent == []


def test_cookies_are_host_prefixed_secure_strict(rig: Rig, client: TestClient) -> None:
    pid = seal(rig)
    r = client.get(f"/m/{pid}")
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("__Host-sm_browser=")
    # Lax: it only binds CSRF tokens, and must survive a second click on the link.
    for attr in ("HttpOnly", "Path=/", "SameSite=lax", "Secure"):
        assert attr in cookie
    assert "Domain" not in cookie
    token = re.search(r'data-csrf="([0-9a-f]+)"', r.text).group(1)  # type: ignore[union-attr]
    assert client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token}).json() == {"ok": True}
    r = client.post(f"/m/{pid}/verify", data={"code": last_code(rig.transport)},
                    headers={"X-CSRF-Token": token})
    assert r.status_code == 200
    session = r.headers["set-cookie"]
    # One session cookie per message; the server ends it (the cookie outlives it).
    assert session.startswith(f"__Host-sm_session-{pid}=") and "Max-Age=3600" in session
    for attr in ("HttpOnly", "Path=/", "SameSite=strict", "Secure"):
        assert attr in session
    sealed = client.get(f"/m/{pid}/sealed")
    assert sealed.status_code == 200
    assert set(sealed.json()) == {"ciphertext", "message_id", "recipient", "sealed_at"}


def test_session_timeout_over_http(rig: Rig, client: TestClient, clock: Clock) -> None:
    pid = seal(rig)
    token = landing(client, pid)
    client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token})
    client.post(f"/m/{pid}/verify", data={"code": last_code(rig.transport)},
                headers={"X-CSRF-Token": token})
    assert client.get(f"/m/{pid}/sealed").status_code == 200
    clock[0] = NOW + timedelta(minutes=16)
    r = client.get(f"/m/{pid}/sealed")
    assert r.status_code == 401 and r.json() == {"error": "no-session"}


def test_status_pages(rig: Rig, client: TestClient, clock: Clock) -> None:
    expired = seal(rig, NOW - timedelta(days=30))
    revoked = seal(rig)
    rig.service.revoke(revoked, NOW)
    assert client.get(f"/m/{expired}").status_code == 410
    assert "has expired" in client.get(f"/m/{expired}").text
    assert "withdrawn" in client.get(f"/m/{revoked}").text
    r = client.get("/m/AAAAAAAAAAAAAAAAAAAAAAAA")
    assert r.status_code == 404 and "not valid" in r.text
    assert client.get("/m/..%2f..%2fetc").status_code == 404


def test_per_client_rate_limit(rig: Rig, client: TestClient) -> None:
    pid = seal(rig)
    token = landing(client, pid)
    codes = [client.post(f"/m/{pid}/verify", data={"code": "1"},
                         headers={"X-CSRF-Token": token}).status_code
             for _ in range(CLIENT_POSTS)]
    assert 429 not in codes
    assert client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token}).status_code == 429
    assert rig.transport.sent == []


def test_locked_over_http(rig: Rig, client: TestClient) -> None:
    pid = seal(rig)
    token = landing(client, pid)
    client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token})
    wrong = f"{(int(last_code(rig.transport)) + 1) % 10**6:06d}"
    answers = [client.post(f"/m/{pid}/verify", data={"code": wrong},
                           headers={"X-CSRF-Token": token}).json()
               for _ in range(5)]
    assert answers[0] == {"error": "wrong-code", "remaining": 4}
    assert answers[-1] == {"error": "locked"}
    r = client.get(f"/m/{pid}")
    assert r.status_code == 423 and "locked" in r.text


def test_reply_limits(rig: Rig, client: TestClient) -> None:
    pid = seal(rig)
    token = landing(client, pid)
    client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token})
    client.post(f"/m/{pid}/verify", data={"code": last_code(rig.transport)},
                headers={"X-CSRF-Token": token})
    r = client.post(f"/m/{pid}/reply", data={"body": "   "}, headers={"X-CSRF-Token": token})
    assert r.status_code == 400
    big = b"x" * (10 * 1024 * 1024 + 1)
    r = client.post(f"/m/{pid}/reply", data={"body": "hi"}, headers={"X-CSRF-Token": token},
                    files={"attachment": ("big.bin", big, "application/octet-stream")})
    assert r.status_code == 413
    r = client.post(f"/m/{pid}/reply", data={"body": "hi"}, headers={"X-CSRF-Token": token},
                    files={"attachment": ("a.txt", b"hello", "text/plain")})
    assert r.json() == {"ok": True}
    assert rig.pipeline.sent[-1][2] == STAFF
