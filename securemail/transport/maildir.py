"""A Maildir outbox: the embedded demo's upstream.

Each ``send`` writes exactly one file, ``new/<unique>``, whose bytes are
exactly what an SMTP upstream would have received (so a DKIM signature can be
checked against the file as it is). The envelope is not written into the
message: it goes to a JSON sidecar, ``envelopes/<unique>.json``
(``{"mail_from": ..., "rcpt_tos": [...]}``). Maildir readers only look at
``cur``, ``new`` and ``tmp``, so the sidecar folder does not disturb them.

Writes are atomic and durable: the file is written and fsynced in ``tmp/``,
then renamed into ``new/`` and the folder is fsynced, so a reader never sees a
half-written message and a 250 is never given for a message a crash can lose.
The sidecar is written first, so every message in ``new/`` has its envelope.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from securemail.errors import UpstreamUnavailable
from securemail.transport import DeliveryResult

__all__ = ["MaildirTransport", "read_envelope"]

_counter = itertools.count()


class MaildirTransport:
    """Writes each message into the Maildir at ``path`` (created if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")

    def _ensure(self) -> None:
        for sub in ("tmp", "new", "cur", "envelopes"):
            (self.path / sub).mkdir(parents=True, exist_ok=True, mode=0o700)

    def _unique(self) -> str:
        now = time.time()
        sec, usec = int(now), int((now - int(now)) * 1_000_000)
        return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}.{self._host}"

    def _write(self, mail_from: str, rcpt_tos: Sequence[str], data: bytes) -> str:
        self._ensure()
        name = self._unique()
        envelope = json.dumps({"mail_from": mail_from, "rcpt_tos": list(rcpt_tos)}).encode()
        _atomic_write(self.path / "tmp" / (name + ".json"),
                      self.path / "envelopes" / (name + ".json"), envelope)
        _atomic_write(self.path / "tmp" / name, self.path / "new" / name, data)
        _fsync_dir(self.path / "envelopes")
        _fsync_dir(self.path / "new")
        return name

    async def send(self, mail_from: str, rcpt_tos: Sequence[str], data: bytes) -> DeliveryResult:
        try:
            await asyncio.to_thread(self._write, mail_from, rcpt_tos, data)
        except OSError as exc:
            raise UpstreamUnavailable(
                f"cannot write to the Maildir outbox ({exc.strerror})") from None
        return DeliveryResult(accepted=tuple(rcpt_tos))

    async def close(self) -> None:
        return None


def read_envelope(message_file: str | Path) -> tuple[str, tuple[str, ...]]:
    """The ``(mail_from, rcpt_tos)`` stored for a message in ``new/`` or ``cur/``."""
    p = Path(message_file)
    base = p.name.split(":2,")[0]  # readers may append Maildir flags
    data = json.loads((p.parent.parent / "envelopes" / (base + ".json")).read_text())
    return str(data["mail_from"]), tuple(str(r) for r in data["rcpt_tos"])


def _atomic_write(tmp: Path, final: Path, data: bytes) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
