"""``securemail serve``: the relay, its admin endpoint and the portal in one loop.

Signals: SIGTERM/SIGINT drain (in-flight messages finish, new sessions and new
MAIL commands get 421, then exit); SIGHUP reloads config, keys, directory and
the submission users without dropping connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securemail import document_process
from securemail.admin import start_admin
from securemail.config import Settings, load_settings
from securemail.errors import Blocked, ConfigError, PermanentFailure
from securemail.listeners import (
    Listeners,
    bind_address,
    bind_sockets,
    split_host_port,
    start_listeners,
)
from securemail.metrics import Metrics, WorkerSlots
from securemail.smtp import ServerState

__all__ = ["DEMO_DIR", "Services", "demo_banner", "ensure_demo", "run", "serve_forever",
           "start_services"]

log = logging.getLogger("securemail.serve")

DEMO_DIR = "securemail-data"
DRAIN_SECONDS = 60.0

DEMO_CONFIG = """\
# securemail embedded demo, created by `securemail serve` without a config.
# Everything stays on this machine: mail "sent" lands in ./outbox (a Maildir).
# For production, run `securemail init` and read docs/deploy.md.

[practice]
name = "Demo Practice"
domains = ["practice.example"]           # staff mail domains

[relay]
listen = "127.0.0.1:2525"

[upstream]
url = "maildir://outbox"                 # a folder, not a mail server
tls = "none"

[storage]
url = "sqlite:securemail.db"

[portal]
base_url = "http://127.0.0.1:8080"
listen = "127.0.0.1:8080"

