"""decide(): facts + settings -> Verdict. Pure: no I/O, no clock (``now`` is passed in).

Default rules (ids are stable; docs/policy.md explains each):

1. ``staff-recipient``          staff recipient -> deliver
2. ``already-encrypted``        the whole message is encrypted -> deliver
3. ``no-phi``                   not client-related, no PHI signal -> deliver
4. client / contact / partner of a PHI or client-related message:
   ``consent-unencrypted``      consent on file for that exact client address, used by
                                that client alone, and the message names no other client -> deliver
   ``restricted-class``         (noted when a restricted class overrides consent)
   ``consent-other-client``     (noted when the message concerns another client)
   ``consent-several-people``   (noted when it holds two dates of birth or SSNs or more)
   ``consent-unscanned``        (noted when part of it could not be read)
   ``protected-pgp`` / ``protected-smime``  usable key -> encrypt (preference order)
   ``protected-portal``         no usable key -> portal
   ``portal-disabled``          no key and the portal is off -> block
5. ``unauthorised-recipient``   third party (incl. Bcc) on a PHI or client-related message:
                                "block" mode blocks every recipient; "strip" only the offenders
*  ``malformed-message`` / ``malformed-address``  -> every recipient blocked

Practice plugins (``policy.plugins``) see the facts and may add decisions with
their own rule ids. They can only tighten (to ``portal`` or ``block``), never
loosen, so a buggy plugin cannot leak a message.
"""

from __future__ import annotations

import datetime as dt
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from securemail.config import PolicySettings
from securemail.errors import ConfigError, PluginError
from securemail.model import (
    HELD_WITH_OFFENDER,
    Action,
    Decision,
    Encryption,
    Facts,
    RecipientFacts,
    Role,
    Verdict,
)

__all__ = ["PluginError", "PolicyRule", "RuleHit", "decide", "load_plugins"]


@dataclass(frozen=True, slots=True)
class RuleHit:
    """What a plugin rule returns for one recipient."""

    action: Action  # Action.PORTAL or Action.BLOCK
    rule: str  # the plugin's own stable id, e.g. "mypractice-no-minors"
    reason: str  # one sentence, no message content


PolicyRule = Callable[[Facts, RecipientFacts], "RuleHit | None"]


_KIND_ACTION = {"pgp": Action.ENCRYPT_PGP, "smime": Action.ENCRYPT_SMIME}
_KIND_NAME = {"pgp": "OpenPGP", "smime": "S/MIME"}


def decide(
    facts: Facts,
    policy: PolicySettings,
    *,
    now: dt.datetime,
    portal_enabled: bool = True,
    plugins: Sequence[PolicyRule] = (),
) -> Verdict:
    if facts.malformed:
        reason = f"message not relayed: {facts.malformed_detail or 'it cannot be parsed safely'}"
        decisions = [
            Decision(r.address, r.source, r.role, Action.BLOCK, (facts.malformed,), reason)
            for r in facts.recipients
        ]
        return _verdict(facts, policy, decisions)

    concerns = facts.client_related or facts.phi
    today = now.date().isoformat()
    # Encrypted or not, what travels in clear (the To line, a Subject naming a
    # client) is seen by every recipient.
    sealed = _sealed_whole(facts) and not facts.identified_client_ids
    offenders = [r for r in facts.recipients
                 if r.unrelated_clients or (concerns and r.role is Role.THIRD_PARTY
                                            and not sealed)]
    offending = {id(r) for r in offenders}  # by identity: comparing the facts costs more
    held = (f"{HELD_WITH_OFFENDER} {_names(offenders)}, who may not receive it"
            if offenders and policy.unauthorised_recipients == "block" else None)

    decisions = []
    for r in facts.recipients:
        if held is not None and id(r) not in offending:
            d = Decision(r.address, r.source, r.role, Action.BLOCK, ("unauthorised-recipient",),
                         held)
        elif id(r) in offending:
            d = Decision(r.address, r.source, r.role, Action.BLOCK, ("unauthorised-recipient",),
                         _unauthorised_reason(facts, r))
        else:
            d = _default_rule(facts, r, policy, today, portal_enabled)
        decisions.append(_apply_plugins(facts, r, d, plugins))
    return _verdict(facts, policy, decisions)


