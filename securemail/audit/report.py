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
from datetime import UTC, date, datetime, timedelta
from html import escape
from typing import Any

from securemail.audit import store
from securemail.audit.records import format_time
from securemail.model import HELD_WITH_OFFENDER

__all__ = ["KeyExpiry", "ReportData", "UNAUTHORISED_RULE", "render_html", "report_data"]

UNAUTHORISED_RULE = "unauthorised-recipient"
UNAUTHORISED_COLUMNS = ("at", "message_id", "message_sha256", "mail_from", "recipient", "source",
                        "mode", "outcome", "reason")
ACTIONS = ("deliver", "encrypt-pgp", "encrypt-smime", "portal", "block")
OUTCOMES = ("delivered", "sealed", "blocked", "refused", "deferred")
OUTCOME_MEANING = {
    "delivered": "the upstream server accepted the copy (in clear, or encrypted with OpenPGP"
                 " or S/MIME)",
    "sealed": "the copy was encrypted into the portal and its notification was accepted"
              " upstream",
    "blocked": "not sent: the policy stopped it",
    "refused": "not sent: the upstream server refused it permanently (5xx)",
    "deferred": "an attempt that sent nothing for this recipient (451, a temporary failure);"
                " the sending program retries, and the retry is counted again with its own"
                " outcome, so a recipient deferred once and then delivered is counted under"
                " both",
}
SHA_PREFIX = 16  # hex digits of message_sha256 shown: enough to find the record in an export
CHART_DAYS = 90
RELAY_ACTOR = "relay"  # a sealed copy the relay revoked because its notification did not leave
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
    shadow_unauthorised: int = 0  # people shadow mode let through (would be stopped)
    sealed: int = 0  # distinct portal ids sealed in the period
    opened: int = 0  # of those, opened at least once
    open_hours: list[float] = field(default_factory=list)
    portal_events: Counter[str] = field(default_factory=Counter)
    admin_events: Counter[str] = field(default_factory=Counter)  # see _admin_label
    submissions: int = 0  # distinct (message_sha256, at): each time a message was received
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (action, outcome)
    sealed_records: int = 0  # recipient records with outcome sealed (may share a portal id)
    revoked_failed_notice: int = 0  # portal copies the relay revoked: notification not sent
    revoked_other: int = 0  # revoked by staff or a program
    first_at: str | None = None  # time of the first / last record counted
    last_at: str | None = None
    keys_expiring: list[KeyExpiry] | None = None  # None: key store not available
    integrity: str = ""  # the verification summary of the store the figures come from
    outside_window: int = 0  # records inside the chain stretch but timed outside the window
    pruned: str = ""  # why the period's start has no records (retention), "" if it has

    @property
    def by_outcome(self) -> Counter[str]:
        totals: Counter[str] = Counter()
        for (_, outcome), n in self.outcomes.items():
            totals[outcome] += n
        return totals

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
    data.pruned = store.pruned_note(conn, since)
    sealed_at: dict[str, str] = {}
    first_open: dict[str, str] = {}
    hashes: set[str] = set()
    submissions: set[tuple[str, str]] = set()
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
        if data.first_at is None or row.at < data.first_at:
            data.first_at = row.at
        if data.last_at is None or row.at > data.last_at:
            data.last_at = row.at
        if row.kind == "message":
            _count_message(data, rec, hashes, sealed_at)
            submissions.add((str(rec.get("message_sha256")), row.at))
        elif rec.get("category") == "portal":
            data.portal_events[row.kind] += 1
            if row.kind == "code-failed" and rec.get("status") == "locked":
                data.portal_events["locked"] += 1
            pid = rec.get("portal_id")
            if row.kind == "opened" and isinstance(pid, str) and pid not in first_open:
                first_open[pid] = row.at
            elif row.kind == "revoked":
                if rec.get("actor") == RELAY_ACTOR:
                    data.revoked_failed_notice += 1
                else:
                    data.revoked_other += 1
        elif rec.get("category") == "admin":
            data.admin_events[_admin_label(row.kind, rec)] += 1
    data.messages = len(hashes)
    data.submissions = len(submissions)
    data.sealed = len(sealed_at)
    if until is not None and len(first_open) < len(sealed_at):
        # Sealed in the period, opened after it: picked up all the same (a
        # quarter's last messages would otherwise count as never opened).
        for row in store.iter_records(conn, first_seq=lo, kinds=("opened",)):
            pid = json.loads(row.body).get("portal_id")
            if isinstance(pid, str) and pid in sealed_at and pid not in first_open:
                first_open[pid] = row.at
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
    data.outcomes[(action, str(rec.get("outcome")))] += 1
    rules = [str(r) for r in rec.get("rules") or []]
    if action == "block":
        for rule in rules:
            data.blocks_by_rule[rule] += 1
    if UNAUTHORISED_RULE in rules and action == "block":
        # Only what was stopped counts: in shadow mode the message went to all
        # (counted apart), and strip mode sent it on to the others.
        if _unauthorised_person(rec):
            data.unauthorised.append({k: rec.get(k) for k in UNAUTHORISED_COLUMNS})
        else:
            data.blocked_with_unauthorised += 1
    elif (UNAUTHORISED_RULE in rules and rec.get("mode") == "shadow"
          and rec.get("decided_action") == "block" and _unauthorised_person(rec)):
        data.shadow_unauthorised += 1
    pid = rec.get("portal_id")
    if rec.get("outcome") == "sealed":
        data.sealed_records += 1
        if isinstance(pid, str):
            sealed_at.setdefault(pid, str(rec["at"]))


