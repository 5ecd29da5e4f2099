"""Codes that are no longer live: which say "expired" (not counted) and which
count as a wrong guess, and the used code entered again by the browser it
opened the message for."""

from __future__ import annotations

import re
import warnings
from datetime import timedelta
from pathlib import Path

import pytest

with warnings.catch_warnings():  # starlette 1.x nudges towards httpx2; httpx works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from securemail.portal.app import create_app, session_cookie
from securemail.portal.service import MAX_FAILED_CODES, PortalDenied

from .portal_helpers import CLIENT, NOW, STAFF, Rig, last_code, make_rig, original


def sealed(tmp: Path) -> tuple[Rig, str]:
    rig = make_rig(tmp)
    return rig, rig.service.seal(original(), message_id="<orig-1@riverside.example>",
                                 sender=STAFF, recipient=CLIENT, now=NOW).id


def failed(rig: Rig, pid: str) -> int:
    row = rig.service.get(pid)
    assert row is not None
    return row.failed_codes


async def test_a_used_code_is_never_stale_even_once_replaced(tmp_path: Path) -> None:
    rig, pid = sealed(tmp_path)
    await rig.service.request_code(pid, now=NOW)
    used = last_code(rig.transport)
    rig.service.verify_code(pid, used, now=NOW + timedelta(minutes=1))
    await rig.service.request_code(pid, now=NOW + timedelta(minutes=2))
    # Entered again without the session it opened: a wrong code, counted.
    with pytest.raises(PortalDenied) as denied:
        rig.service.verify_code(pid, used, now=NOW + timedelta(minutes=3))
    assert (denied.value.reason, denied.value.stale) == ("wrong-code", False)
    assert denied.value.remaining == MAX_FAILED_CODES - 1
    assert failed(rig, pid) == 1


async def test_a_replaced_unused_code_is_stale(tmp_path: Path) -> None:
    rig, pid = sealed(tmp_path)
    await rig.service.request_code(pid, now=NOW)
    first = last_code(rig.transport)
    await rig.service.request_code(pid, now=NOW + timedelta(minutes=1))
    if last_code(rig.transport) == first:
        pytest.skip("the two random codes happen to be equal")
    with pytest.raises(PortalDenied) as denied:
        rig.service.verify_code(pid, first, now=NOW + timedelta(minutes=2))
    assert denied.value.stale
    assert failed(rig, pid) == 0


async def test_an_expired_code_is_stale_even_after_purge(tmp_path: Path) -> None:
    rig, pid = sealed(tmp_path)
    await rig.service.request_code(pid, now=NOW)
    code = last_code(rig.transport)
    later = NOW + timedelta(minutes=30)  # the code worked for 10 minutes
    rig.service.purge(later)  # the daily cron job
    with pytest.raises(PortalDenied) as denied:
        rig.service.verify_code(pid, code, now=later + timedelta(seconds=1))
    assert denied.value.stale
    assert failed(rig, pid) == 0
    # A day later purge drops it, and it is no longer recognised (documented).
    day = NOW + timedelta(days=1, minutes=1)
    rig.service.purge(day)
    assert rig.conn.execute("SELECT COUNT(*) FROM portal_codes").fetchone()[0] == 0


async def test_the_used_code_again_with_its_live_session_is_not_a_guess(tmp_path: Path) -> None:
    rig, pid = sealed(tmp_path)
    await rig.service.request_code(pid, now=NOW)
    code = last_code(rig.transport)
    token = rig.service.verify_code(pid, code, now=NOW)
    for n in range(MAX_FAILED_CODES + 1):
        again = rig.service.verify_code(pid, code, now=NOW + timedelta(seconds=n + 1),
                                        session_token=token)
        assert again == token  # the same session, not a new one
    assert failed(rig, pid) == 0
    assert rig.conn.execute("SELECT COUNT(*) FROM portal_sessions").fetchone()[0] == 1
    # Another code, or a session that has ended, gets no such pass.
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    with pytest.raises(PortalDenied):
        rig.service.verify_code(pid, wrong, now=NOW + timedelta(minutes=1), session_token=token)
    assert failed(rig, pid) == 1
    with pytest.raises(PortalDenied):
        rig.service.verify_code(pid, code, now=NOW + timedelta(minutes=20), session_token=token)
    assert failed(rig, pid) == 2


def test_the_used_code_again_over_http(tmp_path: Path) -> None:
    rig, pid = sealed(tmp_path)
    app = create_app(rig.service, reply_sender=rig.pipeline, now=lambda: NOW)
    with TestClient(app, base_url="https://testserver") as client:
        m = re.search(r'data-csrf="([0-9a-f]+)"', client.get(f"/m/{pid}").text)
        assert m
        headers = {"X-CSRF-Token": m.group(1)}
        client.post(f"/m/{pid}/code", headers=headers)
        code = last_code(rig.transport)
        assert client.post(f"/m/{pid}/verify", data={"code": code},
                           headers=headers).json() == {"ok": True}
        cookie = client.cookies.get(session_cookie(pid))
        # The page lost the answer to /sealed; "Open message" again, five times.
        for _ in range(MAX_FAILED_CODES):
            r = client.post(f"/m/{pid}/verify", data={"code": code}, headers=headers)
            assert r.json() == {"ok": True}
        assert failed(rig, pid) == 0
        assert client.cookies.get(session_cookie(pid)) == cookie
        assert client.get(f"/m/{pid}/sealed").status_code == 200
        # Without the session, the used code is a wrong code.
        client.cookies.delete(session_cookie(pid))
        r = client.post(f"/m/{pid}/verify", data={"code": code}, headers=headers)
        assert r.json() == {"error": "wrong-code", "remaining": MAX_FAILED_CODES - 1}
