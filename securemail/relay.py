"""The library entry point: ``securemail.load(path)`` -> :class:`Relay`.

A Relay holds everything the data path needs, built once from the config:
settings, store, directory, key ring, DKIM signer, audit log, portal and the
upstream transport. The daemon and practice software use the same object.

>>> relay = securemail.load("securemail.toml")            # doctest: +SKIP
>>> relay.check(raw, mail_from="dr@riverside.example",    # doctest: +SKIP
...             rcpt_tos=["jane@mail.example"]).blocked
False
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.message
import email.policy
import email.utils
import logging
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from securemail.audit.admin_events import record_config_loaded, record_consent_changes
from securemail.classify import classify
from securemail.config import Settings, load_settings
from securemail.deliveries import DeliveryLedger
from securemail.directory import (
    Directory,
    consent_changes,
    current_directory,
    imported_version,
)
from securemail.errors import InputError, StoreError
from securemail.model import Envelope, Outcome, TLSInfo, Verdict
from securemail.parse import loose_recipients, parse_message
from securemail.phi import Detectors
from securemail.policy import decide, load_plugins
from securemail.store.sqlite import open_database
from securemail.transport import Transport

DIRECTORY_CHECK_SECONDS = 1.0  # how stale an imported directory may be
log = logging.getLogger("securemail.relay")

__all__ = ["Relay", "load"]


def load(path: str | os.PathLike[str], *, transport: Transport | None = None) -> Relay:
    """Read the config at ``path`` and build a :class:`Relay`.

    ``transport`` replaces the configured upstream (tests, ``securemail.testing``).
    Raises :class:`~securemail.errors.ConfigError` naming the file and key at fault.
    """
    return Relay(load_settings(os.fspath(path)), transport=transport)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Relay:
    """See the module docstring. Build with :func:`load`."""

    def __init__(self, settings: Settings, *, transport: Transport | None = None) -> None:
        from securemail.audit import AuditLog
        from securemail.dkim import DkimSigner
        from securemail.keys import Keyring
        from securemail.transport.factory import transport_from_settings

        self.settings = settings
        self.db = open_database(settings.storage.sqlite_path)
        self.ledger = DeliveryLedger(self.db)
        self._directory_version, self.directory, self.detectors = _load_directory(
            settings, self.db)
        self._directory_checked = time.monotonic()
        self.plugins = load_plugins(settings.policy, settings.path)
        self.keyring = Keyring(self.db)
        self.signer = DkimSigner.from_settings(settings)
        self.archive_key = _archive_key(settings)
        self.transport: Transport = transport or transport_from_settings(settings)
        self._own_transport = transport is None  # ours to rebuild when [upstream] changes
        self._retired: dict[Transport, asyncio.Task[None]] = {}  # replaced, closed later
        self.instance_id = _instance_id(settings)
        self.audit = AuditLog.open(settings, instance_id=self.instance_id)
        self.portal: Any = None
        if settings.portal.enabled:
            from securemail.portal.service import PortalService

            self.portal = PortalService(settings, self.db, self.transport, self.audit, self.signer)

    # -------------------------------------------------------------- reload

    def reload(self) -> None:
        """Re-read config, directory, plugins and DKIM key (SIGHUP). A changed
        ``[upstream]`` gets a new transport (a stricter ``tls`` applies to the next
        message); the old one is closed once its deliveries had time to finish."""
        settings = load_settings(self.settings.path)
        version, directory, detectors = _load_directory(settings, self.db)
        plugins = load_plugins(settings.policy, settings.path)
        from securemail.dkim import DkimSigner
        from securemail.transport.factory import transport_from_settings

        signer = DkimSigner.from_settings(settings)
        transport = None
        if self._own_transport and settings.upstream != self.settings.upstream:
            transport = transport_from_settings(settings)
        # Swap only after everything loaded: a broken config keeps the old one.
        old_directory = self.directory
        self.settings, self.directory, self.detectors = settings, directory, detectors
        self._directory_version = version
        self.plugins, self.signer = plugins, signer
        if self.portal is not None:
            self.portal.signer = signer
        if transport is not None:
            self._retire(self.transport)
            self.transport = transport
            if self.portal is not None:
                self.portal.use_transport(transport)
        try:
            self.record_config_loaded("reload")
            record_consent_changes(self.audit, consent_changes(old_directory, directory),
                                   actor="reload", now=_utcnow(), file=str(settings.path))
        except StoreError as exc:  # the new config is in force; say so, do not undo it
            log.error("reloaded, but could not audit it: %s", exc)

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
        """Audit which configuration is in force (``securemail serve`` start and reload)."""
        record_config_loaded(self.audit, config_sha256=self.settings.digest,
                             instance_id=self.instance_id, reason=reason, status=status,
                             now=_utcnow())

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
        headers: sender from ``From:``, recipients from ``To:`` + ``Cc:`` + ``Bcc:``."""
        raw = _as_bytes(message)
        envelope = self.envelope_for(raw, mail_from, rcpt_tos)
        return self.evaluate(raw, envelope, now or _utcnow())

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

    def evaluate(self, raw: bytes, envelope: Envelope, now: dt.datetime) -> Verdict:
        self._refresh_directory()
        view = parse_message(raw, self.settings.limits)
        facts = classify(
            view,
            mail_from=envelope.mail_from,
            rcpt_tos=envelope.rcpt_tos,
            directory=self.directory,
            detectors=self.detectors,
            keys=self.keyring,
            restricted_header=self.settings.policy.restricted_header,
            scan_limit=self.settings.limits.scan_text_bytes,
            now=now,
        )
        return decide(facts, self.settings.policy, now=now,
                      portal_enabled=self.portal is not None, plugins=self.plugins)

    def envelope_for(self, raw: bytes, mail_from: str | None,
                     rcpt_tos: Sequence[str] | None, **extra: Any) -> Envelope:
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
    ) -> Outcome:
        """Push the message through the whole pipeline.

        Returns the :class:`Outcome` when every output was accepted (or sealed)
        and audited. Raises :class:`~securemail.Blocked` (policy),
        :class:`~securemail.errors.MalformedMessage` or
        :class:`~securemail.TemporaryFailure` (try again later; nothing was
        lost and nothing already accepted will be sent twice).
        """
        from securemail.pipeline import process

        raw = _as_bytes(message)
        envelope = self.envelope_for(raw, mail_from, rcpt_tos, peer=peer,
                                     auth_identity=auth_identity, tls=tls)
        return await process(self, raw, envelope, now or _utcnow())

    def send_sync(self, message: bytes | email.message.Message, **kwargs: Any) -> Outcome:
        """Blocking :meth:`send` for code without an event loop."""
        return asyncio.run(self.send(message, **kwargs))

    async def close(self) -> None:
        for old, task in list(self._retired.items()):
            task.cancel()
            await old.close()
        await self.transport.close()
        if self.portal is not None:
            self.portal.close()
        self.audit.close(_utcnow())
        self.db.close()


def _as_bytes(message: bytes | email.message.Message) -> bytes:
    if isinstance(message, bytes | bytearray | memoryview):
        return bytes(message)
    if isinstance(message, email.message.Message):
        policy = email.policy.SMTP if isinstance(message, email.message.EmailMessage) \
            else email.policy.compat32.clone(linesep="\r\n")
        return message.as_bytes(policy=policy)
    raise InputError(f"message must be bytes or an email.message.Message, "
                     f"not {type(message).__name__}")


def _archive_key(settings: Settings) -> Any:
    """The practice's optional OpenPGP archive key, added to every ciphertext."""
    if not settings.encryption.archive_key_file:
        return None
    from securemail.crypto.pgp import load_archive_key

    return load_archive_key(settings.resolve(settings.encryption.archive_key_file))


def _load_directory(settings: Settings, conn: Any) -> tuple[int, Directory, Detectors]:
    """The config's directory plus imported entries, its version, and the content
    detectors that know its client names."""
    version = imported_version(conn)  # read first: a later import is seen next time
    directory = current_directory(settings.practice.domains, settings.directory, conn)
    return version, directory, Detectors(settings.policy,
                                         (n for n, _ in directory.client_names))


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
