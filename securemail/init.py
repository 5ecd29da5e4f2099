"""``securemail init``: a commented production config, the store, a DKIM key."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from securemail.config import DKIM_SELECTOR
from securemail.errors import ConfigError, InputError
from securemail.preflight import reserved_domain

DEFAULT_INIT_DOMAIN = "riverside.example"  # `securemail init` without --domain

__all__ = ["InitResult", "check_options", "initialise", "production_config", "toml_string"]

_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n",
                 "\f": "\\f", "\r": "\\r"}


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string, quotes included (TOML 1.0 escapes:
    backslash, double quote and every control character)."""
    out = []
    for c in value:
        if c in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _one_line(option: str, value: str) -> None:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InputError(f"{option}: must be one line of text (no line breaks or control"
                         f" characters), got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{option}: not valid UTF-8 text: {value!r}") from None


def check_options(*, domain: str, practice_name: str, selector: str,
                  data_dir: Path | None = None) -> str:
    """Refuse a bad ``securemail init`` option, naming it, before anything is
    written. Returns the domain in the form the config stores (lower-case
    A-label)."""
    from securemail.directory import AddressError, normalise_domain

    try:
        domain = normalise_domain(domain)
    except AddressError:
        raise InputError(f"--domain: {domain!r} is not a domain name"
                         " (e.g. riverside-counseling.org)") from None
    if not DKIM_SELECTOR.fullmatch(selector):
        raise InputError(f"--selector: {selector!r} is not a valid DKIM selector"
                         " (letters, digits, '.', '-', '_'; at most 63; e.g. sm1)")
    _one_line("--name", practice_name)
    if data_dir is not None:
        _one_line("--data-dir", str(data_dir))
    return domain


# Which option put a value at a config key (for errors found before writing).
_OPTION_OF_KEY = {"practice.name": "--name", "practice.domains[0]": "--domain",
                  "dkim.domain": "--domain", "portal.base_url": "--domain",
                  "dkim.selector": "--selector", "storage.url": "--data-dir"}


