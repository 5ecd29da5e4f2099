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
    if not local.isprintable():
        # Invisible or control characters (U+200B, U+2028, U+00AD...): two
        # addresses that look the same, and no upstream takes them either.
        raise AddressError(f'invisible or control character in "{_show(address)}"')
    return f"{local.lower()}@{normalise_domain(domain)}"


def _written_domain(address: str) -> str:
    """``kim@xn--bcher-kva.example`` -> ``kim@bücher.example``; as is when the
    domain has no A-label (or one Python's IDNA codec cannot decode)."""
    local, _, domain = address.rpartition("@")
    if "xn--" not in domain:
        return address
    try:
        return f"{local}@{domain.encode('ascii').decode('idna')}"
    except UnicodeError:
        return address


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
    consent_note: str = ""  # why a consent on file is not used for this address
    # Clients whose information this address may receive: its own, and those
    # it is an authorised contact of (a parent who is a client too).
    linked_ids: frozenset[str] = frozenset()


_STAFF = Identity(Role.STAFF)
_THIRD_PARTY = Identity(Role.THIRD_PARTY)


class Directory:
    """Fast address -> Identity lookups, built once per (re)load."""

    def __init__(self, staff_domains: Iterable[str], settings: DirectorySettings) -> None:
        self.staff_domains = frozenset(staff_domains)
        self.staff_names = settings.staff_names
        self.clients = {c.id: c for c in settings.clients}
        self.partners = settings.partners
        self._client_addr: dict[str, list[str]] = {}
        self._contact_addr: dict[str, list[str]] = {}
        self._consent: dict[str, Consent] = {}
        self._consent_note: dict[str, str] = {}
        for c in self.clients.values():
            for a in c.addresses:
                self._client_addr.setdefault(a, []).append(c.id)
            for ct in c.contacts:
                self._contact_addr.setdefault(ct.address, []).append(c.id)
        # Consent covers one client's own information at that client's own
        # address. An address several clients share, or that is also another
        # client's authorised contact (a parent who is a client too), may
        # receive someone else's PHI: consent on file is not used for it.
        for a, owners in self._client_addr.items():
            owners[:] = list(dict.fromkeys(owners))  # a client listing an address twice
            consent = next((given for c in owners
                            if (given := self.clients[c].consent_unencrypted) is not None), None)
            if consent is None:
                continue
            if len(owners) > 1:
                self._consent_note[a] = (f"consent on file is not used: this address is"
                                         f" shared by clients {', '.join(owners[:5])}")
            elif a in self._contact_addr:
                self._consent_note[a] = (
                    "consent on file is not used: this address is also an authorised"
                    f" contact of client {', '.join(dict.fromkeys(self._contact_addr[a][:5]))}")
            else:
                self._consent[a] = consent
        self._links = {a: frozenset(self._client_addr.get(a, ())) | frozenset(ids)
                       for a, ids in self._contact_addr.items()}
        self._links.update({a: frozenset(ids) | frozenset(self._contact_addr.get(a, ()))
                            for a, ids in self._client_addr.items()})
        self._known = self._identities()
        # A client named in a message is where it belongs for whoever is linked
        # to it: the client itself, or a client whose authorised contact it is
        # (a parent who is a client too, named on the child's mail).
        self.client_links = {
            c.id: frozenset({c.id}).union(*(self._links.get(a, ()) for a in c.addresses))
            for c in self.clients.values()}
        self._partner_addr = {a: p.name for p in self.partners for a in p.addresses}
        self._partner_domain = {d: p.name for p in self.partners for d in p.domains}
        self.client_names = tuple(
            (n, c.id) for c in self.clients.values() for n in c.names if n.strip()
        )
        # Each client's addresses as the detectors look for them in a text:
        # as stored (A-label domain) and with the domain as people write it.
        # Their contacts' addresses too: HIPAA counts a relative's or household
        # member's identifiers as the client's (45 CFR 164.514(b)(2)), and an
        # inline-forwarded "From: David <david@...>" tells whose family it is.
        self.client_addresses = tuple(
            (form, c.id) for c in self.clients.values()
            for a in dict.fromkeys((*c.addresses, *(ct.address for ct in c.contacts)))
            for form in dict.fromkeys((a, _written_domain(a)))
        )

    def notes(self) -> list[str]:
        """What works but may surprise: entries the policy reads differently
        from how a practice may mean them (shown after an import)."""
        out = []
        for a, owners in sorted(self._client_addr.items()):
            partner = self._partner_addr.get(a) or self._partner_domain.get(domain_of(a))
            if partner is not None:
                out.append(f"{a} is client {', '.join(owners)}'s address and also partner"
                           f" {partner}'s: it is treated as the client's (only that client's"
                           " mail may go to it)")
        by_name: dict[str, list[str]] = {}
        for name, cid in self.client_names:
            by_name.setdefault(" ".join(name.lower().split()), []).append(cid)
        for name, ids in sorted(by_name.items()):
            ids = list(dict.fromkeys(ids))
            if len(name.split()) == 1:
                out.append(f"client {', '.join(ids)}: the one-word name {name!r} can be any"
                           " word, so it makes no message a client's; give the full name")
            elif len(ids) > 1:
                out.append(f"clients {', '.join(ids)} share the name {name!r}: a message"
                           " naming it may go to either of them")
        return out

    def identify(self, address: str) -> Identity:
        """Role of a normalised address. Staff wins, then client, contact, partner."""
        domain = domain_of(address)
        if domain in self.staff_domains:
            return _STAFF
        known = self._known.get(address)  # a client's or a contact's (made once, below)
        if known is not None:
            return known
        partner = self._partner_addr.get(address) or self._partner_domain.get(domain)
        if partner is not None:
            return Identity(Role.PARTNER, partner=partner)
        return _THIRD_PARTY

    def _identities(self) -> dict[str, Identity]:
        """Every client's and contact's address with its Identity (immutable:
        built once per directory instead of at every lookup)."""
        known = {a: Identity(Role.CONTACT, tuple(ids), linked_ids=self._links[a])
                 for a, ids in self._contact_addr.items()}
        for a, owners in self._client_addr.items():
            # Consent belongs to this exact address, never to the client's contacts.
            known[a] = Identity(Role.CLIENT, tuple(owners), self._consent.get(a),
                                consent_note=self._consent_note.get(a, ""),
                                linked_ids=self._links[a])
        return known

    def with_imported(self, imported: DirectorySettings) -> Directory:
        """A new directory where imported clients/partners replace same-id/name ones."""
        clients = {c.id: c for c in self.clients.values()}
        clients.update({c.id: c for c in imported.clients})
        partners = {p.name: p for p in self.partners}
        partners.update({p.name: p for p in imported.partners})
        return Directory(
            self.staff_domains,
            DirectorySettings(clients=tuple(clients.values()), partners=tuple(partners.values()),
                              staff_names=self.staff_names),
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


@dataclass(frozen=True, slots=True)
class RemovedEntries:
    """Imported entries a ``directory remove`` or ``import --replace`` deleted."""

    clients: tuple[str, ...] = ()
    partners: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.clients) + len(self.partners)


