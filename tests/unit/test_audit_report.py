"""The report's figures equal counts computed from the exported records."""

from __future__ import annotations

import asyncio
import io
import json
import random
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from securemail.audit import AuditLog, export_jsonl
from securemail.audit.report import render_html, report_data
from securemail.model import Action, Outcome, Role, Source, Status
from tests.unit.test_audit_support import T0, decision, envelope, make_settings, outcome

RULES = {Action.DELIVER: ("client-consented",), Action.ENCRYPT_PGP: ("phi-key-available",),
         Action.PORTAL: ("phi-unencrypted",), Action.BLOCK: ("unauthorised-recipient",)}


class _Metrics(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.values: list[tuple[dict[str, str | None], str]] = []
        self.rows = Counter[str]()
        self._open: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("td", "span") and "data-metric" in a:
            self._open = a
        elif tag == "tr" and "data-metric" in a:
            self.rows[str(a["data-metric"])] += 1

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.values.append((self._open, data))
            self._open = None

    def metric(self, name: str, **attrs: str) -> str:
        for a, text in self.values:
            if a["data-metric"] == name and all(a.get(f"data-{k}") == v for k, v in attrs.items()):
                return text
        raise KeyError(name)


def _with_status(out: Outcome, address: str, status: Status) -> Outcome:
    """``out`` with one recipient deferred (451) or refused (5xx): nothing sealed for it."""
    reply = "451 4.4.1" if status is Status.DEFERRED else "550 5.7.1"
    return replace(out, recipients=tuple(
        replace(r, status=status, portal_id=None, upstream_reply=reply)
        if r.address == address else r for r in out.recipients))


def _populate(audit: AuditLog) -> None:
    rng = random.Random(7)
    trouble = random.Random(11)  # deferrals, refusals, retries, revocations

    async def run() -> None:
        for i in range(60):
            now = T0 + timedelta(hours=7 * i)
            ds = []
            for j in range(rng.randint(1, 3)):
                action = rng.choice(list(RULES))
                rules = RULES[action]
                role = Role.CLIENT
                if action is Action.BLOCK and rng.random() < 0.3:
                    rules = ("phi-restricted",)
                elif action is Action.BLOCK and rng.random() < 0.6:
                    role = Role.THIRD_PARTY  # the person not allowed; else a client blocked too
                reason = None  # a client held back with the person not allowed
                if action is Action.BLOCK and role is Role.CLIENT and rng.random() < 0.3:
                    # ... or itself not allowed: the message concerns another family
                    reason = (f"the message concerns client c-{i}, and this address is neither"
                              " that client's nor an authorised contact of theirs")
                ds.append(decision(f"r{i}-{j}@mail.example", action, rules, role=role,
                                   source=Source.TO, reason=reason))
            pids = {d.address: f"p{i}-{n}" for n, d in enumerate(ds) if d.action is Action.PORTAL}
            sent = [d for d in ds if d.action is not Action.BLOCK]
            if sent and trouble.random() < 0.35:
                # A first attempt where one recipient is deferred or refused; a
                # portal copy whose notification did not leave is revoked by the relay.
                hit = trouble.choice(sent)
                status = trouble.choice([Status.DEFERRED, Status.DEFERRED, Status.REFUSED])
                first = _with_status(outcome(ds, sha=f"{i:064x}", portal_ids=pids), hit.address,
                                     status)
                await audit.record_outcome(envelope(ds), first, config_digest="",
                                           instance_id="", now=now)
                if hit.address in pids:
                    audit.record_event("revoked", now=now, portal_id=pids.pop(hit.address),
                                       recipient=hit.address, actor="relay")
                if status is Status.REFUSED:
                    continue
                now += timedelta(minutes=30)  # the retry: same bytes, its final outcome
                if hit.action is Action.PORTAL:
                    pids[hit.address] = f"p{i}-retry"
            await audit.record_outcome(envelope(ds), outcome(ds, sha=f"{i:064x}", portal_ids=pids),
                                       config_digest="", instance_id="", now=now)
            for pid in pids.values():
                if trouble.random() < 0.1:
                    audit.record_event("revoked", now=now + timedelta(hours=2), portal_id=pid,
                                       actor="cli")
            for pid in pids.values():
                if rng.random() < 0.6:
                    audit.record_event("opened", now=now + timedelta(hours=rng.randint(1, 48)),
                                       portal_id=pid)
                    audit.record_event("opened", now=now + timedelta(hours=60), portal_id=pid)

    asyncio.run(run())


def test_report_figures_equal_counts_from_the_records(tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path, checkpoint_every=25))
    _populate(audit)
    buf = io.StringIO()
    export_jsonl(audit.conn, audit.chainer.key, buf, now=T0)
    records: list[dict[str, Any]] = [json.loads(x) for x in buf.getvalue().splitlines()[1:]]
    html = render_html(report_data(audit.conn, now=T0 + timedelta(days=30)), practice="Riverside")
    audit.close(T0)
    page = _Metrics()
    page.feed(html)

    messages = [r for r in records if r["kind"] == "message"]
    assert int(page.metric("recipient-records")) == len(messages)
    assert int(page.metric("messages")) == len({r["message_sha256"] for r in messages})
    submissions = {(r["message_sha256"], r["at"]) for r in messages}
    assert int(page.metric("submissions")) == len(submissions) > int(page.metric("messages"))

    # Every recipient decision has an action and an outcome; the table reconciles them.
    by_pair = Counter((r["action"], r["outcome"]) for r in messages)
    by_outcome = Counter(r["outcome"] for r in messages)
    by_action = Counter(r["action"] for r in messages)
    assert set(by_outcome) == {"delivered", "sealed", "blocked", "refused", "deferred"}
    for outcome_ in by_outcome:
        assert int(page.metric("outcome", outcome=outcome_)) == by_outcome[outcome_]
        for action in ("deliver", "encrypt-pgp", "encrypt-smime", "portal", "block"):
            assert int(page.metric("outcome-action", outcome=outcome_, action=action)) == \
                by_pair[(action, outcome_)]
    for action in ("deliver", "encrypt-pgp", "encrypt-smime", "portal", "block"):
        assert int(page.metric("action", action=action)) == by_action[action]
    assert int(page.metric("outcome-total")) == len(messages)
    assert int(page.metric("deferred")) == by_outcome["deferred"] > 0
    assert by_pair[("portal", "deferred")] + by_pair[("portal", "refused")] > 0
    revoked = [r for r in records if r["kind"] == "revoked"]
    relay_revoked = sum(r.get("actor") == "relay" for r in revoked)
    assert int(page.metric("revoked-after-failed-notice")) == relay_revoked > 0
    assert int(page.metric("revoked-other")) == len(revoked) - relay_revoked > 0
    for day in {r["at"][:10] for r in messages}:
        assert int(page.metric("day-total", day=day)) == sum(r["at"][:10] == day
                                                             for r in messages)
    per_day = Counter((r["at"][:10], r["action"]) for r in messages)
    for day in {r["at"][:10] for r in messages}:
        for action in ("deliver", "encrypt-pgp", "encrypt-smime", "portal", "block"):
            assert int(page.metric("day-action", day=day, action=action)) == per_day[(day, action)]
    blocks = Counter(rule for r in messages if r["action"] == "block" for rule in r["rules"])
    assert blocks and all(int(page.metric("block-rule", rule=k)) == v for k, v in blocks.items())
    flagged = [r for r in messages if "unauthorised-recipient" in r["rules"]]
    # The person not allowed, not those held back with them (by the reason's words).
    unauthorised = [r for r in flagged
                    if not r["reason"].startswith("the whole message is blocked because")]
    assert unauthorised and len(unauthorised) < len(flagged)  # both kinds in the data
    assert {r["role"] for r in unauthorised} == {"third-party", "client"}
    assert int(page.metric("unauthorised")) == len(unauthorised) == page.rows["unauthorised-row"]
    assert int(page.metric("blocked-with-unauthorised")) == len(flagged) - len(unauthorised)

    sealed = {r["portal_id"] for r in messages if r["outcome"] == "sealed"}
    opened = {r["portal_id"] for r in records if r["kind"] == "opened"}
    assert int(page.metric("sealed")) == len(sealed)
    assert int(page.metric("opened")) == len(sealed & opened)
    assert page.metric("pickup-rate") == f"{len(sealed & opened) / len(sealed) * 100:.1f}%"
    sealed_at = {r["portal_id"]: r["at"] for r in messages if r["outcome"] == "sealed"}
    first_open: dict[str, str] = {}
    for r in records:
        if r["kind"] == "opened":
            first_open.setdefault(r["portal_id"], r["at"])
    hours = sorted((_t(first_open[p]) - _t(sealed_at[p])).total_seconds() / 3600
                   for p in sealed_at if p in first_open)
    median = statistics.median(hours) * 3600  # shown in the unit that reads best
    expected = (f"{median:.0f} s" if median < 90 else f"{median / 60:.0f} min" if median < 5400
                else f"{median / 3600:.1f} h" if median < 48 * 3600
                else f"{median / 86400:.1f} days")
    assert page.metric("median-open-hours") == expected