def _unauthorised_person(rec: dict[str, Any]) -> bool:
    """Whether a record the rule unauthorised-recipient is on is the person who
    may not have the message, not a recipient held back with them (their
    reason begins "the whole message is blocked because it also goes to ...").
    By the reason alone: a client or an authorised contact may be the one (two
    families on one message), and a third party may be held back (on an
    already-encrypted message, which the two families' clients may not have)."""
    return not str(rec.get("reason") or "").startswith(HELD_WITH_OFFENDER)


def _admin_label(kind: str, rec: dict[str, Any]) -> str:
    """How an administrative record is counted: consent by what it became,
    a configuration load by whether it took effect."""
    if kind == "consent-change":
        return f"consent-{rec.get('consent')}"
    if kind == "config-loaded":
        return "config-failed" if rec.get("status") == "failed" else "config-loaded"
    return kind


# The events section: (metric, where the count comes from, label, what it counts).
EVENT_ROWS = (
    ("code-failed", "portal", "Wrong portal codes",
     "Codes entered wrongly on a portal message; many on one message can be someone"
     " guessing."),
    ("locked", "portal", "Portal messages locked", "Messages locked by wrong codes (the last"
     " wrong code counted above locks it)."),
    ("unlocked", "portal", "Portal locks lifted", "Messages an administrator unlocked after"
     " wrong codes (securemail portal unlock)."),
    ("consent-granted", "admin", "Consent granted or changed", "Clients whose consent to"
     " unencrypted email was put on record (granted, or its warning version or expiry"
     " changed)."),
    ("consent-withdrawn", "admin", "Consent withdrawn", "Clients whose consent to unencrypted"
     " email ended."),
    ("key-import", "admin", "Keys imported", "OpenPGP keys and S/MIME certificates imported."),
    ("key-remove", "admin", "Keys removed", "Keys removed or taken off an address (by hand, a"
     " re-import or a revocation certificate)."),
    ("directory-import", "admin", "Directory imports", "Client and partner lists imported."),
    ("directory-remove", "admin", "Directory entries removed", "Imported clients or partners"
     " removed."),
    ("config-loaded", "admin", "Configuration loaded", "Relay starts and reloads that put a"
     " configuration in force, one per relay process (with workers = 2, each counts twice)."),
    ("config-failed", "admin", "Failed reloads", "Reloads refused (the configuration in force"
     " stayed)."),
    ("chain-start", "admin", "New audit chains", "A new chain started after the signing key was"
     " lost or rotated (audit new-chain; the old one is in an archive file), or because the"
     " audit log was found emptied (reason found-empty: its records were deleted)."),
)


