"""Values that flow along the data path: envelope -> facts -> verdict -> outcome.

All are frozen dataclasses or enums; nothing here does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Action(enum.StrEnum):
    """What happens to the message for one recipient."""

    DELIVER = "deliver"
    ENCRYPT_PGP = "encrypt-pgp"
    ENCRYPT_SMIME = "encrypt-smime"
    PORTAL = "portal"
    BLOCK = "block"

    @property
    def strictness(self) -> int:
        """Higher is more protective; plugins may only raise it."""
        return _STRICTNESS[self]


_STRICTNESS = {
    Action.DELIVER: 0,
    Action.ENCRYPT_PGP: 1,
    Action.ENCRYPT_SMIME: 1,
    Action.PORTAL: 2,
    Action.BLOCK: 3,
}


class Role(enum.StrEnum):
    STAFF = "staff"
    CLIENT = "client"
    CONTACT = "contact"
    PARTNER = "partner"
    THIRD_PARTY = "third-party"


class Source(enum.StrEnum):
    """Where the recipient appears: a visible header, or only in the envelope."""

    TO = "to"
    CC = "cc"
    BCC = "bcc"


class Encryption(enum.StrEnum):
    """Encryption state of the whole message."""

    NONE = "none"
    PGP_MIME = "pgp-mime"
    PGP_INLINE = "pgp-inline"
    SMIME = "smime"


class Mode(enum.StrEnum):
    ENFORCE = "enforce"
    SHADOW = "shadow"


class Status(enum.StrEnum):
    """What finally happened to one recipient's copy."""

    DELIVERED = "delivered"
    SEALED = "sealed"
    BLOCKED = "blocked"
    DEFERRED = "deferred"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """Facts about a TLS session (inbound or upstream)."""

    version: str | None = None
    cipher: str | None = None
    peer_cert_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP envelope (or its library-call equivalent)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    peer: str | None = None
    auth_identity: str | None = None
    tls: TLSInfo | None = None
    # A "Received:" trace header (CRLF-terminated) to put on what leaves: set by
    # the submission listener, where securemail is the first server (RFC 5321 4.4).
    trace: str | None = None


@dataclass(frozen=True, slots=True)
class Consent:
    """A client's documented consent to receive unencrypted email."""

    granted: str  # ISO date
    warning: str  # version of the risk warning the client was shown
    expires: str | None = None  # ISO date, inclusive

    def valid_on(self, day: str) -> bool:
        """``day`` is an ISO date (``YYYY-MM-DD``); ISO dates sort as strings."""
        if day < self.granted:
            return False
        return self.expires is None or day <= self.expires


