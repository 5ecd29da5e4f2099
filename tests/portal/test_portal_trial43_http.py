"""Over HTTP, what the round-43 trial's fixes need from the server: "Sign out"
ends the session (a POST checked like every other), a code of the wrong length
is refused without costing a try, the limit of codes an hour is said as such,
and the landing page says a code works only once."""

from __future__ import annotations

from securemail.portal.app import session_cookie
from securemail.portal.service import CODES_PER_HOUR, MAX_FAILED_CODES
from tests.unit.portal_helpers import Rig, last_code
from tests.unit.portal_http import TestClient, csrf_token, seal


def open_session(rig: Rig, client: TestClient, pid: str) -> str:
    token = csrf_token(client, pid)
    assert client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token}).json() == {"ok": True}
    r = client.post(f"/m/{pid}/verify", data={"code": last_code(rig.transport)},
                    headers={"X-CSRF-Token": token})
    assert r.json() == {"ok": True}
    assert client.get(f"/m/{pid}/sealed").status_code == 200
    return token


def test_sign_out_ends_the_session_and_clears_its_cookie(rig: Rig, client: TestClient) -> None:
    pid = seal(rig)
    token = open_session(rig, client, pid)
    session = client.cookies.get(session_cookie(pid))
    assert session
    r = client.post(f"/m/{pid}/signout", headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and r.json() == {"ok": True}
    cleared = r.headers["set-cookie"]
    assert cleared.startswith(f"{session_cookie(pid)}=")
    for attr in ("Max-Age=0", "Path=/", "Secure", "HttpOnly", "SameSite=strict"):
        assert attr in cleared
    assert client.cookies.get(session_cookie(pid)) is None
    assert client.get(f"/m/{pid}/sealed").json() == {"error": "no-session"}
    # Ended on the server, not only in this browser: the old cookie opens nothing.
    client.cookies.set(session_cookie(pid), session)
    assert client.get(f"/m/{pid}/sealed").status_code == 401
    assert client.post(f"/m/{pid}/session",
                       headers={"X-CSRF-Token": token}).json() == {"error": "no-session"}
    # Signing out again (another tab) is fine.
    assert client.post(f"/m/{pid}/signout", headers={"X-CSRF-Token": token}).json() == \
        {"ok": True}


def test_sign_out_needs_the_csrf_token(rig: Rig, client: TestClient) -> None:
    pid = seal(rig)
    open_session(rig, client, pid)
    for headers in ({}, {"X-CSRF-Token": "0" * 64}):
        r = client.post(f"/m/{pid}/signout", headers=headers)
        assert r.status_code == 403 and r.json() == {"error": "csrf"}
    # A cross-site form post carries no header: refused, and the session lives on.
    assert client.get(f"/m/{pid}/sealed").status_code == 200


def test_sign_out_ends_only_its_own_messages_session(rig: Rig, client: TestClient) -> None:
    a = seal(rig, message_id="<a@riverside.example>")
    b = seal(rig, message_id="<b@riverside.example>")
    token_a = open_session(rig, client, a)
    open_session(rig, client, b)
    assert client.post(f"/m/{a}/signout", headers={"X-CSRF-Token": token_a}).json() == \
        {"ok": True}
    assert client.get(f"/m/{a}/sealed").status_code == 401
    assert client.get(f"/m/{b}/sealed").status_code == 200
    # B's token, sent as A's cookie, cannot end B's session from A's sign out.
    token_b_cookie = client.cookies.get(session_cookie(b)) or ""
    client.cookies.set(session_cookie(a), token_b_cookie)
    client.post(f"/m/{a}/signout", headers={"X-CSRF-Token": token_a})
    assert client.get(f"/m/{b}/sealed").status_code == 200


def test_a_code_of_the_wrong_length_costs_no_try(rig: Rig, client: TestClient) -> None:
    pid = seal(rig)
    token = csrf_token(client, pid)
    client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token})
    code = last_code(rig.transport)
    for typo in (code[:5], code + "1", code[:4]):
        r = client.post(f"/m/{pid}/verify", data={"code": typo}, headers={"X-CSRF-Token": token})
        assert r.status_code == 400 and r.json() == {"error": "code-length"}
    row = rig.service.get(pid)
    assert row is not None and row.failed_codes == 0
    # A six-digit wrong code still counts.
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    r = client.post(f"/m/{pid}/verify", data={"code": wrong}, headers={"X-CSRF-Token": token})
    assert r.json() == {"error": "wrong-code", "remaining": MAX_FAILED_CODES - 1}
    # Spaces do not count as digits.
    spaced = code[:3] + " " + code[3:]
    r = client.post(f"/m/{pid}/verify", data={"code": spaced}, headers={"X-CSRF-Token": token})
    assert r.json() == {"ok": True}


def test_the_limit_of_codes_an_hour_is_said_as_such(rig: Rig, client: TestClient) -> None:
    pid = seal(rig)
    token = csrf_token(client, pid)
    for _ in range(CODES_PER_HOUR):
        assert client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token}).status_code == 200
    r = client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token})
    assert r.status_code == 429
    assert r.json() == {"error": "rate-limited", "codes_per_hour": CODES_PER_HOUR}


def test_landing_says_a_code_works_once(rig: Rig, client: TestClient) -> None:
    pid = seal(rig)
    token = csrf_token(client, pid)
    client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token})
    page = client.get(f"/m/{pid}").text
    assert ("A code works only once: if you already used it, for example on another device, "
            "ask for a new code here.") in page
    assert "It works once, for 10 minutes." in page


def test_sign_out_is_never_refused_to_a_reader_with_a_session(rig: Rig,
                                                               client: TestClient) -> None:
    # Review 46: a sign-out refused by the rate limit (a busy clinic network) or
    # because the message got locked meanwhile left the session live, and the
    # link opened the message again with no code.
    from securemail.portal.app import CLIENT_POSTS

    pid = seal(rig)
    token = open_session(rig, client, pid)
    session = client.cookies.get(session_cookie(pid)) or ""
    for _ in range(CLIENT_POSTS + 5):  # the client's address used up its POSTs
        client.post(f"/m/{pid}/session", headers={"X-CSRF-Token": token})
    assert client.post(f"/m/{pid}/code", headers={"X-CSRF-Token": token}).status_code == 429
    assert client.post(f"/m/{pid}/signout", headers={"X-CSRF-Token": token}).json() == \
        {"ok": True}
    client.cookies.set(session_cookie(pid), session)
    assert client.get(f"/m/{pid}/sealed").status_code == 401
    assert rig.audit.kinds()[-1] == "signed-out"


def test_sign_out_of_a_message_locked_meanwhile_still_ends_the_session(
        rig: Rig, client: TestClient, clock: list) -> None:
    from securemail.portal.service import MAX_FAILED_CODES

    pid = seal(rig)
    token = open_session(rig, client, pid)
    session = client.cookies.get(session_cookie(pid)) or ""
    other = TestClient(client.app, base_url=str(client.base_url))  # someone with the link
    other_token = csrf_token(other, pid)
    for _ in range(MAX_FAILED_CODES):
        other.post(f"/m/{pid}/verify", data={"code": "000000"},
                   headers={"X-CSRF-Token": other_token})
    assert client.post(f"/m/{pid}/signout", headers={"X-CSRF-Token": token}).json() == \
        {"ok": True}
    rig.service.unlock(pid, clock[0])
    client.cookies.set(session_cookie(pid), session)
    assert client.get(f"/m/{pid}/sealed").status_code == 401  # not revived by the unlock