def _time(at: str) -> datetime:
    return datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _when(at: str | None, *, label: bool = True) -> str:
    """A record time to the second, UTC (the records keep microseconds)."""
    if not at:
        return ""
    try:
        return _time(at).strftime("%Y-%m-%d %H:%M:%S" + (" UTC" if label else ""))
    except ValueError:
        return at


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
    parts.append(f"<h1>Audit report{' — ' + escape(practice) if practice else ''}</h1>"
                 f"<p>Generated {escape(_when(data.generated))} from the audit records.</p>"
                 f"<p>Period: <span data-metric=\"period\">{escape(_period(data))}</span>."
                 " Days and times are UTC.</p>")
    if data.pruned:
        parts.append(f"<p class=\"warn\">Not in this report: <span data-metric=\"pruned\">"
                     f"{escape(data.pruned)}</span>.</p>")
    if data.outside_window:
        parts.append(f"<p>Not counted: <span data-metric=\"outside-window\">"
                     f"{data.outside_window}</span> record(s) written among this period's"
                     " records but timed outside it (committed out of time order).</p>")
    if data.first_at is None:  # not an all-zero page that reads like a quiet period
        parts.append("<p class=\"warn\" data-metric=\"empty\">No audit record falls in this"
                     " period: check --since and --until, and that this is the right store.</p>")
    if data.integrity:
        parts.append(f"<p data-metric=\"integrity\">Integrity check: {escape(data.integrity)}"
                     "</p>")
    parts.append(_summary(data))
    parts.append(_outcomes(data))
    parts.append(_per_day(data))
    parts.append(_blocks(data))
    parts.append(_unauthorised(data))
    parts.append(_events(data))
    parts.append(_keys(data))
    parts.append("</body></html>\n")
    return "".join(parts)


def _period(data: ReportData) -> str:
    if data.since is None and data.until is None and data.first_at is None:
        return "no records"
    start = (_when(data.since) if data.since else
             f"{_when(data.first_at)} (first record)" if data.first_at else "the first record")
    end = (f"{_when(data.until)} (not included)" if data.until else
           f"{_when(data.last_at)} (last record)" if data.last_at else "the last record")
    return f"from {start} to {end}"


