"""The compliance report: figures computed from the records, rendered as one HTML file.

:func:`report_data` computes every figure from the records themselves (the
same bodies an export carries); :func:`render_html` only lays them out. The
HTML is self-contained: inline CSS and SVG, no scripts, no network, and it
prints on paper. Each figure sits in an element with a ``data-metric``
attribute so tests (and auditors) can check it against the records.
"""

from __future__ import annotations

import importlib
import json
import sqlite3
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any

from securemail.audit import store
from securemail.audit.records import format_time

__all__ = ["KeyExpiry", "ReportData", "UNAUTHORISED_RULE", "render_html", "report_data"]

UNAUTHORISED_RULE = "unauthorised-recipient"
UNAUTHORISED_ROLE = "third-party"
UNAUTHORISED_COLUMNS = ("at", "mail_from", "recipient", "source", "action", "mode", "outcome")
ACTIONS = ("deliver", "encrypt-pgp", "encrypt-smime", "portal", "block")
COLOURS = {"deliver": "#4e79a7", "encrypt-pgp": "#59a14f", "encrypt-smime": "#8cd17d",
           "portal": "#f28e2b", "block": "#e15759"}
EXPIRY_WINDOW_DAYS = 30
MAX_LISTED = 500  # rows of unauthorised-recipient events shown (the count is always complete)


@dataclass(frozen=True, slots=True)
class KeyExpiry:
    address: str
    fingerprint: str
    kind: str
    expires: str


@dataclass(slots=True)
class ReportData:
    generated: str
    since: str | None
    until: str | None
    recipient_records: int = 0
    messages: int = 0  # distinct message_sha256
    per_day: dict[str, Counter[str]] = field(default_factory=dict)
    by_action: Counter[str] = field(default_factory=Counter)
    blocks_by_rule: Counter[str] = field(default_factory=Counter)
    unauthorised: list[dict[str, Any]] = field(default_factory=list)  # the people not allowed
    blocked_with_unauthorised: int = 0  # authorised recipients of those messages, blocked too
    sealed: int = 0  # distinct portal ids sealed in the period
    opened: int = 0  # of those, opened at least once
    open_hours: list[float] = field(default_factory=list)
    portal_events: Counter[str] = field(default_factory=Counter)
    keys_expiring: list[KeyExpiry] | None = None  # None: key store not available
    integrity: str = ""  # the verification summary of the store the figures come from
    outside_window: int = 0  # records inside the chain stretch but timed outside the window

    @property
    def pickup_rate(self) -> float | None:
        return self.opened / self.sealed if self.sealed else None

    @property
    def median_open_hours(self) -> float | None:
        return statistics.median(self.open_hours) if self.open_hours else None


def report_data(conn: sqlite3.Connection, *, now: datetime, since: str | None = None,
                until: str | None = None) -> ReportData:
    data = ReportData(generated=format_time(now), since=since, until=until)
    own_snapshot = not conn.in_transaction  # all figures from the same commit
    if own_snapshot:
        conn.execute("BEGIN")
    try:
        _collect(conn, data, since, until)
    finally:
        if own_snapshot:
            conn.execute("COMMIT")
    data.keys_expiring = _keys_expiring(conn, now)
    return data


def _collect(conn: sqlite3.Connection, data: ReportData, since: str | None,
             until: str | None) -> None:
    lo, hi = store.seq_range(conn, since, until)
    sealed_at: dict[str, str] = {}
    first_open: dict[str, str] = {}
    hashes: set[str] = set()
    for row in store.iter_records(conn, first_seq=lo, last_seq=hi):
        if row.kind in ("checkpoint", "prune"):
            continue
        # The stretch of chain between the window's ends can hold records
        # committed out of time order (a clock step, several writers): the
        # figures count only records whose time is in the window the page names.
        if (since is not None and row.at < since) or (until is not None and row.at >= until):
            data.outside_window += 1
            continue
        rec = json.loads(row.body)
        if row.kind == "message":
            _count_message(data, rec, hashes, sealed_at)
        elif rec.get("category") == "portal":
            data.portal_events[row.kind] += 1
            pid = rec.get("portal_id")
            if row.kind == "opened" and isinstance(pid, str) and pid not in first_open:
                first_open[pid] = row.at
    data.messages = len(hashes)
    data.sealed = len(sealed_at)
    for pid, at in sealed_at.items():
        if pid in first_open:
            data.opened += 1
            delta = _time(first_open[pid]) - _time(at)
            data.open_hours.append(max(delta.total_seconds(), 0.0) / 3600)


