"""The securemail error tree.

Every error knows the SMTP reply the relay gives for it, so that a fault deep
in the pipeline maps to exactly one answer on the wire::

    SecuremailError
    ├── ConfigError              bad configuration (names file and key); CLI exit 2
    ├── InputError               unusable input (no recipients, unreadable file); CLI exit 2
    │   └── UsageError           (securemail.relay) a call that cannot work; fix the code
    │       └── RelayClosed      any call after Relay.close()
    ├── TemporaryFailure         451 4.3.0: try again later (store, upstream, crypto)
    │   ├── RecipientsDeferred   some recipients deferred (carries the Outcome)
    │   ├── UpstreamUnavailable  upstream down, refused TLS, timed out
    │   ├── RenderError          encryption / signing / sealing failed
    │   ├── StoreError           the database could not be used
    │   └── PluginError          a policy plugin raised or returned nonsense
    └── PermanentFailure         5xx: the same message will never go through
        ├── Blocked              550 5.7.1 policy block (carries the Verdict)
        ├── UpstreamRefused      550 5.0.0 upstream refused every recipient
        └── MalformedMessage     554 5.6.0 message or address cannot be parsed safely

Replies never contain message content, a Subject or exception text: the
``smtp_reply`` of each class is fixed text, plus (for ``Blocked``) recipient
addresses and rule ids, which the sender already knows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from securemail.model import HELD_WITH_OFFENDER

if TYPE_CHECKING:
    from securemail.model import Outcome, Verdict

__all__ = [
    "Blocked",
    "ConfigError",
    "InputError",
    "InsufficientStorage",
    "MalformedMessage",
    "PermanentFailure",
    "PluginError",
    "RecipientsDeferred",
    "RenderError",
    "SecuremailError",
    "StoreError",
    "TemporaryFailure",
    "UpstreamRefused",
    "UpstreamUnavailable",
]


class SecuremailError(Exception):
    """Base of every error securemail raises on purpose."""

    smtp_reply = "451 4.3.0 Temporary failure, please try again later"


class ConfigError(SecuremailError):
    """The configuration is wrong. ``str()`` is ``FILE: key: problem``."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(f"{where}{problem}")

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str, str]]:
        return (type(self), (self.file, self.key, self.problem))  # picklable (Celery, pools)


class InputError(SecuremailError):
    """A command was given input it cannot use (unreadable file, bad option).
    Permanent: the same call fails the same way, so its reply is a 5xx."""

    smtp_reply = "554 5.5.4 The request cannot be handled as given"


class TemporaryFailure(SecuremailError):
    """Something failed that may work later; the sender keeps the message."""

    smtp_reply = "451 4.3.0 Temporary failure, please try again later"


class RecipientsDeferred(TemporaryFailure):
    """Some recipients could not be handled yet (upstream down, a key or seal
    failed). ``outcome`` says, per recipient, what happened: ``deferred`` ones
    go out on a retry of the same bytes, ``accepted`` ones are not sent again.
    """

    def __init__(self, outcome: Outcome, causes: tuple[str, ...] = ()) -> None:
        self.outcome = outcome
        self.causes = causes  # e.g. "upstream: upstream 10.0.0.5:25 unavailable (...)"
        waiting, total = len(self.deferred), len(outcome.recipients)
        which = "every recipient" if waiting == total else f"{waiting} of {total} recipients"
        why = f" ({'; '.join(causes)})" if causes else ""
        super().__init__(f"{which} deferred{why}; retry the same bytes later")

    @property
    def deferred(self) -> tuple[str, ...]:
        return tuple(r.address for r in self.outcome.recipients if r.status.value == "deferred")

    @property
    def accepted(self) -> tuple[str, ...]:
        return tuple(r.address for r in self.outcome.recipients
                     if r.status.value in ("delivered", "sealed"))

    def __reduce__(self) -> tuple[type[RecipientsDeferred], tuple[Outcome, tuple[str, ...]]]:
        return (type(self), (self.outcome, self.causes))


class UpstreamUnavailable(TemporaryFailure):
    """The upstream server could not take the message (down, no TLS, timeout)."""


class RenderError(TemporaryFailure):
    """Encrypting, signing or sealing failed; nothing was sent in clear."""


class StoreError(TemporaryFailure):
    """The store could not be read or written."""


class InsufficientStorage(StoreError):
    """The disk under the store or the outbox is nearly full: the message is
    deferred before anything is sent (``452 4.3.1``)."""

    smtp_reply = "452 4.3.1 Insufficient system storage, please try again later"


