"""Exports: JSONL (verifiable offline) and CSV (for spreadsheets).

JSONL: line 1 is a signed manifest ``{"export": {...}, "signature": "..."}``
naming the first record's seq and prev_hash and the last record's seq and
hash; every further line is one record exactly as chained, plus its ``hash``.
An export covers the contiguous stretch of the chain from the first record at
or after ``since`` to the last record before ``until`` (records are appended
in commit order, so a time range is cut on seq, never filtered).

CSV: one row per record, columns :data:`CSV_COLUMNS`; list values are joined
with spaces; fields not in a column go to ``details`` as JSON. A cell that a
spreadsheet would run as a formula (starting with ``= + - @``) gets a leading
``'`` (documented in docs/compliance.md).
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securemail.audit import store
from securemail.audit.chain import export_message, key_id, sign
from securemail.audit.records import format_time
from securemail.errors import InputError

__all__ = ["CSV_COLUMNS", "export_csv", "export_jsonl", "iter_export_records", "write_atomically"]

CSV_COLUMNS = (
    "seq", "at", "kind", "event_id", "message_id", "message_sha256", "mail_from", "recipient",
    "source", "role", "action", "rules", "mode", "outcome", "reason", "portal_id",
    "upstream_reply", "tls_version", "tls_cipher", "tls_peer_cert_sha256", "submitter", "peer",
    "config_sha256", "instance_id", "details", "prev_hash", "hash",
)


def iter_export_records(conn: sqlite3.Connection, since: str | None = None,
                        until: str | None = None) -> Iterator[dict[str, Any]]:
    """Records (with ``hash``) of the contiguous stretch between ``since`` and ``until``."""
    lo, hi = store.seq_range(conn, since, until)
    for row in store.iter_records(conn, first_seq=lo, last_seq=hi):
        rec: dict[str, Any] = json.loads(row.body)
        rec["hash"] = row.hash
        yield rec


def export_jsonl(conn: sqlite3.Connection, key: Ed25519PrivateKey, out: IO[str], *,
                 now: datetime, since: str | None = None, until: str | None = None) -> int:
    """Write a signed JSONL export; returns the number of records written."""
    # Read in one snapshot so the manifest and the lines agree while writers append
    # (the caller's, when it already holds one: then what it verified is what we export).
    own_snapshot = not conn.in_transaction
    if own_snapshot:
        conn.execute("BEGIN")
    try:
        records = list(iter_export_records(conn, since, until))
        pruned = store.pruned_note(conn, since)
    finally:
        if own_snapshot:
            conn.execute("COMMIT")
    manifest: dict[str, Any] = {
        "format": "securemail-audit-export", "version": 1, "created": format_time(now),
        "key_id": key_id(key.public_key()), "since": since, "until": until,
        "records": len(records),
        "first_seq": records[0]["seq"] if records else None,
        "first_prev_hash": records[0]["prev_hash"] if records else None,
        "last_seq": records[-1]["seq"] if records else None,
        "last_hash": records[-1]["hash"] if records else None,
    }
    if pruned:  # signed with the rest: the period looks complete but is not
        manifest["pruned"] = pruned
    signature = sign(key, export_message(manifest))
    out.write(_line({"export": manifest, "signature": signature}))
    for rec in records:
        out.write(_line(rec))
    return len(records)


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def export_csv(conn: sqlite3.Connection, out: IO[str], *, since: str | None = None,
               until: str | None = None) -> int:
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    count = 0
    columns = set(CSV_COLUMNS)
    for rec in iter_export_records(conn, since, until):
        details = {k: v for k, v in rec.items() if k not in columns and k != "v"}
        rec["details"] = json.dumps(details, sort_keys=True, ensure_ascii=False) if details else ""
        writer.writerow([_cell(rec.get(c)) if c != "details" else rec["details"]
                         for c in CSV_COLUMNS])
        count += 1
    return count


def write_atomically(path: Path, write: Any, *, mode: int = 0o600) -> Any:
    """Call ``write(file)`` on a temporary file, then rename it over ``path``.

    The file gets ``mode`` (0600 by default: exports and reports name patients'
    addresses). A missing folder or a file that cannot be written is an
    :class:`InputError` naming the path; a mistyped folder is not created.
    """
    if not path.parent.is_dir():
        raise InputError(f"{path}: folder {path.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror or type(exc).__name__})") \
            from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            result = write(f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise InputError(f"{path}: cannot write ({exc.strerror or type(exc).__name__})") \
                from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return result