def production_config(*, domain: str, practice_name: str, selector: str, dkim: bool,
                      storage_url: str = "sqlite:securemail.db") -> str:
    """Every section of the config, commented. Values are the defaults unless noted."""
    q_domain, q_selector = toml_string(domain), toml_string(selector)
    dkim_block = f"""[dkim]
domain = {q_domain}
selector = {q_selector}
key_file = "dkim.key"                    # private key: service user only, never in git
""" if dkim else f"""# [dkim]                                 # no key was generated: add one with
# domain = {q_domain}              # `securemail dkim keygen`, then uncomment
# selector = {q_selector}
# key_file = "dkim.key"
"""
    q_storage = toml_string(storage_url)
    pad = " " * max(1, 41 - len(f"url = {q_storage}"))
    base_url = toml_string(f"https://secure.{domain}")
    base_pad = " " * max(1, 41 - len(f"base_url = {base_url}"))
    domains = f"domains = [{q_domain}]"
    domains += " " * max(1, 41 - len(domains)) + "# staff mail domains (staff may receive anything)"
    if reserved_domain(domain):
        domains = (f"# CHANGE THIS: {domain} is a reserved example domain, not the practice's."
                   "\n# Put its mail domain here, in [dkim] and in portal.base_url"
                   " (`securemail config check` warns).\n" + domains)
    return f"""\
# securemail configuration. Every key is documented in docs/configuration.md.
# Relative paths are relative to this file's folder. Check it with
# `securemail config check`; reload a running relay with `systemctl reload securemail`.

[practice]
name = {toml_string(practice_name)}
{domains}
phone = ""                               # shown in notifications so recipients can check them
website = ""

[relay]
listen = "127.0.0.1:10025"               # Postfix content filter (see docs/deploy.md)
hostname = "securemail.local"            # our name in SMTP greetings
trusted_networks = ["127.0.0.0/8", "::1/128"]   # may relay without AUTH; keep it tight
max_recipients = 100                     # per message; more get 452 4.5.3
max_connections_per_client = 20          # per client IP address; more get 421
max_connections = 1000                   # every client together, per process; more get 421
timeout_seconds = 300                    # idle SMTP session timeout
admin_listen = "127.0.0.1:9025"          # /healthz and /metrics; "" turns it off
workers = 1                              # processes sharing the SMTP ports (one core each)

[submission]                             # optional port for apps and mail clients
enabled = false                          # STARTTLS then AUTH PLAIN/LOGIN; see docs/deploy.md
listen = "127.0.0.1:10587"
tls_cert = ""                            # PEM certificate chain (required when enabled)
tls_key = ""                             # PEM private key (required when enabled)
users_file = ""                          # TOML [[users]] name, password_hash, addresses

[upstream]
url = "smtp://127.0.0.1:10026"           # Postfix reinjection, or your smarthost
# Postfix's reinjection listener (docs/deploy.md) is loopback and offers no
# STARTTLS: "none". A smarthost over the network: "required" (verified TLS).
tls = "none"                             # required | none (none only for a loopback upstream)
ca_file = ""                             # CA bundle for an internal server; "" = system CAs
timeout_seconds = 60
pool_size = 4                            # upstream connections kept open
# A smarthost that wants a login (SMTP AUTH, only over tls = "required"):
# the user name, and a file whose first line is the password (chmod 600).
username = ""                            # e.g. "relay@example.org"; "" = no login
password_file = ""                       # e.g. "upstream.password"

[policy]
mode = "enforce"                         # enforce | shadow (deliver unchanged, record verdicts)
unauthorised_recipients = "block"        # block (whole message) | strip (only the offenders)
encryption_preference = ["pgp", "smime"]
plugins = []                             # ["module:attribute"] extra rules; can only tighten
restricted_header = "X-Securemail-Restricted"
mrn_pattern = '\\bMRN[:#\\s-]*[A-Z0-9-]{{5,12}}\\b'
health_keywords = []                     # added to the built-in list
identifier_keywords = []
on_encryption_error = "defer"            # defer (451) | portal; never plaintext

[limits]
max_message_bytes = 26214400             # 25 MiB; advertised as SIZE
max_mime_depth = 20
max_parts = 500
max_header_bytes = 262144
scan_text_bytes = 2097152                # content detectors read at most this much text

[storage]
url = {q_storage}{pad}# the store; generated secrets live beside it

[portal]
enabled = true
base_url = {base_url}{base_pad}# public https URL of the portal (behind a proxy)
listen = "127.0.0.1:8080"
expiry_days = 30
sender_name = ""                         # display name on notifications; "" = practice name
notify_from = ""                         # From of notifications; "" = the original's From
code_channel = "email"                   # email | webhook
session_minutes = 15
# The TLS reverse proxy in front of the portal: addresses or CIDR networks whose
# X-Forwarded-For / X-Forwarded-Proto are believed (everyone else's are ignored).
forwarded_allow_ips = ["127.0.0.1", "::1"]

{dkim_block}
[audit]
retention_days = 2196                    # 6 years (HIPAA documentation retention)
checkpoint_every = 1000                  # signed checkpoint every N records...
checkpoint_seconds = 300                 # ...or every N seconds
signing_key_file = ""                    # "" = audit-signing.key beside the store (generated)

[encryption]
archive_key_file = ""                    # OpenPGP public key added to every ciphertext

# Clients, their authorised contacts and consent. Or: `securemail directory import`.
# [[directory.clients]]
# id = "c-1001"
# addresses = ["jane@mail.example"]
# contacts = [{{ address = "guardian@mail.example", relation = "parent" }}]
# consent_unencrypted = {{ granted = "2026-01-10", warning = "v1" }}
#
# [[directory.partners]]                 # business associates: always protected
# name = "Billing Partner"
# domains = ["billing-partner.example"]
"""


@dataclass
class InitResult:
    config: Path
    dkim_record: str | None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"Wrote {self.config}"]
        lines += [f"WARNING: {w}" for w in self.warnings]
        lines += self.notes
        if self.dkim_record:
            lines += ["", "Publish this DNS TXT record (DKIM):", f"  {self.dkim_record}"]
        lines += [
            "",
            "Next steps:",
            f"  1. Edit {self.config}: practice name and domains, portal.base_url, upstream.",
            f"  2. securemail config check -c {self.config}",
            "  3. Put it behind Postfix as a content filter and install the systemd unit:",
            "     see docs/deploy.md (deploy/securemail.service).",
            f"  4. securemail serve -c {self.config}",
        ]
        return "\n".join(lines)


def initialise(directory: Path, *, domain: str, practice_name: str, selector: str,
               dkim_kind: str = "rsa", data_dir: Path | None = None) -> InitResult:
    """``data_dir``: where the store and its generated secrets go (default:
    beside the config). Created here, so no secret is left in the wrong place.

    Every option is checked before anything is written (:class:`InputError`
    naming the option). If a later step fails, what this call created (folders,
    key, config, store files) is removed again, so that the same command can
    simply be run again; files that were there before are never touched."""
    domain = check_options(domain=domain, practice_name=practice_name, selector=selector,
                           data_dir=data_dir)
    cfg = directory / "securemail.toml"
    if cfg.exists() or cfg.is_symlink():
        raise InputError(f"{cfg}: already exists; not overwriting it")
    storage_url = "sqlite:securemail.db"
    if data_dir is not None:
        data_dir = data_dir.resolve()
        storage_url = f"sqlite://{data_dir / 'securemail.db'}"
    key_file = directory / "dkim.key"
    generate_key = _key_generator()
    text = production_config(domain=domain, practice_name=practice_name, selector=selector,
                             dkim=generate_key is not None or key_file.exists(),
                             storage_url=storage_url)
    _check_text(text, cfg)
    created = _Created()
    try:
        return _write(directory, cfg, text, created, domain=domain, selector=selector,
                      dkim_kind=dkim_kind, data_dir=data_dir, generate_key=generate_key)
    except BaseException:
        created.remove()
        raise


