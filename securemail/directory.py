"""Who is who: staff domains, clients, their authorised contacts, consent, partners.

Address matching (documented in docs/policy.md):

* The domain is compared case-insensitively and IDN-aware: ``Bücher.Example``,
  ``xn--bcher-kva.example`` and ``XN--BCHER-KVA.EXAMPLE`` are the same domain.
* The local part is compared case-insensitively (``Jane@`` is ``jane@``), as
  every major mailbox provider treats it. Nothing else is folded: dots and
  ``+tags`` are significant, so ``jane+x@`` is a different address. Folding less
  can only make an address look *less* authorised, never more.
* Quoted local parts and domain literals (``[192.0.2.1]``) are rejected.

The directory comes from the config's ``[[directory.*]]`` tables and from
entries imported into the store (``securemail directory import``); an imported
client replaces a config client with the same id.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
import sqlite3
import tomllib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from securemail.config_directory import (
    ClientEntry,
    ContactEntry,
    DirectorySettings,
    PartnerEntry,
    parse_client,
    parse_directory,
    parse_partner,
)
from securemail.errors import ConfigError, InputError
from securemail.model import Consent, Role
from securemail.store.sqlite import ensure_schema, transaction
from securemail.toml_table import Table

__all__ = [
    "AddressError",
    "ConsentChange",
    "Directory",
    "Identity",
    "consent_changes",
    "current_directory",
    "domain_of",
    "import_directory_file",
    "imported_version",
    "load_imported",
    "normalise_address",
    "normalise_domain",
]


class AddressError(ValueError):
    """An address that cannot be read without guessing."""


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_LOCAL = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


_PLAIN_DOMAIN = re.compile(r"(?:(?!-)[a-z0-9-]{1,63}(?<!-)\.)*(?!-)[a-z0-9-]{1,63}(?<!-)")


@functools.lru_cache(maxsize=4096)
def normalise_domain(domain: str) -> str:
    """Lower-case ASCII (A-label) form of ``domain``; raises AddressError."""
    lowered = domain.lower()
    if lowered.isascii() and "xn--" not in lowered and len(lowered) <= 253 \
            and _PLAIN_DOMAIN.fullmatch(lowered):
        return lowered  # the common case, without the IDNA codec
    if not domain or domain != domain.strip() or domain.endswith("."):
        raise AddressError(f'invalid domain "{_show(domain)}"')
    if domain.startswith("["):
        raise AddressError("domain literals are not accepted")
    try:
        ascii_form = domain.encode("idna").decode("ascii").lower()
    except (UnicodeError, ValueError):
        raise AddressError(f'invalid domain "{_show(domain)}"') from None
    labels = ascii_form.split(".")
    if len(ascii_form) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise AddressError(f'invalid domain "{_show(domain)}"')
    for label in labels:
        if label.startswith("xn--"):
            try:
                label.encode("ascii").decode("idna")
            except (UnicodeError, ValueError):
                raise AddressError(f'invalid IDN label in "{_show(domain)}"') from None
    return ascii_form


@functools.lru_cache(maxsize=8192)
def normalise_address(address: str) -> str:
    """``Local@Domain`` -> ``local@domain`` (A-label); raises AddressError.

    Accepts a bare addr-spec only: no display name, no angle brackets, no
    comments, no whitespace, no CR/LF.
    """
    if any(c in address for c in "\r\n\t ()<>,;:\\\"[]") or address.count("@") != 1:
        raise AddressError(f'not a plain email address: "{_show(address)}"')
    local, _, domain = address.partition("@")
    if not local or len(local) > 64 or not _LOCAL.fullmatch(local):
        raise AddressError(f'invalid local part in "{_show(address)}"')
    return f"{local.lower()}@{normalise_domain(domain)}"


def domain_of(address: str) -> str:
    """The domain of an address, lower-case; "" when there is none (so a log line
    that shows domains can never show a bare local part)."""
    return address.rpartition("@")[2].lower() if "@" in address else ""


def _show(text: str) -> str:
    """A value safe to echo in one error line."""
    return text.encode("unicode_escape").decode("ascii")[:120]


@dataclass(frozen=True, slots=True)
class Identity:
    """What the directory knows about one address."""

    role: Role
    client_ids: tuple[str, ...] = ()
    consent: Consent | None = None
    partner: str | None = None


class Directory:
    """Fast address -> Identity lookups, built once per (re)load."""

    def __init__(self, staff_domains: Iterable[str], settings: DirectorySettings) -> None:
        self.staff_domains = frozenset(staff_domains)
        self.clients = {c.id: c for c in settings.clients}
        self.partners = settings.partners
        self._client_addr: dict[str, list[str]] = {}
        self._contact_addr: dict[str, list[str]] = {}
        self._consent: dict[str, Consent] = {}
        for c in self.clients.values():
            for a in c.addresses:
                self._client_addr.setdefault(a, []).append(c.id)
                if c.consent_unencrypted is not None:
                    self._consent[a] = c.consent_unencrypted
            for ct in c.contacts:
                self._contact_addr.setdefault(ct.address, []).append(c.id)
        self._partner_addr = {a: p.name for p in self.partners for a in p.addresses}
        self._partner_domain = {d: p.name for p in self.partners for d in p.domains}
        self.client_names = tuple(
            (n, c.id) for c in self.clients.values() for n in c.names if n.strip()
        )

    def identify(self, address: str) -> Identity:
        """Role of a normalised address. Staff wins, then client, contact, partner."""
        domain = domain_of(address)
        if domain in self.staff_domains:
            return Identity(Role.STAFF)
        if address in self._client_addr:
            # Consent belongs to this exact address, never to the client's contacts.
            return Identity(Role.CLIENT, tuple(self._client_addr[address]),
                            self._consent.get(address))
        if address in self._contact_addr:
            return Identity(Role.CONTACT, tuple(self._contact_addr[address]))
        partner = self._partner_addr.get(address) or self._partner_domain.get(domain)
        if partner is not None:
            return Identity(Role.PARTNER, partner=partner)
        return Identity(Role.THIRD_PARTY)

    def with_imported(self, imported: DirectorySettings) -> Directory:
        """A new directory where imported clients/partners replace same-id/name ones."""
        clients = {c.id: c for c in self.clients.values()}
        clients.update({c.id: c for c in imported.clients})
        partners = {p.name: p for p in self.partners}
        partners.update({p.name: p for p in imported.partners})
        return Directory(
            self.staff_domains,
            DirectorySettings(clients=tuple(clients.values()), partners=tuple(partners.values())),
        )


@dataclass(frozen=True, slots=True)
class ConsentChange:
    """A client's consent to unencrypted email as it is now (``None``: withdrawn)."""

    client_id: str
    consent: Consent | None


