"""The key store: OpenPGP public keys and S/MIME certificates per recipient address.

Keys are judged when they come in (:meth:`Keyring.import_file` refuses expired,
revoked, weak or unusable keys with one line naming the file and the reason)
and again whenever they are used: each key is stored with the window in which
it may be used (``usable_from`` .. ``usable_until``), so a key that expires
later simply stops being offered at its expiry and the policy falls back to
the portal. Time is always passed in.

Tables (SQLite, beside the directory's)::

    keyring_keys       one row per key/certificate, keyed by fingerprint
    keyring_addresses  (address, fingerprint): every address a key names
    keyring_revocations  every OpenPGP (sub)key revocation ever seen, kept for good

Addresses are indexed in the form :func:`securemail.directory.normalise_address`
gives, which is also how the policy asks.
"""

from __future__ import annotations

import builtins
import datetime as dt
import functools
import re
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from securemail.crypto import KeyProblem, smime
from securemail.directory import AddressError, normalise_address
from securemail.errors import InputError, StoreError
from securemail.store.sqlite import describe_fault, ensure_schema, transaction

if TYPE_CHECKING:
    from securemail.crypto.pgp import PgpKey, PgpRecipient, Revocation

__all__ = ["ImportReport", "ImportedKey", "KeyInfo", "KeyRemoval", "KeyWithdrawn", "Keyring"]

# Far above any real key (a key with photo ids and many signatures is well under 1 MiB).
MAX_KEY_FILE_BYTES = 16 * 1024 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS keyring_keys (
    fingerprint  TEXT PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('pgp', 'smime')),
    material     BLOB NOT NULL,      -- binary OpenPGP key / DER certificate (public only)
    algorithm    TEXT NOT NULL,
    usable_from  INTEGER NOT NULL,   -- epoch seconds
    usable_until INTEGER,            -- epoch seconds; NULL: does not expire
    imported_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS keyring_addresses (
    address      TEXT NOT NULL,
    fingerprint  TEXT NOT NULL REFERENCES keyring_keys(fingerprint) ON DELETE CASCADE,
    PRIMARY KEY (address, fingerprint)
);
CREATE INDEX IF NOT EXISTS keyring_addresses_by_key ON keyring_addresses(fingerprint);
-- Revocations outlive the keys they revoke: "a revocation is final", so an older
-- copy of a key (or of a subkey) can never make it usable again. Added to older
-- stores by ensure_schema (a new table); their stored copies still carry their own
-- revocations, which are read from the stored copy as well.
CREATE TABLE IF NOT EXISTS keyring_revocations (
    revoked      TEXT PRIMARY KEY,   -- fingerprint of the revoked primary key or subkey
    fingerprint  TEXT NOT NULL,      -- the primary key it belongs to
    recorded_at  INTEGER NOT NULL    -- epoch seconds
);
CREATE INDEX IF NOT EXISTS keyring_revocations_by_key ON keyring_revocations(fingerprint);
"""

_HEX = re.compile(r"[0-9A-F]+")


@dataclass(frozen=True, slots=True)
class ImportedKey:
    """A key that :meth:`Keyring.import_file` stored."""

    kind: str  # "pgp" | "smime"
    fingerprint: str
    addresses: tuple[str, ...]
    algorithm: str
    expires: dt.datetime | None
    replaced: bool  # the same fingerprint was stored before (now updated)
    usable_from: dt.datetime | None = None  # may lie ahead: then not used before it


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What :meth:`Keyring.import_report` did with one file."""

    imported: tuple[ImportedKey, ...]
    # Certificates of a bundle left out (CA chain, or the signing certificate of a
    # dual-key pair), one line each:
    # "skipped certificate CN=... (a CA certificate, no email address)".
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KeyRemoval:
    """One key that :meth:`Keyring.remove_keys` deleted, or detached an address from."""

    kind: str  # "pgp" | "smime"
    fingerprint: str
    addresses: tuple[str, ...]  # the addresses it had before
    deleted: bool  # False: only ``detached`` was taken off; the key is still stored
    detached: str | None = None  # the address removed from it (removal by address)

    @property
    def remaining(self) -> tuple[str, ...]:
        """Addresses the key still has (none when it was deleted)."""
        return () if self.deleted else tuple(a for a in self.addresses if a != self.detached)


