"""`securemail serve` and `securemail init`: the process IT runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import mailbox
import os
import signal
import socket
import sqlite3
import stat
import sys
import tomllib
from pathlib import Path

import aiosmtplib
import pytest
from click.testing import CliRunner

from securemail.cli.serve_cmd import init
from securemail.config import load_settings
from securemail.serve import ensure_demo, start_services
from tests.integration.relay_support import message, on_free_ports

SECUREMAIL = str(Path(sys.executable).parent / "securemail")


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (bound together while chosen: closed one by one, the
    next bind could be given the port just closed)."""
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in held:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in held]


def free_port() -> int:
    [port] = free_ports(1)
    return port


async def test_demo_config_relays_into_the_maildir_outbox(tmp_path: Path) -> None:
    cfg = ensure_demo(tmp_path)
    assert cfg == tmp_path / "securemail-data" / "securemail.toml"
    assert ensure_demo(tmp_path) == cfg  # second run keeps the file
    from securemail.relay import Relay

    settings = on_free_ports(load_settings(cfg))
    relay = Relay(settings)
    services = await start_services(relay, settings, portal=False)
    try:
        port = services.listeners.addresses["relay"][1]
        data = message(frm="dr@practice.example", to="colleague@practice.example")
        await aiosmtplib.send(data, sender="dr@practice.example",
                              recipients=["colleague@practice.example"],
                              hostname="127.0.0.1", port=port, start_tls=False)
    finally:
        await services.stop(drain_seconds=5)
    box = mailbox.Maildir(tmp_path / "securemail-data" / "outbox", create=False)
    assert [m["To"] for m in box] == ["colleague@practice.example"]


