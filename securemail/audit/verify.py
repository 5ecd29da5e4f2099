"""Verification of the chain, in the store or in a JSONL export.

Checks, record by record: the hash matches the canonical encoding (a flipped
bit), the seq is the next one (a deleted, inserted or reordered record), the
prev_hash is the previous record's hash (the chain), and every checkpoint and
prune record is signed by the expected key over the hash it claims to cover.
At the end the last record must be the one the signed head (store) or the
signed export manifest names: otherwise the tail was cut.

A last export line that was cut short is reported as ``incomplete-tail``,
distinct from ``tampered``; records signed by a key other than the one given,
and otherwise intact, are reported as ``wrong-key`` (the usual cause is the
wrong ``.pem``, not tampering). An export whose line endings were converted to
CRLF (or that gained a UTF-8 byte-order mark) in an editor still verifies: the
line terminator is not part of what is hashed or signed; the report notes it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from securemail.audit import store
from securemail.audit.chain import (
    GENESIS_HASH,
    canonical,
    canonical_object,
    checkpoint_message,
    export_message,
    head_message,
    key_id,
    prune_message,
    record_hash,
    signature_valid,
)
from securemail.errors import InputError

__all__ = ["VerifyReport", "verify_export", "verify_store"]

OK, TAMPERED, INCOMPLETE, WRONG_KEY = "ok", "tampered", "incomplete-tail", "wrong-key"
LABELS = {TAMPERED: "TAMPERED", INCOMPLETE: "INCOMPLETE TAIL", WRONG_KEY: "WRONG KEY"}
BOM = b"\xef\xbb\xbf"
CSV_HEADER = b"seq,at,kind,"  # the first line of a CSV export (not verifiable)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The result of a verification. ``first_bad_seq`` names the first bad record."""

    source: str
    status: str  # "ok" | "tampered" | "incomplete-tail" | "wrong-key"
    records: int  # records that verified
    checkpoints: int  # signed checkpoints that verified
    first_seq: int | None
    last_seq: int | None  # last record that verified
    unsigned_tail: int = 0  # records after the last checkpoint (covered by the head/manifest)
    signed_seq: int | None = None  # last record a valid signature vouches for
    first_bad_seq: int | None = None
    first_bad_line: int | None = None  # exports only: 1-based line number
    problem: str = ""
    key_id: str | None = None  # the key verified with
    signed_by: str | None = None  # the key id the records name, when it is another
    note: str = ""  # something changed that does not affect what is signed (line endings)

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "status": self.status, "ok": self.ok,
            "records": self.records, "checkpoints": self.checkpoints,
            "first_seq": self.first_seq, "last_seq": self.last_seq,
            "unsigned_tail": self.unsigned_tail, "signed_seq": self.signed_seq,
            "first_bad_seq": self.first_bad_seq,
            "first_bad_line": self.first_bad_line, "problem": self.problem,
            "key_id": self.key_id, "signed_by": self.signed_by, "note": self.note,
        }

    def summary(self) -> str:
        if self.ok:
            span = f"records {self.first_seq}..{self.last_seq}" if self.records else "no records"
            tail = (f"; {self.unsigned_tail} record(s) after the last checkpoint"
                    if self.unsigned_tail else "")
            return (f"OK: {self.source}: {span} verified, {self.checkpoints} signed"
                    f" checkpoint(s){tail}{self._note()}")
        label = LABELS.get(self.status, self.status.upper())
        if self.status == WRONG_KEY:
            span = (f"Records {self.first_seq}..{self.last_seq} chain correctly; only key"
                    f" {self.signed_by} can check their signatures" if self.records
                    else "It holds no records")
            return f"{label}: {self.source}: {self.problem}. {span}{self._note()}"
        if self.first_bad_seq is not None:
            where = f"first bad record {self.first_bad_seq}"
            if self.first_bad_line is not None:
                where += f" (line {self.first_bad_line})"
        elif self.first_bad_line == 1:
            where = "bad manifest (line 1)"
        elif self.first_bad_line is not None:
            where = f"first bad line {self.first_bad_line}"
        else:
            where = "first bad record ?"
        return (f"{label}: {self.source}: {where}: {self.problem}{self._proven()}"
                f"{self._note()}")

    def _note(self) -> str:
        return f"; note: {self.note}" if self.note else ""

    def _proven(self) -> str:
        """What still holds before the first bad record: chained is not signed."""
        last, signed = self.last_seq, self.signed_seq
        if last is None:
            return ""
        if signed == last:
            return f"; records up to {last} verify"
        chained = f"{signed + 1}..{last}" if signed else f"{self.first_seq}..{last}"
        vouched = f"records up to {signed} verify; " if signed else ""
        return (f"; {vouched}records {chained} chain correctly but no valid signature"
                " vouches for them")