def consent_changes(old: Directory, new: Directory) -> list[ConsentChange]:
    """Clients whose consent differs between two directories (for the audit log)."""
    changes = []
    for cid in sorted(old.clients.keys() | new.clients.keys()):
        before, after = old.clients.get(cid), new.clients.get(cid)
        was = before.consent_unencrypted if before else None
        now = after.consent_unencrypted if after else None
        if was != now:
            changes.append(ConsentChange(cid, now))
    return changes


# ---------------------------------------------------------------- store import

_DDL = """
CREATE TABLE IF NOT EXISTS directory_entries (
    kind TEXT NOT NULL CHECK (kind IN ('client', 'partner')),
    key TEXT NOT NULL,
    data TEXT NOT NULL,
    imported_at TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS directory_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n INTEGER NOT NULL
);
"""


def imported_version(conn: sqlite3.Connection) -> int:
    """A counter every ``directory import`` raises in its transaction (cheap to ask;
    unlike a time stamp it cannot stand still when the clock steps back)."""
    ensure_schema(conn, _DDL)
    row = conn.execute("SELECT n FROM directory_version WHERE id = 1").fetchone()
    return int(row[0]) if row else 0


def current_directory(staff_domains: Iterable[str], settings: DirectorySettings,
                      conn: sqlite3.Connection) -> Directory:
    """The config's directory with the imported entries over it (what the relay uses)."""
    return Directory(staff_domains, settings).with_imported(load_imported(conn))


def load_imported(conn: sqlite3.Connection) -> DirectorySettings:
    ensure_schema(conn, _DDL)
    clients: list[ClientEntry] = []
    partners: list[PartnerEntry] = []
    for kind, data in conn.execute("SELECT kind, data FROM directory_entries ORDER BY kind, key"):
        d = json.loads(data)
        if kind == "client":
            consent = d.get("consent_unencrypted")
            clients.append(ClientEntry(
                id=d["id"], addresses=tuple(d["addresses"]),
                contacts=tuple(ContactEntry(**ct) for ct in d["contacts"]),
                consent_unencrypted=Consent(**consent) if consent else None,
                names=tuple(d.get("names", ())),
            ))
        else:
            partners.append(PartnerEntry(d["name"], tuple(d["domains"]), tuple(d["addresses"])))
    return DirectorySettings(clients=tuple(clients), partners=tuple(partners))


