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
import hashlib
import re
import ssl
from collections.abc import Sequence
from urllib.parse import urlsplit

import aiosmtplib
from aiosmtplib.response import SMTPResponse

from securemail.config import UpstreamSettings
from securemail.errors import UpstreamUnavailable
from securemail.model import TLSInfo
from securemail.transport import DeliveryResult

__all__ = ["SMTPTransport", "reply_code", "wire_data"]

_ENHANCED = re.compile(r"\s*([245]\.\d{1,3}\.\d{1,3})\b")


def reply_code(code: int, message: str) -> str:
    """``"550 5.1.1"``: the reply code and enhanced code, never upstream's text."""
    m = _ENHANCED.match(message or "")
    return f"{code} {m.group(1)}" if m else str(code)


class _Session:
    """One open upstream connection and what we learnt about it."""

    def __init__(self, client: aiosmtplib.SMTP, tls: TLSInfo | None) -> None:
        self.client = client
        self.tls = tls


class SMTPTransport:
    """Delivers to ``upstream.url`` (``smtp://host:port``)."""

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
        self._idle: list[_Session] = []
        self._slots = asyncio.Semaphore(settings.pool_size)
        self._closed = False

    def _make_tls_context(self) -> ssl.SSLContext:
        cafile = self.settings.ca_file or None
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # create_default_context already sets CERT_REQUIRED + check_hostname.
        return ctx

    # ------------------------------------------------------------ connections

    async def _connect(self) -> _Session:
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
                    raise UpstreamUnavailable("upstream does not offer STARTTLS")
                await client.starttls(tls_context=self._tls_context)
                await client.ehlo()  # RFC 3207: forget what we learnt before TLS
                tls = _tls_info(client)
            return _Session(client, tls)
        except UpstreamUnavailable:
            client.close()
            raise
        except ssl.SSLError as exc:
            client.close()
            raise UpstreamUnavailable(f"upstream TLS failed ({type(exc).__name__})") from None
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            raise UpstreamUnavailable(f"upstream unavailable ({type(exc).__name__})") from None

    async def _checkout(self) -> tuple[_Session, bool]:
        while self._idle:
            session = self._idle.pop()
            if session.client.is_connected:
                return session, True
        return await self._connect(), False

    def _checkin(self, session: _Session) -> None:
        if self._closed or not session.client.is_connected:
            session.client.close()
        else:
            self._idle.append(session)

    # ------------------------------------------------------------ delivery

    async def send(self, mail_from: str, rcpt_tos: Sequence[str], data: bytes) -> DeliveryResult:
        if self._closed:
            raise UpstreamUnavailable("transport closed")
        async with self._slots:
            session, reused = await self._checkout()
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
            finally:
                self._checkin(session)

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
                              tls=session.tls)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for session in idle:
            try:
                await asyncio.wait_for(session.client.quit(), timeout=2)
            except (TimeoutError, aiosmtplib.SMTPException, OSError):
                pass
            finally:
                session.client.close()


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
