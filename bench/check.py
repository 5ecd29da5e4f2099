"""In-process `check` throughput vs. plain `email.message_from_bytes`, same bytes, same run.

    python bench/check.py [--seconds 3]

Target (issue 2): check costs at most 3x plain parsing of a 10 KiB message with
5 recipients. Prints both rates and the cost ratio.
"""

from __future__ import annotations

import argparse
import email
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import securemail  # noqa: E402
from securemail.testing import build_message  # noqa: E402
from tests.conftest import BASE_CONFIG  # noqa: E402

RCPTS = ["jane@mail.example", "guardian@mail.example", "nurse@riverside.example",
         "claims@billing-partner.example", "sam@mail.example"]


def message_10k() -> bytes:
    para = ("Thank you for coming in on Tuesday. As discussed, please keep the sleep diary "
            "and bring it to our next appointment. Call the office if anything changes.\n")
    body = para * 40
    raw = build_message(sender="dr.lee@riverside.example", to=RCPTS[:2], cc=RCPTS[2:],
                        subject="Follow-up", body=body[: 10 * 1024 - 600])
    return raw


def rate(fn: Callable[[], object], seconds: float) -> float:
    n = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline and n < 1_000_000:
        for _ in range(50):
            fn()
        n += 50
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    raw = message_10k()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "securemail.toml"
        cfg.write_text(BASE_CONFIG.format(mode="enforce", unauthorised="block", portal="true"))
        relay = securemail.load(cfg, transport=securemail.testing.MemoryTransport())
        verdict = relay.check(raw, mail_from="dr.lee@riverside.example", rcpt_tos=RCPTS)
        assert len(verdict.decisions) == 5
        base = rate(lambda: email.message_from_bytes(raw), args.seconds)
        ours = rate(lambda: relay.check(raw, mail_from="dr.lee@riverside.example",
                                        rcpt_tos=RCPTS), args.seconds)
    print(f"message: {len(raw)} bytes, {len(RCPTS)} recipients")
    print(f"email.message_from_bytes : {base:10.0f} msg/s  ({1e6 / base:7.1f} us)")
    print(f"securemail check         : {ours:10.0f} msg/s  ({1e6 / ours:7.1f} us)")
    print(f"cost ratio check/parse   : {base / ours:.2f}x   (target <= 3.00x)")


if __name__ == "__main__":
    main()
