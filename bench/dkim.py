"""DKIM signing speed: securemail's signer beside plain dkimpy and raw `cryptography`.

    python bench/dkim.py [--seconds 2] [--max 20000]

All three run in the same process on the same 10 KiB message and the same
RSA-2048 key; each loop stops after --max signatures or --seconds, whichever
comes first. Target (issue 4): >= 1,000 RSA-2048 signatures/s for our signer.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

# This file is itself called dkim.py: take its folder off the import path so
# that `import dkim` finds dkimpy, not this script.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

# (imported by name so type checkers, which see this file as `dkim`, do too)
dkim = importlib.import_module("dkim")
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402
from cryptography.hazmat.primitives.serialization import load_pem_private_key  # noqa: E402

from securemail.dkim import DkimSigner, generate_key  # noqa: E402

DOMAIN, SELECTOR = b"bench.example", b"sm1"
TARGET = 1000.0


def message(size: int = 10 * 1024) -> bytes:
    head = (b"From: Dr Ada <ada@bench.example>\r\nTo: jane@mail.example\r\n"
            b"Cc: guardian@mail.example\r\nSubject: Appointment on Monday\r\n"
            b"Date: Mon, 01 Jun 2026 12:00:00 +0000\r\nMessage-ID: <b1@bench.example>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n")
    line = b"Gr\xc3\xbc\xc3\x9fe  -  a typical line of a letter,\twith  some  spacing.  \r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    return head + body[: size - len(head) - 2] + b"\r\n"


def rate(fn: Callable[[], object], seconds: float, limit: int) -> tuple[float, int]:
    fn()  # warm up
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while count < limit and time.perf_counter() < deadline:
        fn()
        count += 1
    return count / (time.perf_counter() - start), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time cap per loop")
    parser.add_argument("--max", type=int, default=20000, help="signature cap per loop")
    args = parser.parse_args()

    msg = message()
    rsa_pem, rsa_record = generate_key("rsa")
    ed_pem, ed_record = generate_key("ed25519")
    ours = DkimSigner.from_pem(rsa_pem, domain=DOMAIN.decode(), selector=SELECTOR.decode())
    ours_ed = DkimSigner.from_pem(ed_pem, domain=DOMAIN.decode(), selector=SELECTOR.decode())
    key = load_pem_private_key(rsa_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    # What a DKIM header hash covers: ~10 header fields, a few hundred bytes.
    header_data = msg[: msg.index(b"\r\n\r\n")]

    def plain_dkimpy() -> bytes:
        return bytes(dkim.sign(msg, SELECTOR, DOMAIN, rsa_pem,
                               canonicalize=(b"relaxed", b"relaxed"),
                               include_headers=[b"from", b"to", b"cc", b"subject", b"date",
                                                b"message-id", b"mime-version",
                                                b"content-type", b"from"]))

    def raw() -> bytes:
        return key.sign(header_data, padding.PKCS1v15(), hashes.SHA256())

    # Both signatures must verify, or the speed means nothing.
    for signer, record in ((ours, rsa_record), (ours_ed, ed_record)):
        ok = dkim.verify(signer.sign(msg), dnsfunc=lambda _n, timeout=5, r=record: r.encode())
        assert ok, f"{signer.algorithm} signature does not verify"
    assert dkim.verify(plain_dkimpy() + msg, dnsfunc=lambda _n, timeout=5: rsa_record.encode())

    print(f"message: {len(msg)} bytes; loops capped at {args.max} signatures "
          f"or {args.seconds:g} s")
    r_ours, n_ours = rate(lambda: ours.sign(msg), args.seconds, args.max)
    r_ed, n_ed = rate(lambda: ours_ed.sign(msg), args.seconds, args.max)
    r_dkimpy, n_dkimpy = rate(plain_dkimpy, args.seconds, args.max)
    r_raw, n_raw = rate(raw, args.seconds, args.max)
    rows = [
        ("securemail DkimSigner, RSA-2048", r_ours, n_ours),
        ("securemail DkimSigner, Ed25519", r_ed, n_ed),
        ("plain dkimpy dkim.sign, RSA-2048", r_dkimpy, n_dkimpy),
        ("raw cryptography RSA-2048 sign", r_raw, n_raw),
    ]
    for name, r, n in rows:
        print(f"  {name:<36} {r:9,.0f} signatures/s  ({n} runs, {1000 / r:.3f} ms each)")
    print(f"ours / plain dkimpy: {r_ours / r_dkimpy:5.1f}x")
    print(f"ours / raw RSA sign: {r_ours / r_raw:5.2f}x "
          "(the rest is parsing, canonicalisation, hashing)")
    verdict = "meets" if r_ours >= TARGET else "MISSES"
    print(f"target >= {TARGET:,.0f}/s for RSA-2048: {verdict}")


if __name__ == "__main__":
    main()