def _default_rule(facts: Facts, r: RecipientFacts, policy: PolicySettings, today: str,
                  portal_enabled: bool) -> Decision:
    def make(action: Action, rules: tuple[str, ...], reason: str) -> Decision:
        return Decision(r.address, r.source, r.role, action, rules, reason)

    if r.role is Role.STAFF:
        return make(Action.DELIVER, ("staff-recipient",), "recipient is practice staff")
    if _sealed_whole(facts):
        return make(Action.DELIVER, ("already-encrypted",),
                    f"the message is already encrypted ({facts.encryption.value})")
    if not (facts.client_related or facts.phi):
        return make(Action.DELIVER, ("no-phi",),
                    "the message concerns no client and no PHI was detected")
    noted: tuple[str, ...] = ()
    others: list[str] = []
    why = ""
    if r.role is Role.CLIENT:
        # Clients the message concerns besides the recipient's own: named in the
        # text, or among its participants (a forwarded email of theirs, a Cc).
        # Consent covers the client's own information only.
        others = list(r.other_clients)
        # Two dates of birth or SSNs: two people at least, one of them not the
        # client (a roster, a family's forms), even if nobody is in the directory.
        several = any(sig.detector == "phi-several-people" for sig in facts.phi_signals)
        # Text that was not read (past the scan limit, an unreadable attachment)
        # may be anybody's: consent covers only the client's own information.
        unscanned = any(sig.detector == "phi-unscanned" for sig in facts.phi_signals)
        if r.consent is not None and r.consent.valid_on(today):
            if others:
                noted = ("consent-other-client",)
            elif several:
                noted = ("consent-several-people",)
            elif unscanned:
                noted = ("consent-unscanned",)
            elif facts.restricted is None:
                return make(Action.DELIVER, ("consent-unencrypted",),
                            f"client {', '.join(r.client_ids)} consented to unencrypted email"
                            f" on {r.consent.granted} (warning {r.consent.warning})")
            else:
                noted = ("restricted-class",)
        why = _why_not_consent(r, today, others, several, unscanned)
    for kind in policy.encryption_preference:
        if kind in r.key_kinds:
            return make(_KIND_ACTION[kind], (*noted, f"protected-{kind}"),
                        f"protected content; the recipient has a usable {_KIND_NAME[kind]} key"
                        + why)
    if portal_enabled:
        return make(Action.PORTAL, (*noted, "protected-portal"),
                    "protected content and no usable key for the recipient: "
                    "sent through the secure portal" + why)
    return make(Action.BLOCK, (*noted, "portal-disabled"),
                "protected content, no usable key for the recipient and the portal is "
                "disabled; import the recipient's key or enable the portal" + why)


def _why_not_consent(r: RecipientFacts, today: str, others: Sequence[str],
                     several: bool = False, unscanned: bool = False) -> str:
    """Why a client's consent on file did not let the message go in clear ("" if none)."""
    if r.role is not Role.CLIENT:
        return ""
    if r.consent is None:
        return f" ({r.consent_note})" if r.consent_note else ""
    if today < r.consent.granted:
        return f" (consent to unencrypted email starts on {r.consent.granted})"
    if r.consent.expires is not None and today > r.consent.expires:
        return f" (consent to unencrypted email expired on {r.consent.expires})"
    if others:
        return (f" (consent does not cover other clients' information: the message concerns"
                f" client{'s' if len(others) > 1 else ''} {', '.join(others[:5])})")
    if several:
        return (" (consent does not cover other people's information: the message holds"
                " more than one date of birth or SSN)")
    if unscanned:
        return (" (consent does not cover what could not be read: part of the message was"
                " not scanned, and may be somebody else's information)")
    return ""


def _sealed_whole(facts: Facts) -> bool:
    """Encrypted, and nothing that travels in clear (Subject, preamble) is PHI:
    only then can nobody without the key read anything that matters."""
    return facts.encryption is not Encryption.NONE and not facts.phi


