"""The aiosmtpd handler: thin glue from an SMTP transaction to ``relay.send``.

Every reply the relay gives is decided here and nowhere else:

=====================================  =============================================
``relay.send`` returned an Outcome     ``250 2.0.0`` when something was delivered or
                                       sealed; ``550 5.1.0`` when upstream refused
                                       every recipient (a partial refusal is 250:
                                       the pipeline notifies the envelope sender);
                                       ``451 4.3.0`` if any copy was deferred
``Blocked`` / ``PermanentFailure``     its ``.smtp_reply`` (550 5.7.1 / 554 5.6.0)
``TemporaryFailure`` or *anything*     ``451 4.3.0`` generic text; aiosmtpd's
else                                   ``500 Error: (Cls) msg`` is never reachable
bare CR or LF in DATA                  ``554 5.6.0`` (SMTP smuggling, CVE-2023-51764)
=====================================  =============================================

No open relay: a peer outside ``relay.trusted_networks`` that has not
authenticated on the submission listener gets 554/530 at RCPT.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.header
import email.policy
import email.utils
import hashlib
import ipaddress
import logging
import re
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, syntax
from aiosmtpd.smtp import Envelope as SMTPEnvelope
from aiosmtpd.smtp import Session as SMTPSession

from securemail.directory import AddressError, domain_of, normalise_address
from securemail.errors import (
    Blocked,
    InsufficientStorage,
    MalformedMessage,
    PermanentFailure,
    StoreError,
    TemporaryFailure,
    UpstreamRefused,
)
from securemail.logs import (
    MESSAGE_LOGGER,
    held_event,
    holding_events,
    message_summary,
    release_held,
)
from securemail.metrics import MessageRecord, Metrics
from securemail.model import Outcome, Status, TLSInfo
from securemail.parse import parse_address_list, utf8_header
from securemail.smtp_auth import SubmissionUser, UserDirectory
from securemail.smtp_data import read_data
from securemail.smtp_replies import with_enhanced_code

__all__ = [
    "ListenerPolicy",
    "RelayHandler",
    "RelaySMTP",
    "ServerState",
    "has_bare_cr_or_lf",
    "reply_for_outcome",
]

log = logging.getLogger("securemail.smtp")
message_log = logging.getLogger(MESSAGE_LOGGER)

TEMPFAIL = "451 4.3.0 Temporary failure, please try again later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, please try again later"
FROM_NOT_ALLOWED = "553 5.7.1 {header}: address not allowed for the authenticated user"
SENDER_NOT_ALLOWED = "553 5.7.1 Sender address not allowed for the authenticated user"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
BARE_CR_LF = "554 5.6.0 Bare CR or LF in message data is not accepted (use CRLF line endings)"
NetworkType = ipaddress.IPv4Network | ipaddress.IPv6Network
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(
    rf"\s*<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>\s*(.*)\Z", re.DOTALL)


MAX_AUTH_FAILURES = 3  # failed AUTH attempts before a session is closed (421)
# Across sessions: reconnecting must not reset a password guesser's budget.
# Counted per login name from a client address (a phone with an old password
# must not lock out everyone behind the office's one public address), and for
# all names together from it (trying many names is guessing too).
MAX_AUTH_FAILURES_PER_USER = 10
MAX_AUTH_FAILURES_PER_ADDRESS = 30
AUTH_FAILURE_WINDOW_SECONDS = 15 * 60
_AUTH_TRACKED_ADDRESSES = 10_000  # memory bound: the oldest client addresses are forgotten
TOO_MANY_LOGINS = "421 4.7.0 Too many failed logins from your address; try again later"
TOO_MANY_USER_LOGINS = ("421 4.7.0 Too many failed logins for this user from your address;"
                        " check the password, and try again later")
AUTH_QUEUE_SECONDS = 30.0  # how long a login waits for parallel checks from its client


class LoginFailures:
    """Failed logins per client in a sliding window (one process).

    A client is its IPv4 address, or its IPv6 /64 (one subscriber gets a whole
    /64: counting single IPv6 addresses would give a guesser unlimited tries).
    The table is bounded; when full, expired entries go first, then the
    clients that are not blocked, so a flood of new addresses cannot free a
    blocked one.
    """

    def __init__(self, limit: int = MAX_AUTH_FAILURES_PER_ADDRESS,
                 window: float = AUTH_FAILURE_WINDOW_SECONDS,
                 capacity: int = _AUTH_TRACKED_ADDRESSES) -> None:
        self.limit = limit
        self.window = window
        self.capacity = capacity
        self._seen: dict[str, list[float]] = {}
        self._checking: Counter[str] = Counter()  # password checks in progress

    def blocked(self, ip: str, now: float) -> bool:
        return len(self._recent(client_key(ip), now)) >= self.limit

    def busy(self, ip: str, now: float) -> bool:
        """Failures plus checks in progress reach the limit: the next check
        waits (so parallel sessions cannot all guess at once)."""
        key = client_key(ip)
        return len(self._recent(key, now)) + self._checking[key] >= self.limit

    def begin(self, ip: str) -> None:
        self._checking[client_key(ip)] += 1

    def end(self, ip: str) -> None:
        key = client_key(ip)
        self._checking[key] -= 1
        if self._checking[key] <= 0:
            del self._checking[key]

    def add(self, ip: str, now: float) -> int:
        key = client_key(ip)
        recent = self._recent(key, now)
        recent.append(now)
        self._seen.pop(key, None)
        self._seen[key] = recent  # most recent last (insertion order)
        if len(self._seen) > self.capacity:
            self._evict(now)
        return len(recent)

    def _evict(self, now: float) -> None:
        for key in [k for k, times in self._seen.items() if now - times[-1] >= self.window]:
            del self._seen[key]
        for key in list(self._seen):  # oldest first; blocked clients stay
            if len(self._seen) <= self.capacity:
                return
            if len(self._recent(key, now)) < self.limit:
                del self._seen[key]
        while len(self._seen) > self.capacity:  # all blocked: the oldest goes
            del self._seen[next(iter(self._seen))]

    def _recent(self, key: str, now: float) -> list[float]:
        return [t for t in self._seen.get(key, ()) if now - t < self.window]


def client_key(ip: str) -> str:
    """The unit a login throttle counts: an IPv4 address, or an IPv6 /64."""
    try:
        addr = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)

def _shown_login(login: bytes) -> str:
    """A login name for the log: printable, bounded (it is what the client typed)."""
    text = login.decode("utf-8", "replace")[:64]
    return "".join(c if c.isprintable() and not c.isspace() else "?" for c in text) or '""'


def has_bare_cr_or_lf(data: bytes) -> bool:
    """True when ``data`` has a CR not followed by LF or an LF not preceded by CR.

    Such line endings are how one message is smuggled inside another: servers
    disagree on where ``<CRLF>.<CRLF>`` is. We accept only strict CRLF."""
    crlf = data.count(b"\r\n")
    return data.count(b"\n") != crlf or data.count(b"\r") != crlf


def reply_for_outcome(outcome: Outcome) -> str:
    """The SMTP reply for a pipeline run that did not raise."""
    statuses = [r.status for r in outcome.recipients]
    if Status.DEFERRED in statuses:
        # The retry is safe: deliveries already accepted upstream are not repeated.
        return TEMPFAIL
    if outcome.delivered:
        return f"250 2.0.0 Ok: {outcome.message_sha256[:16]} relayed"
    if Status.REFUSED in statuses:
        return "550 5.1.0 Upstream refused every recipient; nothing was delivered"
    return "550 5.7.1 Nothing was relayed for any recipient"


@dataclass(frozen=True, slots=True)
class ListenerPolicy:
    """How one listener treats its peers."""

    name: str  # "content-filter" | "submission"
    trusted_networks: tuple[NetworkType, ...]
    max_recipients: int
    users: UserDirectory | None = None  # set on the submission listener

    def trusted(self, peer_ip: str) -> bool:
        try:
            ip = ipaddress.ip_address(peer_ip.split("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.trusted_networks)


@dataclass
class ServerState:
    """Shared by every listener of one process: limits, drain flag, metrics."""

    max_connections_per_client: int
    max_connections: int = 1000  # every client together (file descriptors are finite)
    metrics: Metrics = field(default_factory=Metrics)
    draining: bool = False
    in_flight: int = 0
    per_client: Counter[str] = field(default_factory=Counter)
    login_failures: LoginFailures = field(default_factory=LoginFailures)
    user_login_failures: LoginFailures = field(
        default_factory=lambda: LoginFailures(limit=MAX_AUTH_FAILURES_PER_USER))
    open: set[RelaySMTP] = field(default_factory=set)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    # When each client (or "*": everybody) last had a refusal logged.
    limit_logged: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.idle.set()

    def note_limit(self, client: str, text: str, *args: object) -> None:
        """Log a connection refused at a limit, at most once a minute per client:
        a client that keeps retrying must not flood the log."""
        now = time.monotonic()
        if now - self.limit_logged.get(client, float("-inf")) < 60.0:
            return
        if len(self.limit_logged) >= 1000:
            self.limit_logged.clear()
        self.limit_logged[client] = now
        log.warning(text, *args, extra={"event": {"notice": "connection-limit"}})

    def begin(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def end(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()


CLOSE_GRACE_SECONDS = 5.0  # for our last reply to leave before the connection is cut


def _abort_later(transport: asyncio.WriteTransport) -> None:
    """``close()`` waits until everything written has left; a client that
    stopped reading would keep the connection (and a drain, which waits for
    every connection on Python 3.12+) forever. Cut it after a grace period."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    loop.call_later(CLOSE_GRACE_SECONDS, transport.abort)