class _Bad(Exception):
    def __init__(self, seq: int | None, problem: str) -> None:
        super().__init__(problem)
        self.seq = seq
        self.problem = problem


class _Chain:
    """Feeds records in order; raises _Bad at the first one that does not verify."""

    def __init__(self, public_key: Ed25519PublicKey, start: tuple[int, str] | None, *,
                 signer: str | None = None, may_switch: bool = False) -> None:
        self.key = public_key
        self.kid = key_id(public_key)
        # ``signer``: the key id the signed records name when it is not ours.
        # Their signatures cannot be checked then; everything else still is.
        self.signer = signer
        self.may_switch = may_switch  # store: the first checkpoint may reveal another key
        self.switched_at: int | None = None  # seq of the first record naming another key
        self.expected = start  # (seq, prev_hash) the next record must have
        self.first_seq: int | None = None
        self.first_prev: str | None = None
        self.wiped_note = ""  # a chain that began on a wiped log (chain-start found-empty)
        self.last_seq: int | None = None
        self.last_hash: str | None = None
        self.count = 0
        self.checkpoints = 0
        self.since_checkpoint = 0
        self.signed_seq: int | None = None
        self.prune_start: tuple[int, str] | None = None

    def feed(self, rec: dict[str, Any]) -> None:
        seq, prev, digest = rec.get("seq"), rec.get("prev_hash"), rec.get("hash")
        if not (isinstance(seq, int) and isinstance(prev, str) and isinstance(digest, str)
                and isinstance(rec.get("kind"), str) and isinstance(rec.get("at"), str)):
            raise _Bad(self._next_seq(), "record lacks its chain fields (seq, prev_hash, hash)")
        if record_hash(rec) != digest:
            raise _Bad(seq, "altered: its content does not match its hash")
        if self.expected is not None:
            want_seq, want_prev = self.expected
            if seq > want_seq:
                span = f"records {want_seq}..{seq - 1} are not where they belong" if (
                    seq - 1 > want_seq) else f"record {want_seq} is not where it belongs"
                raise _Bad(want_seq, f"missing: {span} (found seq {seq}): deleted or reordered")
            if seq < want_seq:
                raise _Bad(seq, f"out of order: seq {seq} appears where {want_seq} belongs"
                           " (a record was inserted, duplicated or reordered)")
            if prev != want_prev:
                raise _Bad(seq, "chain broken: prev_hash is not the hash of the record before it"
                           " (a record was inserted, replaced or reordered)")
        if self.first_seq is None:
            self.first_seq, self.first_prev = seq, prev
        if rec["kind"] == "chain-start" and rec.get("reason_code") == "found-empty":
            self.wiped_note = (f"record {seq} ({rec['at']}) says the audit log was found empty"
                               f" while the store held {rec.get('count')} row(s) recorded in it:"
                               " the records before it were deleted")
        if rec["kind"] in ("checkpoint", "prune"):
            self._check_signed(rec, seq, prev)
        else:
            self.since_checkpoint += 1
        self.count += 1
        self.last_seq, self.last_hash = seq, digest
        self.expected = (seq + 1, digest)

    def _next_seq(self) -> int | None:
        return self.expected[0] if self.expected else None

    def _check_signed(self, rec: dict[str, Any], seq: int, prev: str) -> None:
        if rec.get("covers_seq") != seq - 1 or rec.get("covers_hash") != prev:
            raise _Bad(seq, "checkpoint does not cover the record before it")
        found, expected = rec.get("key_id"), self.signer or self.kid
        if found != expected:
            if self.may_switch and self.checkpoints == 0 and self.signer is None and (
                    isinstance(found, str) and found):
                self.signer, self.switched_at = found, seq  # the wrong key, or tampering
            else:
                raise _Bad(seq, f"checkpoint signed by another key (key id {found},"
                           f" expected {expected})")
        start: tuple[int, str] | None = None
        if rec["kind"] == "prune":
            first, first_prev = rec.get("first_seq"), rec.get("first_prev_hash")
            if not isinstance(first, int) or not isinstance(first_prev, str):
                raise _Bad(seq, "prune checkpoint lacks first_seq / first_prev_hash")
            start = (first, first_prev)
            message = prune_message(first, first_prev, seq - 1, prev)
        else:
            message = checkpoint_message(seq - 1, prev)
        if start is not None:
            self.prune_start = start
        self.since_checkpoint = 0
        if self.signer is not None:
            return  # signed by another key: not checkable with ours, and not vouched for
        if not signature_valid(self.key, rec.get("signature"), message):
            raise _Bad(seq, "checkpoint signature does not verify (forged or altered)")
        self.signed_seq = seq
        self.checkpoints += 1


