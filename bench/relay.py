"""Relay throughput against a bare aiosmtpd sink, measured in the same run.

    /work/venv/bin/python bench/relay.py [--clients 16] [--messages 1500] [--seconds 20]

Concurrent aiosmtplib clients (one connection each, reused) send 10 KiB
messages. Each server runs in its own process, so the clients' CPU does not
count against it:

  (a) clients -> bare aiosmtpd sink                       (the baseline)
  (b) clients -> relay (policy, DKIM, durable audit) -> sink   pass-through
  (c) clients -> relay -> portal seal + notification -> sink
  (d) clients -> relay -> PGP/MIME per recipient -> sink

  (g) clients -> our SMTP listener + pooled upstream, no pipeline (attribution)
  (h) clients -> relay pass-through without DKIM (attribution: what the RSA-2048
      signature and its canonicalisation cost)

Prints messages/s, the ratio to (a), and latency p50/p99 added to (a)'s.
Every run is bounded by --messages and --seconds. Target: (b) >= 0.5 x (a).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

# Run as a script, Python puts bench/ first on sys.path, where sibling benchmarks
# (bench/dkim.py) would shadow libraries of the same name (dkimpy's "dkim").
_BENCH = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if p not in (_BENCH, "")]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiosmtplib  # noqa: E402

SENDER = "dr@riverside.example"


def body_10k(subject: str, to: str) -> bytes:
    head = (f"From: {SENDER}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            "Message-ID: <bench@riverside.example>\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
    line = "The quick brown fox jumps over the lazy dog, again and again. 0123456789\r\n"
    text = line * (10240 // len(line))
    return (head + text).encode()


# ----------------------------------------------------------------- servers


def _sink_process(ready: Any) -> None:
    from aiosmtpd.smtp import SMTP

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SMTP(Sink(), loop=loop),
                                          host="127.0.0.1", port=0)
        ready.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


def _relay_process(cfg: str, ready: Any) -> None:
    import logging

    logging.disable(logging.CRITICAL)  # the log line is not what we measure here

    from securemail.listeners import start_listeners
    from securemail.relay import load

    async def main() -> None:
        relay = load(cfg)
        listeners = await start_listeners(relay, relay.settings)
        ready.put(listeners.addresses["relay"][1])
        await asyncio.Event().wait()

    asyncio.run(main())


def _glue_process(cfg: str, ready: Any) -> None:
    """Listeners + pooled SMTPTransport, no pipeline: what the SMTP layer costs."""
    import hashlib
    import logging

    logging.disable(logging.CRITICAL)
    from securemail.config import load_settings
    from securemail.listeners import start_listeners
    from securemail.model import Action, Mode, Outcome, RecipientOutcome, Status, Verdict
    from securemail.transport.factory import transport_from_settings

    settings = load_settings(cfg)

    class PassThrough:
        transport = transport_from_settings(settings)

        async def send(self, raw: bytes, *, mail_from: str, rcpt_tos: list[str],
                       **_: Any) -> Outcome:
            result = await self.transport.send(mail_from, rcpt_tos, raw)
            return Outcome(Verdict("", Mode.ENFORCE, False, False, ()),
                           tuple(RecipientOutcome(r, Action.DELIVER, Status.DELIVERED)
                                 for r in result.accepted),
                           hashlib.sha256(raw).hexdigest())

    async def main() -> None:
        listeners = await start_listeners(PassThrough(), settings)
        ready.put(listeners.addresses["relay"][1])
        await asyncio.Event().wait()

    asyncio.run(main())


class _Served:
    """``securemail serve`` as a child process (for relay.workers > 1)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            self.popen.wait(timeout=90)