def _bump_version(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO directory_version (id, n) VALUES (1, 1)"
                 " ON CONFLICT(id) DO UPDATE SET n = n + 1")


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
        _bump_version(conn)
    return len(rows)


def imported_keys(conn: sqlite3.Connection) -> RemovedEntries:
    """Ids of the imported clients and names of the imported partners (sorted)."""
    ensure_schema(conn, _DDL)
    rows = conn.execute("SELECT kind, key FROM directory_entries ORDER BY kind, key").fetchall()
    return RemovedEntries(clients=tuple(k for kind, k in rows if kind == "client"),
                          partners=tuple(k for kind, k in rows if kind == "partner"))


def remove_entries(conn: sqlite3.Connection, clients: Iterable[str] = (),
                   partners: Iterable[str] = ()) -> RemovedEntries:
    """Delete imported clients (by id) and partners (by name) in one transaction.

    Only imported entries can be removed; the config file's ``[[directory.*]]``
    entries stay (an imported entry that shadowed one makes it visible again).
    Returns what was there and is now gone; names that matched nothing are left out.
    """
    ensure_schema(conn, _DDL)
    gone_clients: list[str] = []
    gone_partners: list[str] = []
    with transaction(conn):
        for kind, keys, gone in (("client", clients, gone_clients),
                                 ("partner", partners, gone_partners)):
            for key in dict.fromkeys(keys):
                cur = conn.execute("DELETE FROM directory_entries WHERE kind = ? AND key = ?",
                                   (kind, key))
                if cur.rowcount:
                    gone.append(key)
        if gone_clients or gone_partners:
            _bump_version(conn)
    return RemovedEntries(tuple(gone_clients), tuple(gone_partners))