def _summary(data: ReportData) -> str:
    out = ["<h2>Summary</h2><table class=\"summary\"><thead><tr><th>Figure</th><th>Value</th>"
           "<th>What it counts</th></tr></thead><tbody>"]
    sealed_records = (f" ({data.sealed_records} sealed recipient decisions: a portal message"
                      " can have more than one recipient)"
                      if data.sealed_records != data.sealed else "")
    for label, metric, value, meaning in (
        ("Messages", "messages", str(data.messages),
         "Distinct messages, by SHA-256 of the raw bytes as received: the same bytes received"
         " twice (a retry after a deferral, or an identical resend) count once."),
        ("Submissions", "submissions", str(data.submissions),
         "Times the relay received a message and decided its recipients; a retry of the same"
         " message counts again."),
        ("Recipient decisions", "recipient-records", str(data.recipient_records),
         "One per recipient per submission, whatever the outcome (the outcome table below"
         " adds up to this); a recipient deferred and then retried counts once per attempt."),
        ("Deferred attempts", "deferred", str(data.by_outcome.get("deferred", 0)),
         "Recipient decisions with outcome deferred: nothing was sent to that recipient in"
         " that attempt (451), and the retry is counted again."),
        ("Blocked recipients", "blocked", str(data.by_action.get("block", 0)),
         "Recipient decisions whose action was block (not sent)."),
        ("Unauthorised-recipient events", "unauthorised", str(len(data.unauthorised)),
         "People who were sent a client's mail they may not have (a third party, or a"
         " client or contact of another client) and stopped by the rule"
         f" {UNAUTHORISED_RULE} (one row each in the table below)."),
        ("Recipients blocked with an unauthorised one", "blocked-with-unauthorised",
         str(data.blocked_with_unauthorised),
         "The other recipients of those messages (the client, staff), held back with"
         " them by the same rule; counted apart from the events."),
        ("Unauthorised recipients let through in shadow mode", "shadow-unauthorised",
         str(data.shadow_unauthorised),
         f"People the rule {UNAUTHORISED_RULE} would have stopped, while the policy"
         " ran in shadow mode (which delivers everything and records what enforce mode"
         " would have done); not in the figures above."),
        ("Portal messages sealed", "sealed", str(data.sealed),
         "Distinct portal messages (portal id) on recipient decisions with outcome sealed:"
         f" their notification left{sealed_records}."),
        ("Portal messages opened", "opened", str(data.opened),
         "Of the portal messages sealed in this period, those opened at least once (also"
         " when that was after the period's end)."),
        ("Portal pickup rate", "pickup-rate", _pct(data.pickup_rate),
         "Portal messages opened ÷ portal messages sealed."),
        ("Median time to open", "median-open-hours", _duration(data.median_open_hours),
         "From the sealed recipient decision to the first opened event, over the opened"
         " portal messages."),
    ):
        out.append(f"<tr><th>{label}</th><td data-metric=\"{metric}\">{value}</td>"
                   f"<td class=\"def\">{escape(meaning)}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _outcomes(data: ReportData) -> str:
    """Recipient decisions by outcome and action: every figure above reconciles here."""
    actions = list(ACTIONS) + sorted({a for a, _ in data.outcomes} - set(ACTIONS))
    outcomes = list(OUTCOMES) + sorted({o for _, o in data.outcomes} - set(OUTCOMES))
    by_outcome = data.by_outcome
    out = ["<h2>Recipient decisions by outcome</h2>",
           "<p>Each recipient decision has one action (what the relay did with that"
           " recipient's copy) and one outcome (what happened to it). Rows add up to the"
           " outcome totals, columns to the action totals of the per-day table, and the"
           " bottom right to the recipient decisions.</p>",
           "<table class=\"outcomes\"><thead><tr><th>Outcome</th>"
           + "".join(f"<th>{escape(a)}</th>" for a in actions)
           + "<th>Total</th></tr></thead><tbody>"]
    for outcome in outcomes:
        label = "deferred attempts" if outcome == "deferred" else outcome
        cells = "".join(
            f'<td data-metric="outcome-action" data-outcome="{escape(outcome)}"'
            f' data-action="{escape(a)}">{data.outcomes.get((a, outcome), 0)}</td>'
            for a in actions)
        out.append(f"<tr><th>{escape(label)}</th>{cells}<td data-metric=\"outcome\""
                   f' data-outcome="{escape(outcome)}">{by_outcome.get(outcome, 0)}</td></tr>')
    totals = "".join(f'<td data-metric="action" data-action="{escape(a)}">'
                     f"{data.by_action.get(a, 0)}</td>" for a in actions)
    out.append(f"<tr><th>Total</th>{totals}<td data-metric=\"outcome-total\">"
               f"{data.recipient_records}</td></tr></tbody></table>")
    out.append("<dl>" + "".join(
        f"<dt>{escape('deferred attempts' if o == 'deferred' else o)}</dt>"
        f"<dd>{escape(OUTCOME_MEANING.get(o, 'an outcome recorded by another version'))}</dd>"
        for o in outcomes) + "</dl>")
    out.append("<p>Portal copies revoked after a failed notification: <span"
               f' data-metric="revoked-after-failed-notice">{data.revoked_failed_notice}</span>'
               " (the notification did not leave, so the relay revoked the sealed copy at once;"
               " that recipient's decision says deferred or refused, not sealed). Revoked by"
               f' staff or a program: <span data-metric="revoked-other">{data.revoked_other}'
               "</span>.</p>")
    return "".join(out)


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
    if days:
        out.append(_day_chart(data, days))
    out.append("<table><thead><tr><th>Day (UTC)</th>"
               + "".join(f"<th>{a}</th>" for a in ACTIONS) + "<th>Total</th></tr></thead><tbody>")
    for day in days:
        cells = "".join(
            f'<td data-metric="day-action" data-day="{day}" data-action="{a}">'
            f"{data.per_day[day].get(a, 0)}</td>" for a in ACTIONS)
        out.append(f"<tr><td>{day}</td>{cells}<td data-metric=\"day-total\" data-day=\"{day}\">"
                   f"{sum(data.per_day[day].values())}</td></tr>")
    if days:
        cells = "".join(f'<td class="n">{data.by_action.get(a, 0)}</td>' for a in ACTIONS)
        out.append(f'<tr><th>Total</th>{cells}<td class="n">{data.recipient_records}</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


def _day_chart(data: ReportData, days: list[str]) -> str:
    every = _all_days(days)
    shown = every[-CHART_DAYS:]
    n = len(shown)
    left, plot, height = 40, 680, 200
    slot = min(plot // n, 60)  # a day or two stays a bar, not a full-width block
    bar = max(slot - max(slot // 4, 1), 1)
    width = left + n * slot
    peak = max(sum(data.per_day.get(d, Counter()).values()) for d in shown) or 1
    step = -(-n // 6)  # more than ten days: about six labels, the last day's kept clear
    labelled = set(shown) if n <= 10 else {
        d for i, d in enumerate(shown) if i == n - 1 or (i % step == 0 and n - 1 - i >= step / 2)}
    svg = [f'<svg role="img" aria-label="recipient decisions per day" width="{width}"'
           f' height="{height + 24}" viewBox="0 0 {width} {height + 24}">',
           f'<text x="{left - 4}" y="10" font-size="10" text-anchor="end">{peak}</text>'
           f'<text x="{left - 4}" y="{height}" font-size="10" text-anchor="end">0</text>'
           f'<line x1="{left}" y1="{height}" x2="{width}" y2="{height}" stroke="#888"/>']
    for i, day in enumerate(shown):
        x = left + i * slot + (slot - bar) // 2
        y = float(height)
        counts = data.per_day.get(day, Counter())
        for action in ACTIONS:
            count = counts.get(action, 0)
            if count:
                h = count * (height - 8) / peak
                y -= h
                svg.append(f'<rect x="{x}" y="{y:.1f}" width="{bar}" height="{h:.1f}"'
                           f' fill="{COLOURS[action]}"><title>{day} {action}: {count}</title>'
                           "</rect>")
        if day in labelled:
            anchor = "middle" if n <= 10 else "start" if i == 0 else \
                "end" if i == n - 1 else "middle"
            lx = x + bar / 2 if anchor == "middle" else x if anchor == "start" else x + bar
            svg.append(f'<text x="{lx:.0f}" y="{height + 15}" font-size="10"'
                       f' text-anchor="{anchor}">{day if n <= 10 else day[5:]}</text>')
    svg.append("</svg>")
    note = [f"{n} day{'s' if n != 1 else ''} (UTC)"]
    if n > 10:
        note.append(f"{shown[0]} to {shown[-1]}, labels month-day")
    if len(shown) < len(every):
        note.append(f"last {CHART_DAYS} days shown")
    if n > len([d for d in shown if d in data.per_day]):
        note.append("days without records are empty")
    legend = " ".join(f'<span class="key" style="background:{COLOURS[a]}"></span>{a}'
                      for a in ACTIONS)
    return "".join(svg) + f"<p>{legend}<br>Chart: {escape('; '.join(note))}.</p>"


def _all_days(days: list[str]) -> list[str]:
    """Consecutive UTC days from the first to the last with records: a day
    without records is an empty slot in the chart, not left out."""
    first, last = date.fromisoformat(days[0]), date.fromisoformat(days[-1])
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def _blocks(data: ReportData) -> str:
    out = ["<h2>Blocked recipients by rule</h2>"]
    rules = data.blocks_by_rule.most_common()
    if not rules:
        return out[0] + "<p>No blocks in this period.</p>"
    peak = rules[0][1]
    high = len(rules) * 22
    svg = [f'<svg role="img" aria-label="blocks by rule" width="720" height="{high}"'
           f' viewBox="0 0 720 {high}">']
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
           "<p>Each row is one person who was sent a client's mail without being that"
           " client or one of their authorised contacts (a third party, or a client or"
           " contact of another client). Other recipients of the same messages that were"
           f" blocked with them (the client, staff): {data.blocked_with_unauthorised}."
           " The message is named by its Message-ID and the first"
           f" {SHA_PREFIX} hex digits of its SHA-256 (message_id and message_sha256 in an"
           " export); the reason names the client when the policy identified one.</p>"]
    if not data.unauthorised:
        return "".join(out) + "<p>None in this period.</p>"
    out.append("<table class=\"events\"><thead><tr><th>Time (UTC)</th><th>Message</th>"
               "<th>Sender</th><th>Recipient</th><th>Copied as</th><th>Mode</th>"
               "<th>Outcome</th><th>Reason</th></tr></thead><tbody>")
    for ev in data.unauthorised[:MAX_LISTED]:
        sha = str(ev.get("message_sha256") or "")[:SHA_PREFIX]
        message = (f'<span data-field="message-id">{escape(str(ev.get("message_id") or ""))}'
                   f'</span><br><span data-field="sha256">sha256 {escape(sha)}</span>')
        cells = "".join(
            ('<td class="addr">' if k in ("mail_from", "recipient") else "<td>")
            + escape(str(ev.get(k) or "")) + "</td>" for k in UNAUTHORISED_COLUMNS[3:])
        out.append(f'<tr data-metric="unauthorised-row"><td class="when">'
                   f'{escape(_when(ev.get("at"), label=False))}</td><td class="ref">{message}</td>'
                   f"{cells}</tr>")
    out.append("</tbody></table>")
    if len(data.unauthorised) > MAX_LISTED:
        out.append(f"<p>First {MAX_LISTED} shown; export the records for the full list.</p>")
    return "".join(out)


def _events(data: ReportData) -> str:
    out = ["<h2>Security and administrative events</h2><p>Counted in this period; export the"
           " records (CSV) for who, what and when.</p><table class=\"summary\"><thead><tr>"
           "<th>Event</th><th>Count</th><th>What it counts</th></tr></thead><tbody>"]
    for metric, source, label, meaning in EVENT_ROWS:
        count = (data.portal_events if source == "portal" else data.admin_events)[metric]
        out.append(f'<tr><td>{escape(label)}</td><td data-metric="event-{metric}">{count}</td>'
                   f'<td class="def">{escape(meaning)}</td></tr>')
    out.append("</tbody></table>")
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
td[data-metric], td.n {{ text-align: right; white-space: nowrap; }}
td.def {{ font-size: .85em; color: #444; }}
svg {{ max-width: 100%; height: auto; }}
@media screen and (max-width: 48em) {{ body {{ margin: .5em; }}
  table {{ display: block; overflow-x: auto; max-width: 100%; }} }}
table.events {{ font-size: .8em; }}
table.events td.addr, table.events td.ref {{ overflow-wrap: anywhere; }}
table.events td.when {{ white-space: nowrap; }}
table.events td.ref {{ min-width: 12em; font-family: monospace; }}
dl {{ font-size: .85em; }} dt {{ font-weight: bold; }} dd {{ margin: 0 0 .3em 1.5em; }}
.key {{ display: inline-block; width: .9em; height: .9em; margin: 0 .3em 0 1em; }}
@media print {{ body {{ margin: 0; }} h2 {{ break-after: avoid; }} tr {{ break-inside: avoid; }}
  svg {{ max-width: 100%; }} }}
</style></head><body>
"""