def _report(source: str, chain: _Chain, status: str = OK, bad: _Bad | None = None,
            line: int | None = None, note: str = "") -> VerifyReport:
    if status == OK:  # the signed head or manifest vouches for everything up to the end
        chain.signed_seq = chain.last_seq
    if chain.signer is not None and status == TAMPERED:
        note = "; ".join(filter(None, (
            note, f"the records name key id {chain.signer}, not the key given ({chain.kid}),"
            " so their signatures were not checked")))
    return VerifyReport(
        source=source, status=status, records=chain.count, checkpoints=chain.checkpoints,
        first_seq=chain.first_seq, last_seq=chain.last_seq,
        unsigned_tail=chain.since_checkpoint, signed_seq=chain.signed_seq,
        first_bad_seq=bad.seq if bad else None,
        first_bad_line=line, problem=bad.problem if bad else "",
        key_id=chain.kid, signed_by=chain.signer, note=note,
    )


def _wrong_key(source: str, chain: _Chain, what: str, key_label: str,
               note: str = "") -> VerifyReport:
    """Intact, but signed by another key: most likely the wrong public key file."""
    problem = (f"{what} checkpoints are signed by key id {chain.signer}; {key_label} is"
               f" {chain.kid}: compare both with the key id in your compliance file (if it is"
               f" {chain.kid}, your installation did not sign this; if it is {chain.signer},"
               " give that key: `securemail audit public-key` prints it)")
    return _report(source, chain, WRONG_KEY, _Bad(None, problem), note=note)


# ------------------------------------------------------------------ store


def _stored(rows: Iterable[store.StoredRecord]) -> Iterator[dict[str, Any]]:
    for row in rows:
        try:
            rec = json.loads(row.body)
        except ValueError:
            raise _Bad(row.seq, "altered: the stored record is not valid JSON") from None
        if not isinstance(rec, dict) or canonical(rec).decode() != row.body:
            raise _Bad(row.seq, "altered: the stored record is not in canonical form")
        if (rec.get("seq"), rec.get("kind"), rec.get("at"), rec.get("prev_hash")) != (
                row.seq, row.kind, row.at, row.prev_hash):
            raise _Bad(row.seq, "altered: the indexed columns do not match the record")
        rec["hash"] = row.hash
        yield rec


def verify_store(conn: sqlite3.Connection, public_key: Ed25519PublicKey, *,
                 key_label: str = "the public key given") -> VerifyReport:
    """Verify the whole chain in the store against the signed head.

    ``key_label`` names ``public_key`` in a wrong-key report (for example "the
    store's signing key").
    """
    source = "store"
    if not store.has_audit_tables(conn):
        if made := store.recorded_history(conn):  # dropped, not merely emptied
            return _report(source, _Chain(public_key, None), TAMPERED, _Bad(
                1, f"the audit tables are gone, but the store holds {made.text}, each recorded"
                " in the audit log when it was made: the audit log was deleted"))
        raise InputError("the store has no audit tables: it is not a securemail audit store"
                         " (check storage.url)")
    chain = _Chain(public_key, None, may_switch=True)
    # One read snapshot: records and head must be seen as of the same commit,
    # or a writer appending meanwhile would look like a cut tail.
    own_snapshot = not conn.in_transaction
    if own_snapshot:
        conn.execute("BEGIN")
    try:
        for rec in _stored(store.iter_records(conn)):
            chain.feed(rec)
        _check_start(chain)
        _check_head(conn, chain, public_key)
    except _Bad as bad:
        return _report(source, chain, TAMPERED, bad)
    finally:
        if own_snapshot:
            conn.execute("COMMIT")
    if chain.signer is not None:
        return _wrong_key(source, chain, "the store's", key_label)
    return _report(source, chain, note=chain.wiped_note)


