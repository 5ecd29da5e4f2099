"""Upstream delivery over SMTP (aiosmtplib), TLS required and verified.

Connections are reused: up to ``pool_size`` sessions are kept open and each
carries one transaction at a time (``RSET`` between messages is implicit in a
fresh ``MAIL``). A reused session that turns out to be dead *before* ``DATA``
is retried once on a fresh connection; a failure during or after ``DATA`` is
never retried here, because upstream may already have the message (the
sender's retry after our 451 is de-duplicated by the pipeline).

Fail closed: with ``tls = "required"`` an upstream that does not offer
STARTTLS, or whose certificate does not verify, gets nothing
(:class:`~securemail.errors.UpstreamUnavailable`, so the relay answers 451).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as errno_names
import hashlib
import re
import socket
import ssl
import threading
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import aiosmtplib
from aiosmtplib.response import SMTPResponse

from securemail.config import UpstreamSettings
from securemail.errors import ConfigError, UpstreamUnavailable
from securemail.model import TLSInfo
from securemail.transport import DeliveryResult

__all__ = ["SMTPTransport", "reply_code", "wire_data"]

_ENHANCED = re.compile(r"\s*([245]\.\d{1,3}\.\d{1,3})\b")


def reply_code(code: int, message: str) -> str:
    """``"550 5.1.1"``: the reply code and enhanced code, never upstream's text."""
    m = _ENHANCED.match(message or "")
    return f"{code} {m.group(1)}" if m else str(code)


# Like Postfix's smtp_connection_reuse_time_limit: a pooled session is not
# reused after this long, so the upstream's own configuration changes (a
# `postfix reload` restarts smtpd processes only as their clients leave) reach
# our mail within minutes.
SESSION_REUSE_SECONDS = 300.0


class _Session:
    """One open upstream connection and what we learnt about it."""

    __slots__ = ("client", "generation", "opened", "tls")

    def __init__(self, client: aiosmtplib.SMTP, tls: TLSInfo | None, generation: int) -> None:
        self.client = client
        self.tls = tls
        self.opened = time.monotonic()
        self.generation = generation  # the transport's recycle count when opened

    def reusable(self, now: float, generation: int) -> bool:
        return (self.client.is_connected and self.generation == generation
                and now - self.opened < SESSION_REUSE_SECONDS)


class _LoopPool:
    """The idle sessions and delivery slots of one event loop.

    An aiosmtplib session and an asyncio.Semaphore belong to the loop they were
    made on: using them on another loop fails ("Event loop is closed", "bound to
    a different event loop"). So each loop that sends gets a pool of its own.
    ``finaliser`` is an async generator started on that loop: the loop's
    shutdown (``asyncio.run``, ``asyncio.Runner``) closes it, which closes the
    pool's sessions while the loop can still do so.
    """

    __slots__ = ("finaliser", "idle", "loop", "slots")

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.idle: list[_Session] = []
        self.slots = asyncio.Semaphore(size)
        self.finaliser: AsyncGenerator[None, None] | None = None

    async def quit_idle(self) -> None:
        """QUIT and close the idle sessions (on this pool's own loop)."""
        idle, self.idle = self.idle, []
        for session in idle:
            try:
                await asyncio.wait_for(session.client.quit(), timeout=2)
            except (TimeoutError, aiosmtplib.SMTPException, OSError):
                pass
            finally:
                session.client.close()

    def close_idle(self) -> None:
        """Close the idle sessions at once (on this pool's own loop, no QUIT)."""
        idle, self.idle = self.idle, []
        for session in idle:
            session.client.close()

    def abandon(self) -> None:
        """The pool's loop is closed: nothing can be awaited on it any more, and
        its transports cannot close themselves (that needs the loop). Shut the
        sockets down (upstream sees the connections end now), close them (no
        descriptor waits for the garbage collector, no "unclosed socket"
        warning) and end the finaliser here."""
        idle, self.idle = self.idle, []
        for session in idle:
            transport = session.client.transport
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            # asyncio's selector transports keep the real socket in ``_sock``;
            # closing it and dropping it is what their close() would do.
            raw = getattr(transport, "_sock", None)
            if isinstance(raw, socket.socket):
                raw.close()
                with contextlib.suppress(AttributeError):
                    transport._sock = None  # type: ignore[union-attr]
        finaliser, self.finaliser = self.finaliser, None
        if finaliser is not None:
            # Its ``finally`` awaits nothing once ``idle`` is empty, so it runs to
            # the end without a loop; a finished generator is never handed to the
            # dead loop's finaliser hook later (which would raise in the GC).
            closing = finaliser.aclose()
            try:
                closing.send(None)
            except StopIteration:
                pass
            except RuntimeError:  # already running or closed: nothing to end
                pass


