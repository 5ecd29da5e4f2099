"""Record fields built from model objects, and the allow-list for other events.

A record never carries message content: the builders below copy only
envelope addresses, decisions (rule ids and the policy's reason, which by
contract names no content), delivery status and TLS facts. Portal and admin
events go through :func:`event_fields`, which accepts only the field names in
:data:`EVENT_FIELDS`; anything that looks like content, a token or a code is
refused, because the caller is the last place where that can be caught.
"""

from __future__ import annotations

import itertools
import os
import secrets
from datetime import UTC, datetime
from typing import Any

from securemail.model import Envelope, Outcome, RecipientOutcome

__all__ = [
    "ADMIN_EVENTS",
    "EVENT_FIELDS",
    "FORBIDDEN_FIELD_WORDS",
    "MAX_FIELD_CHARS",
    "PORTAL_EVENTS",
    "RECORD_VERSION",
    "event_fields",
    "format_time",
    "message_fields",
]

RECORD_VERSION = 1

PORTAL_EVENTS = frozenset({
    "notified", "sealed", "code-sent", "code-failed", "code-verified", "opened",
    "downloaded", "replied", "reply-failed", "signed-out", "revoked", "expired", "purged",
    "unlocked",
})
ADMIN_EVENTS = frozenset({
    "key-import", "key-remove", "directory-import", "directory-remove", "consent-change",
    "config-loaded", "chain-start",
})

# Field names ``record_event`` accepts (documented in docs/compliance.md).
EVENT_FIELDS = frozenset({
    "portal_id",        # id of a sealed message (not the decryption key, which never reaches us)
    "message_id",       # Message-ID header value
    "message_sha256",   # SHA-256 of the raw message
    "recipient",        # the address the event concerns
    "reply_to",         # replied: where the client's portal reply was sent
    "address",          # an address named by an admin event (key owner, client address)
    "mail_from",
    "sender",
    "client_id",
    "partner",          # a business associate removed from the directory (its name)
    "channel",          # code channel: email | sms | webhook
    "attachment_index", # position of a downloaded attachment (never its file name)
    "attempts",
    "fingerprint",      # key or certificate fingerprint (public data)
    "key_kind",         # pgp | smime
    "expires",          # ISO date a key or sealed message expires
    "consent",          # granted | withdrawn
    "granted",          # ISO date a client's consent was given (consent-change)
    "warning",          # version of the risk warning shown to a client
    "file",             # file an admin imported (path as given)
    "count",            # number of entries imported / purged
    "size",             # bytes of a sealed ciphertext
    "actor",            # who did it: a submitter identity, "cli", "portal"
    "peer",             # client IP address
    "status",           # short machine word: ok | failed | ...
    "reason_code",      # stable id, never free text
    "config_sha256",
    "instance_id",
    "previous_seq",     # chain-start: the last seq of the archived chain
    "previous_hash",    # chain-start: its head hash
    "previous_signer",  # chain-start: the key id that signed it
})

# Even if someone adds a name above by mistake, these never pass.
FORBIDDEN_FIELD_WORDS = ("subject", "body", "content", "text", "html", "token", "code",
                         "secret", "password", "key", "filename", "name")
_ALLOWED_DESPITE_WORDS = frozenset({"key_kind", "reason_code"})

MAX_FIELD_CHARS = 512  # long values are free text, which does not belong here


class _EventIds:
    """Unique record ids: a random 64-bit prefix per process plus a counter.

    Cheaper than uuid4 (one system call per process instead of per record);
    re-seeded after fork so that two processes never share a prefix.
    """

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.counter = itertools.count()

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


_ids = _EventIds()
os.register_at_fork(after_in_child=_ids.reseed)


def new_event_id() -> str:
    """32 hex digits, unique per record."""
    return _ids.next()


def format_time(now: datetime) -> str:
    """UTC, microseconds, ``Z`` suffix: sorts as text in time order."""
    if now.tzinfo is UTC:  # the usual case (datetime.now(UTC)): text ends in "+00:00"
        # isoformat is several times cheaper than strftime and gives the same
        # text; positional arguments, because keyword parsing costs as much again.
        return now.isoformat("T", "microseconds")[:-6] + "Z"
    if now.tzinfo is None:
        raise ValueError("audit times must be timezone-aware (pass datetime.now(UTC))")
    if now.utcoffset():
        now = now.astimezone(UTC)
    return now.replace(tzinfo=None).isoformat("T", "microseconds") + "Z"


def _status_for(address: str, action: str, outcomes: dict[str, RecipientOutcome]) -> str:
    found = outcomes.get(address)
    if found is not None:
        return found.status.value
    # The pipeline reports every recipient; this covers a verdict recorded alone.
    return "blocked" if action == "block" else "not-attempted"