def _unauthorised_reason(facts: Facts, r: RecipientFacts) -> str:
    if r.role is not Role.THIRD_PARTY:
        ids = r.unrelated_clients
        plural = "s" if len(ids) > 1 else ""
        mine = f" (it is {_linked(r)})" if r.client_ids else ""
        whose = "theirs" if plural else "that client's"
        return (f"the message concerns client{plural} {', '.join(ids[:5])}, and this address"
                f" is neither {whose} nor an authorised contact of theirs{mine}")
    # The clients the text names first: they are who the message is about.
    concerned = list(dict.fromkeys((*facts.identified_client_ids, *facts.client_ids)))
    if concerned:
        clients = ", ".join(concerned[:5])
        plural = "s" if len(concerned) > 1 else ""
        return f"not an authorised contact of client{plural} {clients}"
    if {s.detector for s in facts.phi_signals} <= {"phi-unscanned"}:
        return ("PHI cannot be ruled out: part of the message could not be read (an"
                " attachment with a password, a damaged attachment, or more text than"
                " is scanned), and this address is not staff, a client, an authorised"
                " contact or a partner")
    return ("the message contains PHI and this address is not staff, a client, "
            "an authorised contact or a partner")


def _linked(r: RecipientFacts) -> str:
    ids = ", ".join(r.client_ids[:5])
    if r.role is Role.CLIENT:
        return f"client {ids}'s own address"
    return f"an authorised contact of client {ids}"


def _names(offenders: Sequence[RecipientFacts]) -> str:
    shown = ", ".join(o.address for o in offenders[:3])
    return shown + (f" and {len(offenders) - 3} more" if len(offenders) > 3 else "")


def _apply_plugins(facts: Facts, r: RecipientFacts, d: Decision,
                   plugins: Sequence[PolicyRule]) -> Decision:
    for rule in plugins:
        try:
            hit = rule(facts, r)
        except Exception as exc:  # noqa: BLE001 - any plugin fault defers the message
            raise PluginError(f"policy plugin {_rule_name(rule)} failed "
                              f"({type(exc).__name__})") from None
        if hit is None:
            continue
        if not isinstance(hit, RuleHit) or hit.action not in (Action.PORTAL, Action.BLOCK):
            raise PluginError(f"policy plugin {_rule_name(rule)} returned an invalid result "
                              "(must be None or RuleHit with action PORTAL or BLOCK)")
        if hit.action.strictness > d.action.strictness:
            d = Decision(d.address, d.source, d.role, hit.action, (*d.rules, hit.rule), hit.reason)
        elif hit.action is d.action:
            d = Decision(d.address, d.source, d.role, d.action, (*d.rules, hit.rule), d.reason)
    return d


def _rule_name(rule: PolicyRule) -> str:
    return f"{getattr(rule, '__module__', '?')}:{getattr(rule, '__qualname__', '?')}"


def _verdict(facts: Facts, policy: PolicySettings, decisions: Sequence[Decision]) -> Verdict:
    return Verdict(
        message_id=facts.message_id,
        mode=policy.mode,
        encrypted=facts.encryption is not Encryption.NONE,
        phi=facts.phi,
        decisions=tuple(decisions),
        facts=facts,
    )


def load_plugins(policy: PolicySettings, config_file: str) -> tuple[PolicyRule, ...]:
    """Import ``policy.plugins`` ("module:attr"); attr is a rule or a list of rules."""
    rules: list[PolicyRule] = []
    for i, spec in enumerate(policy.plugins):
        key = f"policy.plugins[{i}]"
        module_name, _, attr = spec.partition(":")
        try:
            obj: object = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except ImportError as exc:
            raise ConfigError(config_file, key, f'cannot import "{module_name}" ({exc.name})') \
                from None
        except AttributeError:
            raise ConfigError(config_file, key, f'"{module_name}" has no attribute "{attr}"') \
                from None
        found = list(obj) if isinstance(obj, list | tuple) else [obj]
        for rule in found:
            if not callable(rule):
                raise ConfigError(config_file, key, f'"{spec}" is not a rule (not callable)')
            rules.append(rule)
    return tuple(rules)