def serve_process(cfg: Path) -> tuple[Any, int]:
    import socket

    port = int(cfg.read_text().split('listen = "127.0.0.1:')[1].split('"')[0])
    exe = Path(sys.executable).parent / "securemail"
    popen = subprocess.Popen([str(exe), "serve", "-c", str(cfg), "--no-portal"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return _Served(popen), port
        time.sleep(0.1)
    popen.kill()
    raise RuntimeError("securemail serve did not start")


def spawn(target: Any, *args: Any) -> tuple[mp.Process, int]:
    q: Any = mp.Queue()
    p = mp.Process(target=target, args=(*args, q), daemon=True)
    p.start()
    return p, int(q.get(timeout=60))


def relay_config(folder: Path, sink_port: int, *, portal: bool, dkim_key: Path | None,
                 workers: int = 1) -> Path:
    cfg = folder / "securemail.toml"
    dkim = textwrap.dedent(f"""
        [dkim]
        domain = "riverside.example"
        selector = "bench"
        key_file = "{dkim_key}"
        """) if dkim_key else ""
    cfg.write_text(textwrap.dedent(f"""
        [practice]
        name = "Bench Practice"
        domains = ["riverside.example"]
        [relay]
        listen = "127.0.0.1:{_free_port()}"
        workers = {workers}
        max_connections_per_client = 1000
        [upstream]
        url = "smtp://127.0.0.1:{sink_port}"
        tls = "none"
        pool_size = 8
        [storage]
        url = "sqlite:securemail.db"
        [portal]
        enabled = {"true" if portal else "false"}
        [[directory.clients]]
        id = "c-1001"
        addresses = ["jane@mail.example"]
        """) + dkim)
    return cfg


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_pgp_key(folder: Path, address: str) -> Path | None:
    """An RSA key for ``address`` made by gpg in a throwaway home; None without gpg."""
    if not shutil.which("gpg"):
        return None
    home = folder / "gnupg"
    home.mkdir(mode=0o700)
    params = folder / "keyparams"
    params.write_text(textwrap.dedent(f"""\
        Key-Type: RSA
        Key-Length: 2048
        Subkey-Type: RSA
        Subkey-Length: 2048
        Name-Real: Bench Recipient
        Name-Email: {address}
        Expire-Date: 0
        %no-protection
        %commit
        """))
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(["gpg", "--batch", "--gen-key", str(params)], env=env, check=True,
                   capture_output=True, timeout=120)
    out = subprocess.run(["gpg", "--armor", "--export", address], env=env, check=True,
                         capture_output=True, timeout=60).stdout
    key = folder / "recipient.asc"
    key.write_bytes(out)
    return key


# ----------------------------------------------------------------- clients


async def drive(port: int, data: bytes, rcpt: str, *, clients: int, messages: int,
                seconds: float) -> tuple[float, list[float], int]:
    """Returns (messages/s, latencies in s, failures)."""
    latencies: list[float] = []
    failures = 0
    remaining = messages
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal remaining, failures
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=60)
        await client.connect()
        try:
            while remaining > 0 and time.perf_counter() < deadline:
                remaining -= 1
                t0 = time.perf_counter()
                try:
                    await client.sendmail(SENDER, [rcpt], data)
                    latencies.append(time.perf_counter() - t0)
                except aiosmtplib.SMTPException:
                    failures += 1
        finally:
            client.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies, failures


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU of process ``pid`` and its children (all threads), or of
    this process (the clients) for None; None where /proc is not there to tell."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    total = 0.0
    for p in _process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            if p == pid:
                return None
            continue  # a child that just exited
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``securemail serve`` with relay.workers > 1)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo.extend(int(c) for c in children.read_text().split())
            except OSError:
                pass
    return found


async def run_case(name: str, port: int, data: bytes, rcpt: str, args: argparse.Namespace,
                   servers: dict[str, int | None]) -> dict[str, Any]:
    """``servers``: label -> pid of each server process whose CPU is reported
    per message (the clients' own CPU is reported too)."""
    # Warm-up: first connections, caches, sqlite pages.
    await drive(port, data, rcpt, clients=min(4, args.clients), messages=40, seconds=10)
    watched = {"clients": None, **servers}
    before = {k: cpu_seconds(pid) for k, pid in watched.items()}
    rate, lat, failures = await drive(port, data, rcpt, clients=args.clients,
                                      messages=args.messages, seconds=args.seconds)
    cpu: dict[str, float] = {}
    for k, pid in watched.items():
        start, end = before[k], cpu_seconds(pid)
        if start is not None and end is not None and lat:
            cpu[k] = (end - start) / len(lat) * 1000  # ms of CPU per message
    return {"name": name, "rate": rate, "p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
            "n": len(lat), "failures": failures, "mean": statistics.fmean(lat) if lat else 0,
            "cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--messages", type=int, default=1500)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=1,
                    help="relay.workers for (b)-(d): run `securemail serve` with N processes")
    ap.add_argument("--only", default="ghbcd",
                    help="relay cases to run after (a): g = SMTP layer only, h = (b) without"
                         " DKIM, b, c, d")
    args = ap.parse_args()
    mp.set_start_method("fork")
    tmp = Path(tempfile.mkdtemp(prefix="securemail-bench-"))
    procs: list[mp.Process] = []
    results: list[dict[str, Any]] = []
    baselines: list[dict[str, Any]] = []
    try:
        sink, sink_port = spawn(_sink_process)
        procs.append(sink)
        staff_msg = body_10k("Rota", "colleague@riverside.example")
        client_msg = body_10k("Your appointment", "jane@mail.example")
        def baseline() -> dict[str, Any]:
            return asyncio.run(run_case("(a) bare aiosmtpd sink", sink_port, staff_msg,
                                        "colleague@riverside.example", args,
                                        {"sink": sink.pid}))

        baselines.append(baseline())
        dkim_key = _dkim_key(tmp)
        cases = [
            ("g", "(g) SMTP layer only", False, staff_msg, "colleague@riverside.example"),
            ("h", "(h) (b) without DKIM", False, staff_msg, "colleague@riverside.example"),
            ("b", "(b) relay pass-through", False, staff_msg, "colleague@riverside.example"),
            ("c", "(c) relay portal path", True, client_msg, "jane@mail.example"),
            ("d", "(d) relay PGP path", False, client_msg, "jane@mail.example"),
        ]
        for key, name, portal, data, rcpt in cases:
            if key not in args.only:
                continue
            folder = tmp / key
            folder.mkdir()
            cfg = relay_config(folder, sink_port, portal=portal,
                               dkim_key=None if key == "h" else dkim_key,
                               workers=1 if key == "g" else args.workers)
            if key == "d" and not _import_pgp_key(cfg, folder):
                print(f"{name}: skipped (gpg or the key ring is not available)")
                continue
            try:
                if key == "g" or args.workers == 1:
                    proc, port = spawn(_glue_process if key == "g" else _relay_process,
                                       str(cfg))
                else:
                    proc, port = serve_process(cfg)
            except Exception as exc:  # noqa: BLE001 - report and go on with other cases
                print(f"{name}: could not start ({type(exc).__name__}: {exc})")
                continue
            procs.append(proc)
            relay_pid = proc.pid if isinstance(proc, mp.Process) else proc.popen.pid
            result = asyncio.run(run_case(name, port, data, rcpt, args,
                                          {"relay": relay_pid, "sink": sink.pid}))
            proc.terminate()
            # On a shared machine the load drifts: compare each case with the
            # baseline measured right before and right after it.
            baselines.append(baseline())
            result["base"] = _average(baselines[-2], baselines[-1])
            results.append(result)
    finally:
        for p in procs:
            p.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, baselines, args)


