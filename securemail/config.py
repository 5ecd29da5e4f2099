"""TOML configuration -> frozen, typed settings.

Every problem is a :class:`~securemail.errors.ConfigError` whose text is
``FILE: dotted.key: problem``. Unknown keys are errors: a typo in a security
setting must never be silently ignored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from securemail.errors import ConfigError
from securemail.model import Consent, Mode

__all__ = [
    "AuditSettings",
    "ClientEntry",
    "ContactEntry",
    "DirectorySettings",
    "DkimSettings",
    "LimitSettings",
    "PartnerEntry",
    "PolicySettings",
    "PortalSettings",
    "PracticeSettings",
    "RelaySettings",
    "Settings",
    "StorageSettings",
    "SubmissionSettings",
    "UpstreamSettings",
    "load_settings",
    "parse_settings",
]

T = TypeVar("T")
MiB = 1024 * 1024


@dataclass(frozen=True)
class PracticeSettings:
    name: str = "Our practice"
    domains: tuple[str, ...] = ()
    phone: str = ""  # shown in notifications so recipients can check they are genuine
    website: str = ""


@dataclass(frozen=True)
class RelaySettings:
    listen: str = "127.0.0.1:10025"
    hostname: str = "securemail.local"
    trusted_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    max_recipients: int = 100
    max_connections_per_client: int = 20
    timeout_seconds: int = 300
    admin_listen: str = ""  # /healthz and /metrics; empty = off
    workers: int = 1


@dataclass(frozen=True)
class SubmissionSettings:
    enabled: bool = False
    listen: str = "127.0.0.1:10587"
    tls_cert: str = ""
    tls_key: str = ""
    users_file: str = ""


@dataclass(frozen=True)
class UpstreamSettings:
    url: str = "smtp://127.0.0.1:10026"
    tls: str = "required"  # required | none
    ca_file: str = ""
    timeout_seconds: int = 60
    pool_size: int = 4


@dataclass(frozen=True)
class PolicySettings:
    mode: Mode = Mode.ENFORCE
    unauthorised_recipients: str = "block"  # block | strip
    encryption_preference: tuple[str, ...] = ("pgp", "smime")
    plugins: tuple[str, ...] = ()
    restricted_header: str = "X-Securemail-Restricted"
    mrn_pattern: str = r"\bMRN[:#\s-]*[A-Z0-9-]{5,12}\b"
    health_keywords: tuple[str, ...] = ()  # added to the built-in list
    identifier_keywords: tuple[str, ...] = ()
    on_encryption_error: str = "defer"  # defer (451) | portal



@dataclass(frozen=True)
class LimitSettings:
    max_message_bytes: int = 25 * MiB
    max_mime_depth: int = 20
    max_parts: int = 500
    max_header_bytes: int = 256 * 1024
    scan_text_bytes: int = 512 * 1024  # content detectors read at most this much text


@dataclass(frozen=True)
class StorageSettings:
    # "sqlite:///abs/path.db" (absolute, like a file URL) or "sqlite:rel/path.db"
    # (relative to the config file's folder).
    url: str = "sqlite:securemail.db"

    @property
    def sqlite_path(self) -> Path:
        rest = self.url[len("sqlite:"):]
        return Path(rest[2:] if rest.startswith("//") else rest)

    @property
    def data_dir(self) -> Path:
        """Where generated secrets live: beside the store."""
        return self.sqlite_path.parent


@dataclass(frozen=True)
class PortalSettings:
    enabled: bool = True
    base_url: str = "http://127.0.0.1:8080"
    listen: str = "127.0.0.1:8080"
    expiry_days: int = 30
    sender_name: str = ""  # display name on notifications; default: practice name
    notify_from: str = ""  # envelope/header From of notifications; default: envelope sender
    code_channel: str = "email"
    session_minutes: int = 15


@dataclass(frozen=True)
class DkimSettings:
    domain: str
    selector: str
    key_file: str


@dataclass(frozen=True)
class AuditSettings:
    retention_days: int = 6 * 366
    checkpoint_every: int = 1000
    checkpoint_seconds: int = 300
    signing_key_file: str = ""  # default: audit-signing.key beside the store


@dataclass(frozen=True)
class EncryptionSettings:
    archive_key_file: str = ""  # OpenPGP public key added to every ciphertext


@dataclass(frozen=True)
class ContactEntry:
    address: str
    relation: str


@dataclass(frozen=True)
class ClientEntry:
    id: str
    addresses: tuple[str, ...]
    contacts: tuple[ContactEntry, ...] = ()
    consent_unencrypted: Consent | None = None
    names: tuple[str, ...] = ()  # optional: lets the detectors spot a client's name


@dataclass(frozen=True)
class PartnerEntry:
    name: str
    domains: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class DirectorySettings:
    clients: tuple[ClientEntry, ...] = ()
    partners: tuple[PartnerEntry, ...] = ()


@dataclass(frozen=True)
class Settings:
    path: str
    practice: PracticeSettings = field(default_factory=PracticeSettings)
    relay: RelaySettings = field(default_factory=RelaySettings)
    submission: SubmissionSettings = field(default_factory=SubmissionSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    portal: PortalSettings = field(default_factory=PortalSettings)
    dkim: DkimSettings | None = None
    audit: AuditSettings = field(default_factory=AuditSettings)
    encryption: EncryptionSettings = field(default_factory=EncryptionSettings)
    directory: DirectorySettings = field(default_factory=DirectorySettings)
    digest: str = ""  # SHA-256 of the config file bytes, for the audit record

    def resolve(self, value: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(value)
        return p if p.is_absolute() else Path(self.path).resolve().parent / p


# ---------------------------------------------------------------- reading


class _Table:
    """One TOML table; remembers which keys were read so leftovers are errors."""

    def __init__(self, file: str, prefix: str, data: object) -> None:
        self.file = file
        self.prefix = prefix
        if not isinstance(data, Mapping):
            raise ConfigError(file, prefix, f"must be a table, got {_kind(data)}")
        self.data: Mapping[str, object] = data
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), problem)

    def get(self, name: str, kind: type[T], default: T) -> T:
        self.seen.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        if kind is int and isinstance(value, bool):
            raise self.error(name, f"must be an integer, got {_kind(value)}")
        if not isinstance(value, kind):
            raise self.error(name, f"must be {_article(kind)}, got {_kind(value)}")
        return value

    def text(self, name: str, default: str) -> str:
        return self.get(name, str, default)

    def positive(self, name: str, default: int) -> int:
        value = self.get(name, int, default)
        if value <= 0:
            raise self.error(name, f"must be a positive integer, got {value}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.text(name, default)
        if value not in choices:
            options = " or ".join(f'"{c}"' for c in choices)
            raise self.error(name, f'must be {options}, got "{value}"')
        return value

    def strings(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.get(name, list, list(default))
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{name}[{i}]", f"must be a string, got {_kind(item)}")
        return tuple(value)

    def table(self, name: str) -> _Table:
        self.seen.add(name)
        return _Table(self.file, self.key(name), self.data.get(name, {}))

    def finish(self) -> None:
        extra = sorted(set(self.data) - self.seen)
        if extra:
            raise self.error(extra[0],
                             "unknown key (check the spelling; see docs/configuration.md)")


def _kind(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _article(kind: type) -> str:
    return {bool: "true or false", int: "an integer", str: "a string", list: "a list",
            dict: "a table"}.get(kind, kind.__name__)


def _host_port(t: _Table, name: str, default: str, *, allow_empty: bool = False) -> str:
    value = t.text(name, default)
    if allow_empty and not value:
        return value
    m = re.fullmatch(r"\[?([0-9A-Za-z.:-]+?)\]?:(\d{1,5})", value)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise t.error(name, f'must be "HOST:PORT", got "{value}"')
    return value


def _date(t: _Table, name: str, value: object) -> str:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value).isoformat()
        except ValueError:
            pass
    raise t.error(name, f"must be a date (YYYY-MM-DD), got {value!r}")


def _address(t: _Table, name: str, value: str) -> str:
    from securemail.directory import AddressError, normalise_address

    try:
        return normalise_address(value)
    except AddressError as exc:
        raise t.error(name, str(exc)) from None


def _domain(t: _Table, name: str, value: str) -> str:
    from securemail.directory import AddressError, normalise_domain

    try:
        return normalise_domain(value)
    except AddressError as exc:
        raise t.error(name, str(exc)) from None


def _section(root: _Table, name: str, build: Callable[[_Table], T]) -> T:
    t = root.table(name)
    result = build(t)
    t.finish()
    return result


def _practice(t: _Table) -> PracticeSettings:
    domains = t.strings("domains")
    return PracticeSettings(
        name=t.text("name", PracticeSettings.name),
        domains=tuple(_domain(t, f"domains[{i}]", d) for i, d in enumerate(domains)),
        phone=t.text("phone", ""),
        website=t.text("website", ""),
    )


def _relay(t: _Table) -> RelaySettings:
    nets = t.strings("trusted_networks", RelaySettings.trusted_networks)
    for i, net in enumerate(nets):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise t.error(f"trusted_networks[{i}]", f'not a network: "{net}"') from None
    return RelaySettings(
        listen=_host_port(t, "listen", RelaySettings.listen),
        hostname=t.text("hostname", RelaySettings.hostname),
        trusted_networks=nets,
        max_recipients=t.positive("max_recipients", RelaySettings.max_recipients),
        max_connections_per_client=t.positive(
            "max_connections_per_client", RelaySettings.max_connections_per_client),
        timeout_seconds=t.positive("timeout_seconds", RelaySettings.timeout_seconds),
        admin_listen=_host_port(t, "admin_listen", "", allow_empty=True),
        workers=t.positive("workers", 1),
    )


def _submission(t: _Table) -> SubmissionSettings:
    s = SubmissionSettings(
        enabled=t.get("enabled", bool, False),
        listen=_host_port(t, "listen", SubmissionSettings.listen),
        tls_cert=t.text("tls_cert", ""),
        tls_key=t.text("tls_key", ""),
        users_file=t.text("users_file", ""),
    )
    if s.enabled:
        for name in ("tls_cert", "tls_key", "users_file"):
            if not getattr(s, name):
                raise t.error(name, "is required when submission.enabled = true")
    return s


def _upstream(t: _Table) -> UpstreamSettings:
    url = t.text("url", UpstreamSettings.url)
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "maildir", "memory"):
        raise t.error("url", f'must start with "smtp://" or "maildir://", got "{url}"')
    if parts.scheme == "smtp" and not parts.hostname:
        raise t.error("url", f'needs a host, e.g. "smtp://127.0.0.1:10026", got "{url}"')
    tls = t.choice("tls", ("required", "none"), "required")
    if parts.scheme == "smtp" and tls == "none":
        host = parts.hostname or ""
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise t.error("tls", f'"none" is only allowed for a loopback upstream, not "{host}"')
    return UpstreamSettings(
        url=url,
        tls=tls,
        ca_file=t.text("ca_file", ""),
        timeout_seconds=t.positive("timeout_seconds", UpstreamSettings.timeout_seconds),
        pool_size=t.positive("pool_size", UpstreamSettings.pool_size),
    )


def _policy(t: _Table) -> PolicySettings:
    pref = t.strings("encryption_preference", PolicySettings.encryption_preference)
    for i, p in enumerate(pref):
        if p not in ("pgp", "smime"):
            raise t.error(f"encryption_preference[{i}]", f'must be "pgp" or "smime", got "{p}"')
    mrn = t.text("mrn_pattern", PolicySettings.mrn_pattern)
    try:
        re.compile(mrn)
    except re.error as exc:
        raise t.error("mrn_pattern", f"not a valid regular expression ({exc})") from None
    plugins = t.strings("plugins")
    for i, p in enumerate(plugins):
        if not re.fullmatch(r"[\w.]+:[\w.]+", p):
            raise t.error(f"plugins[{i}]", f'must be "module:attribute", got "{p}"')
    header = t.text("restricted_header", PolicySettings.restricted_header)
    if not re.fullmatch(r"[!-9;-~]+", header):
        raise t.error("restricted_header", f'not a header name: "{header}"')
    return PolicySettings(
        mode=Mode(t.choice("mode", ("enforce", "shadow"), "enforce")),
        unauthorised_recipients=t.choice("unauthorised_recipients", ("block", "strip"), "block"),
        encryption_preference=pref,
        plugins=plugins,
        restricted_header=header,
        mrn_pattern=mrn,
        health_keywords=t.strings("health_keywords"),
        identifier_keywords=t.strings("identifier_keywords"),
        on_encryption_error=t.choice("on_encryption_error", ("defer", "portal"), "defer"),
    )


def _limits(t: _Table) -> LimitSettings:
    d = LimitSettings()
    return LimitSettings(
        max_message_bytes=t.positive("max_message_bytes", d.max_message_bytes),
        max_mime_depth=t.positive("max_mime_depth", d.max_mime_depth),
        max_parts=t.positive("max_parts", d.max_parts),
        max_header_bytes=t.positive("max_header_bytes", d.max_header_bytes),
        scan_text_bytes=t.positive("scan_text_bytes", d.scan_text_bytes),
    )


def _storage(t: _Table) -> StorageSettings:
    url = t.text("url", StorageSettings.url)
    if url.startswith("postgresql://"):
        raise t.error("url", "the PostgreSQL backend is not available in this release")
    if not re.fullmatch(r"sqlite:(///[^/].*|[^/].*)", url):
        raise t.error("url", 'must be "sqlite:///ABSOLUTE/PATH" or "sqlite:RELATIVE/PATH", '
                      f'got "{url}"')
    return StorageSettings(url=url)


def _portal(t: _Table) -> PortalSettings:
    base = t.text("base_url", PortalSettings.base_url).rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise t.error("base_url", f'must be an https:// URL, got "{base}"')
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise t.error("base_url", "must use https:// (plain http only for a loopback demo)")
    return PortalSettings(
        enabled=t.get("enabled", bool, True),
        base_url=base,
        listen=_host_port(t, "listen", PortalSettings.listen),
        expiry_days=t.positive("expiry_days", PortalSettings.expiry_days),
        sender_name=t.text("sender_name", ""),
        notify_from=t.text("notify_from", ""),
        code_channel=t.choice("code_channel", ("email", "webhook"), "email"),
        session_minutes=t.positive("session_minutes", PortalSettings.session_minutes),
    )


def _dkim(t: _Table) -> DkimSettings:
    for name in ("domain", "selector", "key_file"):
        if name not in t.data:
            raise t.error(name, "is required in [dkim] (remove the section to turn DKIM off)")
    selector = t.text("selector", "")
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})", selector):
        raise t.error("selector", f'not a valid DKIM selector: "{selector}"')
    return DkimSettings(
        domain=_domain(t, "domain", t.text("domain", "")),
        selector=selector,
        key_file=t.text("key_file", ""),
    )


def _audit(t: _Table) -> AuditSettings:
    d = AuditSettings()
    return AuditSettings(
        retention_days=t.positive("retention_days", d.retention_days),
        checkpoint_every=t.positive("checkpoint_every", d.checkpoint_every),
        checkpoint_seconds=t.positive("checkpoint_seconds", d.checkpoint_seconds),
        signing_key_file=t.text("signing_key_file", ""),
    )


def _encryption(t: _Table) -> EncryptionSettings:
    return EncryptionSettings(archive_key_file=t.text("archive_key_file", ""))


def _consent(t: _Table) -> Consent:
    granted = _date(t, "granted", t.data.get("granted"))
    t.seen.add("granted")
    warning = t.text("warning", "")
    if not warning:
        raise t.error("warning", "is required: the version of the risk warning the client saw")
    expires = t.data.get("expires")
    t.seen.add("expires")
    c = Consent(granted=granted, warning=warning,
                expires=None if expires is None else _date(t, "expires", expires))
    t.finish()
    return c


def _list_of_tables(t: _Table, name: str) -> list[_Table]:
    raw = t.get(name, list, [])
    return [_Table(t.file, f"{t.key(name)}[{i}]", item) for i, item in enumerate(raw)]


def parse_client(c: _Table) -> ClientEntry:
    cid = c.text("id", "")
    if not cid:
        raise c.error("id", "is required")
    addresses = tuple(_address(c, f"addresses[{i}]", a)
                      for i, a in enumerate(c.strings("addresses")))
    if not addresses:
        raise c.error("addresses", "needs at least one address")
    contacts = []
    for ct in _list_of_tables(c, "contacts"):
        addr = ct.text("address", "")
        if not addr:
            raise ct.error("address", "is required")
        contacts.append(ContactEntry(_address(ct, "address", addr), ct.text("relation", "contact")))
        ct.finish()
    consent = None
    if "consent_unencrypted" in c.data:
        consent = _consent(c.table("consent_unencrypted"))
    names = c.strings("names")
    c.finish()
    return ClientEntry(cid, addresses, tuple(contacts), consent, names)


def parse_partner(p: _Table) -> PartnerEntry:
    name = p.text("name", "")
    if not name:
        raise p.error("name", "is required")
    entry = PartnerEntry(
        name=name,
        domains=tuple(_domain(p, f"domains[{i}]", d) for i, d in enumerate(p.strings("domains"))),
        addresses=tuple(_address(p, f"addresses[{i}]", a)
                        for i, a in enumerate(p.strings("addresses"))),
    )
    if not entry.domains and not entry.addresses:
        raise p.error("domains", "a partner needs at least one domain or address")
    p.finish()
    return entry


def parse_directory(t: _Table) -> DirectorySettings:
    clients = tuple(parse_client(c) for c in _list_of_tables(t, "clients"))
    seen: dict[str, str] = {}
    for i, c in enumerate(clients):
        if c.id in seen:
            raise ConfigError(t.file, f"{t.key('clients')}[{i}].id",
                              f'duplicate client id "{c.id}"')
        seen[c.id] = c.id
    partners = tuple(parse_partner(p) for p in _list_of_tables(t, "partners"))
    t.finish()
    return DirectorySettings(clients=clients, partners=partners)


def parse_settings(data: Mapping[str, Any], path: str, digest: str = "") -> Settings:
    """Build :class:`Settings` from already-parsed TOML (``path`` is for messages)."""
    root = _Table(path, "", data)
    _check_sections(root, data)
    dkim = _section(root, "dkim", _dkim) if "dkim" in data else None
    root.seen.add("dkim")
    return Settings(
        path=path,
        practice=_section(root, "practice", _practice),
        relay=_section(root, "relay", _relay),
        submission=_section(root, "submission", _submission),
        upstream=_section(root, "upstream", _upstream),
        policy=_section(root, "policy", _policy),
        limits=_section(root, "limits", _limits),
        storage=_section(root, "storage", _storage),
        portal=_section(root, "portal", _portal),
        dkim=dkim,
        audit=_section(root, "audit", _audit),
        encryption=_section(root, "encryption", _encryption),
        directory=parse_directory(root.table("directory")),
        digest=digest,
    )


def _check_sections(root: _Table, data: Mapping[str, Any]) -> None:
    known = {"practice", "relay", "submission", "upstream", "policy", "limits", "storage",
             "portal", "dkim", "audit", "encryption", "directory"}
    extra = sorted(set(data) - known)
    if extra:
        raise root.error(extra[0],
                         "unknown section (check the spelling; see docs/configuration.md)")


def load_settings(path: str | Path) -> Settings:
    """Read and validate a config file."""
    p = Path(path)
    name = str(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(name, "", "file not found") from None
    except OSError as exc:
        raise ConfigError(name, "", f"cannot read ({exc.strerror})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(name, "", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, "", f"TOML syntax error: {exc}") from None
    settings = parse_settings(data, name, hashlib.sha256(raw).hexdigest())
    # Relative storage paths are relative to the config file, not the cwd.
    sqlite = settings.storage.sqlite_path
    if not sqlite.is_absolute():
        from dataclasses import replace

        settings = replace(
            settings,
            storage=StorageSettings(url="sqlite://" + str(p.resolve().parent / sqlite)),
        )
    return settings
