"""The library entry point: ``securemail.load(path)`` -> :class:`Relay`.

A Relay holds everything the data path needs, built once from the config:
settings, store, directory, key ring, DKIM signer, audit log, portal and the
upstream transport. The daemon and practice software use the same object.
One relay may serve several threads and event loops at once (see
docs/library.md); close it when done (``close``, ``close_sync``, or ``with``).

>>> with securemail.load("securemail.toml") as relay:     # doctest: +SKIP
...     relay.check(raw, mail_from="dr@riverside.example",
...                 rcpt_tos=["jane@mail.example"]).blocked
False
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.message
import email.policy
import email.utils
import logging
import os
import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from securemail.audit.admin_events import record_config_loaded
from securemail.classify import classify
from securemail.config import Settings, load_settings
from securemail.directory import (
    Directory,
    current_directory,
    imported_version,
)
from securemail.disk_space import MARGIN_BYTES, SpaceCheck
from securemail.document_process import documents_in_child_process
from securemail.errors import InputError, StoreError
from securemail.in_flight import InFlight, ThreadSafeLedger
from securemail.model import Envelope, Outcome, TLSInfo, Verdict
from securemail.parse import loose_recipients, parse_message
from securemail.phi import Detectors
from securemail.pipeline import process
from securemail.policy import decide, load_plugins
from securemail.store.sqlite import open_database
from securemail.transport import Transport

DIRECTORY_CHECK_SECONDS = 1.0  # how stale an imported directory may be
log = logging.getLogger("securemail.relay")

__all__ = ["Relay", "RelayClosed", "UsageError", "load"]


class UsageError(InputError):
    """The relay was called in a way that cannot work (``send_sync`` inside a
    running event loop, any call after ``close``). Fix the calling code:
    retrying the same call will not help. Not a TemporaryFailure."""


class RelayClosed(UsageError):
    """The relay was closed; build a new one with :func:`load`."""

    def __init__(self) -> None:
        super().__init__("the relay is closed: build a new one with securemail.load()")

    def __reduce__(self) -> tuple[type[RelayClosed], tuple[()]]:
        return (type(self), ())  # picklable (Celery, process pools), like the others


def load(path: str | os.PathLike[str], *, transport: Transport | None = None) -> Relay:
    """Read the config at ``path`` and build a :class:`Relay`.

    ``transport`` replaces the configured upstream (tests, ``securemail.testing``).
    Raises :class:`~securemail.errors.ConfigError` naming the file and key at fault.
    """
    return Relay(load_settings(os.fspath(path)), transport=transport)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _when(now: object) -> dt.datetime:
    """``now`` as the relay uses it: checked before anything is sent (a naive
    time used to fail in the audit log, after upstream had taken the message)."""
    if now is None:
        return _utcnow()
    if not isinstance(now, dt.datetime):
        raise TypeError(f"now must be a datetime, not {type(now).__name__}")
    if now.tzinfo is None or now.utcoffset() is None:
        raise TypeError("now must be timezone-aware, e.g. datetime.now(datetime.UTC)")
    return now


class Relay:
    """See the module docstring. Build with :func:`load`."""

    def __init__(self, settings: Settings, *, transport: Transport | None = None) -> None:
        self.settings = settings
        self.db = open_database(settings.storage.sqlite_path)
        try:
            self._build(settings, transport)
        except BaseException:
            # A relay that did not come up leaves nothing open (a caller may retry).
            audit = self.__dict__.get("audit")
            if audit is not None:
                with contextlib.suppress(Exception):
                    audit.close(_utcnow())
            ledger = self.__dict__.get("ledger")
            if ledger is not None:
                with contextlib.suppress(Exception):
                    ledger.close()
            self.db.close()
            raise

    def _space_folders(self) -> list[Path]:
        """Where a message's records and copies are written: the store's folder,
        and the outbox of a Maildir upstream."""
        folders = [Path(self.settings.storage.sqlite_path).resolve().parent]
        outbox = getattr(self.transport, "path", None)
        if isinstance(outbox, Path):
            folders.append(outbox)
        return folders

    def _build(self, settings: Settings, transport: Transport | None) -> None:
        from securemail.audit import AuditLog
        from securemail.dkim import DkimSigner
        from securemail.keys import Keyring
        from securemail.transport.factory import transport_from_settings

        # A connection of its own, one thread at a time: relay threads must not
        # interleave transactions on one sqlite3 connection.
        self.ledger = ThreadSafeLedger(open_database(settings.storage.sqlite_path))
        self._directory_version, self.directory, self.detectors = _load_directory(
            settings, self.db)
        self._directory_checked = time.monotonic()
        self.plugins = load_plugins(settings.policy, settings.path)
        self.keyring = Keyring(self.db)
        self._thread_keys: Keyring | None = None  # evaluate_in_thread's, on its own connection
        self.signer = DkimSigner.from_settings(settings)
        self.archive_key = _archive_key(settings)
        self.transport: Transport = transport or transport_from_settings(settings)
        self._own_transport = transport is None  # ours to rebuild when [upstream] changes
        self.space = SpaceCheck(self._space_folders,
                                lambda: self.settings.limits.max_message_bytes + MARGIN_BYTES)
        self._retired: dict[Transport, asyncio.Task[None]] = {}  # replaced, closed later
        self.instance_id = _instance_id(settings)
        self._closed = False
        self._closing: asyncio.Task[None] | None = None  # close()'s work, shielded
        self._shut = threading.Event()  # set once everything is closed
        self._closing_lock = threading.Lock()
        self.in_flight = InFlight(self.ledger)  # sends on any loop, shielded
        self.audit = AuditLog.open(settings, instance_id=self.instance_id)
        self.portal: Any = None
        if settings.portal.enabled:
            from securemail.portal.service import PortalService

            self.portal = PortalService(settings, self.db, self.transport, self.audit, self.signer)

    # -------------------------------------------------------------- reload

    def reload(self) -> None:
        """Re-read config, directory, plugins, DKIM and archive keys (SIGHUP).

        The new config must pass the checks a start makes (``config check``), or
        nothing changes. A changed ``[upstream]`` gets a new transport (a stricter
        ``tls`` applies to the next message); the old one is closed once its
        deliveries had time to finish. Portal and audit settings apply to the
        next message; the few that need a restart (:func:`restart_only_changes`)
        keep their running value, and a warning names them."""
        from securemail.preflight import check_runtime

        settings = load_settings(self.settings.path)
        check_runtime(settings)  # what `config check` and a start refuse, a reload refuses
        archive_key = _archive_key(settings)
        version, directory, detectors = _load_directory(settings, self.db)
        plugins = load_plugins(settings.policy, settings.path)
        from securemail.dkim import DkimSigner
        from securemail.transport.factory import transport_from_settings

        signer = DkimSigner.from_settings(settings)
        transport = None
        tls_context = None
        if self._own_transport and settings.upstream != self.settings.upstream:
            transport = transport_from_settings(settings)
        elif hasattr(self.transport, "fresh_tls_context"):
            tls_context = self.transport.fresh_tls_context()  # the CA file may be renewed
        # Swap only after everything loaded: a broken config keeps the old one.
        old_settings = self.settings
        self.settings, self.directory, self.detectors = settings, directory, detectors
        self._directory_version = version
        self.plugins, self.signer, self.archive_key = plugins, signer, archive_key
        self.audit.chainer.checkpoint_every = settings.audit.checkpoint_every
        self.audit.chainer.checkpoint_seconds = settings.audit.checkpoint_seconds
        if self.portal is not None:
            self.portal.use_settings(settings)
            self.portal.signer = signer
        later = restart_only_changes(old_settings, settings, portal_running=self.portal is not None)
        if later:
            log.warning("%s changed in %s; they apply after a restart (the running values stay"
                        " in force until then)", ", ".join(later), settings.path)
        if transport is not None:
            self._retire(self.transport)
            self.transport = transport
            if self.portal is not None:
                self.portal.use_transport(transport)
        else:  # same upstream: new connections see its current configuration
            recycle = getattr(self.transport, "recycle", None)
            if recycle is not None:
                recycle(tls_context)
        try:
            self.record_config_loaded("reload")
        except StoreError as exc:  # the new config is in force; say so, do not undo it
            log.error("reloaded, but could not audit it: %s", exc)

    @property
    def portal_sealing(self) -> bool:
        """Whether new messages may go through the portal: it runs and the config
        (as last loaded: a reload may have turned it off) still enables it."""
        return self.portal is not None and self.settings.portal.enabled

    def _retire(self, transport: Transport) -> None:
        """Close a replaced transport after the SMTP timeout (its pooled connections
        may be in the middle of a delivery); at once when no loop is running."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(transport.close())
            return

        async def later() -> None:
            await asyncio.sleep(self.settings.relay.timeout_seconds)
            del self._retired[transport]
            await transport.close()

        self._retired[transport] = loop.create_task(later())

    def record_config_loaded(self, reason: str, status: str = "ok") -> None:
        """Audit which configuration is in force (``securemail serve`` start and reload),
        with the consent changes it brings (a consent edited in the config file and
        put in force by a restart included). A failed reload changed nothing."""
        record_config_loaded(self.audit, config_sha256=self.settings.digest,
                             instance_id=self.instance_id, reason=reason, status=status,
                             now=_utcnow(), directory=self.directory if status == "ok" else None,
                             file=str(Path(self.settings.path).resolve()))

    # -------------------------------------------------------------- check

    def check(
        self,
        message: bytes | email.message.Message,
        *,
        mail_from: str | None = None,
        rcpt_tos: Sequence[str] | None = None,
        now: dt.datetime | None = None,
    ) -> Verdict:
        """Evaluate the policy without sending. Envelope defaults come from the
        headers: sender from ``From:``, recipients from ``To:`` + ``Cc:`` + ``Bcc:``.

        Raises :class:`~securemail.errors.InputError` when there is no recipient
        (no ``rcpt_tos`` and no To/Cc/Bcc that can be read), :class:`RelayClosed`
        after :meth:`close`.
        """
        self._ensure_open()
        raw = _as_bytes(message)
        envelope = self.envelope_for(raw, mail_from, rcpt_tos)
        return self.evaluate(raw, envelope, _when(now))

    async def evaluate_in_thread(self, raw: bytes, envelope: Envelope,
                                 now: dt.datetime) -> Verdict:
        """:meth:`evaluate` in a worker thread, for a large message (reading a
        long PDF must not stall every other connection). Its documents are
        read in a child process (:mod:`securemail.document_process`): read in
        the thread, they still held the GIL often enough to stall the event
        loop. The thread reads keys through a connection of its own: the
        shared one carries the directory's transactions (and an in-memory
        portal store's), which must not be interleaved."""
        self._refresh_directory()  # on the shared connection, in this thread
        with self._closing_lock:
            if self._thread_keys is None:
                from securemail.keys import Keyring

                self._thread_keys = Keyring(open_database(self.settings.storage.sqlite_path))
            keys = self._thread_keys
        with documents_in_child_process():  # to_thread runs in a copy of this context
            return await asyncio.to_thread(self.evaluate, raw, envelope, now, keys=keys)

    def _refresh_directory(self) -> None:
        """Pick up ``securemail directory import`` (any process) within a second,
        as keys are: a new client's mail must not wait for a SIGHUP."""
        checked = time.monotonic()
        if checked - self._directory_checked < DIRECTORY_CHECK_SECONDS:
            return
        self._directory_checked = checked
        if imported_version(self.db) != self._directory_version:
            self._directory_version, self.directory, self.detectors = _load_directory(
                self.settings, self.db)

    def evaluate(self, raw: bytes, envelope: Envelope, now: dt.datetime, *,
                 keys: Any = None) -> Verdict:
        """Parse, classify, decide. ``keys``: the keyring to read (a worker
        thread passes one on a connection of its own; see evaluate_in_thread)."""
        if keys is None:
            self._refresh_directory()
        # One snapshot: a reload (or a directory refresh) while a worker thread
        # judges must not give one verdict half the old and half the new config.
        settings, directory, detectors, plugins = (self.settings, self.directory,
                                                   self.detectors, self.plugins)
        view = parse_message(raw, settings.limits)
        facts = classify(
            view,
            mail_from=envelope.mail_from,
            rcpt_tos=envelope.rcpt_tos,
            directory=directory,
            detectors=detectors,
            keys=self.keyring if keys is None else keys,
            restricted_header=settings.policy.restricted_header,
            scan_limit=settings.limits.scan_text_bytes,
            now=now,
        )
        return decide(facts, settings.policy, now=now,
                      portal_enabled=self.portal_sealing, plugins=plugins)

    def envelope_for(self, raw: bytes, mail_from: str | None,
                     rcpt_tos: Sequence[str] | None, **extra: Any) -> Envelope:
        """The envelope, with defaults read from the headers. A message nobody
        could receive is the caller's mistake (InputError), not a policy verdict."""
        if isinstance(rcpt_tos, str | bytes):
            raise TypeError("rcpt_tos must be a list of addresses, not a single string")
        if rcpt_tos is not None:
            rcpt_tos = tuple(rcpt_tos)  # a generator is truthy even when it yields nothing
        if mail_from is None or rcpt_tos is None:
            view = parse_message(raw, self.settings.limits)
            if mail_from is None:
                senders = view.addresses("from")
                mail_from = senders[0] if senders else ""
            if rcpt_tos is None:
                rcpt_tos = list(dict.fromkeys(view.addresses("to", "cc", "bcc")))
                if not rcpt_tos and view.malformed and view.message is not None:
                    # Only for reporting: every recipient of a malformed message is blocked.
                    rcpt_tos = loose_recipients(view.message)
        if not rcpt_tos:
            raise InputError(NO_RECIPIENTS)
        return Envelope(mail_from=mail_from, rcpt_tos=tuple(rcpt_tos), **extra)

    # -------------------------------------------------------------- send

    async def send(
        self,
        message: bytes | email.message.Message,
        *,
        mail_from: str | None = None,
        rcpt_tos: Sequence[str] | None = None,
        peer: str | None = None,
        auth_identity: str | None = None,
        tls: TLSInfo | None = None,
        now: dt.datetime | None = None,
        trace: str | None = None,
    ) -> Outcome:
        """Push the message through the whole pipeline.

        Returns the :class:`Outcome` when every output was accepted (or sealed)
        and audited. Raises :class:`~securemail.Blocked` (the policy blocked
        every recipient, or the message is malformed: ``exc.verdict``),
        :class:`~securemail.UpstreamRefused` (upstream refused every recipient),
        :class:`~securemail.TemporaryFailure` (try again later; nothing was
        lost and nothing already accepted will be sent twice),
        :class:`~securemail.errors.InputError` (no recipient) or
        :class:`RelayClosed`. See docs/library.md.

        Once the message is being processed, cancelling the caller (e.g.
        ``asyncio.wait_for``) does not interrupt delivery and audit: the caller
        gets CancelledError, the work finishes, and a retry of the same bytes
        sends nothing twice.
        """
        self._ensure_open()
        raw = _as_bytes(message)
        envelope = self.envelope_for(raw, mail_from, rcpt_tos, peer=peer,
                                     auth_identity=auth_identity, tls=tls, trace=trace)
        when = _when(now)
        return await self.in_flight.run(lambda: process(self, raw, envelope, when), raw, when)

    def send_sync(
        self,
        message: bytes | email.message.Message,
        *,
        mail_from: str | None = None,
        rcpt_tos: Sequence[str] | None = None,
        peer: str | None = None,
        auth_identity: str | None = None,
        tls: TLSInfo | None = None,
        now: dt.datetime | None = None,
        trace: str | None = None,
    ) -> Outcome:
        """Blocking :meth:`send` for code without an event loop (each call runs
        its own; any thread may call it). Inside a running event loop it raises
        :class:`UsageError`: use ``await relay.send(...)`` there."""
        _refuse_inside_a_loop("send_sync", "await relay.send(...)")
        return asyncio.run(self.send(message, mail_from=mail_from, rcpt_tos=rcpt_tos, peer=peer,
                                     auth_identity=auth_identity, tls=tls, now=now,
                                     trace=trace))

    # -------------------------------------------------------------- close

    def _ensure_open(self) -> None:
        if self._closed:
            raise RelayClosed()

    async def close(self) -> None:
        """Finish messages in flight (up to the upstream timeout), then close the
        transport, portal, audit log (final checkpoint) and store. Idempotent;
        afterwards every call raises :class:`RelayClosed`.

        Cancelling the caller (a shutdown hook's timeout) does not cut this
        short: the closing goes on in a task of its own, so the audit log and
        store are never closed under a message still being sent. A message
        still in flight after the upstream timeout is interrupted, and what
        upstream accepted of it is recorded before anything is closed."""
        with self._closing_lock:
            closing = self._closing
            if closing is None and not self._closed:
                self._closed = True
                closing = self._closing = asyncio.get_running_loop().create_task(
                    self._shut_down())
        if closing is None:
            return
        if closing.get_loop() is asyncio.get_running_loop():
            await asyncio.shield(closing)
        else:  # begun on another loop (another thread's close_sync): wait for it too
            await asyncio.to_thread(self._shut.wait, self.settings.upstream.timeout_seconds + 90)

    async def _shut_down(self) -> None:
        try:
            await self.in_flight.finish(self.settings.upstream.timeout_seconds)
            for old, task in list(self._retired.items()):
                _cancel(task)
                await old.close()
            await self.transport.close()
        finally:
            try:
                if self.portal is not None:
                    self.portal.close()
            finally:
                try:
                    self.audit.close(_utcnow())  # the final checkpoint
                finally:
                    try:
                        self.ledger.close()
                        self.db.close()
                        if self._thread_keys is not None:
                            self._thread_keys.close()
                    finally:
                        self._shut.set()

    def close_sync(self) -> None:
        """Blocking :meth:`close` for code without an event loop."""
        _refuse_inside_a_loop("close_sync", "await relay.close() or async with")
        asyncio.run(self.close())

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close_sync()

    async def __aenter__(self) -> Relay:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


