"""The data path, as one readable function:

parse -> classify -> decide -> render -> sign -> deliver -> audit -> reply.

``process`` returns an :class:`Outcome` only when every output was accepted
upstream (or sealed and its notification accepted) and the audit record is
durable; otherwise it raises, and the SMTP layer maps the exception to its
reply. Nothing is ever sent in clear because a step failed: a render error
defers the recipient (451), it never falls back to the original bytes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from securemail.directory import AddressError, domain_of, normalise_address
from securemail.errors import (
    Blocked,
    InsufficientStorage,
    RecipientsDeferred,
    RenderError,
    TemporaryFailure,
    UpstreamRefused,
    UpstreamUnavailable,
)
from securemail.line_length import has_long_lines, wrap_long_lines
from securemail.logs import message_summary
from securemail.model import (
    Action,
    Decision,
    Envelope,
    Mode,
    Outcome,
    RecipientOutcome,
    Status,
    TLSInfo,
    Verdict,
)
from securemail.notices import recipients_notice
from securemail.parse import HEADER_END, strip_header
from securemail.render import Output, render_protected
from securemail.submission_headers import complete_headers

if TYPE_CHECKING:
    from securemail.relay import Relay

__all__ = ["process"]

log = logging.getLogger("securemail.message")

# Above this size a message is parsed and judged in a worker thread.
THREAD_EVALUATE_BYTES = 32 * 1024


async def process(relay: Relay, raw: bytes, envelope: Envelope, now: dt.datetime) -> Outcome:
    started = time.perf_counter()
    low = relay.space.problem()
    if low:  # nothing is sent that the store could then not record
        raise InsufficientStorage(low)
    digest = hashlib.sha256(raw).hexdigest()
    if envelope.trace:  # securemail is the first server (submission): RFC 6409 section 8
        raw = complete_headers(raw, digest, relay.settings.relay.hostname, now)
    if len(raw) > THREAD_EVALUATE_BYTES:
        # Large messages carry documents (a PDF's text takes ~15 ms a page to
        # read): judged in a worker thread, so other connections go on meanwhile.
        verdict = await relay.evaluate_in_thread(raw, envelope, now)
    else:
        verdict = relay.evaluate(raw, envelope, now)  # parse, classify, decide

    if verdict.malformed or (verdict.mode is Mode.ENFORCE and _all_blocked(verdict)):
        outcome = _finish(verdict, digest, {d.address: Status.BLOCKED for d in verdict.decisions})
        await _audit(relay, envelope, outcome, now)
        _log(relay, outcome, started)
        raise Blocked(verdict)

    clean = _strip_markers(relay, raw)
    plan = _plan(verdict)
    ledger = relay.ledger
    done = ledger.completed(digest, now)  # recipients accepted on an earlier, deferred attempt
    statuses: dict[str, Status] = {a: s for a, s in done.items()}
    # The retry reports the sealed copies of the earlier attempt too.
    portal_ids: dict[str, str] = ledger.portal_ids(digest, now) if done else {}
    replies: dict[str, str] = {}
    tls: TLSInfo | None = None

    causes: list[str] = []  # why recipients were deferred, for RecipientsDeferred
    pending = [d for d in plan if d.address not in done]
    for d in pending:
        if d.action is Action.BLOCK:
            statuses[d.address] = Status.BLOCKED
    passthrough = tuple(d for d in pending if d.action is Action.DELIVER)
    outputs: list[Output] = [Output(passthrough, clean)] if passthrough else []
    protected = [d for d in pending if d.action not in (Action.DELIVER, Action.BLOCK)]
    renders = [asyncio.ensure_future(render_protected(relay, d, clean, verdict, envelope, now))
               for d in protected]
    try:
        # Together: portal seals commit in one transaction.
        rendered = await asyncio.gather(*renders, return_exceptions=True)
    except asyncio.CancelledError:
        # Stopped before anything was sent: a copy already sealed would stay
        # active with no notice (no link) to it; withdraw it (the retry seals anew).
        for render in renders:
            if render.done() and not render.cancelled() and render.exception() is None:
                sealed = render.result()
                if sealed.portal_id:
                    _discard_seal(relay, sealed.portal_id, now)
        raise
    for d, result in zip(protected, rendered, strict=True):
        if isinstance(result, Output):
            outputs.append(result)
        elif isinstance(result, TemporaryFailure):
            statuses[d.address] = Status.DEFERRED  # fail closed: nothing sent for them
            causes.append(_deferred("render", result))
        else:
            raise result

    # What upstream has accepted in this attempt, as each delivery returns: if
    # we are stopped half way (a caller's timeout, its event loop shutting
    # down), those copies are noted before we go (see _interrupted).
    progress = _Progress(causes)
    try:
        results = await asyncio.gather(
            *(_deliver(relay, envelope, o, progress) for o in outputs), return_exceptions=False
        )
    except asyncio.CancelledError:
        _interrupted(relay, envelope, verdict, digest, statuses, progress, outputs, now)
        raise
    for output, (per_rcpt, out_tls) in zip(outputs, results, strict=True):
        tls = out_tls or tls
        for d in output.recipients:
            status, reply = per_rcpt[d.address]
            if d.action is Action.PORTAL and output.portal_id:
                if status is Status.DELIVERED:
                    status = Status.SEALED
                    portal_ids[d.address] = output.portal_id
                else:  # the notice did not leave: its sealed copy must not outlive it
                    _discard_seal(relay, output.portal_id, now)
            statuses[d.address] = status
            if reply:
                replies[d.address] = reply

    outcome = _finish(verdict, digest, statuses, portal_ids, replies, tls, outputs)
    accepted = {r.address: r.status for r in outcome.recipients
                if r.status in (Status.DELIVERED, Status.SEALED)}
    deferred = [r.address for r in outcome.recipients if r.status is Status.DEFERRED]
    try:
        notified = [relay.portal.notified_event(pid) for pid in portal_ids.values()]
        await _audit(relay, envelope, outcome, now, [e for e in notified if e is not None])
    except TemporaryFailure as exc:
        # Upstream already holds some copies: remember them, so that the sender's
        # retry after this 451 sends only what is missing.
        if accepted:
            log.error("upstream accepted %d copies of message %s but the audit record"
                      " could not be written (%s)", len(accepted), digest[:16], exc,
                      extra={"event": {"notice": "audit-failed", "message_sha256": digest[:16],
                                       "accepted": len(accepted)}})
        ledger.record(digest, accepted, now, portal_ids)
        raise
    except asyncio.CancelledError:
        # The record is queued with the audit writer, which commits it; the
        # ledger keeps a retry from sending these copies again.
        _note_in_ledger(relay, digest, accepted, now, portal_ids)
        raise
    _log(relay, outcome, started, progress)
    if deferred:
        ledger.record(digest, accepted, now, portal_ids)
        raise RecipientsDeferred(outcome, tuple(causes))
    if not outcome.delivered:
        raise UpstreamRefused("no recipient accepted the message", tuple(
            r.upstream_reply for r in outcome.recipients
            if r.status is Status.REFUSED and r.upstream_reply))
    undelivered = [r for r in outcome.recipients if r.status in (Status.BLOCKED, Status.REFUSED)]
    if undelivered and envelope.mail_from:
        try:
            await _notify_sender(relay, envelope, verdict, undelivered, now)
        except asyncio.CancelledError:
            # Delivered and audited, but the sender gets no reply: its retry
            # must not send these copies again.
            _note_in_ledger(relay, digest, accepted, now, portal_ids)
            raise
    if done:
        ledger.forget(digest)
    return outcome


def _deferred(step: str, exc: TemporaryFailure) -> str:
    """Say why recipients were deferred (451), so an operator can tell a down
    upstream from a TLS problem or a key that no longer works. The texts are
    our own (no content, no addresses); anything else is named by its class.
    Returns the same words for the caller's exception."""
    ours = isinstance(exc, (UpstreamUnavailable, RenderError))
    cause = str(exc) if ours else type(exc).__name__
    log.warning("deferred at %s: %s", step, cause,
                extra={"event": {"notice": "deferred", "step": step, "cause": cause}})
    return f"{step}: {cause}"