def message_fields(
    envelope: Envelope, outcome: Outcome, *, config_digest: str, instance_id: str
) -> list[dict[str, Any]]:
    """One record body per recipient. Its chain fields (``at``, ``prev_hash``,
    ``seq``, ``v``) are None placeholders until the log chains it."""
    verdict = outcome.verdict
    outcomes = {r.address: r for r in outcome.recipients}
    facts = verdict.facts
    detectors = sorted({s.detector for s in facts.phi_signals}) if facts is not None else []
    rows: list[dict[str, Any]] = []
    decided = set()
    for d in verdict.decisions:
        decided.add(d.address)
        found = outcomes.get(d.address)
        rows.append(_message_row(
            envelope, outcome, detectors, config_digest, instance_id, recipient=d.address,
            source=d.source.value, role=d.role.value,
            action=(found.action if found else d.action).value, decided_action=d.action.value,
            rules=list(d.rules), reason=d.reason,
            status=_status_for(d.address, d.action.value, outcomes),
            portal_id=found.portal_id if found else None,
            upstream_reply=found.upstream_reply if found else None))
    for r in outcome.recipients:  # a copy with no decision (should not happen): still record it
        if r.address not in decided:
            rows.append(_message_row(
                envelope, outcome, detectors, config_digest, instance_id, recipient=r.address,
                source=None, role=None, action=r.action.value, decided_action=None, rules=[],
                reason=None, status=r.status.value, portal_id=r.portal_id,
                upstream_reply=r.upstream_reply))
    return rows


def _message_row(envelope: Envelope, outcome: Outcome, detectors: list[str], config_digest: str,
                 instance_id: str, *, recipient: str, source: str | None, role: str | None,
                 action: str, decided_action: str | None, rules: list[str], reason: str | None,
                 status: str, portal_id: str | None, upstream_reply: str | None
                 ) -> dict[str, Any]:
    verdict, tls = outcome.verdict, outcome.upstream_tls
    # Keys in sorted order: the canonical encoding sorts them anyway, and
    # sorted input halves what that sort costs (a test keeps this order). The
    # chain fields hold their sorted places too (the writer's merge keeps a
    # key's place), so the record it encodes is sorted already; worth ~10% of
    # the chaining cost per record.
    return {
        "action": action,
        "at": None,
        "config_sha256": config_digest,
        "decided_action": decided_action,
        "encrypted": verdict.encrypted,
        "event_id": new_event_id(),
        "inbound_tls_version": envelope.tls.version if envelope.tls else None,
        "instance_id": instance_id,
        "kind": "message",
        "mail_from": envelope.mail_from,
        "message_id": verdict.message_id,
        "message_sha256": outcome.message_sha256,
        "mode": verdict.mode.value,
        "outcome": status,
        "peer": envelope.peer,
        "phi": verdict.phi,
        "phi_detectors": list(detectors),
        "portal_id": portal_id,
        "prev_hash": None,
        "reason": reason,
        "recipient": recipient,
        "role": role,
        "rules": rules,
        "seq": None,
        "source": source,
        "submitter": envelope.auth_identity,
        "tls_cipher": tls.cipher if tls else None,
        "tls_peer_cert_sha256": tls.peer_cert_sha256 if tls else None,
        "tls_version": tls.version if tls else None,
        "upstream_reply": upstream_reply,
        "v": None,
    }


def event_fields(kind: str, fields: dict[str, str | int | None]) -> dict[str, Any]:
    """Validate a portal/admin event; raise ValueError naming the field at fault."""
    for prefix in ("portal.", "admin."):
        kind = kind.removeprefix(prefix)
    if kind in PORTAL_EVENTS:
        category = "portal"
    elif kind in ADMIN_EVENTS:
        category = "admin"
    else:
        known = ", ".join(sorted(PORTAL_EVENTS | ADMIN_EVENTS))
        raise ValueError(f"unknown audit event kind {kind!r} (known: {known})")
    out: dict[str, Any] = {"kind": kind, "category": category, "event_id": new_event_id()}
    for name, value in fields.items():
        lowered = name.lower()
        if name not in EVENT_FIELDS or (
            name not in _ALLOWED_DESPITE_WORDS
            and any(w in lowered for w in FORBIDDEN_FIELD_WORDS)
        ):
            raise ValueError(
                f"audit field {name!r} is not allowed (content, subjects, tokens and codes are"
                " never recorded; see EVENT_FIELDS)"
            )
        if isinstance(value, bool) or not isinstance(value, str | int | None):
            raise ValueError(f"audit field {name!r} must be a string, an integer or None")
        if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
            raise ValueError(f"audit field {name!r} is longer than {MAX_FIELD_CHARS} characters")
        out[name] = value
    return dict(sorted(out.items()))  # sorted input is cheaper to encode canonically
