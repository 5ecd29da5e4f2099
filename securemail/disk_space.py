"""Take no new message while the disk under the store or the outbox is nearly
full (Postfix's ``queue_minfree``).

A message that upstream accepted must still reach the audit log and the
delivery ledger; on a full disk neither can, and the sender's retry after the
451 would deliver it again. So below the margin every new message is deferred
up front (``452 4.3.1``), before anything leaves.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["SpaceCheck", "free_bytes"]

MiB = 1024 * 1024
# Room beyond one largest message: the store's records, WAL growth, a sealed copy.
MARGIN_BYTES = 16 * MiB
_RECHECK_SECONDS = 1.0  # statvfs at most once a second per folder
_LOG_EVERY_SECONDS = 60.0

log = logging.getLogger("securemail.relay")


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged writer may still use on ``folder``'s filesystem."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


class SpaceCheck:
    """``problem()`` names the first folder with too little room, or None."""

    def __init__(self, folders: Callable[[], Iterable[Path]], needed: Callable[[], int], *,
                 clock: Callable[[], float] = time.monotonic,
                 measure: Callable[[Path], int] = free_bytes) -> None:
        self._folders = folders
        self._needed = needed
        self._clock = clock
        self._measure = measure
        self._checked_at = float("-inf")
        self._problem: str | None = None
        self._logged_at = float("-inf")

    def problem(self) -> str | None:
        now = self._clock()
        if now - self._checked_at >= _RECHECK_SECONDS:
            self._checked_at = now
            self._problem = self._look()
            if self._problem and now - self._logged_at >= _LOG_EVERY_SECONDS:
                self._logged_at = now
                log.error("new messages are deferred (452): %s", self._problem,
                          extra={"event": {"notice": "disk-low"}})
        return self._problem

    def _look(self) -> str | None:
        needed = self._needed()
        for folder in self._folders():
            try:
                free = self._measure(folder)
            except OSError:
                continue  # a folder that is not there yet: its own writes say why
            if free < needed:
                return (f"{folder}: only {free // MiB} MiB free, {needed // MiB} MiB needed"
                        " (the largest message allowed and a margin for the store)")
        return None