class KeyWithdrawn(InputError):
    """A re-imported key can no longer be used, so its stored copy was removed.

    ``str()`` is the usual ``FILE: reason`` line, ending in "(the stored copy
    was removed)"; ``removed`` holds the fingerprint(s) deleted, so that the
    caller can record the removal (``key-remove``) like any other.
    """

    def __init__(self, message: str, removed: tuple[str, ...], requested: bool = False,
                 kinds: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.removed = removed
        # True when the file was a revocation certificate: removing the key is
        # what the import asked for, not a refusal.
        self.requested = requested
        # The kind ("pgp" | "smime") of each removed key, in the order of ``removed``.
        self.kinds = kinds


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One stored key as ``keys list`` shows it."""

    kind: str
    fingerprint: str
    addresses: tuple[str, ...]
    algorithm: str
    expires: dt.datetime | None
    usable: bool
    # Why it is not usable now ("not valid until 2027-01-01", "expired on
    # 2026-03-01"); None when it is usable.
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "fingerprint": self.fingerprint,
                "addresses": list(self.addresses), "algorithm": self.algorithm,
                "expires": self.expires.isoformat() if self.expires else None,
                "usable": self.usable, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class _Candidate:
    kind: str
    fingerprint: str
    addresses: tuple[str, ...]
    algorithm: str
    material: bytes
    usable_from: dt.datetime
    usable_until: dt.datetime | None


class Keyring:
    """Public keys per address, in the shared store. See the module docstring."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        ensure_schema(conn, SCHEMA)
        # Parsed keys by fingerprint, with the stored bytes they came from (a
        # re-import of the same fingerprint changes the bytes and so the entry).
        self._pgp_cache: dict[str, tuple[bytes, PgpKey]] = {}
        self._cert_cache: dict[str, tuple[bytes, x509.Certificate]] = {}

    # ---------------------------------------------------------------- lookups

    def usable_kinds(self, address: str, now: dt.datetime) -> frozenset[str]:
        rows = self._query(
            "SELECT DISTINCT k.kind FROM keyring_addresses a JOIN keyring_keys k"
            " USING (fingerprint) WHERE a.address = :address"
            " AND k.usable_from <= :now AND (k.usable_until IS NULL OR k.usable_until > :now)",
            {"address": address, "now": _epoch(now)})
        return frozenset(r[0] for r in rows)

    def close(self) -> None:
        """Close the connection this keyring was given (for a keyring that owns one)."""
        self._conn.close()

    def usable_kinds_many(self, addresses: Iterable[str], now: dt.datetime
                          ) -> dict[str, frozenset[str]]:
        """``usable_kinds`` for several addresses in one query (the policy's hot path)."""
        wanted = builtins.list(dict.fromkeys(addresses))
        found: dict[str, set[str]] = {a: set() for a in wanted}
        if not wanted:
            return {}
        if len(wanted) > 500:  # SQLite's parameter limit; never on the relay's path
            return {a: self.usable_kinds(a, now) for a in wanted}
        placeholders = ",".join("?" * len(wanted))  # only "?" marks enter the SQL text
        # No DISTINCT: the sets below drop repeats, without SQLite's temporary table.
        sql = (
            "SELECT a.address, k.kind FROM keyring_addresses a "  # noqa: S608
            "JOIN keyring_keys k"
            f" USING (fingerprint) WHERE a.address IN ({placeholders})"
            " AND k.usable_from <= ? AND (k.usable_until IS NULL OR k.usable_until > ?)")
        try:
            rows = self._conn.execute(sql, (*wanted, _epoch(now), _epoch(now))).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read keys ({describe_fault(exc)})") from None
        for address, kind in rows:
            found[address].add(kind)
        return {a: frozenset(k) for a, k in found.items()}

    def pgp_keys(self, address: str, now: dt.datetime) -> builtins.list[PgpRecipient]:
        """Every OpenPGP key of ``address`` usable at ``now``, bound to its current subkey."""
        out = []
        for fingerprint, material in self._usable(address, "pgp", now):
            key = self._pgp_key(fingerprint, material)
            chosen = key.recipient(_aware(now)) if key is not None else None
            if chosen is not None:
                out.append(chosen)
        return out

    def smime_certs(self, address: str, now: dt.datetime) -> builtins.list[x509.Certificate]:
        """Every S/MIME certificate of ``address`` usable at ``now``."""
        out = []
        for fingerprint, material in self._usable(address, "smime", now):
            cached = self._cert_cache.get(fingerprint)
            if cached is None or cached[0] != material:
                try:
                    cached = (material, x509.load_der_x509_certificate(material))
                except ValueError:
                    continue  # a damaged row is not a usable key
                self._cert_cache[fingerprint] = cached
            out.append(cached[1])
        return out

    def list(self, now: dt.datetime) -> builtins.list[KeyInfo]:
        """Every stored key, with whether it is usable at ``now`` and, if not, why."""
        rows = self._query(
            "SELECT k.kind, k.fingerprint, k.algorithm, k.usable_from, k.usable_until,"
            " k.usable_from <= :now AND (k.usable_until IS NULL OR k.usable_until > :now),"
            " group_concat(a.address, ' ') FROM keyring_keys k LEFT JOIN keyring_addresses a"
            " USING (fingerprint) GROUP BY k.fingerprint ORDER BY k.kind, k.fingerprint",
            {"now": _epoch(now)})
        out = []
        for kind, fpr, alg, start, until, in_window, addrs in rows:
            usable = bool(in_window)
            reason = None if usable else _unusable_reason(_from_epoch(start), _from_epoch(until),
                                                          _aware(now))
            out.append(KeyInfo(kind, fpr, tuple(sorted((addrs or "").split())), alg,
                               _from_epoch(until), usable, reason))
        return out

    # ---------------------------------------------------------------- changes

    def import_file(self, path: str | Path, now: dt.datetime) -> builtins.list[ImportedKey]:
        """The keys :meth:`import_report` stored from ``path``."""
        return builtins.list(self.import_report(path, now).imported)

    def import_report(self, path: str | Path, now: dt.datetime) -> ImportReport:
        """Read, judge and store every key in ``path``; all or nothing per file.

        Raises InputError ``FILE: reason`` for any key that cannot be used now.
        When such a key is already stored (same fingerprint), the file is the
        owner's newer word on it (revoked, revoked or expired encryption
        subkey, shortened expiry, ...): the stored copy is removed at once, so
        mail to its addresses falls back to the portal, and the error is a
        :class:`KeyWithdrawn` naming what was removed.
        """
        name = str(path)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            raise InputError(f"{name}: cannot read ({exc.strerror or type(exc).__name__})") \
                from None
        if len(data) > MAX_KEY_FILE_BYTES:
            raise InputError(f"{name}: larger than {MAX_KEY_FILE_BYTES // (1024 * 1024)} MiB;"
                             " a key or certificate file is far smaller: is it the right file?")
        skipped: builtins.list[str] = []
        try:
            candidates = self._judge(data, _aware(now), skipped, name)
        except _Withdrawn as exc:
            raise KeyWithdrawn(f"{name}: {exc}", exc.removed, exc.requested, exc.kinds) \
                from None
        except KeyProblem as exc:
            raise InputError(f"{name}: {exc}") from None
        return ImportReport(tuple(self._store(candidates, now)), tuple(skipped))

    def remove(self, addr_or_fpr: str) -> int:
        """Forget a key (by fingerprint, or its last 16+ hex digits) or an address's keys.

        By address, only that address is detached; a key left with no address
        is deleted. Returns how many keys were deleted or detached.
        """
        return len(self.remove_keys(addr_or_fpr))

    def remove_keys(self, addr_or_fpr: str) -> builtins.list[KeyRemoval]:
        """:meth:`remove`, saying for each key touched whether it was deleted or
        only lost the address (and so is still stored for its other addresses)."""
        wanted = addr_or_fpr.strip()
        if "@" in wanted:
            try:
                address = normalise_address(wanted)
            except AddressError as exc:
                raise InputError(str(exc)) from None
            return self._remove_address(address)
        digits = wanted.replace(" ", "").upper()
        digits = digits.removeprefix("0X")  # gpg prints key ids as 0x6EE12C62F640208A
        if len(digits) < 16 or not _HEX.fullmatch(digits):
            raise InputError(f'"{wanted[:80]}" is neither an address nor a key fingerprint '
                             "(at least 16 hex digits)")
        return self._remove_fingerprint(digits)

    # ---------------------------------------------------------------- internals

    def _judge(self, data: bytes, now: dt.datetime, skipped: builtins.list[str],
               name: str = "FILE") -> builtins.list[_Candidate]:
        """The keys in ``data`` (the file ``name``), judged; certificates left out
        (CA chain, the signing half of a dual-key pair) go to ``skipped``."""
        stripped = data.lstrip()
        if smime.is_pkcs12(data):  # never parsed: it may hold a private key
            raise KeyProblem(smime.pkcs12_refusal(name))
        if smime.holds_private_key(data) and b"-----BEGIN PGP" not in data:
            raise KeyProblem(smime.PRIVATE_KEY_REFUSAL)
        if (b"-----BEGIN CERTIFICATE-----" in data or b"-----BEGIN PKCS7-----" in data
                or stripped[:1] == b"\x30"):
            bundle = smime.sort_certificates(data)
            certs, signing = smime.set_aside_signing_certificates(bundle.recipients, now,
                                                                  _routable)
            skipped.extend(str(s) for s in [*signing, *bundle.skipped])
            try:
                return _judge_each([functools.partial(self._judge_cert, c, now)
                                    for c in certs])
            except _Withdrawn:
                raise
            except KeyProblem as exc:
                raise KeyProblem(smime.unencrypting_refusal(certs, str(exc))) from None
        if b"-----BEGIN PGP" in data or (stripped[:1] and stripped[0] & 0x80):
            from securemail.crypto.pgp import read_openpgp

            keys, revocations = read_openpgp(data)
            return _judge_each([*(functools.partial(self._judge_pgp, k, now) for k in keys),
                                *(functools.partial(self._revoke, r, now) for r in revocations)])
        raise KeyProblem("neither an OpenPGP public key nor a PEM/DER certificate")

    def _judge_pgp(self, key: PgpKey, now: dt.datetime) -> _Candidate:
        """Judge one key, always against what the store knows of it.

        The stored copy and the recorded revocations are the owner's word so
        far. A copy that is older than the stored one, or that lacks a
        revocation seen before, is refused and changes nothing (a revocation
        is final, however new the copy without it looks). A copy that brings a
        revocation is recorded for good, whatever its age.
        """
        fpr = key.fingerprint
        stored = self._stored_pgp(fpr)
        recorded = self._revocations(fpr)
        known = recorded | (stored.revoked_keys if stored is not None else frozenset())
        self._record_revocations(fpr, (known | key.revoked_keys) - recorded, now)
        new, missing = key.revoked_keys - known, known - key.revoked_keys
        older = (stored is not None and stored.signed_at is not None
                 and key.signed_at is not None and stored.signed_at > key.signed_at)
        problem = key.problem(now)
        if missing or older:
            if stored is not None and new:
                # An old copy with a revocation the stored copy lacks: the stored
                # copy is out of date too. Fail closed: remove it.
                self._withdraw(fpr, problem or f"OpenPGP key {fpr}: an older copy that revokes "
                               "a subkey the stored copy does not; ask the owner for their "
                               "current key", kind="pgp")
            if stored is not None:
                # Say, a file from before the owner extended the expiry or revoked a
                # subkey: keep the stored copy, which is the owner's newer word.
                signed = f", signed {stored.signed_at:%Y-%m-%d}," if stored.signed_at else ""
                raise KeyProblem(f"{problem or f'OpenPGP key {fpr}'} (an older copy: the stored "
                                 f"copy{signed} is newer and was kept)")
            raise KeyProblem(_predates_revocation(fpr, missing))
        if problem:
            self._withdraw(fpr, problem, kind="pgp")
            raise KeyProblem(problem)
        return _Candidate("pgp", key.fingerprint, _addresses(key.addresses, key.fingerprint),
                          key.algorithm, key.binary, key.usable_from, key.usable_until)

    def _judge_cert(self, cert: x509.Certificate, now: dt.datetime) -> _Candidate:
        problem = smime.certificate_problem(cert, now)
        if problem:
            # Same fingerprint, same certificate: only a rule it now fails (or
            # time) can refuse it again, and then the stored copy must go too.
            self._withdraw(smime.certificate_fingerprint(cert), problem, kind="smime")
            raise KeyProblem(problem)
        from cryptography.hazmat.primitives import serialization

        fpr = smime.certificate_fingerprint(cert)
        return _Candidate("smime", fpr, _addresses(smime.certificate_addresses(cert), fpr),
                          smime.certificate_algorithm(cert),
                          cert.public_bytes(serialization.Encoding.DER),
                          cert.not_valid_before_utc, cert.not_valid_after_utc)

    def _revoke(self, revocation: Revocation, now: dt.datetime) -> _Candidate:
        """Apply a revocation certificate to the stored key it names; never returns."""
        from securemail.crypto.pgp import apply_revocation

        name = revocation.fingerprint or revocation.key_id
        matches = [r[0] for r in self._query(
            "SELECT fingerprint FROM keyring_keys WHERE kind = 'pgp'"
            " AND substr(fingerprint, -:n) = :digits",
            {"n": len(name), "digits": name})]
        if len(matches) != 1:
            raise KeyProblem(f"a revocation certificate for OpenPGP key {name}, which is not "
                             "stored here: nothing was changed (do not import that key "
                             "unless its owner sends a new one)")
        stored = self._stored_pgp(matches[0])
        revoked = apply_revocation(stored, revocation) if stored is not None else None
        if revoked is None:
            raise KeyProblem(f"a revocation certificate for OpenPGP key {name} that its key "
                             "did not sign: nothing was changed (ask the owner for it again)")
        self._record_revocations(revoked.fingerprint, revoked.revoked_keys, now)
        self._withdraw(revoked.fingerprint, f"OpenPGP key {revoked.fingerprint} is revoked by "
                       "this revocation certificate", requested=True, kind="pgp")
        raise KeyProblem(f"OpenPGP key {revoked.fingerprint} was already removed")

    def _revocations(self, fingerprint: str) -> frozenset[str]:
        return frozenset(r[0] for r in self._query(
            "SELECT revoked FROM keyring_revocations WHERE fingerprint = :fpr",
            {"fpr": fingerprint}))

    def _record_revocations(self, fingerprint: str, revoked: Iterable[str],
                            now: dt.datetime) -> None:
        rows = [(r, fingerprint, _epoch(now)) for r in sorted(revoked)]
        if not rows:
            return
        try:
            with transaction(self._conn) as conn:
                conn.executemany("INSERT OR IGNORE INTO keyring_revocations"
                                 " (revoked, fingerprint, recorded_at) VALUES (?, ?, ?)", rows)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record a key revocation ({describe_fault(exc)})") from None

    def _stored_pgp(self, fingerprint: str) -> PgpKey | None:
        rows = self._query("SELECT material FROM keyring_keys WHERE fingerprint = :fpr"
                           " AND kind = 'pgp'", {"fpr": fingerprint})
        return self._pgp_key(fingerprint, bytes(rows[0][0])) if rows else None

    def _withdraw(self, fingerprint: str, problem: str, *, kind: str,
                  requested: bool = False) -> None:
        """Remove the stored copy of a key that a re-import shows to be unusable.

        A revocation, a revoked or expired encryption subkey or a shortened
        expiry that arrives later must stop the stored copy at once: the new
        copy is the owner's current word on the key (an import replaces the
        stored copy when it is usable, and removes it when it is not).
        Raises :class:`_Withdrawn` if there was a stored copy.
        """
        try:
            with transaction(self._conn) as conn:
                conn.execute("DELETE FROM keyring_addresses WHERE fingerprint = ?",
                             (fingerprint,))
                removed = conn.execute("DELETE FROM keyring_keys WHERE fingerprint = ?",
                                       (fingerprint,)).rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"cannot remove keys ({describe_fault(exc)})") from None
        if removed:
            self._pgp_cache.pop(fingerprint, None)
            self._cert_cache.pop(fingerprint, None)
            raise _Withdrawn(f"{problem} (the stored copy was removed)", (fingerprint,),
                             requested, (kind,))

    def _store(self, candidates: builtins.list[_Candidate],
               now: dt.datetime) -> builtins.list[ImportedKey]:
        done = []
        try:
            with transaction(self._conn) as conn:
                for c in candidates:
                    replaced = conn.execute("SELECT 1 FROM keyring_keys WHERE fingerprint = ?",
                                            (c.fingerprint,)).fetchone() is not None
                    conn.execute("DELETE FROM keyring_addresses WHERE fingerprint = ?",
                                 (c.fingerprint,))
                    conn.execute(
                        "INSERT OR REPLACE INTO keyring_keys (fingerprint, kind, material,"
                        " algorithm, usable_from, usable_until, imported_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (c.fingerprint, c.kind, c.material, c.algorithm, _epoch(c.usable_from),
                         _epoch(c.usable_until) if c.usable_until else None, _epoch(now)))
                    conn.executemany(
                        "INSERT OR IGNORE INTO keyring_addresses (address, fingerprint)"
                        " VALUES (?, ?)", [(a, c.fingerprint) for a in c.addresses])
                    done.append(ImportedKey(c.kind, c.fingerprint, c.addresses, c.algorithm,
                                            c.usable_until, replaced, c.usable_from))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store keys ({describe_fault(exc)})") from None
        return done

    def _remove_address(self, address: str) -> builtins.list[KeyRemoval]:
        done = []
        try:
            with transaction(self._conn) as conn:
                for fpr, kind in conn.execute(
                        "SELECT k.fingerprint, k.kind FROM keyring_addresses a JOIN keyring_keys k"
                        " USING (fingerprint) WHERE a.address = ? ORDER BY k.kind, k.fingerprint",
                        (address,)).fetchall():
                    had = _key_addresses(conn, fpr)
                    conn.execute("DELETE FROM keyring_addresses WHERE address = ?"
                                 " AND fingerprint = ?", (address, fpr))
                    deleted = len(had) <= 1  # a key left with no address is deleted
                    if deleted:
                        conn.execute("DELETE FROM keyring_keys WHERE fingerprint = ?", (fpr,))
                    done.append(KeyRemoval(kind, fpr, had, deleted, address))
                # An address row without its key (never written so): not left behind.
                conn.execute("DELETE FROM keyring_addresses WHERE address = ?", (address,))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot remove keys ({describe_fault(exc)})") from None
        for removal in done:
            if removal.deleted:
                self._forget(removal.fingerprint)
        return done

    def _remove_fingerprint(self, digits: str) -> builtins.list[KeyRemoval]:
        matches = self._query(
            "SELECT fingerprint, kind FROM keyring_keys WHERE substr(fingerprint, -:n) = :digits",
            {"n": len(digits), "digits": digits})
        if len(matches) > 1:
            raise InputError(f"{digits} matches {len(matches)} keys; give the full fingerprint")
        done = []
        try:
            with transaction(self._conn) as conn:
                for fpr, kind in matches:
                    had = _key_addresses(conn, fpr)
                    conn.execute("DELETE FROM keyring_addresses WHERE fingerprint = ?", (fpr,))
                    conn.execute("DELETE FROM keyring_keys WHERE fingerprint = ?", (fpr,))
                    done.append(KeyRemoval(kind, fpr, had, True))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot remove keys ({describe_fault(exc)})") from None
        for removal in done:
            self._forget(removal.fingerprint)
        return done

    def _forget(self, fingerprint: str) -> None:
        self._pgp_cache.pop(fingerprint, None)
        self._cert_cache.pop(fingerprint, None)

    def _usable(self, address: str, kind: str,
                now: dt.datetime) -> builtins.list[tuple[str, bytes]]:
        return [(r[0], bytes(r[1])) for r in self._query(
            "SELECT k.fingerprint, k.material FROM keyring_addresses a JOIN keyring_keys k"
            " USING (fingerprint) WHERE a.address = :address AND k.kind = :kind"
            " AND k.usable_from <= :now AND (k.usable_until IS NULL OR k.usable_until > :now)"
            " ORDER BY k.usable_from DESC",
            {"address": address, "kind": kind, "now": _epoch(now)})]

    def _pgp_key(self, fingerprint: str, material: bytes) -> PgpKey | None:
        cached = self._pgp_cache.get(fingerprint)
        if cached is not None and cached[0] == material:
            return cached[1]
        from securemail.crypto.pgp import parse_public_keys

        try:
            key = parse_public_keys(material)[0]
        except KeyProblem:
            return None  # a damaged row is not a usable key
        self._pgp_cache[fingerprint] = (material, key)
        return key

    def _query(self, sql: str, params: dict[str, Any]) -> builtins.list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read keys ({describe_fault(exc)})") from None


