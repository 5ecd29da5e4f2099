"""The portal's server secret: HMAC key for codes, session tokens and CSRF.

Generated on first use into ``data_dir/portal-secret.key`` (mode 0600). It
never opens a message: message keys exist only in links.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from securemail.errors import ConfigError

__all__ = ["SECRET_FILE", "PortalSecret", "load_or_create_secret"]

SECRET_FILE = "portal-secret.key"  # noqa: S105 (a file name, not a secret)
SECRET_BYTES = 32


def load_or_create_secret(data_dir: Path) -> bytes:
    path = data_dir / SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        data = path.read_bytes()
        if len(data) != SECRET_BYTES:
            raise ConfigError(str(path), "", "portal secret is damaged (expected 32 bytes); "
                              "delete it to generate a new one (open sessions end)") from None
        return data
    data = secrets.token_bytes(SECRET_BYTES)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return data


class PortalSecret:
    """Keyed hashes with domain separation, so one key serves every purpose."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def mac(self, purpose: str, *parts: str) -> str:
        msg = "\x00".join((purpose, *parts)).encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def verify(self, expected_mac: str, purpose: str, *parts: str) -> bool:
        return hmac.compare_digest(expected_mac.encode(), self.mac(purpose, *parts).encode())