def _t(at: str) -> datetime:
    return datetime.fromisoformat(at.replace("Z", "+00:00"))


def test_report_is_self_contained(tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path))
    _populate(audit)
    html = render_html(report_data(audit.conn, now=T0), practice="<Riverside & Co>")
    audit.close(T0)
    assert "<svg" in html and "@media print" in html
    for needle in ("<script", "http://", "https://", "<link", "src="):
        assert needle not in html
    assert "&lt;Riverside &amp; Co&gt;" in html
    assert "Key store not available" in html or "Keys expiring" in html


def test_report_lists_keys_expiring_within_30_days(tmp_path: Path) -> None:
    import os
    import subprocess

    from securemail.keys import Keyring

    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    gpg = ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    for uid, days in (("soon@mail.example", "10d"), ("later@mail.example", "200d")):
        subprocess.run([*gpg, "--quick-gen-key", f"Client <{uid}>", "future-default", "default",
                        days], env=env, check=True, capture_output=True)
        armored = subprocess.run([*gpg, "--armor", "--export", uid], env=env, check=True,
                                 capture_output=True).stdout
        (tmp_path / f"{uid}.asc").write_bytes(armored)
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False, capture_output=True)
    audit = AuditLog.open(make_settings(tmp_path))
    now = datetime.now(UTC)  # gpg dates keys by the real clock
    keyring = Keyring(audit.conn)
    for uid in ("soon@mail.example", "later@mail.example"):
        keyring.import_file(tmp_path / f"{uid}.asc", now)
    html = render_html(report_data(audit.conn, now=now))
    audit.close(now)
    page = _Metrics()
    page.feed(html)
    assert page.rows["key-expiring"] == 1
    assert "soon@mail.example" in html and "later@mail.example" not in html