# A client with an authorised contact, so the policy has someone to protect.
[[directory.clients]]
id = "c-1001"
addresses = ["jane@client.example"]
contacts = [{ address = "guardian@client.example", relation = "parent" }]
"""


def ensure_demo(cwd: Path) -> Path:
    """Create ``./securemail-data/securemail.toml`` if missing; return its path."""
    folder = cwd / DEMO_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    cfg = folder / "securemail.toml"
    if not cfg.exists():
        cfg.write_text(DEMO_CONFIG, encoding="utf-8")
    return cfg


def demo_banner(settings: Settings, services: Services) -> str:
    host, port = services.listeners.addresses.get("relay", ("127.0.0.1", 2525))
    outbox = settings.resolve(settings.upstream.url[len("maildir://"):]) / "new"
    portal = settings.portal.base_url if services.portal_task else "(portal not running)"
    return "\n".join([
        "securemail demo is running",
        f"  SMTP relay : {host}:{port}  (no password; loopback only)",
        f"  portal     : {portal}",
        f"  config     : {settings.path}",
        f"  outbox     : {outbox}  (every message that would leave lands here)",
        "",
        "Send a message that concerns a client to a stranger too (it is blocked, 550):",
        f"  swaks --server {host}:{port} --from dr@practice.example \\",
        "        --to jane@client.example,someone@elsewhere.example \\",
        '        --header "Subject: Your appointment" --body "See you Tuesday."',
        "Send it to the client alone (it goes to the portal; the notification lands in",
        "the outbox, open its link in a browser):",
        f"  swaks --server {host}:{port} --from dr@practice.example \\",
        '        --to jane@client.example --header "Subject: Your appointment" \\',
        '        --body "See you Tuesday."',
        "Stop with Ctrl-C.",
    ])


@dataclass
class Services:
    relay: Any
    settings: Settings
    listeners: Listeners
    admin: asyncio.AbstractServer | None = None
    portal_server: Any = None
    portal_task: asyncio.Task[None] | None = None

    async def reload(self) -> None:
        """SIGHUP: relay config/keys/directory, then the submission users."""
        reload = getattr(self.relay, "reload", None)
        try:
            # Everything that can fail is loaded before anything switches: a bad
            # users file or certificate must not leave the relay half reloaded.
            switch_listeners = self.listeners.prepare(load_settings(self.settings.path))
            if reload is not None:
                result = reload()
                if inspect.isawaitable(result):
                    await result
            self.settings = getattr(self.relay, "settings", self.settings)
            switch_listeners()
            log.info("configuration reloaded")
        except Exception as exc:  # noqa: BLE001 - a bad reload keeps the old config running
            # A ConfigError names file and key; anything else only by its class.
            why = str(exc) if isinstance(exc, ConfigError) else type(exc).__name__
            log.error("reload failed, keeping the running configuration: %s", why)
            _audit_config(self.relay, "reload", "failed")

    async def stop(self, drain_seconds: float = DRAIN_SECONDS) -> None:
        finished = await self.listeners.drain(drain_seconds)
        if not finished:
            log.warning("drain timed out; closing with messages still in flight")
        if self.portal_server is not None and self.portal_task is not None:
            self.portal_server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self.portal_task
        if self.admin is not None:
            self.admin.close()
            await self.admin.wait_closed()
        await self.relay.close()


async def start_services(relay: Any, settings: Settings, *, smtp: bool = True,
                         portal: bool = True, admin: bool = True,
                         sockets: Mapping[str, Sequence[socket.socket]] | None = None,
                         metrics_slot: memoryview | None = None,
                         worker_metrics: WorkerSlots | None = None) -> Services:
    """Bind everything the config asks for on the running loop (the SMTP
    listeners on ``sockets`` when the main process bound them for its workers).
    A worker publishes its counters in ``metrics_slot``; the main process adds
    ``worker_metrics`` to its own on /metrics and /readyz."""
    state = ServerState(settings.relay.max_connections_per_client, settings.relay.max_connections)
    state.metrics.slot = metrics_slot
    if smtp:
        listeners = await start_listeners(relay, settings, state, sockets=sockets)
    else:
        listeners = Listeners(state)
    services = Services(relay, settings, listeners)
    if smtp and admin and settings.relay.admin_listen:
        host, port = split_host_port(settings.relay.admin_listen)
        try:
            services.admin = await start_admin(
                host, port, metrics=lambda: state.metrics.with_workers(worker_metrics).render(),
                healthy=lambda: not state.draining,
                not_ready=lambda: state.metrics.with_workers(worker_metrics).not_ready())
        except OSError as exc:
            await listeners.close()
            raise ConfigError(settings.path, "relay.admin_listen", f"cannot listen on"
                              f" {settings.relay.admin_listen} ({exc.strerror or exc})") from None
        log.info("admin endpoint on http://%s/healthz and /metrics",
                 f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if portal:
        await _start_portal(services)
    return services


def portal_reply_sender(relay: Any, metrics: Metrics
                        ) -> Callable[[bytes, str, str], Awaitable[None]]:
    """How a client's reply from the portal leaves: through the same pipeline
    as any message (policy, encryption, audit), counted on /metrics apart
    from SMTP transactions (``securemail_portal_replies_total``)."""

    async def reply_sender(raw: bytes, mail_from: str, to: str) -> None:
        try:
            await relay.send(raw, mail_from=mail_from, rcpt_tos=[to])
        except Blocked:
            metrics.portal_reply("blocked")
            raise
        except PermanentFailure:
            metrics.portal_reply("refused")
            raise
        except Exception:
            metrics.portal_reply("deferred")
            raise
        metrics.portal_reply("delivered")

    return reply_sender


async def _start_portal(services: Services) -> None:
    relay, settings = services.relay, services.settings
    if getattr(relay, "portal", None) is None:
        log.info("portal disabled in the config; not serving it")
        return
    try:
        import uvicorn

        from securemail.portal.app import create_app
    except ImportError as exc:
        log.info("portal web app not available (%s); not serving it", exc.name)
        return

    reply_sender = portal_reply_sender(relay, services.listeners.state.metrics)
    app = create_app(relay.portal, reply_sender=reply_sender)
    host, port = split_host_port(settings.portal.listen)
    # log_config=None: keep our JSON handler instead of uvicorn's own formatters.
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off",
                            log_config=None, proxy_headers=True, server_header=False,
                            # Only the configured proxy may say who the client is
                            # (the rate limit keys on it); not FORWARDED_ALLOW_IPS.
                            forwarded_allow_ips=list(settings.portal.forwarded_allow_ips),
                            # A request still running (or a client trickling its
                            # body) at shutdown must not hold the stop forever.
                            timeout_graceful_shutdown=int(DRAIN_SECONDS))
    server = _EmbeddedUvicorn(config)
    # Bound here, like the SMTP listeners: an address in use is a ConfigError
    # naming portal.listen (uvicorn would log it and raise SystemExit, which
    # escapes the event loop from inside a task: exit status 3, no file named).
    sockets = bind_address(settings, "portal.listen", settings.portal.listen)
    services.portal_server = server
    services.portal_task = asyncio.create_task(_serve_portal(server, sockets))
    while not server.started and not services.portal_task.done():
        await asyncio.sleep(0.01)
    if services.portal_task.done():
        try:
            services.portal_task.result()  # raises the start error, if any
        except OSError as exc:
            raise ConfigError(settings.path, "portal.listen", f"cannot serve on"
                              f" {settings.portal.listen} ({exc.strerror or exc})") from None
    log.info("portal on %s (listening on %s:%s)", settings.portal.base_url, host, port)


async def _serve_portal(server: Any, sockets: list[socket.socket]) -> None:
    try:
        await server.serve(sockets=sockets)
    except SystemExit:  # uvicorn's way to give up at start (it logged why)
        raise OSError("the portal web server did not start") from None
    finally:
        for sock in sockets:
            sock.close()


def _portal_server_class() -> type:
    import uvicorn

    class Embedded(uvicorn.Server):  # type: ignore[misc]
        """uvicorn without its own signal handlers: ours drain the SMTP side first."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Embedded