def _count_message(data: ReportData, rec: dict[str, Any], hashes: set[str],
                   sealed_at: dict[str, str]) -> None:
    action = str(rec.get("action"))
    data.recipient_records += 1
    hashes.add(str(rec.get("message_sha256")))
    data.per_day.setdefault(str(rec["at"])[:10], Counter())[action] += 1
    data.by_action[action] += 1
    rules = [str(r) for r in rec.get("rules") or []]
    if action == "block":
        for rule in rules:
            data.blocks_by_rule[rule] += 1
    if UNAUTHORISED_RULE in rules:
        # The rule is on every recipient the whole-message block stopped; only a
        # third party is the unauthorised person (the client copied is not).
        if rec.get("role") == UNAUTHORISED_ROLE:
            data.unauthorised.append({k: rec.get(k) for k in UNAUTHORISED_COLUMNS})
        else:
            data.blocked_with_unauthorised += 1
    pid = rec.get("portal_id")
    if rec.get("outcome") == "sealed" and isinstance(pid, str):
        sealed_at.setdefault(pid, str(rec["at"]))


def _time(at: str) -> datetime:
    return datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _keys_expiring(conn: sqlite3.Connection, now: datetime) -> list[KeyExpiry] | None:
    """Keys from the key store that expire within 30 days; None if that store is absent."""
    try:
        keyring = importlib.import_module("securemail.keys").Keyring
    except (ImportError, AttributeError):
        return None
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'keyring_keys'").fetchone()
    if exists is None:
        return []  # no key was ever imported: nothing can expire
    try:
        keys = keyring(conn).list(now)
    except Exception:  # noqa: BLE001 - the report must not fail on another module's store
        return None
    horizon = now + timedelta(days=EXPIRY_WINDOW_DAYS)
    soon: list[KeyExpiry] = []
    for k in keys:
        expires = getattr(k, "expires", None)
        if expires is None:
            continue
        when = expires if isinstance(expires, datetime) else None
        if when is None:
            try:
                when = datetime.fromisoformat(str(expires))
            except ValueError:
                continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        if when <= horizon:
            addresses = getattr(k, "addresses", None) or (getattr(k, "address", ""),)
            soon.append(KeyExpiry(", ".join(str(a) for a in addresses),
                                  str(getattr(k, "fingerprint", "")),
                                  str(getattr(k, "kind", "")), when.date().isoformat()))
    return sorted(soon, key=lambda k: k.expires)


# ------------------------------------------------------------------ HTML


def render_html(data: ReportData, *, practice: str = "") -> str:
    parts = [_HEAD.format(title=escape(f"Audit report — {practice}" if practice else
                                      "Audit report"))]
    period = f"{data.since or 'first record'} to {data.until or 'last record'}"
    parts.append(f"<h1>Audit report{' — ' + escape(practice) if practice else ''}</h1>"
                 f"<p>Generated {escape(data.generated)} from the audit records; period:"
                 f" {escape(period)}.</p>")
    if data.outside_window:
        parts.append(f"<p>Not counted: <span data-metric=\"outside-window\">"
                     f"{data.outside_window}</span> record(s) written among this period's"
                     " records but timed outside it (committed out of time order).</p>")
    if data.integrity:
        parts.append(f"<p data-metric=\"integrity\">Integrity check: {escape(data.integrity)}"
                     "</p>")
    parts.append("<h2>Summary</h2><table><tbody>")
    for label, metric, value in (
        ("Messages", "messages", str(data.messages)),
        ("Recipient decisions", "recipient-records", str(data.recipient_records)),
        ("Blocked recipients", "blocked", str(data.by_action.get("block", 0))),
        ("Unauthorised-recipient events", "unauthorised", str(len(data.unauthorised))),
        ("Recipients blocked with an unauthorised one", "blocked-with-unauthorised",
         str(data.blocked_with_unauthorised)),
        ("Portal messages sealed", "sealed", str(data.sealed)),
        ("Portal messages opened", "opened", str(data.opened)),
        ("Portal pickup rate", "pickup-rate", _pct(data.pickup_rate)),
        ("Median time to open", "median-open-hours", _duration(data.median_open_hours)),
    ):
        parts.append(f"<tr><th>{label}</th><td data-metric=\"{metric}\">{value}</td></tr>")
    parts.append("</tbody></table>")
    parts.append(_per_day(data))
    parts.append(_blocks(data))
    parts.append(_unauthorised(data))
    parts.append(_keys(data))
    parts.append("</body></html>\n")
    return "".join(parts)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.1f}%"


def _duration(hours: float | None) -> str:
    """Readable at any scale: a 26-second open is not "0.0 hours"."""
    if hours is None:
        return "n/a"
    seconds = hours * 3600
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"