NO_RECIPIENTS = "no recipients: pass rcpt_tos= or give the message To/Cc/Bcc"


def _refuse_inside_a_loop(name: str, instead: str) -> None:
    """Checked before any coroutine exists, so none is left never awaited."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise UsageError(f"{name}() cannot run inside a running event loop: use {instead}")


def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` from any thread (Task.cancel is for its own loop only)."""
    loop = task.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is running:
        task.cancel()
        return
    try:
        loop.call_soon_threadsafe(task.cancel)
    except RuntimeError:  # that loop is closed: the task will never run again
        pass


_ADDRESS_HEADERS = ("from", "sender", "reply-to", "to", "cc", "bcc", "resent-from",
                    "resent-sender", "resent-to", "resent-cc", "resent-bcc")


def _as_bytes(message: bytes | email.message.Message) -> bytes:
    """The message's bytes. An EmailMessage with an internationalised address
    (RFC 6532) is written with ``SMTPUTF8``, which keeps UTF-8 headers as they
    are: ``SMTP`` would turn the address into an RFC 2047 encoded word, which
    is not an address any more (the message would be blocked as malformed)."""
    if isinstance(message, bytes | bytearray | memoryview):
        return bytes(message)
    if isinstance(message, email.message.EmailMessage):
        utf8 = _has_utf8_address(message)
        return message.as_bytes(policy=email.policy.SMTPUTF8 if utf8 else email.policy.SMTP)
    if isinstance(message, email.message.Message):
        return _legacy_bytes(message)
    raise InputError(f"message must be bytes or an email.message.Message, "
                     f"not {type(message).__name__}")