def _average(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Baseline = mean of the runs before and after the relay cases."""
    out = dict(first)
    for key in ("rate", "p50", "p99"):
        out[key] = (first[key] + second[key]) / 2
    return out


def _dkim_key(folder: Path) -> Path | None:
    try:
        from securemail.dkim import generate_key
    except ImportError:
        print("DKIM module not available: relay cases run without DKIM signing")
        return None
    pem, _ = generate_key("rsa")
    path = folder / "dkim.key"
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


def _import_pgp_key(cfg: Path, folder: Path) -> bool:
    import datetime as dt

    key = make_pgp_key(folder, "jane@mail.example")
    if key is None:
        return False
    from securemail.relay import load

    relay = load(cfg)
    try:
        relay.keyring.import_file(key, dt.datetime.now(dt.UTC))
    finally:
        asyncio.run(relay.close())
    return True


def report(results: list[dict[str, Any]], baselines: list[dict[str, Any]],
           args: argparse.Namespace) -> None:
    print(f"\n{args.clients} clients, 10 KiB messages, up to {args.messages} messages "
          f"or {args.seconds:.0f} s per case; ratios and added latency are against the "
          "mean of the sink runs just before and after each case\n")
    rates = ", ".join(f"{b['rate']:.0f}" for b in baselines)
    print(f"(a) bare aiosmtpd sink runs: {rates} msg/s\n")
    print(f"{'case':28} {'msg/s':>8} {'(a) msg/s':>9} {'ratio':>6} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8} {'n':>6} {'fail':>5}")
    for r in results:
        base = r["base"]
        print(f"{r['name']:28} {r['rate']:8.1f} {base['rate']:9.1f} "
              f"{r['rate'] / base['rate']:6.2f} {r['p50'] * 1000:8.2f} {r['p99'] * 1000:8.2f} "
              f"{(r['p50'] - base['p50']) * 1000:8.2f} {(r['p99'] - base['p99']) * 1000:8.2f} "
              f"{r['n']:6d} {r['failures']:5d}")
    print("\nCPU per message (ms; all threads of each process; 2 cores are shared by all):")
    for r in [baselines[0], *results]:
        parts = "  ".join(f"{k} {v:.2f}" for k, v in r.get("cpu", {}).items())
        total = sum(r.get("cpu", {}).values())
        print(f"  {r['name']:28} {parts}  total {total:.2f}")
    b = next((r for r in results if r["name"].startswith("(b)")), None)
    if b is not None:
        ratio = b["rate"] / b["base"]["rate"]
        verdict = "meets" if ratio >= 0.5 else "misses"
        print(f"\n(b) / (a) = {ratio:.2f}: {verdict} the 0.5 target")


if __name__ == "__main__":
    main()