def _per_day(data: ReportData) -> str:
    days = sorted(data.per_day)
    out = ["<h2>Recipient decisions per day, by action</h2>"]
    shown = days[-90:]
    if shown:
        peak = max(sum(data.per_day[d].values()) for d in shown)
        width, height, bar = 720, 220, max(720 // len(shown), 2)
        svg = [f'<svg role="img" aria-label="decisions per day" width="{width}"'
               f' height="{height + 20}" viewBox="0 0 {width} {height + 20}">']
        for i, day in enumerate(shown):
            y = float(height)
            for action in ACTIONS:
                n = data.per_day[day].get(action, 0)
                if n:
                    h = n * height / peak
                    y -= h
                    svg.append(f'<rect x="{i * bar}" y="{y:.1f}" width="{max(bar - 1, 1)}"'
                               f' height="{h:.1f}" fill="{COLOURS[action]}">'
                               f"<title>{day} {action}: {n}</title></rect>")
        svg.append(f'<text x="0" y="{height + 15}" font-size="11">{shown[0]}</text>')
        svg.append(f'<text x="{width}" y="{height + 15}" font-size="11" text-anchor="end">'
                   f"{shown[-1]}</text></svg>")
        out.append("".join(svg))
        out.append("<p>" + " ".join(
            f'<span class="key" style="background:{COLOURS[a]}"></span>{a}' for a in ACTIONS)
            + (" (chart: last 90 days)" if len(days) > 90 else "") + "</p>")
    out.append("<table><thead><tr><th>Day</th>" + "".join(f"<th>{a}</th>" for a in ACTIONS)
               + "</tr></thead><tbody>")
    for day in days:
        cells = "".join(
            f'<td data-metric="day-action" data-day="{day}" data-action="{a}">'
            f"{data.per_day[day].get(a, 0)}</td>" for a in ACTIONS)
        out.append(f"<tr><td>{day}</td>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _blocks(data: ReportData) -> str:
    out = ["<h2>Blocked recipients by rule</h2>"]
    rules = data.blocks_by_rule.most_common()
    if not rules:
        return out[0] + "<p>No blocks in this period.</p>"
    peak = rules[0][1]
    svg = [f'<svg role="img" aria-label="blocks by rule" width="720" height="{len(rules) * 22}">']
    for i, (rule, n) in enumerate(rules):
        w = n * 420 / peak
        svg.append(f'<text x="0" y="{i * 22 + 15}" font-size="12">{escape(rule)}</text>'
                   f'<rect x="250" y="{i * 22 + 3}" width="{w:.1f}" height="16"'
                   f' fill="{COLOURS["block"]}"/><text x="{255 + w:.1f}" y="{i * 22 + 15}"'
                   f' font-size="12">{n}</text>')
    out.append("".join(svg) + "</svg><table><tbody>")
    for rule, n in rules:
        out.append(f'<tr><th>{escape(rule)}</th><td data-metric="block-rule"'
                   f' data-rule="{escape(rule)}">{n}</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


def _unauthorised(data: ReportData) -> str:
    out = [f"<h2>Unauthorised-recipient events ({len(data.unauthorised)})</h2>",
           "<p>Each row is one person who was sent client mail without being the client"
           " or an authorised contact. Other recipients of the same messages that were"
           f" blocked with them (the client, staff): {data.blocked_with_unauthorised}.</p>"]
    if not data.unauthorised:
        return "".join(out) + "<p>None in this period.</p>"
    out.append("<table><thead><tr><th>Time (UTC)</th><th>Sender</th><th>Recipient</th>"
               "<th>Copied as</th><th>Action</th><th>Mode</th><th>Outcome</th></tr></thead>"
               "<tbody>")
    for ev in data.unauthorised[:MAX_LISTED]:
        out.append("<tr data-metric=\"unauthorised-row\">" + "".join(
            f"<td>{escape(str(ev.get(k) or ''))}</td>" for k in UNAUTHORISED_COLUMNS) + "</tr>")
    out.append("</tbody></table>")
    if len(data.unauthorised) > MAX_LISTED:
        out.append(f"<p>First {MAX_LISTED} shown; export the records for the full list.</p>")
    return "".join(out)


def _keys(data: ReportData) -> str:
    out = [f"<h2>Keys expiring within {EXPIRY_WINDOW_DAYS} days</h2>"]
    if data.keys_expiring is None:
        return out[0] + "<p>Key store not available in this installation.</p>"
    if not data.keys_expiring:
        return out[0] + "<p>None.</p>"
    out.append("<table><thead><tr><th>Address</th><th>Kind</th><th>Fingerprint</th>"
               "<th>Expires</th></tr></thead><tbody>")
    for k in data.keys_expiring:
        out.append(f'<tr data-metric="key-expiring"><td>{escape(k.address)}</td>'
                   f"<td>{escape(k.kind)}</td><td>{escape(k.fingerprint)}</td>"
                   f"<td>{escape(k.expires)}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 60em; }}
table {{ border-collapse: collapse; margin: .5em 0 1.5em; }}
th, td {{ border: 1px solid #bbb; padding: .2em .6em; text-align: left; }}
td[data-metric] {{ text-align: right; }}
.key {{ display: inline-block; width: .9em; height: .9em; margin: 0 .3em 0 1em; }}
@media print {{ body {{ margin: 0; }} h2 {{ break-after: avoid; }} tr {{ break-inside: avoid; }}
  svg {{ max-width: 100%; }} }}
</style></head><body>
"""