def _legacy_bytes(message: email.message.Message) -> bytes:
    """A legacy (``compat32``) ``Message``, e.g. ``MIMEText``, written as its
    own policy writes it; except that an address header set as a plain string
    with a non-ASCII name (``msg["To"] = "Sam Groß <sam@x.example>"``), which
    that policy turns into one encoded word swallowing the address (no address
    any more: the message would be blocked as malformed), is written with only
    the name encoded. The caller's message is not changed."""
    plain = email.policy.compat32.clone(linesep="\r\n")
    names = [n for n in _ADDRESS_HEADERS
             if any(isinstance(v, str) and not v.isascii() for v in message.get_all(n) or ())]
    if not names:
        return message.as_bytes(policy=plain)
    import copy

    fixed = copy.deepcopy(message)
    items = fixed.items()
    for key in {k for k, _ in items}:
        del fixed[key]
    utf8 = False
    for key, value in items:  # in order, names as written
        if key.lower() in names and isinstance(value, str) and not value.isascii():
            pairs = email.utils.getaddresses([value])
            if pairs and all(a.isascii() for _, a in pairs):
                value = ", ".join(email.utils.formataddr((n, a), charset="utf-8")
                                  for n, a in pairs)
            else:
                utf8 = True  # an internationalised address: RFC 6532 UTF-8 headers
        fixed[key] = value
    return fixed.as_bytes(policy=email.policy.SMTPUTF8 if utf8 else plain)


