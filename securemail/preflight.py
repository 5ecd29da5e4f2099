"""What ``securemail serve`` will load, checked without starting it.

``securemail config check`` runs this, so that a config which parses but
cannot run (a users file that does not load, a certificate the service cannot
read, a store it cannot write, a signing key that does not match the store, an
archive key it would refuse) is reported by the check, with the file and key
at fault, and not by the first start or SIGHUP. Nothing is created or changed
here: run the check as the service user to test its permissions.

:func:`config_warnings` lists what loads and runs but is probably a mistake
(an example domain, an admin endpoint off loopback, a setting that has no
effect): `config check` prints them and still exits 0 (1 with ``--strict``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import sqlite3
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from securemail.config import Settings
from securemail.errors import ConfigError, StoreError
from securemail.store.sqlite import describe_fault, on_read_only_filesystem, open_for_reading

__all__ = ["check_runtime", "config_warnings", "reserved_domain"]


def check_runtime(settings: Settings) -> None:
    """Raise :class:`ConfigError` for the first thing ``serve`` could not load."""
    from securemail.policy import load_plugins

    load_plugins(settings.policy, settings.path)
    if settings.dkim is not None:
        from securemail.dkim import DkimSigner

        DkimSigner.from_settings(settings)
    if settings.submission.enabled:
        _check_submission(settings)
    if settings.encryption.archive_key_file:
        from securemail.crypto.pgp import load_archive_key

        # The same check `serve` and `securemail.load()` make: readable, one key, usable now.
        load_archive_key(settings.resolve(settings.encryption.archive_key_file),
                         settings.path)
    if settings.portal.enabled and settings.portal.code_channel != "email":
        raise ConfigError(settings.path, "portal.code_channel",
                          f'"{settings.portal.code_channel}" works only from the library (a'
                          " channel object passed to PortalService); `securemail serve`"
                          ' sends codes by email: use "email"')
    from securemail.transport.factory import transport_from_settings

    if settings.upstream.url.startswith("smtp://"):
        transport_from_settings(settings)  # builds the upstream TLS context (CA bundle)
    _check_store(settings)


def _check_submission(settings: Settings) -> None:
    from securemail.smtp_auth import load_users

    sub = settings.submission
    load_users(settings.resolve(sub.users_file))
    for key in ("tls_cert", "tls_key"):
        path = settings.resolve(getattr(sub, key))
        try:
            path.read_bytes()
        except OSError as exc:
            raise ConfigError(settings.path, f"submission.{key}",
                              f"{path}: cannot read ({exc.strerror or type(exc).__name__})"
                              ) from None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(settings.resolve(sub.tls_cert), settings.resolve(sub.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(settings.path, "submission.tls_cert",
                          f"{settings.resolve(sub.tls_cert)} with {settings.resolve(sub.tls_key)}:"
                          f" not a PEM certificate chain and its private key"
                          f" ({type(exc).__name__})") from None


def _check_store(settings: Settings) -> None:
    """The store is readable and writable by this user (or can be created), and
    a store with audit records still has the key that signed them."""
    path = settings.storage.sqlite_path
    if not path.exists():
        folder = _nearest_existing(path.parent)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(settings.path, "storage.url",
                              f"{path} does not exist and {folder} is not writable by this"
                              " user: create the folder for the service user")
        return
    for target in (path, path.parent):  # SQLite writes its WAL beside the store
        if on_read_only_filesystem(target):
            raise ConfigError(settings.path, "storage.url",
                              f"{target}: on a filesystem mounted read-only; the relay needs"
                              " to write its store (audit verify, export and report can"
                              " still read it)")
        if not os.access(target, os.R_OK | os.W_OK):
            raise ConfigError(settings.path, "storage.url",
                              f"{target}: not readable and writable by this user (uid"
                              f" {os.getuid()}); give it to the service user")
    from securemail.audit import signing_key_path
    from securemail.audit.log import check_signing_key

    try:
        conn = open_for_reading(path)  # its URI quoted: a "#" or "?" in the path is a name
    except StoreError as exc:
        raise ConfigError(settings.path, "storage.url", str(exc)) from None
    try:
        check_signing_key(conn, signing_key_path(settings), path)
    except sqlite3.Error as exc:
        raise ConfigError(settings.path, "storage.url",
                          f"{path}: not a readable store ({describe_fault(exc)})") from None
    finally:
        conn.close()


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


# RFC 2606 and RFC 6761 names that are never anyone's mail domain.
_RESERVED_NAMES = ("example.com", "example.net", "example.org")
_RESERVED_TLDS = ("example", "test", "invalid", "localhost")


def reserved_domain(domain: str) -> bool:
    """Whether ``domain`` is (under) a name reserved for examples and tests."""
    name = domain.strip().rstrip(".").lower()
    return any(name == r or name.endswith("." + r) for r in _RESERVED_NAMES + _RESERVED_TLDS)


def config_warnings(settings: Settings) -> list[str]:
    """``FILE: key: problem`` for each setting that works but is probably wrong.

    Warnings, not errors: the embedded demo (``securemail serve`` without a
    config) uses ``practice.example`` and must keep running."""
    out: list[str] = []

    def warn(key: str, problem: str) -> None:
        out.append(str(ConfigError(settings.path, key, problem)))

    for i, domain in enumerate(settings.practice.domains):
        if reserved_domain(domain):
            warn(f"practice.domains[{i}]",
                 f"{domain} is a reserved example domain, not the practice's: staff at the"
                 " real domain are treated as third parties; put your mail domain here")
    if settings.dkim is not None and reserved_domain(settings.dkim.domain):
        warn("dkim.domain", f"{settings.dkim.domain} is a reserved example domain: nothing is"
                            " signed for the practice's real domain")
    if settings.portal.enabled:
        host = urlsplit(settings.portal.base_url).hostname or ""
        if reserved_domain(host):
            warn("portal.base_url", f"{host} is a reserved example domain: links in"
                                    " notifications would lead nowhere")
        if settings.portal.notify_from and reserved_domain(
                settings.portal.notify_from.rpartition("@")[2]):
            warn("portal.notify_from", f"{settings.portal.notify_from} is at a reserved"
                                       " example domain")
    admin = settings.relay.admin_listen
    if admin and not _loopback(admin):
        warn("relay.admin_listen", f"{admin} is not a loopback address: /metrics and /readyz"
                                   " are unauthenticated; keep it on 127.0.0.1 (or firewall"
                                   " the port to the monitoring host)")
    upstream = settings.upstream
    if upstream.ca_file and not upstream.url.startswith("smtp:"):
        warn("upstream.ca_file", 'is only used by an smtp:// upstream with tls = "required";'
                                 " it is ignored here: remove it")
    elif upstream.ca_file and upstream.tls != "required":
        warn("upstream.ca_file", 'is only used with tls = "required"; with tls = "none" it is'
                                 ' ignored: remove it, or set tls = "required" to verify the'
                                 " upstream with it")
    store = settings.storage.sqlite_path
    for part in (store, store.with_name(store.name + "-wal"), store.with_name(store.name + "-shm")):
        try:
            mode = part.stat().st_mode
        except OSError:
            continue
        if mode & 0o077:
            # Stores made before 0600 was the default keep their mode on upgrade.
            warn("storage.url", f"{part} can be read by other users (mode {mode & 0o777:o}): it"
                                f" holds addresses and audit records; chmod 600 {part}")
    return out


def _loopback(host_port: str) -> bool:
    m = re.fullmatch(r"\[?(.+?)\]?:\d+", host_port)
    host = m.group(1) if m else host_port
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere
