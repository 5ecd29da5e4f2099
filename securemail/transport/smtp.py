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

from securemail.config import UpstreamSettings
from securemail.errors import UpstreamUnavailable
from securemail.model import TLSInfo
from securemail.transport import DeliveryResult

__all__ = ["SMTPTransport", "reply_code"]

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
        options = []
        if not data.isascii() and client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        if utf8:
            if not client.supports_extension("smtputf8"):
                return DeliveryResult(accepted=(), refused={r: "553 5.6.7" for r in rcpt_tos},
                                      tls=session.tls)
            options.append("SMTPUTF8")
        encoding = "utf-8" if utf8 else "ascii"
        try:
            await client.mail(mail_from, options=options, encoding=encoding)
        except aiosmtplib.SMTPSenderRefused as exc:
            await _rset(client)
            if exc.code >= 500:
                code = reply_code(exc.code, exc.message)
                return DeliveryResult(accepted=(), refused={r: code for r in rcpt_tos},
                                      tls=session.tls)
            raise UpstreamUnavailable(f"upstream deferred MAIL ({exc.code})") from None
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError):
            # Nothing of this message reached upstream yet: safe to retry.
            raise _StaleSession() from None
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            raise UpstreamUnavailable(f"upstream failed at MAIL ({type(exc).__name__})") from None

        accepted: list[str] = []
        refused: dict[str, str] = {}
        deferred: dict[str, str] = {}
        try:
            for rcpt in rcpt_tos:
                try:
                    await client.rcpt(rcpt, encoding=encoding)
                    accepted.append(rcpt)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    target = refused if exc.code >= 500 else deferred
                    target[rcpt] = reply_code(exc.code, exc.message)
            if not accepted:
                await _rset(client)
                return DeliveryResult(accepted=(), refused=refused, deferred=deferred,
                                      tls=session.tls)
            try:
                await client.data(data)
            except aiosmtplib.SMTPDataError as exc:
                await _rset(client)
                if exc.code >= 500:
                    code = reply_code(exc.code, exc.message)
                    refused.update({r: code for r in accepted})
                    return DeliveryResult(accepted=(), refused=refused, deferred=deferred,
                                          tls=session.tls)
                raise UpstreamUnavailable(f"upstream deferred DATA ({exc.code})") from None
        except UpstreamUnavailable:
            raise
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
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