def _discard_seal(relay: Relay, portal_id: str, now: dt.datetime) -> None:
    try:
        relay.portal.revoke(portal_id, now, actor="relay")
    except TemporaryFailure:
        log.warning("could not revoke an undelivered portal message",
                    extra={"event": {"notice": "revoke-failed"}})


def _all_blocked(verdict: Verdict) -> bool:
    return all(d.action is Action.BLOCK for d in verdict.decisions)


def _plan(verdict: Verdict) -> tuple[Decision, ...]:
    """Shadow mode delivers every recipient unchanged; the audit keeps the verdict."""
    if verdict.mode is Mode.SHADOW:
        return tuple(
            Decision(d.address, d.source, d.role, Action.DELIVER, d.rules, d.reason)
            for d in verdict.decisions
        )
    return verdict.decisions


_NEVER_SENT = (b"bcc", b"resent-bcc")


def _strip_markers(relay: Relay, raw: bytes) -> bytes:
    """Drop what must never leave: the practice's restricted-class marker and the
    Bcc list (one Bcc recipient must not learn who else was copied)."""
    head = raw[: relay.settings.limits.max_header_bytes].lower()
    end = HEADER_END.search(head)
    head = head[: end.start()] if end else head
    for name in (relay.settings.policy.restricted_header.lower().encode(), *_NEVER_SENT):
        if head.startswith(name + b":") or b"\n" + name + b":" in head:
            raw = strip_header(raw, name.decode())
    return raw