class _Withdrawn(KeyProblem):
    """A refused key whose stored copy :meth:`Keyring._withdraw` removed."""

    def __init__(self, message: str, removed: tuple[str, ...], requested: bool = False,
                 kinds: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.removed = removed
        self.requested = requested
        self.kinds = kinds


def _judge_each(judges: Iterable[Callable[[], _Candidate]]) -> builtins.list[_Candidate]:
    """Run every judgement, even after a refusal, so that every revocation in a
    file is applied; then refuse the whole file if any key was refused."""
    found: builtins.list[_Candidate] = []
    problems: builtins.list[KeyProblem] = []
    for judge in judges:
        try:
            found.append(judge())
        except KeyProblem as exc:
            problems.append(exc)
    if not problems:
        return found
    message = "; ".join(str(p) for p in problems)
    withdrawn = [p for p in problems if isinstance(p, _Withdrawn)]
    removed = tuple(f for p in withdrawn for f in p.removed)
    if removed:
        requested = all(isinstance(p, _Withdrawn) and p.requested for p in problems)
        raise _Withdrawn(message, removed, requested, tuple(k for p in withdrawn for k in p.kinds))
    raise KeyProblem(message)


def _predates_revocation(fingerprint: str, missing: frozenset[str]) -> str:
    if fingerprint in missing:
        return (f"OpenPGP key {fingerprint} was revoked, and a revocation is final: this is "
                "an older copy; ask the owner for their new key")
    return (f"OpenPGP key {fingerprint}: this copy predates the revocation of its subkey "
            f"{', '.join(sorted(missing))}, and a revocation is final; ask the owner for their "
            "current key")


def _addresses(raw: Iterable[str], fingerprint: str) -> tuple[str, ...]:
    out = []
    for address in raw:
        try:
            out.append(normalise_address(address))
        except AddressError:
            continue  # a user id we cannot route to is simply not indexed
    if not out:
        raise KeyProblem(f"key {fingerprint} names no usable e-mail address")
    return tuple(dict.fromkeys(out))


def _routable(address: str) -> str | None:
    """``address`` as the key store indexes it, or None if it cannot be."""
    try:
        return normalise_address(address)
    except AddressError:
        return None


def _key_addresses(conn: sqlite3.Connection, fingerprint: str) -> tuple[str, ...]:
    return tuple(r[0] for r in conn.execute(
        "SELECT address FROM keyring_addresses WHERE fingerprint = ? ORDER BY address",
        (fingerprint,)))


def _unusable_reason(start: dt.datetime | None, until: dt.datetime | None,
                     now: dt.datetime) -> str:
    """Why a stored key with this window is not usable at ``now``.

    (A revoked key is never stored: the revocation removes it, see
    :meth:`Keyring._withdraw`; a stored key stops only at the ends of its window.)
    """
    if start is not None and start > now:
        return f"not valid until {_when(start)}"
    if until is not None and until <= now:
        return f"expired on {_when(until)}"
    return "outside its validity period"


def _when(moment: dt.datetime) -> str:
    """A date, with the time of day (UTC) only when it is not midnight."""
    if moment.time() == dt.time():
        return f"{moment:%Y-%m-%d}"
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def _aware(now: dt.datetime) -> dt.datetime:
    return now if now.tzinfo is not None else now.replace(tzinfo=dt.UTC)


def _epoch(when: dt.datetime) -> int:
    return int(_aware(when).timestamp())


def _from_epoch(value: int | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC)