class PluginError(TemporaryFailure):
    """A policy plugin failed; the relay defers (451) rather than guess.
    Nothing was sent. A retry succeeds only once the plugin is fixed: the
    message names the plugin."""


class PermanentFailure(SecuremailError):
    """The message will never be accepted as it is."""

    smtp_reply = "554 5.0.0 Message rejected"


class MalformedMessage(PermanentFailure):
    """The message or one of its addresses cannot be parsed without guessing."""

    smtp_reply = "554 5.6.0 Message is malformed and was not relayed"


_PASSED_ON = ("550", "551", "552", "553", "554")  # reply codes a client reads as "this message"


class UpstreamRefused(PermanentFailure):
    """The upstream server permanently refused every recipient.

    ``replies`` are upstream's reply codes (``"552 5.3.4"``: code and enhanced
    code only, never its text); the SMTP reply passes them on, so the sender
    learns "too big" or "policy" rather than "bad addresses".
    """

    def __init__(self, message: str = "no recipient accepted the message",
                 replies: tuple[str, ...] = ()) -> None:
        self.replies = tuple(dict.fromkeys(r for r in replies if r))
        super().__init__(message)

    def __reduce__(self) -> tuple[type[UpstreamRefused], tuple[str, tuple[str, ...]]]:
        return (type(self), (str(self), self.replies))  # picklable

    @property
    def smtp_reply(self) -> str:  # type: ignore[override]
        text = "The receiving server did not accept this message for any recipient"
        if not self.replies:
            return f"550 5.0.0 {text}"
        shown = ", ".join(self.replies[:4])
        code, _, enhanced = self.replies[0].partition(" ")
        if len(self.replies) > 1 or code not in _PASSED_ON:
            code = "550" if len(self.replies) > 1 else "554"
        if len(self.replies) > 1 or not enhanced.startswith("5."):
            enhanced = "5.0.0"
        return f"{code} {enhanced} {text} (it replied {shown})"


class Blocked(PermanentFailure):
    """The policy blocked the message; ``verdict`` says for whom and why."""

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict
        super().__init__(self.smtp_reply)

    def __reduce__(self) -> tuple[type[Blocked], tuple[Verdict]]:
        return (type(self), (self.verdict,))  # picklable (Celery, process pools)

    @property
    def smtp_reply(self) -> str:  # type: ignore[override]
        blocked = [d for d in self.verdict.decisions if d.action.value == "block"]
        rules = sorted({r for d in blocked for r in d.rules})
        if "malformed-message" in rules or "malformed-address" in rules:
            # The detail names a header or a limit, never content: the sender
            # learns what to fix ("To header cannot be parsed unambiguously").
            facts = self.verdict.facts
            detail = " ".join(facts.malformed_detail.split())[:160] if facts else ""
            return (f"554 5.6.0 Message not relayed: {', '.join(rules)}"
                    + (f" ({detail})" if detail else ""))
        # One reply line stays well under RFC 5321's 512 octets.
        head = f"550 5.7.1 Blocked by policy ({', '.join(rules)})"[:200]
        # A whole-message block names who caused it first, so the sender knows
        # which address to take off; the others were held back with them.
        cause = [d for d in blocked if "unauthorised-recipient" in d.rules
                 and not d.reason.startswith(HELD_WITH_OFFENDER)]
        held = [d for d in blocked if d not in cause]
        if cause and held:
            groups = [("not authorised: ", cause), ("; blocked with them: ", held)]
        else:
            groups = [("", blocked)]
        # What the sender can do about it, when somebody on the message is at fault.
        tail = ("; check them (a wrong autocomplete?) and the client names in the text:"
                " take off who may not have it, or ask the office to add them as"
                " authorised contacts") if cause else ""
        text, budget = head + ":", 440 - len(head) - len(tail)
        for n, (label, decisions) in enumerate(groups):
            # Room kept for the groups after this one: each names someone too.
            room = budget - 80 * (len(groups) - 1 - n)
            shown: list[str] = []
            for d in decisions:
                if sum(len(a) + 2 for a in shown) + len(d.address) + len(label) + 12 > room:
                    break
                shown.append(d.address)
            more = f" and {len(decisions) - len(shown)} more" if len(decisions) > len(shown) \
                else ""
            if not shown:  # not even one address fits: say how many, never an empty list
                more = f"{len(decisions)} recipient{'s' if len(decisions) > 1 else ''}"
            part = f"{label}{', '.join(shown)}{more}"
            text += (" " if not label.startswith(";") else "") + part
            budget -= len(part)
        return text + tail