def test_a_windowed_report_counts_only_records_timed_in_the_window(tmp_path: Path) -> None:
    # Records can commit out of time order (a clock step, a library caller's
    # `now`): a one-day report must not count the other days among them.
    audit = AuditLog.open(make_settings(tmp_path))
    day = [decision("jane@mail.example", Action.DELIVER, ("client-consented",))]

    async def run() -> None:
        for i, when in enumerate([T0, T0 + timedelta(days=9), T0 + timedelta(hours=5),
                                  T0 - timedelta(days=40), T0 + timedelta(hours=6)]):
            await audit.record_outcome(envelope(day), outcome(day, sha=f"{i:064x}"),
                                       config_digest="", instance_id="", now=when)

    asyncio.run(run())
    since, until = T0.strftime("%Y-%m-%dT00:00:00.000000Z"), \
        (T0 + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00.000000Z")
    data = report_data(audit.conn, now=T0, since=since, until=until)
    audit.close(T0)
    assert data.messages == 3 and data.recipient_records == 3
    assert list(data.per_day) == [T0.strftime("%Y-%m-%d")]
    assert data.outside_window == 2
    html = render_html(data, practice="Riverside")
    assert '"outside-window">2</span> record(s) written among' in html


def test_shadow_mode_hits_are_not_counted_as_stopped(tmp_path: Path) -> None:
    # Shadow mode delivered to the parent in Cc; the report said 1
    # "unauthorised-recipient event ... stopped by the rule" beside 0 blocked.
    from securemail.model import Mode

    audit = AuditLog.open(make_settings(tmp_path))
    try:
        ds = [decision("jane@mail.example", Action.BLOCK, ("unauthorised-recipient",)),
              decision("mom@mail.example", Action.BLOCK, ("unauthorised-recipient",),
                       role=Role.THIRD_PARTY, source=Source.CC)]
        shadow = outcome(ds, mode=Mode.SHADOW)
        shadow = replace(shadow, recipients=tuple(
            replace(r, action=Action.DELIVER, status=Status.DELIVERED, upstream_reply="250 2.0.0")
            for r in shadow.recipients))
        asyncio.run(audit.record_outcome(envelope(ds), shadow, config_digest="",
                                         instance_id="", now=T0))
        data = report_data(audit.conn, now=T0 + timedelta(days=1))
        page = _Metrics()
        page.feed(render_html(data))
        assert page.metric("blocked") == "0"
        assert page.metric("unauthorised") == "0"
        assert page.metric("blocked-with-unauthorised") == "0"
        assert page.metric("shadow-unauthorised") == "1"
    finally:
        audit.close(T0 + timedelta(days=1))


@pytest.mark.parametrize("mode", ["enforce", "shadow"])
def test_a_client_sent_another_familys_mail_is_an_unauthorised_event(
        tmp_path: Path, make_config: Callable[..., Path], mode: str) -> None:
    """Decisions of the real policy: two families in one To line (each client
    is the one who may not have it), a third party beside the client (the
    client is held back with them), and two families on an already-encrypted
    message with a third party in Cc (held back: the To line, in clear, is
    what they may not see)."""
    from securemail.model import Mode
    from tests.unit.policy_helpers import verdict_for
    from tests.unit.test_policy_client_links import DR, JANE_NOTE, _pgp_mime, msg

    config = make_config()
    families = verdict_for(config, msg(to=["jane@mail.example", "sam@mail.example"]), DR,
                           ["jane@mail.example", "sam@mail.example"])
    outsider = verdict_for(config, msg(to=["jane@mail.example", "pal@elsewhere.example"],
                                       body=JANE_NOTE),
                           DR, ["jane@mail.example", "pal@elsewhere.example"])
    both = ["jane@mail.example", "sam@mail.example"]
    sealed = verdict_for(config, _pgp_mime(both, "..."), DR, [*both, "pal@elsewhere.example"])
    assert [d.reason.startswith("the whole message is blocked") for d in sealed.decisions] == [
        False, False, True]
    audit = AuditLog.open(make_settings(tmp_path))
    try:
        for n, verdict in enumerate((families, outsider, sealed)):
            ds = list(verdict.decisions)
            assert all(d.action is Action.BLOCK for d in ds)
            out = outcome(ds, sha=f"{n:064x}", mode=Mode(mode))
            if mode == "shadow":  # delivered to all, the block only recorded
                out = replace(out, recipients=tuple(
                    replace(r, action=Action.DELIVER, status=Status.DELIVERED,
                            upstream_reply="250 2.0.0") for r in out.recipients))
            asyncio.run(audit.record_outcome(envelope(ds), out, config_digest="",
                                             instance_id="", now=T0 + timedelta(minutes=n)))
        page = _Metrics()
        page.feed(render_html(report_data(audit.conn, now=T0 + timedelta(days=1))))
    finally:
        audit.close(T0 + timedelta(days=1))
    # jane and sam (each other's family), pal (a third party); jane held with pal;
    # jane and sam again, pal held with them.
    if mode == "enforce":
        assert page.metric("unauthorised") == "5" and page.rows["unauthorised-row"] == 5
        assert page.metric("blocked-with-unauthorised") == "2"
        assert page.metric("shadow-unauthorised") == "0"
    else:
        assert page.metric("unauthorised") == "0"
        assert page.metric("shadow-unauthorised") == "5"


def test_security_and_administrative_events_are_counted_from_the_records(
        tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path))
    at = iter(T0 + timedelta(minutes=m) for m in range(100))
    for attempts in (1, 2, 3, 4, 5):  # the fifth locks the message
        audit.record_event("code-failed", now=next(at), portal_id="p1", attempts=attempts,
                           recipient="jane@mail.example",
                           status="locked" if attempts == 5 else "failed")
    audit.record_event("code-failed", now=next(at), portal_id="p2", attempts=1,
                       recipient="sam@mail.example", status="failed")
    audit.record_event("unlocked", now=next(at), portal_id="p1", actor="cli")
    for consent in ("granted", "granted", "withdrawn"):
        audit.record_event("consent-change", now=next(at), client_id="c-1", consent=consent,
                           actor="cli")
    audit.record_event("key-import", now=next(at), fingerprint="AB" * 20, key_kind="pgp")
    for status in ("ok", "ok", "failed"):
        audit.record_event("config-loaded", now=next(at), config_sha256="c" * 64,
                           reason_code="reload", status=status, actor="serve")
    html = render_html(report_data(audit.conn, now=T0 + timedelta(days=1)))
    buf = io.StringIO()
    export_jsonl(audit.conn, audit.chainer.key, buf, now=T0)
    records = [json.loads(line) for line in buf.getvalue().splitlines()[1:]]
    audit.close(T0 + timedelta(days=1))
    page = _Metrics()
    page.feed(html)

    kinds = Counter(r["kind"] for r in records)
    assert int(page.metric("event-code-failed")) == kinds["code-failed"] == 6
    assert page.metric("event-locked") == "1"
    assert int(page.metric("event-unlocked")) == kinds["unlocked"] == 1
    consent = Counter(r["consent"] for r in records if r["kind"] == "consent-change")
    assert page.metric("event-consent-granted") == str(consent["granted"]) == "2"
    assert page.metric("event-consent-withdrawn") == str(consent["withdrawn"]) == "1"
    assert int(page.metric("event-key-import")) == kinds["key-import"] == 1
    assert page.metric("event-key-remove") == page.metric("event-chain-start") == "0"
    loads = Counter(r["status"] for r in records if r["kind"] == "config-loaded")
    assert page.metric("event-config-loaded") == str(loads["ok"]) == "2"
    assert page.metric("event-config-failed") == str(loads["failed"]) == "1"