def _EmbeddedUvicorn(config: Any) -> Any:  # noqa: N802 - a class factory
    return _portal_server_class()(config)


async def run(config_path: Path, *, smtp: bool = True, portal: bool = True, demo: bool = False,
              admin: bool = True, sockets: Mapping[str, Sequence[socket.socket]] | None = None,
              workers: Workers | None = None, metrics_slot: memoryview | None = None,
              on_ready: Callable[[Services], None] | None = None) -> None:
    """Load the relay, serve until SIGTERM/SIGINT, drain, exit. ``workers`` are
    the extra worker processes: they get our SIGTERM and SIGHUP, and if one
    dies we stop too (exit status 1), so the service manager restarts all."""
    from securemail.relay import load

    relay = load(config_path)
    settings: Settings = relay.settings
    children = workers.pids if workers is not None else []
    document_process.enable()  # large messages' documents are read in child processes
    try:
        services = await start_services(
            relay, settings, smtp=smtp, portal=portal, admin=admin, sockets=sockets,
            metrics_slot=metrics_slot, worker_metrics=workers.metrics if workers else None)
    except BaseException:
        await relay.close()  # stops the audit writer; otherwise the process cannot exit
        raise
    _audit_config(relay, "start", "ok")
    if demo:
        print(demo_banner(settings, services), flush=True)
    if on_ready is not None:
        on_ready(services)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def forward(sig: int) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def on_stop(sig: int) -> None:
        forward(sig)
        stop.set()

    def on_hup() -> None:
        forward(signal.SIGHUP)
        asyncio.ensure_future(services.reload())

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop, sig)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    watch = asyncio.create_task(_watch(workers, stop)) if workers is not None else None
    try:
        await stop.wait()
        if workers is not None and workers.failed:
            forward(signal.SIGTERM)
        log.info("shutting down: draining messages in flight")
    finally:
        if watch is not None:
            watch.cancel()
        # Signals stay handled while draining: a second SIGTERM must not kill us mid-drain.
        try:
            await services.stop()
        finally:
            # The messages are drained: end the document-reading children.
            await asyncio.to_thread(document_process.shutdown)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)


def _audit_config(relay: Any, reason: str, status: str) -> None:
    """Record which configuration is in force; the relay keeps serving if it cannot."""
    record = getattr(relay, "record_config_loaded", None)
    if record is None:
        return
    try:
        record(reason, status)
    except Exception as exc:  # noqa: BLE001 - the next message's own record will fail closed
        log.error("could not audit the configuration change (%s)", type(exc).__name__)


