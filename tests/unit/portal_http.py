"""Fixtures and helpers for the portal's HTTP tests (Starlette TestClient).

The fixtures (``rig``, ``clock``, ``client``) are registered for every test by
``pytest_plugins`` in tests/conftest.py; a module may define its own instead.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

with warnings.catch_warnings():  # starlette 1.x nudges towards httpx2; httpx works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from securemail.portal.app import create_app
from tests.unit.portal_helpers import CLIENT, NOW, STAFF, Rig, make_rig, original

__all__ = ["Clock", "TestClient", "client", "clock", "csrf_token", "rig", "seal"]

Clock = list[datetime]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path)


@pytest.fixture
def clock() -> Clock:
    return [NOW]


@pytest.fixture
def client(rig: Rig, clock: Clock) -> Iterator[TestClient]:
    """The app as ``securemail serve`` wires it (replies through a pipeline)."""
    app = create_app(rig.service, reply_sender=rig.pipeline, now=lambda: clock[0])
    with TestClient(app, base_url="https://testserver") as c:
        yield c


def seal(rig: Rig, now: datetime = NOW, message_id: str = "<orig-1@riverside.example>",
         raw: bytes | None = None) -> str:
    """Seal the standard original (or ``raw``) for the test client; its id."""
    return rig.service.seal(raw or original(), message_id=message_id, sender=STAFF,
                            recipient=CLIENT, now=now).id


def csrf_token(client: TestClient, pid: str) -> str:
    """Open the landing page (setting the browser cookie); the page's CSRF token."""
    r = client.get(f"/m/{pid}")
    assert r.status_code == 200
    m = re.search(r'data-csrf="([0-9a-f]+)"', r.text)
    assert m
    return m.group(1)
