"""Fixtures shared by the relay integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.relay_support import Upstream, start_upstream


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """A capturing aiosmtpd upstream on 127.0.0.1 (port chosen by the OS)."""
    up = await start_upstream()
    yield up
    await up.stop()
