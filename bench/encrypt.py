"""PGP/MIME encryption time: securemail (PGPy, binary packets + own armor) beside gpg.

Run on demand: ``/work/venv/bin/python bench/encrypt.py``. For 10 KiB, 1 MiB
and 10 MiB messages and RSA-3072 / Curve25519 recipients it prints the median
time of ``render_pgp_mime`` (the whole outgoing message: header protection,
encryption, armor, MIME) beside ``gpg --encrypt --compress-algo none`` of the
same bytes (a subprocess, binary and ``--armor``), measured in the same run.
Targets (issue 4): at 1 MiB ours <= gpg; a 10 KiB message <= 2 ms.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from securemail.crypto.pgp import (  # noqa: E402
    PgpRecipient,
    parse_public_keys,
    render_pgp_mime,
)

SIZES = {"10 KiB": 10 * 1024, "1 MiB": 1024 * 1024, "10 MiB": 10 * 1024 * 1024}
REPEAT = {"10 KiB": 200, "1 MiB": 20, "10 MiB": 5}


def message(size: int) -> bytes:
    head = (b"From: Dr. Reed <reed@riverside.example>\r\nTo: client@mail.example\r\n"
            b"Subject: Results\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
            b"Message-ID: <bench@riverside.example>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: application/pdf; name=scan.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n")
    b64 = base64.encodebytes(os.urandom(size * 3 // 4)).replace(b"\n", b"\r\n")
    return head + b64[: size - len(head)]


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--yes",
                           "--pinentry-mode", "loopback", "--passphrase", "", *args],
                          input=data, capture_output=True, check=True, timeout=120).stdout


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "gnupg"
        home.mkdir(mode=0o700)
        gpg(home, "--quick-gen-key", "Ed <ed@bench.example>", "ed25519", "cert", "never")
        ed = _fpr(home, "ed@bench.example")
        gpg(home, "--quick-add-key", ed, "cv25519", "encr", "never")
        gpg(home, "--quick-gen-key", "Rsa <rsa@bench.example>", "rsa3072", "cert", "never")
        rsa = _fpr(home, "rsa@bench.example")
        gpg(home, "--quick-add-key", rsa, "rsa3072", "encr", "never")
        later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
        try:
            run(home, {"Curve25519": ed, "RSA-3072": rsa}, later)
        finally:
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                           check=False, capture_output=True)


def _fpr(home: Path, uid: str) -> str:
    out = gpg(home, "--with-colons", "--list-keys", uid).decode()
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr"))


def run(home: Path, keys: dict[str, str], now: dt.datetime) -> None:
    print(f"{'size':>7} {'recipient':>10} {'securemail':>11} {'gpg':>9} {'gpg -a':>9} "
          f"{'ours/gpg':>9} {'ours/gpg -a':>11}")
    for label, size in SIZES.items():
        raw = message(size)
        for kind, fpr in keys.items():
            recipient = parse_public_keys(gpg(home, "--export", fpr))[0].recipient(now)
            assert recipient is not None
            base = ["--encrypt", "--compress-algo", "none", "--trust-model", "always",
                    "-r", fpr]

            def ours_once(r: PgpRecipient = recipient, m: bytes = raw) -> bytes:
                return render_pgp_mime(m, [r])

            def gpg_once(b: list[str] = base, m: bytes = raw) -> bytes:
                return gpg(home, *b, data=m)

            def gpg_armor_once(b: list[str] = base, m: bytes = raw) -> bytes:
                return gpg(home, "--armor", *b, data=m)

            ours = median_ms(ours_once, REPEAT[label])
            reps = max(3, REPEAT[label] // 10)
            theirs = median_ms(gpg_once, reps)
            theirs_a = median_ms(gpg_armor_once, reps)
            print(f"{label:>7} {kind:>10} {ours:9.2f}ms {theirs:7.2f}ms {theirs_a:7.2f}ms "
                  f"{ours / theirs:9.2f} {ours / theirs_a:11.2f}")


if __name__ == "__main__":
    main()