class _Progress:
    """Recipients upstream accepted so far in this attempt (and their portal ids)."""

    __slots__ = ("accepted", "causes", "dkim", "portal_ids")

    def __init__(self, causes: list[str]) -> None:
        self.accepted: dict[str, Status] = {}
        self.portal_ids: dict[str, str] = {}
        self.causes = causes  # why copies were deferred
        self.dkim: set[bool] = set()  # whether each copy that left was signed


def _interrupted(relay: Relay, envelope: Envelope, verdict: Verdict, digest: str,
                 statuses: Mapping[str, Status], progress: _Progress,
                 outputs: Sequence[Output], now: dt.datetime) -> None:
    """We were cancelled while delivering: note, synchronously (nothing can be
    awaited any more), the copies upstream already accepted, in the delivery
    ledger (a retry sends only the rest) and in the audit log (they left, so
    they are on record; the rest as deferred). A sealed portal copy whose
    notice was not accepted is withdrawn (the retry seals anew), so no PHI copy
    stays active without a link. A transaction cut in the middle is unknowable
    either way, as after a crash."""
    for output in outputs:
        if output.portal_id and output.portal_id not in progress.portal_ids.values():
            _discard_seal(relay, output.portal_id, now)
    if not progress.accepted:
        return
    _note_in_ledger(relay, digest, progress.accepted, now, progress.portal_ids)
    known = {**{d.address: Status.DEFERRED for d in verdict.decisions}, **statuses,
             **progress.accepted}
    outcome = _finish(verdict, digest, known, progress.portal_ids, outputs=outputs)
    try:
        relay.audit.record_outcome_now(envelope, outcome, config_digest=relay.settings.digest,
                                       instance_id=relay.instance_id, now=now)
    except (TemporaryFailure, sqlite3.Error) as exc:
        log.error("a message interrupted after upstream accepted copies could not be"
                  " audited: %s", exc, extra={"event": {"notice": "audit-failed"}})


def _note_in_ledger(relay: Relay, digest: str, accepted: Mapping[str, Status],
                    now: dt.datetime, portal_ids: Mapping[str, str]) -> None:
    if not accepted:
        return
    try:
        relay.ledger.record(digest, accepted, now, portal_ids)
    except (TemporaryFailure, sqlite3.Error) as exc:
        log.error("copies upstream accepted could not be noted in the delivery ledger; a"
                  " retry may send them again: %s", exc,
                  extra={"event": {"notice": "ledger-failed"}})


async def _deliver(relay: Relay, envelope: Envelope, output: Output, progress: _Progress
                   ) -> tuple[dict[str, tuple[Status, str | None]], TLSInfo | None]:
    # Lines past 998 octets would be broken by the next server, after our
    # signature: re-encode those parts first (what the recipient sees is the same).
    data = output.data
    if has_long_lines(data):  # parsed and written anew: off the event loop when big
        data = await asyncio.to_thread(wrap_long_lines, data) if len(data) > 32 * 1024 \
            else wrap_long_lines(data)
    if envelope.trace:  # on every copy that leaves (after the digest: a retry is the same)
        data = envelope.trace.encode("ascii", "replace") + data
    if relay.signer is not None:
        try:
            signed = relay.signer.sign(data)
        except RenderError as exc:
            progress.causes.append(_deferred("dkim", exc))
            return {d.address: (Status.DEFERRED, None) for d in output.recipients}, None
        # sign() prepends the header, or only turns bare LF into CRLF when not ours.
        progress.dkim.add(len(signed) > len(data) + data.count(b"\n") - data.count(b"\r\n"))
        data = signed
    as_given = _as_given(envelope)
    rcpts = [as_given.get(d.address, d.address) for d in output.recipients]
    try:
        result = await relay.transport.send(envelope.mail_from, rcpts, data)
    except TemporaryFailure as exc:
        progress.causes.append(_deferred("upstream", exc))
        return {d.address: (Status.DEFERRED, None) for d in output.recipients}, None
    if result.deferred:
        # Upstream took the message but put some recipients off (4xx at RCPT):
        # say so with its reply codes (no addresses), as for any deferral.
        codes = ", ".join(sorted(set(result.deferred.values())))
        count = len(result.deferred)
        cause = f"upstream deferred {count} recipient{'s' if count > 1 else ''} ({codes})"
        log.warning("deferred at upstream: %s", cause,
                    extra={"event": {"notice": "deferred", "step": "upstream", "cause": cause}})
        progress.causes.append(f"upstream: {cause}")
    per: dict[str, tuple[Status, str | None]] = {}
    for d, a in zip(output.recipients, rcpts, strict=True):
        if a in result.refused:
            per[d.address] = (Status.REFUSED, result.refused[a])
        elif a in result.deferred:
            per[d.address] = (Status.DEFERRED, result.deferred[a])
        elif a in result.accepted:
            per[d.address] = (Status.DELIVERED, result.accepted_reply)
            if d.action is Action.PORTAL and output.portal_id:
                progress.accepted[d.address] = Status.SEALED
                progress.portal_ids[d.address] = output.portal_id
            else:
                progress.accepted[d.address] = Status.DELIVERED
        else:  # upstream said nothing about it: do not claim delivery
            per[d.address] = (Status.DEFERRED, None)
    return per, result.tls