class _CrlfReader(asyncio.StreamReader):
    """Command and AUTH lines end at CRLF only (RFC 5321 2.3.8: a bare LF must
    not be taken for a line end). aiosmtpd reads them up to LF, so
    ``EHLO x<LF>MAIL FROM:...<LF>`` was four commands; here a line with a
    bare CR or LF in it is refused whole (500). DATA is read with its own
    terminator (smtp_data)."""

    async def readuntil(self, separator: Any = b"\n") -> bytes:
        if separator != b"\n":
            return await super().readuntil(separator)
        line = await super().readuntil(b"\r\n")
        if b"\n" in line[:-2] or b"\r" in line[:-2]:
            return b"\r\n"  # an empty line: aiosmtpd answers "500 Error: bad syntax"
        return line


class RelaySMTP(SMTP):  # type: ignore[misc]
    """aiosmtpd's protocol plus connection limits, the drain gate and a fast DATA reader."""

    # The stream reader's window: DATA is searched in pieces up to this size
    # (command lines are still held to aiosmtpd's 512-byte command limit).
    line_length_limit = 64 * 1024

    def __init__(self, handler: RelayHandler, state: ServerState, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        # aiosmtpd made the stream reader; same object, stricter line ends.
        getattr(self, "_stream_reader").__class__ = _CrlfReader  # noqa: B009
        self.state = state
        self._client_ip: str | None = None
        self.auth_failures = 0
        self._greeting = False  # EHLO/HELO replies carry no enhanced codes (RFC 2034)
        self.reading_data = False  # between 354 and the end of the data
        self.in_flight = False  # from the end of the data to our reply

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.reading_data:
            # The timeout is for an idle client (RFC 5321 4.5.3.2.7: per data
            # block), not a deadline for the whole message: data coming in is
            # activity, however long a big message takes on a slow line.
            self._reset_timeout()

    def _pause_timeout(self) -> None:
        """While we work on the message the client is waiting for us, not idle
        (RFC 5321 4.5.3.2.6 gives it 10 minutes for our reply)."""
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()

    async def push(self, status: Any) -> None:  # str, or bytes from AUTH
        # ENHANCEDSTATUSCODES is advertised: aiosmtpd's own replies get one too.
        if isinstance(status, str) and not self._greeting:  # AUTH pushes bytes: untouched
            if status.startswith("552 Error: message size exceeds"):  # aiosmtpd's, at MAIL
                status = self._too_big()
            status = with_enhanced_code(status)
        await super().push(status)

    def _too_big(self) -> str:
        """One reply for a message over the size limit, at MAIL (SIZE=) or after
        DATA, that says the limit (a sender can act on it)."""
        limit = self.data_size_limit or 0
        size = f"{limit / 2**20:.0f} MiB" if limit >= 2**20 else f"{limit // 1024} KiB"
        return (f"552 5.3.4 Message too big: this relay takes at most {limit} bytes ({size})"
                " including attachments, which grow by a third when attached")

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        self._greeting = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._greeting = False

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        self._greeting = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._greeting = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._client_ip is None:  # not the STARTTLS re-entry
            peer = transport.get_extra_info("peername")
            self._client_ip = str(peer[0]) if peer else "?"
            # Counted per client (an IPv6 /64 is one): one site cannot open
            # unlimited sessions from its many addresses.
            self._client_ip = client_key(self._client_ip)
            self.state.per_client[self._client_ip] += 1
            self.state.open.add(self)
            self.state.metrics.opened()
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._client_ip is not None and self in self.state.open:
            self.state.open.discard(self)
            self.state.metrics.closed()
            self.state.per_client[self._client_ip] -= 1
            if self.state.per_client[self._client_ip] <= 0:
                del self.state.per_client[self._client_ip]
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self.state.draining:
            await self._refuse(SHUTTING_DOWN)
            return
        client = self._client_ip or "?"
        if self.state.per_client[client] > self.state.max_connections_per_client:
            self.state.note_limit(
                client, "refused a connection from %s (421): %d sessions from that address"
                " would pass relay.max_connections_per_client = %d (each relay process"
                " counts its own)", client, self.state.per_client[client],
                self.state.max_connections_per_client)
            await self._refuse("421 4.7.0 Too many connections from your address")
            return
        if len(self.state.open) > self.state.max_connections:
            # A few hundred addresses each holding their share (kept alive with
            # NOOP) would otherwise take every file descriptor the relay has.
            self.state.note_limit(
                "*", "refused a connection from %s (421): %d sessions would pass"
                " relay.max_connections = %d (each relay process counts its own)",
                client, len(self.state.open), self.state.max_connections)
            await self._refuse("421 4.7.0 Too many connections, try again later")
            return
        await super()._handle_client()

    def _syntax_available(self, method: Any) -> bool:
        # HELP lists AUTH only where users can log in (the submission listener).
        if getattr(method, "__name__", "") == "smtp_AUTH" and not self._offers_auth:
            return False
        return bool(super()._syntax_available(method))

    @property
    def _offers_auth(self) -> bool:
        return self.event_handler.policy.users is not None

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        if not self._offers_auth:
            await self.push("502 5.5.1 AUTH is not offered on this port;"
                            " apps and mail clients log in on the submission port")
            return
        if self.envelope is not None and self.envelope.mail_from is not None:
            # RFC 4954 section 4: not during a mail transaction (the sender
            # given before the login would escape the login's sender check).
            await self.push("503 5.5.1 AUTH is not permitted during a mail transaction")
            return
        if self.state.login_failures.blocked(self._client_ip or "?", time.monotonic()):
            log.warning("submission login refused from %s: too many failed logins",
                        self._client_ip)
            await self._refuse(TOO_MANY_LOGINS)
            return
        await super().smtp_AUTH(arg)

    def _getparams(self, params: Any) -> dict[str, str | bool] | None:
        result: dict[str, str | bool] | None = super()._getparams(params)
        if result is not None and self._offers_auth:
            # RFC 4954 section 5: a server that offers AUTH must accept MAIL's
            # AUTH= parameter (Postfix and Exim send AUTH=<>); it is ignored.
            result.pop("AUTH", None)
        return result

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol is not None:
            await self.push("503 5.5.1 TLS is already active")
            return
        await super().smtp_STARTTLS(arg)

    def _timeout_cb(self) -> None:
        # RFC 5321 4.5.3.2: tell the client why, then close (aiosmtpd just closes).
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(b"421 4.4.2 Idle timeout, closing the connection\r\n")
        super()._timeout_cb()  # type: ignore[no-untyped-call]
        if isinstance(transport, asyncio.WriteTransport):
            _abort_later(transport)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd parses every MAIL/RCPT address with the email package's RFC 5322
        # parser (~0.15 ms each); plain <dot-atom@domain> takes the fast path.
        m = _PLAIN_PATH.match(arg)
        if m is not None and not self.local_part_limit:
            return m.group(1), m.group(2)
        result: tuple[str | None, str | None] = super()._getaddr(arg)
        return result

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert envelope is not None
        if envelope.mail_from is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        if not envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        if self.state.draining:  # no new message once a shutdown has begun
            await self._refuse(SHUTTING_DOWN)
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self.reading_data = True
        try:
            result = await read_data(self._reader, self.data_size_limit)
        except asyncio.IncompleteReadError:
            self._writer.close()
            return
        except asyncio.CancelledError:
            self._writer.close()
            raise
        finally:
            self.reading_data = False
        if result.too_large:
            self.envelope = self._create_envelope()
            await self.push(self._too_big())
            return
        if self.state.draining:  # a shutdown began while the data came in
            await self._refuse(SHUTTING_DOWN)  # the client sends it again later
            return
        envelope.content = result.content
        envelope.original_content = result.content
        # In flight until the reply is written: a drain (SIGTERM) must not close
        # the connection between "delivered upstream" and the client's 250, or the
        # client retries and the message goes out twice.
        self.state.begin()
        self.in_flight = True
        self._pause_timeout()
        try:
            status = await self._call_handler_hook("DATA")
            self.envelope = self._create_envelope()  # aiosmtpd's post-DATA state
            await self.push(status)
        finally:
            self.in_flight = False
            self.state.end()
            self._reset_timeout()  # idle again from the reply on
        if self.state.draining:  # answered; a shutdown is waiting for us
            await self._refuse(SHUTTING_DOWN)

    def shut_down(self) -> None:
        """Say ``421 4.3.2`` and close (RFC 5321 3.8: the server closes after a
        421): a drain does this at once to every session with no message in
        flight and none coming in (one still sending its data gets the 421 as
        the answer to it, and sends it again later)."""
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(f"{SHUTTING_DOWN}\r\n".encode())
            transport.close()
            _abort_later(transport)

    async def _refuse(self, reply: str) -> None:
        try:
            await self.push(reply)
        finally:
            if self.transport is not None:
                self.transport.close()


class RelayHandler:
    """aiosmtpd hooks for one listener; every message goes to ``relay.send``."""

    def __init__(self, relay: Any, policy: ListenerPolicy, state: ServerState) -> None:
        self.relay = relay
        self.policy = policy
        self.state = state
        self._relay_denied: weakref.WeakSet[SMTPSession] = weakref.WeakSet()

    # ---------------------------------------------------------------- AUTH

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        import base64
        import binascii

        if len(args) == 1:
            blob = await server.challenge_auth("")
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = base64.b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await server.push("501 5.5.2 Cannot decode base64")
                return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await server.push("501 5.5.2 Cannot split AUTH PLAIN value")
            return AuthResult(success=False, handled=True)
        if parts[0] and parts[0] != parts[1]:
            # RFC 4616: a login may not ask to act as another user (there is
            # no proxy authorisation here); before any password is checked.
            await server.push("535 5.7.8 Acting as another user is not allowed;"
                              " leave the authorization identity empty")
            return AuthResult(success=False, handled=True)
        return await self._check_login(server, parts[1], parts[2])

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        import base64
        import binascii

        if len(args) == 1:
            login = await server.challenge_auth("Username:")
            if not isinstance(login, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                login = base64.b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await server.push("501 5.5.2 Cannot decode base64")
                return AuthResult(success=False, handled=True)
        password = await server.challenge_auth("Password:")
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._check_login(server, login, password)

    async def _check_login(self, server: SMTP, login: bytes, password: bytes) -> AuthResult:
        if self.policy.users is None:
            return AuthResult(success=False, handled=False)
        peer_ip = _peer_ip(server.session) if server.session is not None else "?"
        name = login.decode("utf-8", "replace").strip().lower()
        # The client address's budget, and that login name's from it.
        budgets = ((self.state.login_failures, peer_ip),
                   (self.state.user_login_failures, f"{client_key(peer_ip)} {name}"))
        # Checks in progress count towards the limits: a check that would exceed
        # one waits for the others (bounded), so parallel sessions cannot all
        # guess at once, while parallel logins with the right password go through.
        waited = 0.0
        while (not any(t.blocked(k, time.monotonic()) for t, k in budgets)
               and any(t.busy(k, time.monotonic()) for t, k in budgets)
               and waited < AUTH_QUEUE_SECONDS):
            await asyncio.sleep(0.05)
            waited += 0.05
        for (throttle, key), refusal in zip(budgets, (TOO_MANY_LOGINS, TOO_MANY_USER_LOGINS),
                                            strict=True):
            if throttle.busy(key, time.monotonic()):
                log.warning("submission login refused for user %s from %s: too many failed"
                            " logins", _shown_login(login), peer_ip)
                await server.push(refusal)
                if server.transport is not None:
                    server.transport.close()
                return AuthResult(success=False, handled=True)
        for throttle, key in budgets:
            throttle.begin(key)
        try:
            user = await self.policy.users.authenticate(
                login.decode("utf-8", "replace"), password.decode("utf-8", "replace"))
        except asyncio.CancelledError:
            # The client hung up mid-check: the check runs on regardless (a
            # thread cannot be stopped), so it counts as a failed attempt, or
            # hanging up would buy unlimited password checks.
            for throttle, key in budgets:
                throttle.add(key, time.monotonic())
            raise
        finally:
            for throttle, key in budgets:
                throttle.end(key)
        if user is None:
            from_address = budgets[0][0].add(peer_ip, time.monotonic())
            budgets[1][0].add(budgets[1][1], time.monotonic())
            failures = 1
            if isinstance(server, RelaySMTP):
                server.auth_failures += 1
                failures = server.auth_failures
            log.warning("submission login failed for user %s from %s (%d in this session,"
                        " %d from this address in %d min)", _shown_login(login), peer_ip,
                        failures, from_address, AUTH_FAILURE_WINDOW_SECONDS // 60)
            if failures >= MAX_AUTH_FAILURES:  # password guessing: end the session
                await server.push("421 4.7.0 Too many failed logins; closing the connection")
                if server.transport is not None:
                    server.transport.close()
                return AuthResult(success=False, handled=True)
            return AuthResult(success=False, handled=False)  # -> 535 5.7.8
        return AuthResult(success=True, auth_data=user)

    async def handle_EHLO(self, server: SMTP, session: SMTPSession, envelope: SMTPEnvelope,
                          hostname: str, responses: list[str]) -> list[str]:
        # Commands are read one at a time from the stream, so a client may send
        # MAIL, RCPT and DATA together (RFC 2920); our replies carry enhanced
        # status codes (RFC 2034).
        session.host_name = hostname
        return responses[:-1] + ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    # ---------------------------------------------------------------- envelope

    async def handle_MAIL(self, server: SMTP, session: SMTPSession, envelope: SMTPEnvelope,
                          address: str, mail_options: list[str]) -> str:
        if self.state.draining:
            if isinstance(server, RelaySMTP):
                server.shut_down()  # and close: RFC 5321 3.8
            return SHUTTING_DOWN
        user = _user(session)
        sender = "" if address == "<>" else address
        if user is None and self.policy.users is not None \
                and not self.policy.trusted(_peer_ip(session)):
            return AUTH_REQUIRED  # log in first: the sender is checked against the login
        if sender:
            try:
                normalise_address(sender)
            except AddressError:  # refused now: after DATA it could only be refused too
                return "501 5.1.7 Sender address not accepted: a plain address@domain is needed"
        if user is not None and not user.may_send_as(sender):
            log.warning("submission sender refused: user %s may not send as an address at %s"
                        " (from %s)", user.name, domain_of(sender) or "<>", _peer_ip(session))
            return "553 5.7.1 Sender address not allowed for the authenticated user"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: SMTPSession, envelope: SMTPEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        if _user(session) is None and not self.policy.trusted(_peer_ip(session)):
            if self.policy.users is not None:
                return AUTH_REQUIRED
            if session not in self._relay_denied:
                # Once per connection: probing for an open relay shows in the log.
                self._relay_denied.add(session)
                log.warning("relay refused: %s is not in relay.trusted_networks (%s listener)",
                            _peer_ip(session), self.policy.name)
            return "554 5.7.1 Relay access denied"
        if len(envelope.rcpt_tos) >= self.policy.max_recipients:
            return "452 4.5.3 Too many recipients"
        try:
            normalise_address(address)
        except AddressError:  # refuse this one now, not the whole message after DATA
            return "553 5.1.3 Recipient address not accepted: a plain address@domain is needed"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: SMTPSession,
                          envelope: SMTPEnvelope) -> str:
        started = time.perf_counter()
        raw: bytes = envelope.original_content or b""
        mail_from = "" if envelope.mail_from in (None, "<>") else str(envelope.mail_from)
        user = _user(session)
        tls = _tls_info(server)
        outcome: Outcome | None = None
        verdict: Any = None
        error = ""
        with holding_events() as held:
            if has_bare_cr_or_lf(raw):
                reply, kind = BARE_CR_LF, "rejected"
            elif user is not None and not user.may_send_as(mail_from):
                # Checked at MAIL too; again here, whatever the order of commands.
                reply, kind = SENDER_NOT_ALLOWED, "rejected"
            elif user is not None and (refused_header := _author_not_allowed(raw, user)):
                reply, kind = FROM_NOT_ALLOWED.format(header=refused_header), "rejected"
                log.warning("submission message refused: its %s is not user %s's"
                            " (from %s)", refused_header, user.name, _peer_ip(session))
            else:
                try:
                    trace = received_header(
                        self.relay.settings.relay.hostname, session.host_name,
                        _peer_ip(session), tls is not None, user is not None,
                        smtputf8=bool(getattr(envelope, "smtp_utf8", False)),
                    ) if self.policy.name == "submission" else None
                    outcome = await self.relay.send(
                        raw, mail_from=mail_from, rcpt_tos=list(envelope.rcpt_tos),
                        peer=_peer_ip(session), auth_identity=user.name if user else None,
                        tls=tls, trace=trace)
                    reply = reply_for_outcome(outcome)
                    kind = _kind(reply, outcome)
                    verdict = outcome.verdict
                except PermanentFailure as exc:
                    reply = exc.smtp_reply
                    kind = _permanent_kind(exc, reply)
                    verdict = getattr(exc, "verdict", None)
                except StoreError as exc:  # our own words: what the store lacks
                    reply = exc.smtp_reply if isinstance(exc, InsufficientStorage) else TEMPFAIL
                    kind, error = "deferred", f"{type(exc).__name__}: {exc}"[:200]
                except TemporaryFailure as exc:
                    reply, kind, error = TEMPFAIL, "deferred", type(exc).__name__
                except Exception as exc:  # noqa: BLE001 - every fault must become a 451
                    reply, kind, error = TEMPFAIL, "deferred", _where(exc)
                    log.error("internal error while relaying: %s", error)
                except asyncio.CancelledError:
                    # The client went away; the message goes on (shielded). Its
                    # log line must not stay held for a reply that never comes.
                    release_held(held)
                    raise
            event = held_event(held)
        seconds = time.perf_counter() - started
        actions = tuple(d.action.value for d in verdict.decisions) if verdict else ()
        self.state.metrics.observe(MessageRecord(int(reply[:3]), seconds, kind, actions))
        if not event:  # the pipeline did not get far enough to log: say what we know
            event = {"event": "message", "message_sha256": hashlib.sha256(raw).hexdigest()[:16]}
            if verdict is not None:
                event["recipients"] = [
                    {"domain": domain_of(d.address), "action": d.action.value,
                     "rules": list(d.rules)} for d in verdict.decisions]
        event["smtp"] = {
            "listener": self.policy.name, "reply": reply[:9].strip(), "outcome": kind,
            "ms": round(seconds * 1000, 2), "sender_domain": domain_of(mail_from),
            "recipients": len(envelope.rcpt_tos), "authenticated": user is not None,
            "tls": tls.version if tls else None, **({"error": error} if error else {}),
        }
        message_log.info("%s", message_summary(event), extra={"event": event})
        return reply

    async def handle_exception(self, error: Exception) -> str:
        # Reached for faults outside handle_DATA (e.g. a broken TLS handshake).
        log.warning("SMTP session error: %s", _where(error))
        return TEMPFAIL


_AUTHOR_HEADERS = ("from", "sender", "resent-from", "resent-sender")


def _author_not_allowed(raw: bytes, user: SubmissionUser) -> str:
    """The header (From, Sender, Resent-From or Resent-Sender) holding an
    address the authenticated user may not send as; "" when every author
    address is the user's (the envelope sender is checked at MAIL and DATA).
    We DKIM-sign what leaves, so a login must not put someone else's name on a
    message, as its author or as who resent it. Read as the pipeline reads it
    (8-bit headers as UTF-8); a header that cannot be read, or a From with no
    address at all, is refused: fail closed. (So a mail client's "Redirect",
    which keeps the original From, is refused: forward instead.)"""
    headers = BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    for name, value in headers.raw_items():
        header = name.lower()
        if header not in _AUTHOR_HEADERS:
            continue
        try:
            text = utf8_header(value)
            found = parse_address_list(text)
        except AddressError:
            return header.title()
        if header == "from" and not found:
            return "From"  # "From: undisclosed:;" names no author
        if not all(user.may_send_as(a) for a in found):
            return header.title()
        # A display name that is another address ("dr.patel@…" <dr.lee@…>) is
        # what a reader sees as the sender: it must be the user's too.
        shown = _ANGLE_ADDR.sub(" ", text)
        try:  # as a mail program shows it: RFC 2047 encoded words decoded
            shown = str(email.header.make_header(email.header.decode_header(shown)))
        except (ValueError, LookupError, UnicodeError):
            pass  # undecodable: judged as written
        if not all(user.may_send_as(a.rstrip(".")) for a in _ADDRESS_LIKE.findall(shown)):
            return header.title()
    return ""


_ANGLE_ADDR = re.compile(r"<[^<>]*>")
_ADDRESS_LIKE = re.compile(r"[^\s<>\"'(),;:\[\]]+@[^\s<>\"'(),;:\[\]]+\.[^\s<>\"'(),;:\[\]]+")


def _user(session: SMTPSession) -> SubmissionUser | None:
    data = getattr(session, "auth_data", None)
    if getattr(session, "authenticated", False) and isinstance(data, SubmissionUser):
        return data
    return None


_HELO_NAME = re.compile(r"[A-Za-z0-9.:\[\]-]{1,255}")


def received_header(hostname: str, helo: str | None, ip: str, tls: bool, authenticated: bool,
                    now: dt.datetime | None = None, *, smtputf8: bool = False) -> str:
    """The trace line for a message securemail received first (RFC 5321 4.4,
    protocol names from RFC 3848, and RFC 6531's UTF8SMTP* for a message sent
    with SMTPUTF8). No user name and no recipient ("for"): the trace must not
    reveal a login or a Bcc."""
    address = f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"
    client = helo if helo and _HELO_NAME.fullmatch(helo) else "unknown"
    protocol = ("UTF8SMTP" if smtputf8 else "ESMTP") + ("S" if tls else "") + (
        "A" if authenticated else "")
    when = email.utils.format_datetime(now or dt.datetime.now(dt.UTC))
    return (f"Received: from {client} ({address})\r\n\tby {hostname} (securemail)"
            f" with {protocol};\r\n\t{when}\r\n")


def _peer_ip(session: SMTPSession) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "")


def _tls_info(server: SMTP) -> TLSInfo | None:
    transport = getattr(server, "transport", None)
    obj = transport.get_extra_info("ssl_object") if transport is not None else None
    if obj is None:
        return None
    cipher = obj.cipher()
    return TLSInfo(version=obj.version(), cipher=cipher[0] if cipher else None)


def _permanent_kind(exc: PermanentFailure, reply: str) -> str:
    if isinstance(exc, UpstreamRefused):
        return "refused"
    if isinstance(exc, MalformedMessage) or reply.startswith("554 5.6"):
        return "malformed"
    return "blocked" if isinstance(exc, Blocked) else "rejected"


def _kind(reply: str, outcome: Outcome) -> str:
    if reply.startswith("250"):
        return "delivered"
    if reply.startswith("4"):
        return "deferred"
    return "refused" if any(r.status is Status.REFUSED for r in outcome.recipients) else "blocked"


def _where(exc: BaseException) -> str:
    """Exception class and the innermost frame's file:line: enough to find the
    bug, with none of the exception's text (which may quote content)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return type(exc).__name__
    return f"{type(exc).__name__} at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
