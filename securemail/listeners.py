"""Open the SMTP listeners of one relay process, and drain them on shutdown.

* content filter (``relay.listen``): for Postfix and trusted apps; no AUTH;
  only ``relay.trusted_networks`` may relay.
* submission (``[submission]``, optional): STARTTLS is required before any
  mail command, then AUTH PLAIN/LOGIN against the users file; the
  authenticated user may only use its own sender addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from securemail.config import Settings
from securemail.errors import ConfigError
from securemail.logs import install_merger
from securemail.smtp import ListenerPolicy, RelayHandler, RelaySMTP, ServerState
from securemail.smtp_auth import load_users

__all__ = ["Listeners", "bind_address", "bind_sockets", "split_host_port", "start_listeners"]

log = logging.getLogger("securemail.smtp")


def split_host_port(value: str) -> tuple[str, int]:
    """``"127.0.0.1:2525"`` / ``"[::1]:2525"`` -> (host, port)."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class Listeners:
    state: ServerState
    servers: list[asyncio.AbstractServer] = field(default_factory=list)
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)
    handlers: list[RelayHandler] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # for new sessions
    bound: dict[str, str] = field(default_factory=dict)  # config key -> address it bound
    tls_context: ssl.SSLContext | None = None  # the submission listener's

    async def drain(self, timeout: float) -> bool:
        """Stop taking mail: new sessions and new MAIL commands get 421; wait
        (at most ``timeout`` s) for messages in flight, then close everything.
        Returns False when the wait timed out."""
        self.state.draining = True
        # Every session with no message in flight and no data coming in is told
        # now and closed. One still sending its data gets the 421 as the answer
        # to it (closing under incoming data would reset the connection, and
        # the client might never see why); one in flight gets its reply, then
        # the same 421.
        for protocol in list(self.state.open):
            if not protocol.in_flight and not protocol.reading_data:
                protocol.shut_down()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        finished = True
        while self.state.in_flight or any(p.reading_data for p in self.state.open):
            if loop.time() >= deadline:
                finished = False
                break
            await asyncio.sleep(0.05)
        await self.close()
        return finished

    def prepare(self, settings: Settings) -> Callable[[], None]:
        """Load what a reload needs (users file, networks, TLS certificate) and
        return the switch. Anything that fails raises here, before anything
        changed: new trusted networks, limits and users take effect for the next
        command (open sessions keep their login), a renewed certificate for the
        next handshake. Listen addresses need a restart (a warning says so)."""
        wanted = {"relay.listen": settings.relay.listen}
        if settings.submission.enabled:
            wanted["submission.listen"] = settings.submission.listen
        tls = None
        if self.tls_context is not None and settings.submission.enabled:
            tls = _submission_tls(settings)  # a fresh context: the live one stays intact
        users = None
        if settings.submission.enabled and any(h.policy.users for h in self.handlers):
            users = load_users(settings.resolve(settings.submission.users_file))
        nets = _networks(settings)

        def switch() -> None:
            if wanted != self.bound:
                log.warning("listen addresses changed in %s (%s); they apply after a restart,"
                            " still listening on %s", settings.path,
                            ", ".join(f"{k} = {v}" for k, v in wanted.items()),
                            ", ".join(f"{k} = {v}" for k, v in self.bound.items()))
            if tls is not None:
                self.tls_context = tls
            for handler in self.handlers:
                handler.policy = replace(
                    handler.policy, trusted_networks=nets,
                    max_recipients=settings.relay.max_recipients,
                    users=users if handler.policy.users is not None else None)
            self.options["data_size_limit"] = settings.limits.max_message_bytes
            self.options["timeout"] = settings.relay.timeout_seconds
            self.state.max_connections_per_client = settings.relay.max_connections_per_client
            self.state.max_connections = settings.relay.max_connections

        return switch

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for protocol in list(self.state.open):
            # RFC 5321 4.2.2: a server that shuts down says so with 421 (the
            # client retries elsewhere or later) rather than just hanging up.
            protocol.shut_down()
        for server in self.servers:
            await server.wait_closed()


def _networks(settings: Settings) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in settings.relay.trusted_networks)