def replace_entries(conn: sqlite3.Connection, entries: DirectorySettings,
                    now_iso: str) -> tuple[int, RemovedEntries]:
    """Make the imported entries exactly ``entries``: upsert them and delete every
    other imported client and partner, in one transaction (``import --replace``)."""
    keep_clients = {c.id for c in entries.clients}
    keep_partners = {p.name for p in entries.partners}
    with transaction(conn):
        present = imported_keys(conn)
        removed = remove_entries(
            conn, [c for c in present.clients if c not in keep_clients],
            [p for p in present.partners if p not in keep_partners])
        count = store_entries(conn, entries, now_iso)
    return count, removed


def read_directory_file(path: str | Path) -> DirectorySettings:
    """Parse a TOML (``[[clients]]``/``[[partners]]``) or CSV directory file."""
    p = Path(path)
    name = str(path)
    suffix = p.suffix.lower()
    if suffix not in (".toml", ".csv"):
        raise InputError(f"{name}: must be a .toml or .csv file")
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{name}: file not found") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if suffix == ".toml":
        text = _decode(name, raw, 'save it as UTF-8 text')
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(name, "", f"TOML syntax error: {exc}") from None
        # Accept both a bare file and one that nests under [directory].
        table = Table(name, "directory" if "directory" in data else "",
                       data.get("directory", data))
        return parse_directory(table)
    return _read_csv(name, _decode(name, raw, _SAVE_AS_CSV, utf16=True))


_SAVE_AS_CSV = 'in Excel use Save As > "CSV UTF-8 (Comma delimited) (*.csv)"'


