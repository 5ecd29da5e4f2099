"""Fixtures shared by the relay integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.integration.crypto_fixtures import Gpg
from tests.integration.relay_support import Upstream, start_upstream


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """A capturing aiosmtpd upstream on 127.0.0.1 (port chosen by the OS)."""
    up = await start_upstream()
    yield up
    await up.stop()


@pytest.fixture
def gpg(tmp_path: Path) -> Iterator[Gpg]:
    """An empty GnuPG home of the test's own (modules with keys made once define theirs)."""
    g = Gpg.create(tmp_path / "gnupg")
    yield g
    g.close()