def _check_start(chain: _Chain) -> None:
    if chain.first_seq is None:
        return
    if chain.first_seq == 1:
        if chain.first_prev != GENESIS_HASH:
            raise _Bad(1, "the first record does not start the chain")
        return
    if chain.prune_start is None:
        raise _Bad(1, f"missing: records 1..{chain.first_seq - 1} were deleted"
                   " without a signed prune checkpoint")
    first, first_prev = chain.prune_start
    if chain.first_seq > first:
        raise _Bad(first, f"missing: records {first}..{chain.first_seq - 1} were deleted after"
                   " the last prune")
    if chain.first_seq == first and chain.first_prev != first_prev:
        raise _Bad(first, "the first record is not the one the prune checkpoint names")


def _check_head(conn: sqlite3.Connection, chain: _Chain, key: Ed25519PublicKey) -> None:
    h = store.head(conn)
    if h.seq == 0 and not h.signature:
        if chain.last_seq is not None:
            raise _Bad(1, "the signed head is missing (the audit tables were rewritten)")
        if made := store.recorded_history(conn):
            raise _Bad(1, f"the audit log is empty, but the store holds {made.text}, each"
                       " recorded in the audit log when it was made: its records were deleted")
        return
    head_valid = signature_valid(key, h.signature, head_message(h.seq, h.hash))
    if chain.signer is not None and head_valid:
        # Our key signed the head, so the checkpoints naming another key are not ours.
        raise _Bad(chain.switched_at, f"checkpoint signed by another key (key id"
                   f" {chain.signer}, expected {chain.kid})")
    if chain.signer is None and not head_valid:
        raise _Bad(h.seq, "the signed head does not verify (signed by another key or altered)")
    last = chain.last_seq or 0
    if h.seq > last:
        raise _Bad(last + 1, f"tail cut: records {last + 1}..{h.seq} were removed")
    if h.seq < last:
        raise _Bad(h.seq + 1, f"records {h.seq + 1}..{last} were added without the signing key")
    if h.hash != chain.last_hash:
        raise _Bad(h.seq, "the last record is not the one the signed head names")


# ------------------------------------------------------------------ export


