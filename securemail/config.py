"""TOML configuration -> frozen, typed settings.

Every problem is a :class:`~securemail.errors.ConfigError` whose text is
``FILE: dotted.key: problem``. Unknown keys are errors: a typo in a security
setting must never be silently ignored.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from securemail.config_directory import (
    ClientEntry,
    ContactEntry,
    DirectorySettings,
    PartnerEntry,
    parse_directory,
)
from securemail.errors import ConfigError
from securemail.model import Mode
from securemail.toml_table import (
    Table,
    read_address,
    read_domain,
    read_host_port,
    read_section,
)

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
# A DKIM selector as [dkim] takes it (also checked by `init` and `dkim keygen`).
DKIM_SELECTOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})")


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
    max_connections: int = 1000  # every client together, per process
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
    # Log in to the upstream (a smarthost that wants SMTP AUTH): the user name,
    # and a file holding the password (never the password in the config).
    username: str = ""
    password_file: str = ""
    # Not a key: the file these settings were read from, so that an error found
    # later (a CA bundle that does not load) is "FILE: upstream.ca_file: ...".
    config_file: str = field(default="", compare=False, repr=False)


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
    scan_text_bytes: int = 2 * MiB  # detectors read at most this much text; more = PHI


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
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (the TLS proxy):
    # addresses or CIDR networks. Anyone else's are ignored.
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")


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


def _practice(t: Table) -> PracticeSettings:
    domains = t.strings("domains")
    return PracticeSettings(
        name=t.line("name", PracticeSettings.name),
        domains=tuple(read_domain(t, f"domains[{i}]", d) for i, d in enumerate(domains)),
        phone=t.line("phone", ""),
        website=t.line("website", ""),
    )


def _hostname(t: Table) -> str:
    value = t.line("hostname", RelaySettings.hostname)
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", value):
        raise t.error("hostname", f'must be a host name (letters, digits, "." and "-"; an'
                                  f' IDN in its xn-- form), got "{value}"')
    return value


# The widest trusted network: an IPv4 /8 (10.0.0.0/8) or an IPv6 /32 (a whole
# provider allocation), except inside IPv6 unique-local or link-local space.
# Anything wider trusts a good part of the internet to relay without logging in.
WIDEST_TRUSTED_PREFIX = {4: 8, 6: 32}
_WIDE_BUT_PRIVATE = (ipaddress.IPv6Network("fc00::/7"), ipaddress.IPv6Network("fe80::/10"))


def _relay(t: Table) -> RelaySettings:
    nets = t.strings("trusted_networks", RelaySettings.trusted_networks)
    for i, net in enumerate(nets):
        try:
            network = ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise t.error(f"trusted_networks[{i}]", f'not a network: "{net}"') from None
        _check_trusted_width(t, f"trusted_networks[{i}]", net, network)
    return RelaySettings(
        listen=read_host_port(t, "listen", RelaySettings.listen),
        hostname=_hostname(t),
        trusted_networks=nets,
        max_recipients=t.positive("max_recipients", RelaySettings.max_recipients),
        max_connections_per_client=t.positive(
            "max_connections_per_client", RelaySettings.max_connections_per_client),
        max_connections=t.positive("max_connections", RelaySettings.max_connections),
        timeout_seconds=t.positive("timeout_seconds", RelaySettings.timeout_seconds),
        admin_listen=read_host_port(t, "admin_listen", "", allow_empty=True),
        workers=t.positive("workers", 1),
    )


def _check_trusted_width(t: Table, key: str, text: str,
                         network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    """No open relay by configuration (docs/deploy.md): refuse ``/0`` and any
    network wider than :data:`WIDEST_TRUSTED_PREFIX`."""
    if network.prefixlen == 0:
        raise t.error(key, f"{text} trusts every address: that is an open relay")
    widest = WIDEST_TRUSTED_PREFIX[network.version]
    if network.prefixlen >= widest:
        return
    if isinstance(network, ipaddress.IPv6Network) and any(
            network.subnet_of(private) for private in _WIDE_BUT_PRIVATE):
        return
    raise t.error(key, f"{text} is wider than /{widest}: it trusts a large part of the"
                       " internet to relay without logging in (an open relay in all but"
                       f" name); list the networks of your own mail hosts (at most /{widest}"
                       f" for IPv{network.version})")


def _submission(t: Table) -> SubmissionSettings:
    s = SubmissionSettings(
        enabled=t.get("enabled", bool, False),
        listen=read_host_port(t, "listen", SubmissionSettings.listen),
        tls_cert=t.text("tls_cert", ""),
        tls_key=t.text("tls_key", ""),
        users_file=t.text("users_file", ""),
    )
    if s.enabled:
        for name in ("tls_cert", "tls_key", "users_file"):
            if not getattr(s, name):
                raise t.error(name, "is required when submission.enabled = true")
    return s


def _upstream(t: Table) -> UpstreamSettings:
    url = t.text("url", UpstreamSettings.url)
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "maildir", "memory"):
        raise t.error("url", f'must start with "smtp://" or "maildir://", got "{url}"')
    if parts.scheme == "smtp" and not parts.hostname:
        raise t.error("url", f'needs a host, e.g. "smtp://127.0.0.1:10026", got "{url}"')
    if parts.scheme == "smtp":
        try:
            port = parts.port
        except ValueError:
            raise t.error("url", f'port must be 1-65535, in "{url}"') from None
        if port == 0:
            raise t.error("url", f'port must be 1-65535, in "{url}"')
    tls = t.choice("tls", ("required", "none"), "required")
    if parts.scheme == "smtp" and tls == "none":
        host = parts.hostname or ""
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise t.error("tls", f'"none" is only allowed for a loopback upstream, not "{host}"')
    username = t.line("username", "")
    password_file = t.text("password_file", "")
    if username and not password_file:
        raise t.error("password_file", "is needed with upstream.username (a file holding"
                      " the password, readable by the relay only)")
    if password_file and not username:
        raise t.error("username", "is needed with upstream.password_file")
    if username and parts.scheme != "smtp":
        raise t.error("username", "only an smtp:// upstream can be logged in to")
    return UpstreamSettings(
        url=url,
        tls=tls,
        username=username,
        password_file=password_file,
        ca_file=t.text("ca_file", ""),
        timeout_seconds=t.positive("timeout_seconds", UpstreamSettings.timeout_seconds),
        pool_size=t.positive("pool_size", UpstreamSettings.pool_size),
        config_file=t.file,
    )


def _policy(t: Table) -> PolicySettings:
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


def _limits(t: Table) -> LimitSettings:
    d = LimitSettings()
    return LimitSettings(
        max_message_bytes=t.positive("max_message_bytes", d.max_message_bytes),
        max_mime_depth=t.positive("max_mime_depth", d.max_mime_depth),
        max_parts=t.positive("max_parts", d.max_parts),
        max_header_bytes=t.positive("max_header_bytes", d.max_header_bytes),
        scan_text_bytes=t.positive("scan_text_bytes", d.scan_text_bytes),
    )


def _storage(t: Table) -> StorageSettings:
    url = t.text("url", StorageSettings.url)
    if url.startswith("postgresql://"):
        raise t.error("url", "the PostgreSQL backend is not available in this release")
    if not re.fullmatch(r"sqlite:(///[^/].*|[^/].*)", url):
        raise t.error("url", 'must be "sqlite:///ABSOLUTE/PATH" or "sqlite:RELATIVE/PATH", '
                      f'got "{url}"')
    return StorageSettings(url=url)


def _notify_from(t: Table) -> str:
    value = t.line("notify_from", "")
    return read_address(t, "notify_from", value) if value else ""


def _portal(t: Table) -> PortalSettings:
    base = t.text("base_url", PortalSettings.base_url).rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise t.error("base_url", f'must be an https:// URL, got "{base}"')
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise t.error("base_url", "must use https:// (plain http only for a loopback demo)")
    return PortalSettings(
        enabled=t.get("enabled", bool, True),
        base_url=base,
        listen=read_host_port(t, "listen", PortalSettings.listen),
        expiry_days=t.positive("expiry_days", PortalSettings.expiry_days),
        sender_name=t.line("sender_name", ""),
        notify_from=_notify_from(t),
        code_channel=t.choice("code_channel", ("email", "webhook"), "email"),
        session_minutes=t.positive("session_minutes", PortalSettings.session_minutes),
        forwarded_allow_ips=_forwarded_allow_ips(t),
    )


def _forwarded_allow_ips(t: Table) -> tuple[str, ...]:
    """Addresses or networks of the reverse proxy, normalised for uvicorn (which
    would silently ignore a malformed entry, e.g. a network with host bits set)."""
    out = []
    for i, item in enumerate(t.strings("forwarded_allow_ips",
                                       PortalSettings.forwarded_allow_ips)):
        try:
            if "/" in item:
                out.append(str(ipaddress.ip_network(item.strip())))
            else:
                out.append(str(ipaddress.ip_address(item.strip())))
        except ValueError as exc:
            hint = ("; give the network address (host bits must be zero)"
                    if "has host bits set" in str(exc) else "")
            raise t.error(f"forwarded_allow_ips[{i}]",
                          f'not an IP address or CIDR network: "{item}"{hint}') from None
    return tuple(out)


def _dkim(t: Table) -> DkimSettings:
    for name in ("domain", "selector", "key_file"):
        if name not in t.data:
            raise t.error(name, "is required in [dkim] (remove the section to turn DKIM off)")
    selector = t.text("selector", "")
    if not DKIM_SELECTOR.fullmatch(selector):
        raise t.error("selector", f'not a valid DKIM selector: "{selector}"')
    return DkimSettings(
        domain=read_domain(t, "domain", t.text("domain", "")),
        selector=selector,
        key_file=t.text("key_file", ""),
    )


def _audit(t: Table) -> AuditSettings:
    d = AuditSettings()
    return AuditSettings(
        retention_days=t.positive("retention_days", d.retention_days),
        checkpoint_every=t.positive("checkpoint_every", d.checkpoint_every),
        checkpoint_seconds=t.positive("checkpoint_seconds", d.checkpoint_seconds),
        signing_key_file=t.text("signing_key_file", ""),
    )


def _encryption(t: Table) -> EncryptionSettings:
    return EncryptionSettings(archive_key_file=t.text("archive_key_file", ""))


def parse_settings(data: Mapping[str, Any], path: str, digest: str = "") -> Settings:
    """Build :class:`Settings` from already-parsed TOML (``path`` is for messages)."""
    root = Table(path, "", data)
    _check_sections(root, data)
    dkim = read_section(root, "dkim", _dkim) if "dkim" in data else None
    root.seen.add("dkim")
    return Settings(
        path=path,
        practice=read_section(root, "practice", _practice),
        relay=read_section(root, "relay", _relay),
        submission=read_section(root, "submission", _submission),
        upstream=read_section(root, "upstream", _upstream),
        policy=read_section(root, "policy", _policy),
        limits=read_section(root, "limits", _limits),
        storage=read_section(root, "storage", _storage),
        portal=read_section(root, "portal", _portal),
        dkim=dkim,
        audit=read_section(root, "audit", _audit),
        encryption=read_section(root, "encryption", _encryption),
        directory=parse_directory(root.table("directory")),
        digest=digest,
    )


def _check_sections(root: Table, data: Mapping[str, Any]) -> None:
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
    if sqlite.is_absolute() and not sqlite.parent.is_dir():
        # A mistyped absolute path (/var/lib/securemial/...) must not quietly
        # start a second store: a new, empty audit log with its own signing key.
        raise ConfigError(name, "storage.url", f"folder {sqlite.parent} does not exist:"
                          " create it (securemail init --data-dir does) or fix the path")
    if not sqlite.is_absolute():
        from dataclasses import replace

        settings = replace(
            settings,
            storage=StorageSettings(url="sqlite://" + str(p.resolve().parent / sqlite)),
        )
    return settings
