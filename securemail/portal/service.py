"""The portal's library API: seal, notify, codes, sessions, replies, lifecycle.

The pipeline calls :meth:`PortalService.seal` and
:meth:`PortalService.notification`; the web app calls the rest. Time is
always passed in. Errors raised to the web app are :class:`PortalDenied`
with a ``reason`` the page can show, never a detail that helps an attacker.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import secrets
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from securemail.config import Settings
from securemail.crypto.seal import associated_data, encode_key, new_key, seal
from securemail.directory import AddressError, normalise_address
from securemail.errors import ConfigError, PermanentFailure, RenderError, StoreError
from securemail.notify import from_address, notification_message
from securemail.portal.codes import CODE_MINUTES, CodeChannel, EmailCodeChannel, new_code
from securemail.portal.content import (
    Attachment,
    build_reply,
    original_reply,
    sealed_document,
)
from securemail.portal.secret import PortalSecret, load_or_create_secret
from securemail.portal.store import PortalRow, PortalStore
from securemail.transport import Transport

__all__ = ["CODES_PER_HOUR", "MAX_FAILED_CODES", "SESSION_MAX_MINUTES", "PortalDenied",
           "PortalService", "Sealed"]

MAX_FAILED_CODES = 5
MAX_UNKNOWN_ATTACHMENTS = 1000
STALE_CODES = 10  # how many earlier codes may get "expired" rather than "wrong"
STALE_CODE_WINDOW = timedelta(hours=24)
CODES_PER_HOUR = 5  # per message: stops the portal being used to spam a mailbox
SESSION_MAX_MINUTES = 60  # absolute session cap, however active (or session_minutes if longer)

ReplySender = Callable[[bytes, str, str], Awaitable[None]]


def new_portal_id() -> str:
    """144 random bits, URL-safe, never starting with ``-`` or ``_``: an id
    starting with ``-`` reads as an option in ``securemail portal revoke ID``.
    (Redrawing drops about 3% of draws; about 143.95 bits remain.)"""
    while True:
        portal_id = secrets.token_urlsafe(18)
        if portal_id[0].isalnum():
            return portal_id


class Audit(Protocol):
    def record_event(self, kind: str, *, now: datetime, **fields: Any) -> Any: ...


class Signer(Protocol):
    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Sealed:
    id: str
    url: str  # {base_url}/m/{id}#{key}: the only place the key exists
    expires: datetime


class PortalDenied(Exception):
    """The request cannot go on. ``reason`` is one of: ``missing``, ``expired``,
    ``revoked``, ``locked``, ``purged``, ``rate-limited``, ``wrong-code``,
    ``no-session``, ``delivery-failed``, ``undeliverable``, ``no-reply``.

    ``stale`` is true for a ``wrong-code`` that this message really had, now
    expired or replaced by a newer one: it was not counted as a guess."""

    def __init__(self, reason: str, *, remaining: int | None = None,
                 stale: bool = False) -> None:
        self.reason = reason
        self.remaining = remaining
        self.stale = stale
        super().__init__(reason)


class PortalService:
    def __init__(self, settings: Settings, conn: sqlite3.Connection, transport: Transport,
                 audit: object | None = None, signer: object | None = None, *,
                 code_channel: CodeChannel | None = None) -> None:
        self.settings = settings
        self.store = PortalStore(conn)
        self.transport = transport
        self.audit: Audit | None = audit  # type: ignore[assignment]
        self._signer: Signer | None = signer  # type: ignore[assignment]
        self.secret = PortalSecret(load_or_create_secret(settings.storage.data_dir))
        if code_channel is None:
            if settings.portal.code_channel != "email":
                raise ConfigError(settings.path, "portal.code_channel",
                                  f'"{settings.portal.code_channel}" needs a channel object '
                                  "passed to PortalService(code_channel=...)")
            code_channel = EmailCodeChannel(settings, transport, self._signer)
        self.code_channel = code_channel

    @property
    def signer(self) -> Signer | None:
        return self._signer

    @signer.setter
    def signer(self, signer: Signer | None) -> None:
        # The relay swaps the DKIM signer on reload; the code emails follow it.
        self._signer = signer
        if isinstance(self.code_channel, EmailCodeChannel):
            self.code_channel.signer = signer

    def use_settings(self, settings: Settings) -> None:
        """The relay reloaded its config: links, expiry, session length and the
        code emails follow it from the next message (the web server's listen
        address and proxies need a restart)."""
        self.settings = settings
        if isinstance(self.code_channel, EmailCodeChannel):
            self.code_channel.settings = settings

    def use_transport(self, transport: Transport) -> None:
        """The relay swapped its upstream on reload: notices and codes follow it."""
        self.transport = transport
        if isinstance(self.code_channel, EmailCodeChannel):
            self.code_channel.transport = transport

    # ------------------------------------------------------------ helpers

    def _event(self, kind: str, now: datetime, **fields: Any) -> None:
        if self.audit is not None:
            self.audit.record_event(kind, now=now, **fields)

    def _active(self, portal_id: str, now: datetime) -> PortalRow:
        row = self.store.get(portal_id)
        if row is None:
            raise PortalDenied("missing")
        state = row.state(now)
        if state != "active":
            # Once per message: every later visit to a dead link would otherwise
            # be another durable, signed audit transaction (anyone holding the
            # link could flood the log).
            if state == "expired" and self.store.mark(row.id, "expiry_noted", now):
                self._event("expired", now, portal_id=row.id, recipient=row.recipient)
            raise PortalDenied(state)
        return row

    def check(self, portal_id: str, now: datetime) -> PortalRow:
        """The message if it can still be opened; else ``PortalDenied`` with the state."""
        return self._active(portal_id, now)

    def get(self, portal_id: str) -> PortalRow | None:
        return self.store.get(portal_id)

    # -------------------------------------------------------------- seal

    def seal(self, raw: bytes, *, message_id: str, sender: str, recipient: str,
             now: datetime, kind: str = "message", parent_id: str | None = None,
             reply_to: str | None = None, reply_name: str | None = None,
             mail_from: str | None = None) -> Sealed:
        """Seal ``raw`` for one recipient; store ciphertext + metadata only.

        ``sender`` is whom the client is told sent it (the author, ``From``);
        ``mail_from`` the envelope sender, which the audit records (default
        ``sender``). ``reply_to`` is where the recipient's reply goes ("" =
        nowhere), ``reply_name`` its display name; by default the original's
        ``Reply-To``, else ``From``, else ``sender``."""
        sealed, row = self._sealed(raw, message_id=message_id, sender=sender,
                                   recipient=recipient, now=now, kind=kind, parent_id=parent_id,
                                   reply_to=reply_to, reply_name=reply_name,
                                   mail_from=mail_from)
        self.store.insert(**row)
        return sealed

    async def seal_async(self, raw: bytes, *, message_id: str, sender: str, recipient: str,
                         now: datetime, reply_to: str | None = None,
                         reply_name: str | None = None, mail_from: str | None = None) -> Sealed:
        """:meth:`seal` for the relay: the row is group-committed with other
        messages' (one fsync for many), and durable when this returns."""
        sealed, row = self._sealed(raw, message_id=message_id, sender=sender,
                                   recipient=recipient, now=now, kind="message", parent_id=None,
                                   reply_to=reply_to, reply_name=reply_name,
                                   mail_from=mail_from)
        await self.store.insert_async(**row)
        return sealed

    def _sealed(self, raw: bytes, *, message_id: str, sender: str, recipient: str,
                now: datetime, kind: str, parent_id: str | None, reply_to: str | None,
                reply_name: str | None,
                mail_from: str | None) -> tuple[Sealed, dict[str, Any]]:
        portal_id = new_portal_id()
        if reply_to is None:
            if kind == "message":
                author, reply_to, reply_name = original_reply(raw, sender)
                if not self.practice_address(reply_to):
                    # A client's reply goes to the practice, never to whoever a
                    # Reply-To names (another client, a personal mailbox): the
                    # author or the envelope sender if they are staff, else nowhere.
                    staff = [a for a in (author, mail_from or sender) if self.practice_address(a)]
                    reply_to, reply_name = (staff[0] if staff else ""), None
            else:
                reply_to = sender
        key = new_key()
        try:
            plaintext, attachments = sealed_document(raw)
            blob = seal(plaintext, key,
                        aad=associated_data(portal_id, message_id, recipient))
        except (ValueError, LookupError, TypeError) as exc:
            raise RenderError(f"sealing failed ({type(exc).__name__})") from None
        expires = now + timedelta(days=self.settings.portal.expiry_days)
        row = {"id": portal_id, "kind": kind, "parent_id": parent_id, "message_id": message_id,
               "sender": sender, "recipient": recipient, "created": now, "expires": expires,
               "ciphertext": blob, "reply_to": reply_to, "attachments": attachments,
               "reply_name": reply_name or None,
               "mail_from": sender if mail_from is None else mail_from}
        url = f"{self.settings.portal.base_url.rstrip('/')}/m/{portal_id}#{encode_key(key)}"
        return Sealed(id=portal_id, url=url, expires=expires), row

    def close(self) -> None:
        """Finish pending group commits (the relay calls this when it stops)."""
        self.store.close()

    def notification(self, sealed: Sealed, *, sender: str, recipient: str,
                     now: datetime) -> bytes:
        """The notice for ``sealed``. Record it with :meth:`notified` once upstream
        has accepted it (a deferred notice must not look delivered in the audit)."""
        return notification_message(self.settings, url=sealed.url, expires=sealed.expires,
                                    sender=sender, recipient=recipient, now=now)

    def notified_event(self, portal_id: str) -> tuple[str, dict[str, str | int | None]] | None:
        """The audit event for a notification upstream accepted; the pipeline
        commits it together with the message's own records."""
        row = self.store.get(portal_id)
        if row is None:
            return None
        # mail_from is the envelope sender, as in the message's own record (not
        # the unauthenticated From the client is shown).
        return ("notified", {"portal_id": portal_id, "mail_from": row.envelope_sender,
                             "recipient": row.recipient,
                             "expires": row.expires.date().isoformat()})

    def notified(self, portal_id: str, *, now: datetime) -> None:
        """Audit that the notification for ``portal_id`` was accepted upstream."""
        event = self.notified_event(portal_id)
        if event is not None:
            self._event(event[0], now, **event[1])

    # -------------------------------------------------------------- codes

    async def request_code(self, portal_id: str, *, now: datetime) -> None:
        """Send a fresh one-time code to the recipient (replaces older codes)."""
        row = self._active(portal_id, now)
        if self.store.codes_since(portal_id, now - timedelta(hours=1)) >= CODES_PER_HOUR:
            raise PortalDenied("rate-limited")
        code = new_code()
        rowid = self.store.add_code(portal_id, self.secret.mac("code", portal_id, code), now,
                                    now + timedelta(minutes=CODE_MINUTES))
        try:
            await self.code_channel.deliver(recipient=row.recipient, sender=row.sender,
                                            code=code, now=now)
        except Exception:  # noqa: BLE001 (any channel failure: tell the user, log the kind)
            # The landing page must not say "a code was sent" for this one.
            self.store.code_undelivered(rowid, now)
            raise PortalDenied("delivery-failed") from None
        self._event("code-sent", now, portal_id=portal_id, recipient=row.recipient,
                    channel=self.code_channel.name)

    def code_sent(self, portal_id: str, *, now: datetime) -> tuple[datetime, datetime] | None:
        """``(sent, expires)`` of the newest code for ``portal_id``, if it was
        delivered and has not expired yet; else None. A read only (the landing page, a GET, asks).

        Whether that code was used since is deliberately not looked at: the
        landing page shows the answer to anyone holding the link, and a hint that
        vanished before the code's ten minutes were up would tell them the
        message had been opened."""
        newest = self.store.newest_code(portal_id)
        if newest is None:
            return None
        created, expires, delivered = newest
        return (created, expires) if delivered and created <= now < expires else None

    def verify_code(self, portal_id: str, code: str, *, now: datetime,
                    session_token: str | None = None) -> str:
        """Check ``code``; on success return a new session token (store keeps its hash).

        ``session_token``: the session this browser already holds for the
        message, if any. The code that opened it, entered again (the page lost
        its answer and the reader pressed "Open message" once more), returns
        that token: it is neither a wrong guess nor a new session."""
        row = self._active(portal_id, now)
        code = code.strip().replace(" ", "")
        match: int | None = None
        for rowid, code_hash in self.store.live_code_hashes(portal_id, now):
            # compare_digest on every live code: the time taken says nothing.
            if self.secret.verify(code_hash, "code", portal_id, code):
                match = rowid
        if (match is None and session_token and self._holds_session(portal_id, session_token, now)
                and self._consumed(portal_id, code, now)):
            return session_token
        if match is None and self._stale(portal_id, code, now):
            # A code this message really had, now expired or replaced: say so, and
            # do not count it as a guess. Guessing gains nothing: it never opens
            # anything, and only the few newest codes of the last day qualify.
            raise PortalDenied("wrong-code", stale=True,
                               remaining=MAX_FAILED_CODES - row.failed_codes)
        if match is None or not self.store.use_code(match, now):
            failed = self.store.fail_code(portal_id, now, MAX_FAILED_CODES)
            locked = failed >= MAX_FAILED_CODES
            self._event("code-failed", now, portal_id=portal_id, recipient=row.recipient,
                        attempts=failed, status="locked" if locked else "failed")
            if locked:
                raise PortalDenied("locked")
            raise PortalDenied("wrong-code", remaining=MAX_FAILED_CODES - failed)
        self.store.reset_failures(portal_id)
        token = secrets.token_urlsafe(32)
        self.store.add_session(self.secret.mac("session", token), portal_id, now,
                               now + self.session_limits()[0])
        # Each browser that opens the message starts here ("opened" is the
        # first time only): the record shows how many sessions read it.
        self._event("code-verified", now, portal_id=portal_id, recipient=row.recipient)
        return token

    def _holds_session(self, portal_id: str, token: str, now: datetime) -> bool:
        try:
            self._session(portal_id, token, now, extend=False)
        except PortalDenied:
            return False
        return True

    def _consumed(self, portal_id: str, code: str, now: datetime) -> bool:
        found = False
        # A session lasts an hour at most: the newest few codes of the last day suffice.
        for code_hash in self.store.consumed_code_hashes(portal_id, now - STALE_CODE_WINDOW,
                                                         STALE_CODES):
            found |= self.secret.verify(code_hash, "code", portal_id, code)
        return found

    def _stale(self, portal_id: str, code: str, now: datetime) -> bool:
        found = False
        for code_hash in self.store.stale_code_hashes(portal_id, now, now - STALE_CODE_WINDOW,
                                                      STALE_CODES):
            found |= self.secret.verify(code_hash, "code", portal_id, code)
        return found

    def session(self, portal_id: str, token: str | None, *, now: datetime) -> PortalRow:
        """The message a valid session token opens; else ``PortalDenied``."""
        return self._session(portal_id, token, now, extend=False)[0]

    def keep_alive(self, portal_id: str, token: str | None, *,
                   now: datetime) -> tuple[datetime, bool]:
        """Extend a live session on activity (the page reports the reader's
        typing, clicks and scrolling): it then ends ``session_minutes`` from
        ``now``, but never later than the absolute cap after its code was
        entered. Returns ``(ends, final)``; ``final``: the cap is reached."""
        _, ends, final = self._session(portal_id, token, now, extend=True)
        return ends, final

    def end_session(self, portal_id: str, token: str, *, now: datetime) -> bool:
        """Sign out: the session ``token`` opened for ``portal_id`` ends now (the
        token opens nothing after this). False if it was not a live session of
        this message. Works whatever the message's state."""
        token_hash = self.secret.mac("session", token)
        bound = self.store.session_for(token_hash, now)
        if bound is None or not secrets.compare_digest(bound[0], portal_id):
            return False
        self.store.end_session(token_hash)
        row = self.store.get(portal_id)
        self._event("signed-out", now, portal_id=portal_id,
                    recipient=row.recipient if row is not None else None)
        return True

    def session_limits(self) -> tuple[timedelta, timedelta]:
        """``(idle, absolute)``: a session ends after ``idle`` without activity,
        and ``absolute`` after its code was entered, whatever the activity."""
        idle = timedelta(minutes=self.settings.portal.session_minutes)
        return idle, max(idle, timedelta(minutes=SESSION_MAX_MINUTES))

    def _session(self, portal_id: str, token: str | None, now: datetime, *,
                 extend: bool) -> tuple[PortalRow, datetime, bool]:
        row = self._active(portal_id, now)
        token_hash = self.secret.mac("session", token) if token else ""
        bound = self.store.session_for(token_hash, now) if token else None
        if bound is None or not secrets.compare_digest(bound[0], portal_id):
            raise PortalDenied("no-session")
        _, created, ends = bound
        idle, absolute = self.session_limits()
        # Sliding expiry: activity moves the end on, never past the absolute cap.
        limit = created + absolute
        wanted = min(now + idle, limit)
        if extend and wanted > ends:
            self.store.extend_session(token_hash, now, wanted)
            ends = wanted
        return row, ends, ends >= limit

    # ----------------------------------------------------------- reading

    def ciphertext(self, portal_id: str, token: str | None, *, now: datetime) -> tuple[
            PortalRow, bytes]:
        row = self.session(portal_id, token, now=now)
        blob = self.store.ciphertext(portal_id)
        if blob is None:
            raise PortalDenied("purged")
        if self.store.mark(portal_id, "opened", now):
            self._event("opened", now, portal_id=portal_id, recipient=row.recipient)
        return row, blob

    def record_download(self, portal_id: str, token: str | None, *, index: int,
                        now: datetime) -> None:
        row = self.session(portal_id, token, now=now)
        # A signed audit record must not hold a position the message does not have.
        # Rows sealed before the count was kept: bounded by the MIME part limit.
        count = row.attachments if row.attachments is not None else MAX_UNKNOWN_ATTACHMENTS
        if not 0 <= index < count:
            raise PortalDenied("bad-request")
        # The position only, never the file name: a name can be PHI ("biopsy-results.pdf").
        self._event("downloaded", now, portal_id=portal_id, recipient=row.recipient,
                    attachment_index=index)

    async def reply(self, portal_id: str, token: str | None, *, subject: str, body: str,
                    attachment: Attachment | None, now: datetime,
                    reply_sender: ReplySender | None) -> Sealed:
        """Send the recipient's answer to the original's reply address; keep it
        sealed too. ``reply_sender`` sends it through the relay pipeline (policy,
        encryption, audit), as ``securemail serve`` wires it; a reply never
        leaves any other way, so without one there is no reply at all.
        ``PortalDenied`` reasons: ``no-reply`` (no ``reply_sender``, or the
        original has no usable address), ``undeliverable`` (refused for good,
        e.g. by policy: retrying will not help), ``delivery-failed`` (temporary)."""
        row = self.session(portal_id, token, now=now)
        to = self.reply_address(row)
        frm = from_address(self.settings, row.sender or to)
        if reply_sender is None or not to or not frm:
            raise PortalDenied("no-reply")
        raw = build_reply(from_address=frm, client=row.recipient, to=to,
                          subject=subject, body=body, in_reply_to=row.message_id,
                          attachment=attachment, now=now)
        message_id = _message_id(raw)
        sealed = self.seal(raw, message_id=message_id, sender=row.recipient,
                           recipient=to, now=now, kind="reply", parent_id=portal_id)
        # The reply's own message record (its envelope sender is the practice's
        # address, on the client's behalf) is found by these two in an export.
        sent = {"message_id": message_id, "message_sha256": hashlib.sha256(raw).hexdigest()}
        try:
            await reply_sender(raw, frm, to)
        except BaseException as exc:
            # Not sent: its sealed copy must not stay behind as an active message.
            self.store.mark(sealed.id, "revoked", now)
            denied = _reply_denied(exc)
            if denied is None:
                raise
            # The attempt is on record, linked to the sealed message and the client
            # (the blocked or deferred message's own record names only the sender).
            with contextlib.suppress(StoreError):
                self._event("reply-failed", now, portal_id=portal_id, recipient=row.recipient,
                            reply_to=to, reason_code=denied.reason, **sent)
            if denied is exc:
                raise
            raise denied from None
        self._event("replied", now, portal_id=portal_id, recipient=row.recipient,
                    reply_to=to, status="with-attachment" if attachment is not None else "ok",
                    **sent)
        return sealed

    def practice_address(self, address: str) -> bool:
        """Whether ``address`` is the practice's (a staff domain of the config)."""
        try:
            domain = normalise_address(address).rpartition("@")[2]
        except AddressError:
            return False
        return domain in self.settings.practice.domains

    def reply_address(self, row: PortalRow) -> str:
        """Where the client's reply to ``row`` goes: its reply address when that
        is the practice's, else "" (no reply form; a message sealed before this
        check, or a staff domain since removed from the config)."""
        address = row.reply_address
        return address if row.kind != "message" or self.practice_address(address) else ""

    # --------------------------------------------------------- lifecycle

    def revoke(self, portal_id: str, now: datetime, *, actor: str = "library") -> bool:
        """Revoke and drop the ciphertext at once. False if unknown or already revoked."""
        row = self.store.get(portal_id)
        if row is None or not self.store.mark(portal_id, "revoked", now):
            return False
        self._event("revoked", now, portal_id=portal_id, recipient=row.recipient, actor=actor)
        return True

    def unlock(self, portal_id: str, now: datetime) -> bool:
        """Re-issue a message locked by wrong codes (the sender's decision)."""
        unlocked = self.store.get(portal_id) is not None and self.store.unlock(portal_id)
        if unlocked:
            self._event("unlocked", now, portal_id=portal_id, actor="cli")
        return unlocked

    def list(self, now: datetime) -> builtins.list[PortalRow]:
        return self.store.all()

    def purge(self, now: datetime) -> int:
        """Delete the ciphertext of expired and revoked messages; keep metadata."""
        ids = self.store.purgeable(now)
        for portal_id in ids:
            if self.store.mark(portal_id, "purged", now):
                self._event("purged", now, portal_id=portal_id, count=1)
        # Codes of the last day stay: an expired one must still say "expired".
        self.store.delete_stale_access(now, codes_before=now - STALE_CODE_WINDOW)
        return len(ids)


def _message_id(raw: bytes) -> str:
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode("ascii", "replace")
    raise StoreError("reply has no Message-ID")


def _reply_denied(exc: BaseException) -> PortalDenied | None:
    """What the client is told when sending its reply failed: ``undeliverable``
    (refused for good, e.g. by policy), ``delivery-failed`` (try again); None
    for a cancellation or an exit, which is not the client's to hear about."""
    if isinstance(exc, PortalDenied):
        return exc
    if isinstance(exc, PermanentFailure):
        return PortalDenied("undeliverable")
    if isinstance(exc, Exception):  # relay refusal or outage: "try again"
        return PortalDenied("delivery-failed")
    return None
