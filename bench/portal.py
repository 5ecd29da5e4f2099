"""Portal sealing cost vs. plain ``email.message_from_bytes`` of the same bytes, same run.

    python bench/portal.py [--seconds 2]

``seal`` = MIME parse -> JSON (base64 attachments) -> AES-256-GCM -> SQLite
insert (WAL, synchronous=FULL). The baseline is the stdlib parse alone (which
the pipeline pays anyway); bare AES-GCM of the raw bytes is printed too, to
show the cipher is not the cost.
"""

from __future__ import annotations

import argparse
import email
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from securemail.config import PortalSettings, Settings, StorageSettings  # noqa: E402
from securemail.portal.service import PortalService  # noqa: E402
from securemail.store.sqlite import open_database  # noqa: E402
from securemail.testing import build_message  # noqa: E402
from securemail.transport import MemoryTransport  # noqa: E402


def rate(fn: Callable[[], object], seconds: float, max_runs: int = 100_000) -> float:
    fn()  # warm up
    runs, start = 0, time.perf_counter()
    while runs < max_runs and time.perf_counter() - start < seconds:
        fn()
        runs += 1
    return runs / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(path=f"{tmp}/securemail.toml",
                            storage=StorageSettings(url=f"sqlite:///{tmp}/data/s.db"),
                            portal=PortalSettings(base_url="https://secure.example"))
        service = PortalService(settings, open_database(settings.storage.sqlite_path),
                                MemoryTransport(), None, None)
        for label, body, attachment in (
            ("10 KiB text", "x" * 10 * 1024, b""),
            ("1 MiB attachment", "See attached.", os.urandom(1024 * 1024)),
        ):
            atts = [("scan.pdf", "application/pdf", attachment)] if attachment else []
            raw = build_message(sender="dr@clinic.example", to=["c@mail.example"],
                                subject="s", body=body, attachments=atts)
            key, nonce = AESGCM.generate_key(bit_length=256), os.urandom(12)

            def encrypt(k: bytes = key, n: bytes = nonce, r: bytes = raw) -> bytes:
                return AESGCM(k).encrypt(n, r, b"")

            def parse(r: bytes = raw) -> object:
                return email.message_from_bytes(r)

            def seal(r: bytes = raw) -> object:
                return service.seal(r, message_id="<m@x>", sender="dr@clinic.example",
                                    recipient="c@mail.example", now=now)

            aes = rate(encrypt, args.seconds)
            parsed = rate(parse, args.seconds, max_runs=5_000)
            sealed = rate(seal, args.seconds, max_runs=5_000)
            print(f"{label:>17} ({len(raw) / 1024:7.1f} KiB): AES-GCM {aes:8.0f}/s  "
                  f"parse {parsed:6.0f}/s  seal+store {sealed:6.0f}/s  "
                  f"cost vs parse {parsed / sealed:4.1f}x")

if __name__ == "__main__":
    main()
