"""The directory part of the config: clients, contacts, consent, partners.

The same readers serve ``[[directory.*]]`` in securemail.toml and the files
``securemail directory import`` takes (TOML or CSV rows), so both give the same
errors for the same mistakes.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from dataclasses import dataclass

from securemail.errors import ConfigError
from securemail.model import Consent
from securemail.toml_table import Table, read_address, read_date, read_domain, read_tables

__all__ = [
    "ClientEntry",
    "ContactEntry",
    "DirectorySettings",
    "PartnerEntry",
    "parse_client",
    "parse_directory",
    "parse_partner",
]


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
    # Names of staff members that clients share ("Ana Rivera"): never a
    # client's name for blocking, though they still keep consent from applying.
    staff_names: tuple[str, ...] = ()



# The keys each table may have. They are checked before anything else, so that
# a misspelt key ("adresses") is reported as the key at fault, not as the
# correct key missing ("addresses: needs at least one address").
_DIRECTORY_KEYS = ("clients", "partners", "staff_names")
_CLIENT_KEYS = ("id", "addresses", "contacts", "consent_unencrypted", "names")
_CONTACT_KEYS = ("address", "relation")
_CONSENT_KEYS = ("granted", "warning", "expires")
_PARTNER_KEYS = ("name", "domains", "addresses")


def _known_keys(t: Table, keys: tuple[str, ...]) -> None:
    """Refuse a key that is not one of ``keys`` (the same error as Table.finish)."""
    probe = Table(t.file, t.prefix, t.data)
    probe.seen.update(keys)
    probe.finish()


def _visible(t: Table, name: str, value: str, what: str) -> str:
    """Refuse invisible and control characters (zero-width space, soft hyphen,
    bidi controls, NBSP...): an address or id with one can never match the
    mail it is meant for (message headers with them are refused), and it looks
    like the right one on screen."""
    for i, ch in enumerate(value):
        if not ch.isprintable():  # categories C* and Z* except the ASCII space
            label = unicodedata.name(ch, "unnamed character")
            raise t.error(name, f"contains an invisible or control character U+{ord(ch):04X}"
                                f" ({label}) at position {i + 1}; retype the {what}")
    return value


def _address(t: Table, name: str, value: str) -> str:
    return read_address(t, name, _visible(t, name, value, "address"))


def _domain(t: Table, name: str, value: str) -> str:
    return read_domain(t, name, _visible(t, name, value, "domain"))


def _consent(t: Table, granted_key: str) -> Consent:
    _known_keys(t, _CONSENT_KEYS)
    granted = read_date(t, "granted", t.data.get("granted"))
    t.seen.add("granted")
    warning = t.text("warning", "")
    if not warning:
        raise t.error("warning", "is required: the version of the risk warning the client saw")
    raw_expires = t.data.get("expires")
    t.seen.add("expires")
    expires = None if raw_expires is None else read_date(t, "expires", raw_expires)
    if expires is not None and dt.date.fromisoformat(expires) < dt.date.fromisoformat(granted):
        raise t.error("expires", f"is before {granted_key} ({granted}): a consent cannot end"
                                 " before it was given (check both dates)")
    c = Consent(granted=granted, warning=warning, expires=expires)
    t.finish()
    return c


def parse_client(c: Table, *, granted_key: str = "granted") -> ClientEntry:
    """One client. ``granted_key`` is how errors name the consent's start date
    (``consent_granted`` in a CSV file)."""
    _known_keys(c, _CLIENT_KEYS)
    cid = c.text("id", "")
    if not cid:
        raise c.error("id", "is required")
    _visible(c, "id", cid, "id")
    addresses = tuple(_address(c, f"addresses[{i}]", a)
                      for i, a in enumerate(c.strings("addresses")))
    contacts = []
    for ct in read_tables(c, "contacts"):
        _known_keys(ct, _CONTACT_KEYS)
        addr = ct.text("address", "")
        if not addr:
            raise ct.error("address", "is required")
        contacts.append(ContactEntry(_address(ct, "address", addr),
                                     ct.text("relation", "contact")))
        ct.finish()
    if not addresses and not contacts:
        raise c.error("addresses", "needs at least one address (a client with no email of"
                                   " their own, such as a young child, needs at least one"
                                   " contact instead)")
    consent = None
    if "consent_unencrypted" in c.data:
        if not addresses:
            raise c.error("consent_unencrypted", "consent covers the client's own addresses,"
                                                 " and this client has none")
        consent = _consent(c.table("consent_unencrypted"), granted_key)
    names = c.strings("names")
    c.finish()
    return ClientEntry(cid, addresses, tuple(contacts), consent, names)


def parse_partner(p: Table) -> PartnerEntry:
    _known_keys(p, _PARTNER_KEYS)
    name = p.text("name", "")
    if not name:
        raise p.error("name", "is required")
    entry = PartnerEntry(
        name=name,
        domains=tuple(_domain(p, f"domains[{i}]", d)
                      for i, d in enumerate(p.strings("domains"))),
        addresses=tuple(_address(p, f"addresses[{i}]", a)
                        for i, a in enumerate(p.strings("addresses"))),
    )
    if not entry.domains and not entry.addresses:
        raise p.error("domains", "a partner needs at least one domain or address")
    p.finish()
    return entry


def parse_directory(t: Table) -> DirectorySettings:
    _known_keys(t, _DIRECTORY_KEYS)
    clients = tuple(parse_client(c) for c in read_tables(t, "clients"))
    seen: dict[str, str] = {}
    for i, c in enumerate(clients):
        if c.id in seen:
            raise ConfigError(t.file, f"{t.key('clients')}[{i}].id",
                              f'duplicate client id "{c.id}"')
        seen[c.id] = c.id
    partners = tuple(parse_partner(p) for p in read_tables(t, "partners"))
    names: dict[str, int] = {}
    for i, p in enumerate(partners):
        if p.name in names:
            raise ConfigError(t.file, f"{t.key('partners')}[{i}].name",
                              f'duplicate partner name "{p.name}"'
                              f" (also {t.key('partners')}[{names[p.name]}])")
        names[p.name] = i
    staff_names = t.strings("staff_names")
    t.finish()
    return DirectorySettings(clients=clients, partners=partners, staff_names=staff_names)