class SMTPTransport:
    """Delivers to ``upstream.url`` (``smtp://host:port``).

    Safe to share between event loops and threads: each loop uses its own pool
    of up to ``pool_size`` sessions, and a loop's sessions are closed when that
    loop shuts down (or, if it was closed without shutting down, the next time
    this transport makes a pool or is closed).
    """

    def __init__(self, settings: UpstreamSettings, *, local_hostname: str | None = None) -> None:
        parts = urlsplit(settings.url)
        if parts.scheme != "smtp" or not parts.hostname:
            raise ValueError(f"not an smtp:// URL: {settings.url!r}")
        self.host = parts.hostname
        self.port = parts.port or 25
        self.settings = settings
        self.require_tls = settings.tls != "none"
        self.local_hostname = local_hostname
        self._tls_context = self._make_tls_context() if self.require_tls else None
        self._password = self._read_password() if settings.username else ""
        self._pools: dict[asyncio.AbstractEventLoop, _LoopPool] = {}
        self._pools_lock = threading.Lock()
        self._pool: _LoopPool | None = None  # the last one used: the one-loop fast path
        self._closed = False
        self._generation = 0  # raised by recycle(): older sessions are not reused

    @property
    def _where(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _make_tls_context(self) -> ssl.SSLContext:
        cafile = self.settings.ca_file or None
        try:
            ctx = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            # "FILE: key: problem" like every config error: the config file
            # first, the CA bundle's path in the problem.
            raise ConfigError(self.settings.config_file or "[upstream]", "upstream.ca_file",
                              f"{cafile}: cannot load the CA bundle ({reason})") from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # create_default_context already sets CERT_REQUIRED + check_hostname.
        return ctx

    def _read_password(self) -> str:
        """The upstream password, from ``upstream.password_file`` (first line)."""
        path = self.settings.password_file
        where = self.settings.config_file or "[upstream]"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(where, "upstream.password_file", f"{path}: file not found") \
                from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigError(where, "upstream.password_file",
                              f"{path}: cannot read ({reason})") from None
        password = text.split("\n", 1)[0].rstrip("\r")
        if not password:
            raise ConfigError(where, "upstream.password_file", f"{path}: the file is empty")
        return password

    async def _login(self, client: aiosmtplib.SMTP) -> None:
        """SMTP AUTH with ``upstream.username``, only over TLS (or loopback)."""
        if not client.supports_extension("auth"):
            raise UpstreamUnavailable(f"upstream {self._where} does not offer AUTH"
                                      " (upstream.username is set)")
        # One attempt, PLAIN (inside TLS) where offered, else LOGIN: a refused
        # password must not be tried again with every other mechanism.
        methods = client.server_auth_methods
        try:
            if "plain" in methods or "login" not in methods:
                await client.auth_plain(self.settings.username, self._password)
            else:
                await client.auth_login(self.settings.username, self._password)
        except aiosmtplib.SMTPAuthenticationError as exc:
            # The user name is not secret; the password never appears anywhere.
            raise UpstreamUnavailable(
                f"upstream {self._where} refused the login of {self.settings.username}"
                f" ({reply_code(exc.code, exc.message)}); check upstream.username and"
                " upstream.password_file") from None
        except aiosmtplib.SMTPException as exc:
            raise UpstreamUnavailable(
                f"upstream {self._where} login failed ({_reason(exc)})") from None

    # ------------------------------------------------------------ pools

    async def _pool_here(self) -> _LoopPool:
        loop = asyncio.get_running_loop()
        pool = self._pool
        if pool is not None and pool.loop is loop:
            return pool
        dead: list[_LoopPool] = []
        with self._pools_lock:
            pool = self._pools.get(loop)
            if pool is None:
                dead = [p for p in self._pools.values() if p.loop.is_closed()]
                for p in dead:
                    del self._pools[p.loop]
                pool = self._pools[loop] = _LoopPool(loop, self.settings.pool_size)
                pool.finaliser = self._until_loop_ends(pool)
                started = pool.finaliser.__anext__()  # registers it with this loop
            else:
                started = None
        for p in dead:
            p.abandon()
        if started is not None:
            await started  # runs to the generator's first yield at once
        self._pool = pool
        return pool

    async def _until_loop_ends(self, pool: _LoopPool) -> AsyncGenerator[None, None]:
        """Suspended for the pool's life; its ``finally`` runs when the loop shuts
        down its async generators (or when the transport is closed)."""
        try:
            yield
        finally:
            pool.finaliser = None  # the pool is over: sessions in use close on return
            with self._pools_lock:
                if self._pools.get(pool.loop) is pool:
                    del self._pools[pool.loop]
            if self._pool is pool:
                self._pool = None
            if pool.idle:
                await pool.quit_idle()

    @property
    def _idle(self) -> list[_Session]:
        """The running loop's idle sessions (for tests)."""
        pool = self._pools.get(asyncio.get_running_loop())
        return pool.idle if pool is not None else []

    # ------------------------------------------------------------ connections

    async def _connect(self) -> _Session:
        generation = self._generation  # a recycle while we connect retires this one too
        client = aiosmtplib.SMTP(
            hostname=self.host, port=self.port, timeout=self.settings.timeout_seconds,
            start_tls=False, use_tls=False, local_hostname=self.local_hostname,
        )
        try:
            await client.connect()
            await client.ehlo()
            tls: TLSInfo | None = None
            if self.require_tls:
                if not client.supports_extension("starttls"):
                    raise UpstreamUnavailable(
                        f"upstream {self._where} does not offer STARTTLS (tls = \"required\")")
                await client.starttls(tls_context=self._tls_context)
                await client.ehlo()  # RFC 3207: forget what we learnt before TLS
                tls = _tls_info(client)
            if self.settings.username:
                await self._login(client)
            return _Session(client, tls, generation)
        except UpstreamUnavailable:
            client.close()
            raise
        except ssl.SSLError as exc:
            client.close()
            raise UpstreamUnavailable(
                f"upstream {self._where} TLS failed ({_reason(exc)})") from None
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            raise UpstreamUnavailable(
                f"upstream {self._where} unavailable ({_reason(exc)})") from None
        except BaseException:  # cancelled: the half-open session is nobody's
            client.close()
            raise

    async def _checkout(self, pool: _LoopPool) -> tuple[_Session, bool]:
        now = time.monotonic()
        while pool.idle:
            session = pool.idle.pop()
            if session.reusable(now, self._generation):
                return session, True
            session.client.close()  # dead, too old, or from before a recycle
        return await self._connect(), False

    def fresh_tls_context(self) -> ssl.SSLContext | None:
        """A new TLS context from the CA bundle as it is now (for a reload: a
        renewed internal CA applies without a restart). Raises ConfigError."""
        return self._make_tls_context() if self.require_tls else None

    def recycle(self, tls_context: ssl.SSLContext | None = None) -> None:
        """Stop reusing every session opened so far (SIGHUP): the next messages
        open fresh connections, which see the upstream's current configuration.
        Idle sessions of the running loop close now; sessions in use finish
        their message and close instead of going back to the pool; other
        loops' idle sessions are passed over at their next checkout."""
        self._generation += 1
        if tls_context is not None:
            self._tls_context = tls_context
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        pool = self._pools.get(loop)
        if pool is not None:
            pool.close_idle()

    def _checkin(self, pool: _LoopPool, session: _Session) -> None:
        if (self._closed or not session.client.is_connected or pool.finaliser is None
                or session.generation != self._generation):  # busy during a recycle
            session.client.close()
        else:
            pool.idle.append(session)

    # ------------------------------------------------------------ delivery

    async def send(self, mail_from: str, rcpt_tos: Sequence[str], data: bytes) -> DeliveryResult:
        if self._closed:
            raise UpstreamUnavailable("transport closed")
        pool = self._pool
        if pool is None or pool.loop is not asyncio.get_running_loop():
            pool = await self._pool_here()
        async with pool.slots:
            session, reused = await self._checkout(pool)
            try:
                try:
                    return await self._transaction(session, mail_from, rcpt_tos, data)
                except _StaleSession:
                    if not reused:
                        raise UpstreamUnavailable("upstream closed the connection") from None
                    session.client.close()
                    session = await self._connect()
                    try:
                        return await self._transaction(session, mail_from, rcpt_tos, data)
                    except _StaleSession:
                        raise UpstreamUnavailable("upstream closed the connection") from None
            except UpstreamUnavailable:
                raise  # the transaction closed the session if it is not reusable
            except BaseException:
                # Cancelled mid-transaction: what upstream has seen is unknown, so
                # the session must never carry another message.
                session.client.close()
                raise
            finally:
                self._checkin(pool, session)

    async def _transaction(
        self, session: _Session, mail_from: str, rcpt_tos: Sequence[str], data: bytes
    ) -> DeliveryResult:
        client = session.client
        utf8 = not (mail_from.isascii() and all(r.isascii() for r in rcpt_tos))
        options: list[bytes] = []
        if not data.isascii() and client.supports_extension("8bitmime"):
            options.append(b"BODY=8BITMIME")
        if utf8:
            if not client.supports_extension("smtputf8"):
                return DeliveryResult(accepted=(), refused={r: "553 5.6.7" for r in rcpt_tos},
                                      tls=session.tls)
            options.append(b"SMTPUTF8")
        elif _utf8_headers(data) and client.supports_extension("smtputf8"):
            # An internationalised message (RFC 6532 headers) says so (RFC 6531);
            # a server without SMTPUTF8 still gets it, as 8-bit mail, as before.
            options.append(b"SMTPUTF8")
        encoding = "utf-8" if utf8 else "ascii"
        try:
            reply = await client.execute_command(b"MAIL", b"FROM:" + _path(mail_from, encoding),
                                                 *options)
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
            # Nothing of this message reached upstream yet: safe to retry.
            raise _StaleSession() from None
        except (TimeoutError, aiosmtplib.SMTPException, OSError, ValueError) as exc:
            client.close()
            raise UpstreamUnavailable(f"upstream failed at MAIL ({type(exc).__name__})") from None
        if reply.code != 250:
            await _rset(client)
            if reply.code >= 500:
                code = reply_code(reply.code, reply.message)
                return DeliveryResult(accepted=(), refused={r: code for r in rcpt_tos},
                                      tls=session.tls)
            raise UpstreamUnavailable(f"upstream deferred MAIL ({reply.code})")

        accepted: list[str] = []
        refused: dict[str, str] = {}
        deferred: dict[str, str] = {}
        try:
            for rcpt in rcpt_tos:
                reply = await client.execute_command(b"RCPT", b"TO:" + _path(rcpt, encoding))
                if reply.code in (250, 251):
                    accepted.append(rcpt)
                else:
                    target = refused if reply.code >= 500 else deferred
                    target[rcpt] = reply_code(reply.code, reply.message)
            if not accepted:
                await _rset(client)
                return DeliveryResult(accepted=(), refused=refused, deferred=deferred,
                                      tls=session.tls)
            reply = await _data(client, data, self.settings.timeout_seconds)
            if reply.code != 250:
                await _rset(client)
                if reply.code >= 500:
                    code = reply_code(reply.code, reply.message)
                    refused.update({r: code for r in accepted})
                    return DeliveryResult(accepted=(), refused=refused, deferred=deferred,
                                          tls=session.tls)
                raise UpstreamUnavailable(f"upstream deferred DATA ({reply.code})")
        except UpstreamUnavailable:
            raise
        except (TimeoutError, aiosmtplib.SMTPException, OSError, ValueError) as exc:
            client.close()
            raise UpstreamUnavailable(f"upstream failed ({type(exc).__name__})") from None
        return DeliveryResult(accepted=tuple(accepted), refused=refused, deferred=deferred,
                              tls=session.tls,
                              accepted_reply=reply_code(reply.code, reply.message))

    async def close(self) -> None:
        """Close every pool's sessions: on this loop with QUIT; on another loop
        that still runs, by that loop (no QUIT); on a loop already closed, by
        shutting the sockets down. Never raises because another loop is gone."""
        self._closed = True
        with self._pools_lock:
            pools = list(self._pools.values())
            self._pools.clear()
        self._pool = None
        here = asyncio.get_running_loop()
        for pool in pools:
            if pool.loop is here:
                await pool.quit_idle()
                finaliser, pool.finaliser = pool.finaliser, None
                if finaliser is not None:
                    await finaliser.aclose()
            elif pool.loop.is_closed():
                pool.abandon()
            else:
                try:
                    pool.loop.call_soon_threadsafe(pool.close_idle)
                except RuntimeError:  # closed meanwhile
                    pool.abandon()


# What to look at for the commonest certificate verification failures
# (OpenSSL's X509_V_ERR_* codes).
_VERIFY_HINTS = {
    2: "upstream.ca_file",  # unable to get issuer certificate
    18: "upstream.ca_file",  # self-signed certificate
    19: "upstream.ca_file",  # self-signed certificate in certificate chain
    20: "upstream.ca_file",  # unable to get local issuer certificate
    21: "upstream.ca_file",  # unable to verify the first certificate
    62: "the host in upstream.url",  # hostname mismatch
    64: "the host in upstream.url",  # IP address mismatch
}


def _reason(exc: BaseException) -> str:
    """The exception's class and, for an OS error, its errno name (our own text:
    never a server's reply, which could echo message content). A certificate
    that does not verify also gets OpenSSL's verify message ("unable to get
    local issuer certificate", "IP address mismatch, ...") and the setting to
    look at: local facts about the certificate, never anything from a message."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        text = f"{type(exc).__name__}: {exc.reason or 'CERTIFICATE_VERIFY_FAILED'}"
        message = (exc.verify_message or "").strip().rstrip(".")
        if message:
            text += f": {message}"
        hint = _VERIFY_HINTS.get(exc.verify_code)
        return f"{text}; check {hint}" if hint else text
    if isinstance(exc, ssl.SSLError) and getattr(exc, "reason", None):
        return f"{type(exc).__name__}: {exc.reason}"
    seen: BaseException | None = exc
    for _ in range(3):  # aiosmtplib wraps the OSError that says what happened
        if seen is None:
            break
        code = getattr(seen, "errno", None)
        if isinstance(code, int) and code in errno_names.errorcode:
            return f"{type(exc).__name__}: {errno_names.errorcode[code]}"
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


def _path(address: str, encoding: str) -> bytes:
    """``<address>`` for MAIL/RCPT. Addresses reaching the transport were parsed
    strictly already; anything that could break out of the command is refused."""
    if any(c in address for c in "<>\r\n\0") or not address.isprintable():
        raise ValueError("address not usable in an SMTP command")
    return b"<" + address.encode(encoding) + b">"


def wire_data(message: bytes) -> bytes:
    """The DATA payload as it goes on the wire (RFC 5321 4.5.2): CRLF line endings
    (a lone CR or LF becomes CRLF, as aiosmtplib would do), a leading dot doubled,
    and the terminating ``.CRLF``. Byte operations only: aiosmtplib's two regular
    expressions cost more than the rest of the upstream transaction."""
    crlf = message.count(b"\r\n")
    if crlf != message.count(b"\n") or crlf != message.count(b"\r"):
        message = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b"."):
        message = b"." + message
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"


async def _data(client: aiosmtplib.SMTP, message: bytes, timeout: float) -> SMTPResponse:
    """``DATA``, then the message as :func:`wire_data` prepares it; the final reply.

    A 354 that does not come back is returned as the reply (no body is sent);
    a lost connection or a timeout raises (the caller closes the session).
    """
    start = await client.execute_command(b"DATA")
    if start.code != 354:
        return start
    protocol = client.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("upstream closed the connection")
    try:
        protocol.write(wire_data(message))
        return await protocol.read_response(timeout=timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        client.close()
        raise


class _StaleSession(Exception):
    """A pooled connection died before any of the message was sent."""


async def _rset(client: aiosmtplib.SMTP) -> None:
    try:
        await client.rset()
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        client.close()


def _tls_info(client: aiosmtplib.SMTP) -> TLSInfo:
    obj = client.get_transport_info("ssl_object")
    if obj is None:
        return TLSInfo()
    cipher = obj.cipher()
    der = obj.getpeercert(binary_form=True)
    return TLSInfo(
        version=obj.version(),
        cipher=cipher[0] if cipher else None,
        peer_cert_sha256=hashlib.sha256(der).hexdigest() if der else None,
    )


def _utf8_headers(data: bytes) -> bool:
    """Whether the header section carries non-ASCII bytes (UTF-8 header fields)."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end]
    return not head.isascii()