def _has_utf8_address(message: email.message.Message) -> bool:
    values = [str(v) for name in _ADDRESS_HEADERS for v in message.get_all(name) or ()]
    return any(not address.isascii() for _, address in email.utils.getaddresses(values))


def _archive_key(settings: Settings) -> Any:
    """The practice's optional OpenPGP archive key, added to every ciphertext."""
    if not settings.encryption.archive_key_file:
        return None
    from securemail.crypto.pgp import load_archive_key

    return load_archive_key(settings.resolve(settings.encryption.archive_key_file),
                            settings.path)


RESTART_ONLY = ("storage.url", "audit.signing_key_file", "portal.listen",
                "portal.forwarded_allow_ips", "portal.code_channel", "relay.workers")


def restart_only_changes(old: Settings, new: Settings, *, portal_running: bool) -> list[str]:
    """The settings (``section.key = new value``) a reload cannot apply: the store
    and audit key are open, the portal's web server and the worker processes
    are running. Turning the portal off applies at once (no new message is
    sealed; links already sent keep working until the restart); turning it on
    needs the restart that starts its web server."""
    changed = []
    for name in RESTART_ONLY:
        section, key = name.split(".")
        before, after = getattr(getattr(old, section), key), getattr(getattr(new, section), key)
        if before != after:
            changed.append(f"{name} = {after!r}")
    if new.portal.enabled and not portal_running:
        changed.append("portal.enabled = True")
    return changed


def _load_directory(settings: Settings, conn: Any) -> tuple[int, Directory, Detectors]:
    """The config's directory plus imported entries, its version, and the content
    detectors that know its client names."""
    version = imported_version(conn)  # read first: a later import is seen next time
    directory = current_directory(settings.practice.domains, settings.directory, conn)
    return version, directory, Detectors(settings.policy,
                                         name_owners=directory.client_names,
                                         address_owners=directory.client_addresses)


def _instance_id(settings: Settings) -> str:
    """A stable id for this relay installation, kept beside the store."""
    path = Path(settings.storage.data_dir) / "instance-id"
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        value = f"sm-{secrets.token_hex(8)}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n", encoding="ascii")
        return value