def test_init_writes_a_valid_commented_config(tmp_path: Path) -> None:
    target = tmp_path / "etc"
    result = CliRunner().invoke(init, [str(target), "--domain", "riverside.example",
                                       "--name", "Riverside Counseling"])
    assert result.exit_code == 0, result.output
    cfg = target / "securemail.toml"
    text = cfg.read_text()
    sections = set(tomllib.loads(text))
    assert {"practice", "relay", "submission", "upstream", "policy", "limits", "storage",
            "portal", "audit", "encryption"} <= sections
    settings = load_settings(cfg)
    assert settings.practice.domains == ("riverside.example",)
    # Postfix's loopback reinjection listener (docs/deploy.md) has no STARTTLS.
    assert settings.upstream.url == "smtp://127.0.0.1:10026" and settings.upstream.tls == "none"
    assert settings.storage.sqlite_path.exists()
    if settings.dkim is not None:  # DKIM helper present: key generated and record printed
        key = settings.resolve(settings.dkim.key_file)
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert "sm1._domainkey.riverside.example" in result.output
        assert "v=DKIM1" in result.output
    again = CliRunner().invoke(init, [str(target)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_init_puts_the_store_and_its_secrets_in_the_data_dir(tmp_path: Path) -> None:
    result = CliRunner().invoke(init, [str(tmp_path / "etc"), "--data-dir",
                                       str(tmp_path / "var")])
    assert result.exit_code == 0, result.output
    settings = load_settings(tmp_path / "etc" / "securemail.toml")
    assert settings.storage.sqlite_path == tmp_path / "var" / "securemail.db"
    made = {p.name for p in (tmp_path / "var").iterdir()}
    assert {"securemail.db", "audit-signing.key"} <= made
    # Nothing the relay generates is left beside the config.
    assert {p.name for p in (tmp_path / "etc").iterdir()} <= {"securemail.toml", "dkim.key"}


async def _wait_for_line(proc: asyncio.subprocess.Process, text: str,
                         seen: list[dict[str, object]]) -> None:
    """Read the JSON log (bounded) until a line whose msg starts with ``text``."""
    assert proc.stderr is not None
    for _ in range(200):
        raw = await asyncio.wait_for(proc.stderr.readline(), 10)
        if raw.startswith(b"{"):
            event = json.loads(raw)
            seen.append(event)
            if str(event.get("msg", "")).startswith(text):
                return
    raise AssertionError(f"no log line {text!r}")


async def test_serve_process_reloads_on_sighup_and_drains_on_sigterm(tmp_path: Path) -> None:
    relay_port, admin_port = free_ports(2)
    cfg = tmp_path / "securemail.toml"
    cfg.write_text(f"""
[practice]
domains = ["riverside.example"]
[relay]
listen = "127.0.0.1:{relay_port}"
admin_listen = "127.0.0.1:{admin_port}"
[upstream]
url = "maildir://outbox"
[storage]
url = "sqlite:data/securemail.db"
[portal]
enabled = false
""")
    proc = await asyncio.create_subprocess_exec(
        SECUREMAIL, "serve", "-c", str(cfg), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen: list[dict[str, object]] = []
    try:
        for _ in range(100):
            try:
                r, w = await asyncio.open_connection("127.0.0.1", relay_port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        await aiosmtplib.send(message(), sender="dr@riverside.example",
                              recipients=["colleague@riverside.example"],
                              hostname="127.0.0.1", port=relay_port, start_tls=False)
        reader, writer = await asyncio.open_connection("127.0.0.1", admin_port)
        writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        metrics = (await reader.read()).decode()
        writer.close()
        assert 'securemail_messages_total{outcome="delivered"} 1' in metrics
        good = cfg.read_text() + """
[[directory.clients]]
id = "c-1001"
addresses = ["jane@mail.example"]
consent_unencrypted = { granted = "2026-01-10", warning = "v1" }
"""
        cfg.write_text(good)  # the reload brings a client's consent: audited
        proc.send_signal(signal.SIGHUP)
        await _wait_for_line(proc, "configuration reloaded", seen)
        cfg.write_text(good.replace("[portal]", "[portl]"))  # a typo: reload must keep running
        proc.send_signal(signal.SIGHUP)
        await _wait_for_line(proc, "reload failed", seen)
        await aiosmtplib.send(message(), sender="dr@riverside.example",
                              recipients=["colleague@riverside.example"],
                              hostname="127.0.0.1", port=relay_port, start_tls=False)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    lines = seen + [json.loads(x) for x in err.decode().splitlines() if x.startswith("{")]
    msgs = [str(x.get("msg", "")) for x in lines]
    assert "configuration reloaded" in msgs
    failed = [m for m in msgs if m.startswith("reload failed")]
    assert failed and "portl" in failed[0] and str(cfg) in failed[0]
    assert any(m.startswith("shutting down") for m in msgs)
    events = [x for x in lines if x.get("event") == "message"]
    assert len(events) == 2 and {e["smtp"]["reply"] for e in events} == {"250 2.0.0"}
    assert "colleague" not in err.decode()
    with sqlite3.connect(tmp_path / "data" / "securemail.db") as db:
        admin = [json.loads(b) for (b,) in db.execute(
            "SELECT body FROM audit_records WHERE kind IN ('config-loaded', 'consent-change')"
            " ORDER BY seq")]
    assert [(r["kind"], r.get("reason_code"), r.get("status"), r.get("client_id"),
             r.get("consent")) for r in admin] == [
        ("config-loaded", "start", "ok", None, None),
        ("config-loaded", "reload", "ok", None, None),
        ("consent-change", None, None, "c-1001", "granted"),
        ("config-loaded", "reload", "failed", None, None)]
    assert admin[0]["config_sha256"] != admin[1]["config_sha256"]


def test_serve_with_missing_explicit_config_exits_2(tmp_path: Path) -> None:
    from securemail.cli.serve_cmd import serve

    result = CliRunner().invoke(serve, ["-c", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and "nope.toml" in result.output


@pytest.mark.parametrize("flags", [["--no-portal", "--portal-only"]])
def test_conflicting_flags_exit_2(flags: list[str], tmp_path: Path) -> None:
    from securemail.cli.serve_cmd import serve

    result = CliRunner().invoke(serve, flags)
    assert result.exit_code == 2


async def test_workers_share_the_port_and_all_stop_on_sigterm(tmp_path: Path) -> None:
    """Each worker accepts on the one shared socket. Which idle worker the
    kernel wakes is its choice, so each worker in turn is left alone
    accepting while the others are paused (SIGSTOP). The main process's
    /metrics counts every process's messages."""
    relay_port, admin_port = free_ports(2)
    proc, pids = await _start_workers(
        _workers_config(tmp_path, relay_port, workers=2, admin_port=admin_port), count=2)
    expected: list[int] = []
    try:
        await _started(tmp_path / "data" / "securemail.db", 2)  # not paused holding the store
        for i in range(6):
            alone = pids[i % 2]
            paused = [p for p in pids if p != alone]
            for pid in paused:
                os.kill(pid, signal.SIGSTOP)
                await _stopped(pid)  # kill() returns before the process stops
            try:
                await aiosmtplib.send(message(), sender="dr@riverside.example",
                                      recipients=[f"c{i}@riverside.example"],
                                      hostname="127.0.0.1", port=relay_port,
                                      start_tls=False, timeout=20)
            finally:
                for pid in paused:
                    os.kill(pid, signal.SIGCONT)
            expected.append(alone)
        reader, writer = await asyncio.open_connection("127.0.0.1", admin_port)
        writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        metrics = (await reader.read()).decode()
        writer.close()
        # Three messages each: before, /metrics showed the main process's three.
        assert 'securemail_messages_total{outcome="delivered"} 6' in metrics, metrics
        assert 'securemail_recipients_total{action="deliver"} 6' in metrics
        assert "securemail_message_seconds_count 6" in metrics
    finally:
        err = await _stop(proc)
    events = [json.loads(x) for x in err.decode().splitlines() if x.startswith("{")]
    assert proc.returncode == 0, [e for e in events if e.get("level") != "info"]
    messages = [e for e in events if e.get("event") == "message"]
    assert sorted(e["pid"] for e in messages) == sorted(expected)
    assert len(list((tmp_path / "outbox" / "new").iterdir())) == 6


async def _started(db: Path, workers: int) -> None:
    """Until each worker has recorded its start in the audit log."""
    for _ in range(500):
        with contextlib.closing(sqlite3.connect(db, timeout=5)) as con:
            (n,) = con.execute("SELECT count(*) FROM audit_records"
                               " WHERE kind = 'config-loaded'").fetchone()
        if n >= workers:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the workers did not record their start")


async def _stopped(pid: int) -> None:
    for _ in range(500):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop")


def _workers_config(tmp_path: Path, relay_port: int, *, workers: int = 3,
                    admin_port: int | None = None) -> Path:
    cfg = tmp_path / "securemail.toml"
    admin = f'admin_listen = "127.0.0.1:{admin_port}"' if admin_port else ""
    cfg.write_text(f"""
[practice]
domains = ["riverside.example"]
[relay]
listen = "127.0.0.1:{relay_port}"
workers = {workers}
{admin}
[upstream]
url = "maildir://outbox"
[storage]
url = "sqlite:data/securemail.db"
[portal]
enabled = false
""")
    return cfg


async def _start_workers(cfg: Path, count: int = 3) -> tuple[asyncio.subprocess.Process,
                                                             list[int]]:
    """`securemail serve` with workers; returns it once every worker listens,
    with the worker pids (from their listener log lines)."""
    proc = await asyncio.create_subprocess_exec(
        SECUREMAIL, "serve", "-c", str(cfg), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)  # killpg() cleans up
    pids: list[int] = []
    for _ in range(200):
        raw = await asyncio.wait_for(proc.stderr.readline(), 20)  # type: ignore[union-attr]
        if raw.startswith(b"{"):
            line = json.loads(raw)
            if "listener on" in str(line.get("msg", "")):
                pids.append(int(line["pid"]))
        if len(pids) == count:
            return proc, pids
    raise AssertionError("the workers did not come up")


async def _stop(proc: asyncio.subprocess.Process) -> bytes:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        _kill_all(proc)
    return err


def _kill_all(proc: asyncio.subprocess.Process) -> None:
    """Whatever is left of the serve process and its workers (a failed test)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def test_a_second_serve_on_the_same_address_is_refused(tmp_path: Path) -> None:
    """With SO_REUSEPORT a second instance (an admin debugging with a shadow
    config, say) joined the port and quietly took a share of the mail."""
    port = free_port()
    first = tmp_path / "first"
    first.mkdir()
    proc, _ = await _start_workers(_workers_config(first, port))
    try:
        second = tmp_path / "second"
        second.mkdir()
        cfg = _workers_config(second, port)
        other = await asyncio.create_subprocess_exec(
            SECUREMAIL, "serve", "-c", str(cfg), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        try:
            out, err = await asyncio.wait_for(other.communicate(), 20)
        finally:
            _kill_all(other)
        assert other.returncode == 2
        text = (out + err).decode()
        assert f"{cfg}: relay.listen: cannot listen on 127.0.0.1:{port}" in text
        assert "in use" in text
    finally:
        await _stop(proc)
    assert proc.returncode == 0


async def test_a_worker_that_dies_stops_the_service_with_status_1(tmp_path: Path) -> None:
    proc, pids = await _start_workers(_workers_config(tmp_path, free_port()))
    victim = next(p for p in pids if p != proc.pid)
    os.kill(victim, signal.SIGKILL)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        _kill_all(proc)
    assert proc.returncode == 1
    assert f"worker process {victim} exited unexpectedly" in err.decode()
    for pid in pids:  # nobody is left behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_workers_stop_when_the_main_process_is_killed(tmp_path: Path) -> None:
    proc, pids = await _start_workers(_workers_config(tmp_path, free_port()))
    proc.kill()  # SIGKILL: no chance to forward anything
    await proc.wait()
    others = [p for p in pids if p != proc.pid]
    try:
        await _gone(others)
    finally:
        _kill_all(proc)


async def _gone(others: list[int]) -> None:
    deadline = asyncio.get_running_loop().time() + 30
    alive = list(others)
    while alive and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)
        alive = []
        for pid in others:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
    assert alive == [], "orphaned workers kept running"


async def test_a_portal_address_in_use_is_a_config_error_naming_it(tmp_path: Path) -> None:
    """uvicorn gave up with SystemExit inside its task: exit status 3, an
    asyncio "exception was never retrieved" and no file or key named."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        # Chosen while the portal's port is taken: the relay's cannot be the same one.
        cfg = _workers_config(tmp_path, free_port(), workers=1)
        cfg.write_text(cfg.read_text().replace(
            "enabled = false", f'enabled = true\nlisten = "127.0.0.1:{port}"'))
        proc = await asyncio.create_subprocess_exec(
            SECUREMAIL, "serve", "-c", str(cfg), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            _kill_all(proc)
    text = (out + err).decode()
    assert proc.returncode == 2, text
    assert f"{cfg}: portal.listen: cannot listen on 127.0.0.1:{port}" in text
    assert "in use" in text
    assert "Task exception" not in text and "Traceback" not in text