def test_a_period_without_records_says_so(tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path))
    _populate(audit)
    try:
        empty = render_html(report_data(audit.conn, now=T0, since="2031-01-01T00:00:00.000000Z"))
        full = render_html(report_data(audit.conn, now=T0))
    finally:
        audit.close(T0)
    assert 'data-metric="empty">No audit record falls in this period' in empty
    assert 'data-metric="empty"' not in full


def test_a_message_sealed_in_the_period_and_opened_after_it_counts_as_picked_up(
        tmp_path: Path) -> None:
    audit = AuditLog.open(make_settings(tmp_path))
    try:
        ds = [decision("jane@mail.example", Action.PORTAL, ("phi-unencrypted",)),
              decision("sam@mail.example", Action.PORTAL, ("phi-unencrypted",))]
        out = outcome(ds, portal_ids={"jane@mail.example": "pj", "sam@mail.example": "ps"})
        asyncio.run(audit.record_outcome(envelope(ds), out, config_digest="", instance_id="",
                                         now=T0))
        audit.record_event("opened", now=T0 + timedelta(days=2), portal_id="pj")  # next month
        month = render_html(report_data(audit.conn, now=T0 + timedelta(days=3),
                                        since="2026-03-01", until="2026-03-03"))
        later = render_html(report_data(audit.conn, now=T0 + timedelta(days=3),
                                        since="2026-03-03"))
    finally:
        audit.close(T0)
    page = _Metrics()
    page.feed(month)
    assert (page.metric("sealed"), page.metric("opened"), page.metric("pickup-rate")) == (
        "2", "1", "50.0%")
    assert page.metric("median-open-hours") == "2.0 days"
    page = _Metrics()
    page.feed(later)  # sealed before this period: not this period's to count
    assert (page.metric("sealed"), page.metric("opened")) == ("0", "0")