def store_entries(conn: sqlite3.Connection, entries: DirectorySettings, now_iso: str) -> int:
    """Upsert clients (by id) and partners (by name) in one transaction."""
    ensure_schema(conn, _DDL)
    rows = [("client", c.id, json.dumps(asdict(c))) for c in entries.clients]
    rows += [("partner", p.name, json.dumps(asdict(p))) for p in entries.partners]
    with transaction(conn):
        conn.executemany(
            "INSERT INTO directory_entries(kind, key, data, imported_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(kind, key) DO UPDATE SET data=excluded.data, "
            "imported_at=excluded.imported_at",
            [(k, key, data, now_iso) for k, key, data in rows],
        )
        conn.execute("INSERT INTO directory_version (id, n) VALUES (1, 1)"
                     " ON CONFLICT(id) DO UPDATE SET n = n + 1")
    return len(rows)


def read_directory_file(path: str | Path) -> DirectorySettings:
    """Parse a TOML (``[[clients]]``/``[[partners]]``) or CSV directory file."""
    p = Path(path)
    name = str(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{name}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{name}: cannot read ({type(exc).__name__})") from None
    if p.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(name, "", f"TOML syntax error: {exc}") from None
        # Accept both a bare file and one that nests under [directory].
        table = Table(name, "directory" if "directory" in data else "",
                       data.get("directory", data))
        return parse_directory(table)
    if p.suffix.lower() == ".csv":
        return _read_csv(name, text)
    raise InputError(f"{name}: must be a .toml or .csv file")


_CONTACT = re.compile(r"^\s*(?P<address>[^\s()]+)\s*(?:\((?P<relation>[^()]*)\))?\s*$")


def _read_csv(name: str, text: str) -> DirectorySettings:
    """CSV columns: kind,id,name,addresses,domains,contacts,consent_granted,
    consent_warning,consent_expires,names. Lists are ``;``-separated; a contact
    is ``address (relation)``. ``kind`` is ``client`` (default) or ``partner``."""
    reader = csv.DictReader(io.StringIO(text))
    known = {"kind", "id", "name", "addresses", "domains", "contacts", "consent_granted",
             "consent_warning", "consent_expires", "names"}
    unknown = sorted(set(reader.fieldnames or ()) - known)
    if unknown:
        raise ConfigError(name, "line 1", f'unknown column "{unknown[0]}"')
    clients: list[ClientEntry] = []
    partners: list[PartnerEntry] = []
    for row in reader:
        line = f"line {reader.line_num}"

        def items(col: str, row: dict[str, str] = row) -> list[str]:
            return [x.strip() for x in (row.get(col) or "").split(";") if x.strip()]

        kind = (row.get("kind") or "client").strip()
        if kind == "partner":
            data: dict[str, object] = {"name": (row.get("name") or "").strip(),
                                       "domains": items("domains"),
                                       "addresses": items("addresses")}
            partners.append(parse_partner(Table(name, line, data)))
            continue
        if kind != "client":
            raise ConfigError(name, f"{line}: kind", f'must be "client" or "partner", got "{kind}"')
        contacts = []
        for item in items("contacts"):
            m = _CONTACT.match(item)
            if not m:
                raise ConfigError(name, f"{line}: contacts", f'expected "address (relation)", '
                                  f'got "{_show(item)}"')
            contacts.append({"address": m["address"], "relation": m["relation"] or "contact"})
        client: dict[str, object] = {"id": (row.get("id") or "").strip(),
                                     "addresses": items("addresses"), "contacts": contacts,
                                     "names": items("names")}
        if (row.get("consent_granted") or "").strip():
            consent: dict[str, str] = {"granted": row["consent_granted"].strip(),
                                       "warning": (row.get("consent_warning") or "").strip()}
            if (row.get("consent_expires") or "").strip():
                consent["expires"] = row["consent_expires"].strip()
            client["consent_unencrypted"] = consent
        clients.append(parse_client(Table(name, line, client)))
    return DirectorySettings(clients=tuple(clients), partners=tuple(partners))


def import_directory_file(conn: sqlite3.Connection, path: str | Path, now_iso: str) -> int:
    return store_entries(conn, read_directory_file(path), now_iso)