@dataclass
class Workers:
    """The worker processes of ``securemail serve`` (``relay.workers`` > 1)."""

    pids: list[int] = field(default_factory=list)
    exited: dict[int, int] = field(default_factory=dict)  # pid -> exit status, once reaped
    failed: bool = False  # one exited while we were serving
    metrics: WorkerSlots | None = None  # their counters, for our /metrics and /readyz

    def poll(self) -> list[tuple[int, int]]:
        """Workers that have exited since the last poll: (pid, exit status)."""
        gone = []
        for pid in self.pids:
            if pid in self.exited:
                continue
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self.exited[pid] = os.waitstatus_to_exitcode(status)
                gone.append((pid, self.exited[pid]))
        return gone

    def reap(self) -> bool:
        """Wait for every worker; True when any of them failed."""
        for pid in self.pids:
            if pid not in self.exited:
                try:
                    _, status = os.waitpid(pid, 0)
                    self.exited[pid] = os.waitstatus_to_exitcode(status)
                except ChildProcessError:
                    self.exited[pid] = 0
        return self.failed or any(self.exited.values())


async def _watch(workers: Workers, stop: asyncio.Event) -> None:
    """A worker that dies while we serve stops the service: the survivors would
    carry on with fewer hands and nobody would know. Exit status 1 lets the
    service manager (systemd's Restart=on-failure) start everything afresh."""
    while not stop.is_set():
        for pid, status in workers.poll():
            log.error("worker process %d exited unexpectedly (status %d): stopping all"
                      " workers; the service manager should restart securemail", pid, status)
            workers.failed = True
            stop.set()
        await asyncio.sleep(0.5)


def _die_with_parent(parent: int) -> None:
    """Linux: SIGTERM this worker when the main process dies (even by SIGKILL),
    so no orphan keeps relaying with an old configuration."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def serve_forever(config_path: Path, *, smtp: bool = True, portal: bool = True,
                  demo: bool = False) -> int:
    """The ``securemail serve`` process: ``relay.workers`` processes share the SMTP
    listeners, which this process binds before it forks (so a second
    ``securemail serve`` on the same address fails to start); the first one
    also serves the portal and the admin endpoint, whose /metrics and /readyz
    add the workers' counters (shared memory made before the fork) to its
    own. Workers are forked before any thread or event loop exists. Returns
    the exit status."""
    # A reload asked for while we start (systemd's ExecReload right after the
    # start) must not kill us: SIGHUP is ignored until the handlers are in place.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    settings = load_settings(config_path)
    count = settings.relay.workers if smtp else 1
    sockets = None
    if count > 1:
        # Create the store's tables and the generated secrets once, here, so the
        # workers do not race to create them; then close it: no threads may
        # exist when we fork.
        from securemail.relay import load

        asyncio.run(load(config_path).close())
        sockets = bind_sockets(settings)
    workers = Workers(metrics=WorkerSlots(count - 1) if count > 1 else None)
    parent = os.getpid()
    for index in range(1, count):
        pid = os.fork()
        if pid == 0:  # a worker: SMTP only, until its own SIGTERM
            status = 0
            try:
                _die_with_parent(parent)
                slot = workers.metrics.slot(index - 1) if workers.metrics else None
                asyncio.run(run(config_path, smtp=True, portal=False, admin=False,
                                sockets=sockets, metrics_slot=slot))
            except BaseException as exc:  # noqa: BLE001 - a worker reports by exit status
                tb = exc.__traceback__
                while tb is not None and tb.tb_next is not None:
                    tb = tb.tb_next
                where = f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else ""
                log.error("worker %d stopped: %s%s", index, type(exc).__name__, where)
                status = 1
            os._exit(status)
        workers.pids.append(pid)
    try:
        asyncio.run(run(config_path, smtp=smtp, portal=portal, demo=demo, sockets=sockets,
                        workers=workers if workers.pids else None))
    except BaseException:
        for pid in workers.pids:  # we failed: do not leave workers behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        workers.reap()
        raise
    return 1 if workers.reap() else 0