def _key_generator() -> _KeyGenerator | None:
    try:
        from securemail.dkim import generate_key
    except ImportError:
        return None
    return generate_key


def _check_text(text: str, cfg: Path) -> None:
    """Parse the config in memory: a value it refuses is an option error now,
    not a half-written folder later."""
    import tomllib

    from securemail.config import parse_settings

    try:
        parse_settings(tomllib.loads(text), str(cfg))
    except ConfigError as exc:
        option = _OPTION_OF_KEY.get(exc.key)
        raise InputError(f"{option}: {exc.problem}" if option else
                         f"the options make an invalid configuration: {exc}") from None
    except tomllib.TOMLDecodeError as exc:  # a bug in production_config, never written
        raise InputError(f"the options make an invalid configuration: {exc}") from None


if TYPE_CHECKING:
    from collections.abc import Callable

    _KeyGenerator = Callable[[str], tuple[bytes, str]]


class _Created:
    """What one ``initialise`` call made, to undo it if a later step fails."""

    def __init__(self) -> None:
        self.paths: list[Path] = []  # in creation order: a folder before its contents
        self.watched: list[tuple[Path, set[str]]] = []

    def mkdir(self, folder: Path) -> None:
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        self.paths += reversed(missing)

    def new_file(self, path: Path, data: bytes, mode: int) -> None:
        """Create ``path`` exclusively (never over an existing file)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        self.paths.append(path)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    def watch(self, folder: Path) -> None:
        """Entries that appear in ``folder`` from now on are ours (the store's)."""
        self.watched.append((folder, set(os.listdir(folder))))

    def remove(self) -> None:
        for folder, before in self.watched:
            for name in sorted(set(os.listdir(folder)) - before):
                path = folder / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        for path in reversed(self.paths):
            try:
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()  # only if empty: never someone else's file
                else:
                    path.unlink(missing_ok=True)
            except OSError:
                pass


def _write(directory: Path, cfg: Path, text: str, created: _Created, *, domain: str,
           selector: str, dkim_kind: str, data_dir: Path | None,
           generate_key: _KeyGenerator | None) -> InitResult:
    created.mkdir(directory)
    if data_dir is not None:
        created.mkdir(data_dir)
    notes: list[str] = []
    record: str | None = None
    key_file = directory / "dkim.key"
    if generate_key is None:
        notes.append("DKIM key generation is not available; [dkim] left commented out.")
    elif key_file.exists():
        notes.append(f"Kept the existing DKIM key {key_file}")
    else:
        pem, txt = generate_key(dkim_kind)
        created.new_file(key_file, pem, 0o600)
        # A TXT string holds at most 255 octets: split, as zone files expect.
        chunks = " ".join(f'"{txt[i:i + 255]}"' for i in range(0, len(txt), 255))
        record = f"{selector}._domainkey.{domain}. IN TXT ( {chunks} )"
        notes.append(f"Generated DKIM key {key_file} (mode 0600)")
    created.new_file(cfg, text.encode("utf-8"), 0o666)
    created.watch(data_dir if data_dir is not None else directory)
    notes.append(_create_store(cfg))
    warnings = [] if not reserved_domain(domain) else [
        f"{domain} is a reserved example domain"
        + (" (the one used when --domain is not given)" if domain == DEFAULT_INIT_DOMAIN
           else " (.example, .test, .invalid and .localhost are never real)")
        + ", and the config names it as the practice's mail domain. Until practice.domains,"
        " [dkim] and portal.base_url name the practice's own domain, staff are treated as"
        " third parties and nothing is DKIM-signed for it: edit the file (a DKIM key for the"
        " real domain: `securemail dkim keygen --domain DOMAIN --selector SELECTOR`), or run"
        " `securemail init --domain DOMAIN` into an empty folder."]
    return InitResult(cfg, record, notes, warnings)


def _create_store(cfg: Path) -> str:
    """Open the relay once: creates the store, its tables and generated secrets."""
    from securemail.config import load_settings
    from securemail.relay import Relay

    settings = load_settings(cfg)
    try:
        relay = Relay(settings)
    except ImportError:
        from securemail.store.sqlite import open_database

        open_database(settings.storage.sqlite_path).close()
        return f"Created the store {settings.storage.sqlite_path}"
    import asyncio

    asyncio.run(relay.close())
    return f"Created the store {settings.storage.sqlite_path}"