def verify_export(path: str | Path, public_key: Ed25519PublicKey) -> VerifyReport:
    """Verify a JSONL export offline, with only the public key.

    An empty file, or a CSV export, is not something to verify: InputError.
    """
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the export ({exc.strerror})") from None
    notes: list[str] = []
    if data.startswith(BOM):  # an editor saved it "UTF-8 with BOM": not part of any line
        data = data[len(BOM):]
        notes.append("a UTF-8 byte-order mark was added before the first line (accepted: it"
                     " is not part of what is hashed or signed)")
    if not data.strip():
        raise InputError(f"{path}: the file is empty: not an audit export (a JSONL export"
                         " starts with its signed manifest line; export again with"
                         " `securemail audit export --format jsonl`)")
    if data.startswith(CSV_HEADER):
        raise InputError(f"{path}: this is a CSV export, which cannot be verified; verify the"
                         " JSONL export (`securemail audit export --format jsonl`)")
    lines = data.split(b"\n")
    complete = data.endswith(b"\n")
    if complete:
        lines.pop()
    # A Windows editor may save the file with CRLF line ends: the terminator is
    # not part of the canonical encoding that is hashed and signed, so each line
    # is checked without it (docs/compliance.md, "JSONL").
    crlf = sum(line.endswith(b"\r") for line in lines)
    if crlf:
        lines = [line.removesuffix(b"\r") for line in lines]
        which = "the line endings were" if crlf == len(lines) else (
            f"{crlf} of {len(lines)} line endings were")
        notes.append(f"{which} converted to CRLF (accepted: a line ending is not part of what"
                     " is hashed or signed)")
    note = "; ".join(notes)
    chain = _Chain(public_key, None)
    try:
        manifest = _manifest(lines[0], public_key)
    except _Bad as bad:
        if len(lines) == 1 and not complete:
            cut = _Bad(None, "incomplete: the file ends inside its manifest line")
            return _report(source, chain, INCOMPLETE, cut, 1, note)
        return _report(source, chain, TAMPERED, bad, 1, note)
    if manifest["key_id"] != chain.kid:  # checked structurally; see _wrong_key
        chain.signer = str(manifest["key_id"])
    if manifest.get("pruned"):  # the period reaches back before a prune
        note = "; ".join(filter(None, (note, f"the export says {manifest['pruned']}")))
    count = int(manifest["records"])
    if count:
        chain.expected = (int(manifest["first_seq"]), str(manifest["first_prev_hash"]))
    for number, raw in enumerate(lines[1:], start=2):
        last_line = number == len(lines)
        if not raw:
            return _report(source, chain, TAMPERED,
                           _Bad(None, "an empty line (an export has none)"), number, note)
        try:
            rec = json.loads(raw.decode("utf-8"))
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError:
            if last_line and not complete:
                torn = _Bad(chain._next_seq(), "incomplete tail: the last line is cut short")
                return _report(source, chain, INCOMPLETE, torn, number, note)
            return _report(source, chain, TAMPERED,
                           _Bad(chain._next_seq(), "altered: the line is not a JSON record"),
                           number, note)
        if canonical_object(rec) != raw:
            # Duplicate keys, other key order or spacing: two parsers could read
            # different values from this line, so it is not the line we wrote.
            # Named by its place in the chain: its own seq may be the duplicate.
            return _report(source, chain, TAMPERED, _Bad(
                chain._next_seq(),
                "altered: the line is not in canonical form (duplicate keys, key order or"
                " spacing differ from what securemail writes)"), number, note)
        try:
            chain.feed(rec)
        except _Bad as broken:
            return _report(source, chain, TAMPERED, broken, number, note)
    try:
        _check_end(chain, manifest, count)
    except _Bad as bad:
        # The line of the record named, when the export holds it (the last one,
        # forged after the last checkpoint); past the end for a cut tail.
        first = int(manifest.get("first_seq", 0) or 0)
        at = 2 + bad.seq - first if (bad.seq is not None and count and first <= bad.seq
                                     and 2 + bad.seq - first < len(lines) + 1) else len(lines) + 1
        return _report(source, chain, TAMPERED, bad, at, note)
    if chain.signer is not None:
        return _wrong_key(source, chain, "the export's", "the public key given", note)
    return _report(source, chain, note="; ".join(filter(None, (note, chain.wiped_note))))


def _manifest(raw: bytes, key: Ed25519PublicKey) -> dict[str, Any]:
    """The manifest; its signature is checked when it names ``key`` (else the
    caller reports the wrong key once the rest of the file is found intact)."""
    try:
        top = json.loads(raw.decode("utf-8"))
        manifest = top["export"]
        int(manifest["records"])
    except (ValueError, KeyError, TypeError):
        raise _Bad(None, "the first line is not a securemail audit export manifest") from None
    if canonical_object(top) != raw:
        raise _Bad(None, "the manifest line is not in canonical form (altered)")
    named = manifest.get("key_id")
    if not isinstance(named, str) or not named:
        raise _Bad(None, "the export manifest names no key id (altered)")
    if named == key_id(key) and not signature_valid(key, top.get("signature"),
                                                    export_message(manifest)):
        raise _Bad(None, "the export manifest signature does not verify (altered)")
    return dict(manifest)


def _check_end(chain: _Chain, manifest: dict[str, Any], count: int) -> None:
    if count == 0:
        if chain.count:
            raise _Bad(chain.first_seq, "records present in an export that declares none")
        return
    last = int(manifest["last_seq"])
    got = chain.last_seq if chain.last_seq is not None else int(manifest["first_seq"]) - 1
    if got < last:
        raise _Bad(got + 1, f"tail cut: records {got + 1}..{last} are missing")
    if got > last or chain.last_hash != manifest["last_hash"] or chain.count != count:
        raise _Bad(last, "the export does not end with the record its manifest names")
