"""``securemail init``: a commented production config, the store, a DKIM key."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from securemail.errors import InputError
from securemail.preflight import reserved_domain

DEFAULT_INIT_DOMAIN = "riverside.example"  # `securemail init` without --domain

__all__ = ["InitResult", "initialise", "production_config"]


def production_config(*, domain: str, practice_name: str, selector: str, dkim: bool,
                      storage_url: str = "sqlite:securemail.db") -> str:
    """Every section of the config, commented. Values are the defaults unless noted."""
    dkim_block = f"""[dkim]
domain = "{domain}"
selector = "{selector}"
key_file = "dkim.key"                    # private key: service user only, never in git
""" if dkim else f"""# [dkim]                                 # no key was generated: add one with
# domain = "{domain}"              # `securemail dkim keygen`, then uncomment
# selector = "{selector}"
# key_file = "dkim.key"
"""
    pad = " " * max(1, 41 - len(f'url = "{storage_url}"'))
    domains = f'domains = ["{domain}"]'
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
name = "{practice_name}"
{domains}
phone = ""                               # shown in notifications so recipients can check them
website = ""

[relay]
listen = "127.0.0.1:10025"               # Postfix content filter (see docs/deploy.md)
hostname = "securemail.local"            # our name in SMTP greetings
trusted_networks = ["127.0.0.0/8", "::1/128"]   # may relay without AUTH; keep it tight
max_recipients = 100                     # per message; more get 452 4.5.3
max_connections_per_client = 20          # per client IP address; more get 421
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
url = "{storage_url}"{pad}# the store; generated secrets live beside it

[portal]
enabled = true
base_url = "https://secure.{domain}"     # public https URL of the portal (behind a proxy)
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
    beside the config). Created here, so no secret is left in the wrong place."""
    directory.mkdir(parents=True, exist_ok=True)
    storage_url = "sqlite:securemail.db"
    if data_dir is not None:
        data_dir = data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        storage_url = f"sqlite://{data_dir / 'securemail.db'}"
    cfg = directory / "securemail.toml"
    if cfg.exists():
        raise InputError(f"{cfg}: already exists; not overwriting it")
    notes: list[str] = []
    record: str | None = None
    key_file = directory / "dkim.key"
    try:
        from securemail.dkim import generate_key
    except ImportError:
        generate_key = None  # type: ignore[assignment]
        notes.append("DKIM key generation is not available; [dkim] left commented out.")
    if generate_key is not None:
        if key_file.exists():
            notes.append(f"Kept the existing DKIM key {key_file}")
            record = None
        else:
            pem, txt = generate_key(dkim_kind)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            # A TXT string holds at most 255 octets: split, as zone files expect.
            chunks = " ".join(f'"{txt[i:i + 255]}"' for i in range(0, len(txt), 255))
            record = f"{selector}._domainkey.{domain}. IN TXT ( {chunks} )"
            notes.append(f"Generated DKIM key {key_file} (mode 0600)")
    text = production_config(domain=domain, practice_name=practice_name, selector=selector,
                             dkim=key_file.exists(), storage_url=storage_url)
    cfg.write_text(text, encoding="utf-8")
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