def _submission_tls(settings: Settings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    sub = settings.submission
    try:
        ctx.load_cert_chain(settings.resolve(sub.tls_cert), settings.resolve(sub.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(settings.path, "submission.tls_cert",
                          f"cannot load certificate/key ({type(exc).__name__})") from None
    return ctx


def bind_sockets(settings: Settings) -> dict[str, list[socket.socket]]:
    """Listening sockets for the SMTP listeners, bound here once: with
    ``relay.workers > 1`` the main process binds them before it forks and every
    worker accepts on the same sockets. A second ``securemail serve`` on the
    same address then fails to bind, instead of quietly taking a share of the
    mail (which SO_REUSEPORT would allow)."""
    keys = ["relay.listen"] + (["submission.listen"] if settings.submission.enabled else [])
    bound: dict[str, list[socket.socket]] = {}
    try:
        for key in keys:
            value = settings.relay.listen if key == "relay.listen" else settings.submission.listen
            bound[key] = bind_address(settings, key, value)
    except BaseException:
        for sockets in bound.values():
            for sock in sockets:
                sock.close()
        raise
    return bound


def bind_address(settings: Settings, key: str, value: str) -> list[socket.socket]:
    """Listening sockets for ``value`` (``host:port``) or ConfigError naming ``key``."""
    host, port = split_host_port(value)
    out: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(100)
            sock.setblocking(False)
    except OSError as exc:
        for sock in out:
            sock.close()
        raise _listen_error(settings, key, value, exc) from None
    return out


def _listen_error(settings: Settings, key: str, value: str, exc: OSError) -> ConfigError:
    return ConfigError(settings.path, key, f"cannot listen on {value} ({exc.strerror or exc})")


async def _server(settings: Settings, key: str, value: str, factory: Callable[[], Any],
                  sockets: Mapping[str, Sequence[socket.socket]] | None
                  ) -> list[asyncio.Server]:
    loop = asyncio.get_running_loop()
    if sockets is not None and key in sockets:
        return [await loop.create_server(factory, sock=sock) for sock in sockets[key]]
    host, port = split_host_port(value)
    try:
        return [await loop.create_server(factory, host=host, port=port)]
    except OSError as exc:
        raise _listen_error(settings, key, value, exc) from None


async def start_listeners(relay: Any, settings: Settings, state: ServerState | None = None,
                          *, sockets: Mapping[str, Sequence[socket.socket]] | None = None
                          ) -> Listeners:
    """Bind the configured listeners on the running loop (port 0 = any free port),
    or serve on ``sockets`` (from :func:`bind_sockets`, inherited by workers).
    A listener that cannot bind raises ConfigError naming its key."""
    loop = asyncio.get_running_loop()
    install_merger()
    state = state or ServerState(settings.relay.max_connections_per_client,
                                 settings.relay.max_connections)
    listeners = Listeners(state)
    common = listeners.options
    common.update({
        "data_size_limit": settings.limits.max_message_bytes,
        "hostname": settings.relay.hostname,
        "ident": "securemail",
        "timeout": settings.relay.timeout_seconds,
        "enable_SMTPUTF8": True,
        "loop": loop,
    })
    nets = _networks(settings)
    filter_policy = ListenerPolicy("content-filter", nets, settings.relay.max_recipients)
    filter_handler = RelayHandler(relay, filter_policy, state)
    listeners.handlers.append(filter_handler)
    servers = await _server(settings, "relay.listen", settings.relay.listen,
                            lambda: RelaySMTP(filter_handler, state, **common), sockets)
    listeners.servers.extend(servers)
    listeners.addresses["relay"] = servers[0].sockets[0].getsockname()[:2]
    listeners.bound["relay.listen"] = settings.relay.listen

    if settings.submission.enabled:
        users = load_users(settings.resolve(settings.submission.users_file))
        tls = _submission_tls(settings)
        sub_policy = ListenerPolicy("submission", nets, settings.relay.max_recipients, users)
        sub_handler = RelayHandler(relay, sub_policy, state)
        listeners.handlers.append(sub_handler)
        sub_servers = await _server(
            settings, "submission.listen", settings.submission.listen,
            lambda: RelaySMTP(sub_handler, state, tls_context=listeners.tls_context,
                              require_starttls=True, auth_require_tls=True, **common),
            sockets)
        listeners.servers.extend(sub_servers)
        listeners.addresses["submission"] = sub_servers[0].sockets[0].getsockname()[:2]
        listeners.bound["submission.listen"] = settings.submission.listen
        listeners.tls_context = tls
    for name, (h, p) in listeners.addresses.items():
        log.info("SMTP %s listener on %s", name, f"[{h}]:{p}" if ":" in h else f"{h}:{p}")
    return listeners