def _as_given(envelope: Envelope) -> dict[str, str]:
    """Normalised recipient -> the address to put on the wire: the local part as
    the client wrote it (RFC 5321 2.4: relays must preserve its case), the
    domain in its normalised A-label form (which needs no SMTPUTF8)."""
    out: dict[str, str] = {}
    for given in envelope.rcpt_tos:
        try:
            normal = normalise_address(given)
        except AddressError:
            continue  # never decided on: the policy blocked it
        out.setdefault(normal, f"{given.rpartition('@')[0]}@{normal.rpartition('@')[2]}")
    return out


def _finish(verdict: Verdict, digest: str, statuses: dict[str, Status],
            portal_ids: dict[str, str] | None = None, replies: dict[str, str] | None = None,
            tls: TLSInfo | None = None, outputs: Sequence[Output] = ()) -> Outcome:
    portal_ids = portal_ids or {}
    replies = replies or {}
    # What was done, where it differs from what was decided: the portal or the
    # recipient's other key when the preferred key failed at send time.
    actual = {d.address: d.action for o in outputs for d in o.recipients}
    recipients = tuple(
        RecipientOutcome(d.address, actual.get(d.address, d.action),
                         statuses.get(d.address, Status.DEFERRED),
                         portal_ids.get(d.address), replies.get(d.address))
        for d in verdict.decisions
    )
    return Outcome(verdict=verdict, recipients=recipients, message_sha256=digest,
                   upstream_tls=tls)


async def _audit(relay: Relay, envelope: Envelope, outcome: Outcome, now: dt.datetime,
                 events: Sequence[tuple[str, Mapping[str, str | int | None]]] = ()) -> None:
    await relay.audit.record_outcome(envelope, outcome, config_digest=relay.settings.digest,
                                     instance_id=relay.instance_id, now=now, events=events)


async def _notify_sender(relay: Relay, envelope: Envelope, verdict: Verdict,
                         undelivered: Sequence[RecipientOutcome], now: dt.datetime) -> None:
    """Tell the sender which recipients did not get the message (no content)."""
    try:
        data = recipients_notice(relay.settings, envelope.mail_from, verdict, undelivered, now)
        if relay.signer is not None:
            data = relay.signer.sign(data)
        await relay.transport.send("", [envelope.mail_from], data)
    except TemporaryFailure:
        # The message itself was delivered and audited: never turn that into a 451.
        log.warning("sender notice could not be sent", extra={"event": {"notice": "deferred"}})


def _log(relay: Relay, outcome: Outcome, started: float,
         progress: _Progress | None = None) -> None:
    """One line per message: ids, actions, rules, timing, whether what left was
    DKIM-signed. No local parts, no content."""
    event: dict[str, object] = {
        "event": "message",
        "instance": relay.instance_id,
        "message_sha256": outcome.message_sha256[:16],
        "mode": outcome.verdict.mode.value,
        "ms": round((time.perf_counter() - started) * 1000, 2),
        "recipients": [
            {"domain": domain_of(r.address), "action": r.action.value, "status": r.status.value,
             "rules": list(outcome.verdict.decision_for(r.address).rules)}
            for r in outcome.recipients
        ],
    }
    if progress is not None and progress.dkim:
        # "unsigned": the From is not in [dkim] domain (a wrong domain there shows here).
        event["dkim"] = "signed" if progress.dkim == {True} else (
            "unsigned" if progress.dkim == {False} else "partly signed")
    elif relay.signer is None:
        event["dkim"] = "off"
    log.info("%s", message_summary(event), extra={"event": event})
    metrics = getattr(relay, "metrics", None)
    if metrics is not None:
        metrics.observe(outcome, time.perf_counter() - started)