def _decode(name: str, raw: bytes, fix: str, *, utf16: bool = False) -> str:
    """UTF-8 (with or without a BOM); UTF-16 with a BOM when ``utf16``. Anything
    else is refused with a message that says how to save the file instead."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        if not utf16:
            raise InputError(f"{name}: is UTF-16 text, not UTF-8; {fix}")
        try:
            return raw.decode("utf-16")  # the BOM says which byte order
        except UnicodeDecodeError:
            raise InputError(f"{name}: is not valid UTF-16 text; {fix}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise InputError(f"{name}: line {line}: is not UTF-8 text (byte 0x{raw[exc.start]:02x},"
                         f" perhaps a Windows or Mac character set); {fix}") from None
    if "\x00" in text:
        raise InputError(f"{name}: contains NUL bytes (UTF-16 without a byte-order mark?);"
                         f" {fix}")
    return text


# The CSV columns, in the order docs/configuration.md lists them.
CSV_COLUMNS = ("kind", "id", "name", "addresses", "domains", "contacts", "consent_granted",
               "consent_warning", "consent_expires", "names")
_CLIENT_ONLY = ("id", "contacts", "consent_granted", "consent_warning", "consent_expires",
                "names")
_PARTNER_ONLY = ("name", "domains")
_CONTACT = re.compile(r"^\s*(?P<address>[^\s()]+)\s*(?:\((?P<relation>[^()]*)\))?\s*$")


def _column(header: str) -> str:
    """``" Consent Granted "`` -> ``consent_granted``: case, surrounding blanks and
    inner spaces or hyphens do not matter."""
    return re.sub(r"[\s\-_]+", "_", header.strip().lower())


def _csv_key(line: int, key: str) -> str:
    """A TOML-style key from the shared readers as the CSV column it came from."""
    if key.startswith("consent_unencrypted"):
        field = key.partition(".")[2] or "granted"
        return f"line {line}: consent_{field}"
    column = re.sub(r"[\[.].*", "", key)  # contacts[0].address -> contacts
    return f"line {line}: {column}"


def _read_csv(name: str, text: str) -> DirectorySettings:
    """Read a directory CSV (format: docs/configuration.md, "Directory files").

    One row per client or partner; the first line names the columns (any case,
    any order). Lists are ``;``-separated; a contact is ``address (relation)``;
    ``kind`` is ``client`` (default) or ``partner``. Errors read
    ``FILE: line N: column: problem``.
    """
    accepted = ", ".join(CSV_COLUMNS)
    # strict: a value in double quotes must end with its quote, at the latest
    # at the end of the file (otherwise the rest of the file silently became
    # part of it).
    reader = csv.reader(io.StringIO(text), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise _csv_syntax_error(name, text, 1, [], exc) from None
    if not header or not any(h.strip() for h in header):
        raise ConfigError(name, "line 1", f"must name the columns (accepted: {accepted})")
    columns: list[str] = [_column(h) for h in header]
    unknown = [h.strip() for h, col in zip(header, columns, strict=True)
               if col and col not in CSV_COLUMNS]
    for raw_name in unknown:
        if ";" in raw_name or "\t" in raw_name:
            sep = "a semicolon" if ";" in raw_name else "a tab"
            raise ConfigError(name, "line 1", f"the columns are separated by {sep}, not a"
                              f' comma; {_SAVE_AS_CSV}, or put "," between columns (";"'
                              " separates the items of a list inside one column)")
    if unknown:
        shown = ", ".join(f'"{_show(u)}"' for u in unknown)
        raise ConfigError(name, "line 1", f"unknown column{'s' if len(unknown) > 1 else ''}"
                          f" {shown} (accepted columns: {accepted})")
    for i, col in enumerate(columns):
        if col and col in columns[:i]:
            raise ConfigError(name, "line 1", f'column "{col}" appears twice (columns'
                              f" {columns.index(col) + 1} and {i + 1})")
    if "kind" not in columns:
        missing = [c for c in ("id", "addresses") if c not in columns]
        if missing:
            raise ConfigError(name, "line 1", f'missing column "{missing[0]}" (required:'
                              f" id, addresses; accepted columns: {accepted})")

    clients: list[ClientEntry] = []
    partners: list[PartnerEntry] = []
    client_lines: dict[str, int] = {}
    partner_lines: dict[str, int] = {}
    end = reader.line_num
    while True:
        start = end + 1  # a quoted value may span lines: report where the row starts
        try:
            cells = next(reader, None)
        except csv.Error as exc:
            raise _csv_syntax_error(name, text, start, columns, exc) from None
        end = reader.line_num
        if cells is None:
            break
        _one_line_values(name, start, columns, cells)
        if not any(c.strip() for c in cells):
            continue  # a blank line or a row of empty cells (spreadsheets leave them)
        row: dict[str, str] = {}
        for i, cell in enumerate(cells):
            value = cell.strip()
            if i >= len(columns):
                if value:
                    raise ConfigError(name, f"line {start}", f"has {len(cells)} values but"
                                      f" line 1 names {len(columns)} columns; put a value that"
                                      ' contains "," in double quotes, and separate list items'
                                      ' with ";"')
            elif not columns[i]:
                if value:
                    raise ConfigError(name, f"line {start}", f"a value in column {i + 1},"
                                      " which has no name on line 1")
            else:
                row[columns[i]] = value
        entry = _csv_row(name, start, row)
        if isinstance(entry, PartnerEntry):
            first = partner_lines.setdefault(entry.name, start)
            if first != start:
                raise ConfigError(name, f"line {start}: name", f'duplicate partner name'
                                  f' "{_show(entry.name)}" (also on line {first})')
            partners.append(entry)
        else:
            first = client_lines.setdefault(entry.id, start)
            if first != start:
                raise ConfigError(name, f"line {start}: id", f'duplicate client id'
                                  f' "{_show(entry.id)}" (also on line {first})')
            clients.append(entry)
    return DirectorySettings(clients=tuple(clients), partners=tuple(partners))


def _column_label(columns: list[str], index: int) -> str:
    if index < len(columns) and columns[index]:
        return columns[index]
    return f"column {index + 1}"


def _csv_syntax_error(name: str, text: str, start: int, columns: list[str],
                      exc: csv.Error) -> ConfigError:
    """The error for a row (starting on line ``start``) the csv module refused:
    which line and column a bad quote is in, when that can be told."""
    row = "\n".join(text.split("\n")[start - 1:])  # io.StringIO splits lines at "\n"
    fault = _quote_fault(row)
    if fault is None:
        return ConfigError(name, f"line {start}", f"not a readable CSV line ({exc})")
    opened, closed, index, unterminated = fault
    line = start + opened
    key = f"line {line}: {_column_label(columns, index)}" if columns else f"line {line}"
    where = "" if columns else f"column {index + 1}: "
    if unterminated:
        return ConfigError(name, key, f"{where}unterminated quote: the double quote that starts"
                           " this value is never closed, so the rest of the file would be read"
                           " as part of it; add the closing quote or remove the opening one")
    if closed > opened:
        return ConfigError(name, key, f"{where}unterminated quote: the double quote that starts"
                           f" this value is only closed on line {start + closed}; add the"
                           " closing quote on this line or remove the opening one")
    return ConfigError(name, key, f"{where}text after the closing double quote; a value in"
                       ' double quotes must end with the quote (write a quote inside it as "")')


def _quote_fault(row: str) -> tuple[int, int, int, bool] | None:
    """Find the bad quote in the text of one CSV row (to the end of the file).

    Returns (line of the opening quote, line of the fault, both counted from
    the row's first line, index of the column, True if the quote is never
    closed), or None when the row has no quoting fault.
    """
    column = line = opened = 0
    state = "start"  # start | plain | quoted | closing
    for ch in row:
        if state == "quoted":
            if ch == '"':
                state = "closing"
            elif ch == "\n":
                line += 1
        elif state == "closing" and ch == '"':
            state = "quoted"  # "" is a quote inside the value
        elif ch == ",":
            column, state = column + 1, "start"
        elif ch in "\r\n":
            return None  # the row ended without a quoting fault
        elif state == "closing":
            return opened, line, column, False
        elif state == "start" and ch == '"':
            opened, state = line, "quoted"
        else:
            state = "plain"
    return (opened, line, column, True) if state == "quoted" else None


def _one_line_values(name: str, start: int, columns: list[str], cells: list[str]) -> None:
    """Refuse a value with a line break in it (possible inside double quotes).
    No id, address, name or date has one; it comes from a quote that is closed
    lines later, which swallowed the rows between."""
    line = start
    for i, cell in enumerate(cells):
        if "\n" in cell or "\r" in cell:
            runs = cell.count("\n")
            until = f" (its double quotes run on to line {line + runs})" if runs else ""
            raise ConfigError(name, f"line {line}: {_column_label(columns, i)}",
                              f"contains a line break{until}; each value must be on one line:"
                              " check for a missing closing double quote")
        line += cell.count("\n")


def _csv_row(name: str, line: int, row: dict[str, str]) -> ClientEntry | PartnerEntry:
    def items(col: str) -> list[str]:
        value = row.get(col, "")
        if col in ("addresses", "domains") and "," in value:
            raise ConfigError(name, f"line {line}: {col}",
                              f'separate several {col} with ";", not ","')
        return [x.strip() for x in value.split(";") if x.strip()]

    def refuse(cols: tuple[str, ...], what: str) -> None:
        for col in cols:
            if row.get(col):
                raise ConfigError(name, f"line {line}: {col}", f"is not used for {what}"
                                  " (see the kind column)")

    kind = row.get("kind", "").lower() or "client"
    data: dict[str, object]
    if kind == "partner":
        refuse(_CLIENT_ONLY, "a partner")
        data = {"name": row.get("name", ""), "domains": items("domains"),
                "addresses": items("addresses")}
    elif kind == "client":
        refuse(_PARTNER_ONLY, 'a client (a client\'s names go in "names")')
        contacts = []
        for item in items("contacts"):
            m = _CONTACT.match(item)
            if not m:
                raise ConfigError(name, f"line {line}: contacts", f'expected "address'
                                  f' (relation)", several separated by ";", got "{_show(item)}"')
            contacts.append({"address": m["address"], "relation": m["relation"] or "contact"})
        data = {"id": row.get("id", ""), "addresses": items("addresses"),
                "contacts": contacts, "names": items("names")}
        if row.get("consent_granted"):
            consent: dict[str, str] = {"granted": row["consent_granted"],
                                       "warning": row.get("consent_warning", "")}
            if row.get("consent_expires"):
                consent["expires"] = row["consent_expires"]
            data["consent_unencrypted"] = consent
        else:
            for col in ("consent_warning", "consent_expires"):
                if row.get(col):
                    raise ConfigError(name, f"line {line}: consent_granted",
                                      f"is required when {col} is given (the date the client"
                                      " consented, YYYY-MM-DD)")
    else:
        raise ConfigError(name, f"line {line}: kind",
                          f'must be "client" or "partner", got "{_show(kind)}"')
    try:
        if kind == "partner":
            return parse_partner(Table(name, "", data))
        return parse_client(Table(name, "", data), granted_key="consent_granted")
    except ConfigError as exc:
        raise ConfigError(name, _csv_key(line, exc.key), exc.problem) from None


def import_directory_file(conn: sqlite3.Connection, path: str | Path, now_iso: str) -> int:
    return store_entries(conn, read_directory_file(path), now_iso)
