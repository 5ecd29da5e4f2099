"""A writer killed with SIGKILL mid-append leaves a store that verifies.

Real processes, real SQLite files: each child appends as fast as it can and
prints a count each time its records are durable (the call returned); the
test kills it at an arbitrary point, then checks that the store verifies and
holds every record a child was told was recorded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from securemail.audit import AuditLog, verify_store
from securemail.audit.store import iter_records
from securemail.config import load_settings
from tests.unit.test_audit_support import T0, write_config

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import asyncio, sys
from datetime import UTC, datetime
from securemail.audit import AuditLog
from securemail.config import load_settings
from tests.unit.test_audit_support import decision, envelope, outcome
from securemail.model import Action

audit = AuditLog.open(load_settings(sys.argv[1]))
tag = sys.argv[2]
done = 0

async def main() -> None:
    global done
    while True:
        calls = []
        for i in range(10):
            ds = [decision(f"{tag}-{done + i}@mail.example", Action.DELIVER, ("ok",))]
            calls.append(audit.record_outcome(envelope(ds), outcome(ds), config_digest="",
                                              instance_id=tag, now=datetime.now(UTC)))
        await asyncio.gather(*calls)
        done += 10
        audit.record_event("opened", now=datetime.now(UTC), portal_id=f"{tag}-{done}")
        print(done, flush=True)

asyncio.run(main())
"""


def _start(cfg: Path, tag: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(cfg), tag], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)


def _kill_after(child: subprocess.Popen[str], at_least: int, deadline: float) -> int:
    """Read progress until ``at_least`` records are durable, then SIGKILL; return the count."""
    assert child.stdout is not None
    durable = 0
    while durable < at_least and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        durable = int(line)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    return durable


def test_sigkill_mid_append_leaves_a_verifiable_store(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, checkpoint_every=25)
    deadline = time.monotonic() + 60
    told: dict[str, int] = {}
    for round_no, target in enumerate((60, 130, 90)):  # three crashes, two writers each time
        children = {f"w{round_no}a": _start(cfg, f"w{round_no}a"),
                    f"w{round_no}b": _start(cfg, f"w{round_no}b")}
        for tag, child in children.items():
            told[tag] = _kill_after(child, target, deadline)
            assert told[tag] >= 10, "child made no progress"

    audit = AuditLog.open(load_settings(cfg))
    report = verify_store(audit.conn, audit.public_key)
    assert report.ok, report.summary()
    stored: dict[str, int] = {}
    for row in iter_records(audit.conn, kinds=("message",)):
        tag = row.body.split('"instance_id":"')[1].split('"')[0]
        stored[tag] = stored.get(tag, 0) + 1
    for tag, count in told.items():
        assert stored.get(tag, 0) >= count, f"{tag}: told {count} recorded, found {stored.get(tag)}"
    # The next writer continues the same chain.
    audit.record_event("opened", now=T0, portal_id="after-crash")
    assert verify_store(audit.conn, audit.public_key).ok
    audit.close(T0)