@dataclass(frozen=True, slots=True)
class RecipientFacts:
    address: str  # normalised (see directory.normalise_address)
    source: Source
    role: Role
    client_ids: tuple[str, ...] = ()  # clients this address is, or is a contact of
    key_kinds: frozenset[str] = frozenset()  # {"pgp", "smime"}: usable keys now
    consent: Consent | None = None  # only for a client's own address
    consent_note: str = ""  # why a consent on file is not used (shared address, ...)
    # Clients this recipient's copy concerns besides its own: named in the text,
    # or linked to an address the copy shows (From, To, Cc, a forwarded header;
    # never another Bcc recipient). Consent covers none of them.
    other_clients: tuple[str, ...] = ()
    # Clients this recipient's copy would tell it about although it is not
    # linked to them (a client or contact receiving another client's mail, or
    # seeing the address of somebody else's client or contact): it may not
    # receive the message (rule unauthorised-recipient).
    unrelated_clients: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PhiSignal:
    """One content detector hit. ``detector`` is a stable id; no content kept."""

    detector: str
    where: str  # "subject" | "body"


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything the policy needs, computed by classify; no content inside."""

    message_id: str
    sender: str
    encryption: Encryption
    recipients: tuple[RecipientFacts, ...]
    client_ids: tuple[str, ...] = ()  # clients the message concerns
    phi_signals: tuple[PhiSignal, ...] = ()
    named_client_ids: tuple[str, ...] = ()  # clients whose directory names are in the text
    # Those named surely (a full name or an address, not the sender's own
    # name): the message is theirs, and only people linked to them may have it.
    identified_client_ids: tuple[str, ...] = ()
    restricted: str | None = None  # restricted class from the practice header
    malformed: str | None = None  # "malformed-message" | "malformed-address"
    malformed_detail: str = ""  # what limit or header, never content

    @property
    def phi(self) -> bool:
        """True when the content detectors found PHI (identifier + health term)."""
        kinds = {s.detector for s in self.phi_signals}
        return bool(kinds & IDENTIFIER_DETECTORS) and bool(kinds & HEALTH_DETECTORS)

    @property
    def client_related(self) -> bool:
        """A client (or contact) takes part, or the text names a client: at a
        counselling practice, being a client is itself protected information."""
        return bool(self.client_ids or self.identified_client_ids)


# "phi-unscanned": text past the scan limit was not read, so it counts as both.
IDENTIFIER_DETECTORS = frozenset({"phi-ssn", "phi-dob", "phi-mrn", "phi-client-name",
                                  "phi-unscanned"})
HEALTH_DETECTORS = frozenset({"phi-icd10", "phi-keyword", "phi-unscanned"})


# How a whole-message block begins the reason of the recipients held back
# with an offender (who are not themselves at fault).
HELD_WITH_OFFENDER = "the whole message is blocked because it also goes to"


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer for one recipient."""

    address: str
    source: Source
    role: Role
    action: Action
    rules: tuple[str, ...]
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "source": self.source.value,
            "role": self.role.value,
            "action": self.action.value,
            "rules": list(self.rules),
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """One Decision per envelope recipient, plus the message-level facts."""

    message_id: str
    mode: Mode
    encrypted: bool
    phi: bool
    decisions: tuple[Decision, ...]
    facts: Facts | None = field(default=None, compare=False, repr=False)

    @property
    def blocked(self) -> bool:
        return any(d.action is Action.BLOCK for d in self.decisions)

    @property
    def malformed(self) -> bool:
        return any(
            r in ("malformed-message", "malformed-address") for d in self.decisions for r in d.rules
        )

    def decision_for(self, address: str) -> Decision:
        """The decision for ``address``, written as the caller has it: case and
        IDN forms are matched as the policy matches them (``Jane@Mail.Example``,
        ``kim@bücher.example``). Raises KeyError for an address that is not a
        recipient of this message."""
        for d in self.decisions:
            if d.address == address:
                return d
        from securemail.directory import AddressError, normalise_address

        try:
            normal = normalise_address(address)
        except AddressError:
            normal = ""
        for d in self.decisions:
            if normal and d.address == normal:
                return d
        raise KeyError(f"{address!r} is not a recipient of this message")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "message_id": self.message_id,
            "mode": self.mode.value,
            "encrypted": self.encrypted,
            "phi": self.phi,
            "blocked": self.blocked,
            "recipients": [d.to_json() for d in self.decisions],
        }
        if self.facts is not None:
            out["client_related"] = self.facts.client_related
            out["phi_signals"] = sorted({s.detector for s in self.facts.phi_signals})
        return out


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    """What happened to one recipient's copy after render and delivery."""

    address: str
    action: Action
    status: Status
    portal_id: str | None = None
    upstream_reply: str | None = None  # SMTP code + enhanced code only, no text


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of ``Relay.send``: the verdict and what happened per recipient."""

    verdict: Verdict
    recipients: tuple[RecipientOutcome, ...]
    message_sha256: str
    upstream_tls: TLSInfo | None = None

    @property
    def delivered(self) -> tuple[str, ...]:
        return tuple(
            r.address for r in self.recipients if r.status in (Status.DELIVERED, Status.SEALED)
        )
