"""Facts about a parsed message: encryption state, who each recipient is, PHI.

Everything the policy needs is computed here, once, so that ``decide`` can be
pure. Facts never carry message content.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from email.message import Message
from email.utils import getaddresses
from typing import Protocol

from securemail.directory import AddressError, Directory, Identity, normalise_address
from securemail.encryption_state import claims_encryption, encryption_state
from securemail.model import (
    IDENTIFIER_DETECTORS,
    Encryption,
    Facts,
    PhiSignal,
    RecipientFacts,
    Role,
    Source,
)
from securemail.parse import MessageView, loose_recipients
from securemail.phi import Detectors, message_text, phrase_form

__all__ = ["KeyLookup", "classify"]


class KeyLookup(Protocol):
    def usable_kinds_many(self, addresses: Sequence[str], now: dt.datetime
                          ) -> dict[str, frozenset[str]]: ...


def classify(
    view: MessageView,
    *,
    mail_from: str,
    rcpt_tos: Sequence[str],
    directory: Directory,
    detectors: Detectors,
    keys: KeyLookup | None,
    restricted_header: str,
    scan_limit: int,
    now: dt.datetime,
) -> Facts:
    message_id = view.message_id
    if view.malformed or view.message is None:
        # The message's own fault first: with no --to, the recipients of a
        # malformed message are read loosely, and may not be addresses at all.
        return _malformed(view, view.malformed or "malformed-message", view.malformed_detail,
                          _printable(mail_from) if mail_from else "", rcpt_tos, directory)
    try:
        sender = normalise_address(mail_from) if mail_from else ""
        envelope = [normalise_address(r) for r in rcpt_tos]
    except AddressError:
        return _malformed(view, "malformed-address", "an envelope address is invalid",
                          mail_from, rcpt_tos, directory)

    to = set(view.addresses("to"))
    cc = set(view.addresses("cc"))
    content_type = view.message.get_content_type()
    encryption = encryption_state(view.message, content_type)
    # An encrypted message's parts cannot be read, but its Subject, preamble and
    # epilogue travel in clear: those are scanned like any other text.
    forwarded: list[Message] = []
    text, truncated = message_text(view.message, scan_limit, forwarded=forwarded,
                                   clear_only=encryption is not Encryption.NONE)
    # A client's own email forwarded on is about that client as much as a
    # message to or from them.
    # What every copy shows: the header addresses, the envelope sender, a
    # forwarded message's headers. A Bcc recipient is shown to nobody but
    # itself (a Bcc header is taken off every copy: pipeline._NEVER_SENT).
    shown = {sender, *view.addresses("from", "sender", "reply-to", "to", "cc"),
             *_forwarded_addresses(forwarded), *_other_shown(view)} - {""}
    participants = shown | set(envelope) | set(view.addresses("bcc"))
    identities = {a: directory.identify(a) for a in participants}
    links = {a: who.linked_ids for a, who in identities.items()}
    client_ids = sorted({c for linked in links.values() for c in linked})
    signals, names = detectors.scan_names(view.subject, text)
    named, identified, groups = _names(names, view.message, directory, sender,
                                       (view.subject, text))
    if truncated or (encryption is Encryption.NONE and claims_encryption(view.message, view.raw,
                                                                        content_type)):
        # Text we did not read (past the limit, or "encrypted" content that is
        # not really ciphertext) may be PHI.
        signals += (PhiSignal("phi-unscanned", "body"),)
    restricted_values = view.message.get_all(restricted_header) or []
    # Present counts, even empty: the practice marked the message restricted.
    restricted = (",".join(" ".join(str(v).split()) for v in restricted_values)[:64]
                  or "unspecified") if restricted_values else None

    unique = list(dict.fromkeys(envelope))  # the same RCPT twice gets one decision
    who = {a: identities[a] for a in unique}  # every envelope address is a participant
    # Keys matter only for protected recipients of a client-related or PHI message.
    needs_key = [a for a in unique if who[a].role is not Role.STAFF]
    concerned = bool(client_ids) or any(s.detector in IDENTIFIER_DETECTORS for s in signals)
    kinds = keys.usable_kinds_many(needs_key, now) if keys is not None and concerned \
        and needs_key else {}
    copies = _Copies(shown, links, named, identified, groups) if client_ids or named else None
    recipients = tuple(
        RecipientFacts(a, Source.TO if a in to else Source.CC if a in cc else Source.BCC,
                       who[a].role, who[a].client_ids, kinds.get(a, frozenset()), who[a].consent,
                       who[a].consent_note,
                       *(copies.of(a, who[a]) if copies else ((), ())))
        for a in unique
    )
    return Facts(
        message_id=message_id,
        sender=sender,
        encryption=encryption,
        recipients=recipients,
        client_ids=tuple(client_ids),
        phi_signals=signals,
        restricted=restricted,
        named_client_ids=tuple(sorted(named)),
        identified_client_ids=tuple(sorted(identified)),
    )


def _names(found: Mapping[str, frozenset[str]], message: Message, directory: Directory,
           sender: str, texts: tuple[str, str] = ("", "")
           ) -> tuple[frozenset[str], frozenset[str], list[tuple[frozenset[str], frozenset[str]]]]:
    """From the names and addresses found: every client named (no consent
    covers them, ever), the clients named surely enough to make the message
    theirs, and for each such name its owners with whom they are linked to.

    A staff sender's own name is not a client's for blocking (a therapist who
    shares a client's name signs every message with it): only the exact name
    of the From line, titles and credentials aside ("Dr. Ana Rivera, LMFT"),
    and a name the directory lists as staff's (``staff_names``) wherever the
    text gives it a title or a credential ("your appointment with Dr. Ana
    Rivera", a signature "Ana Rivera, LCSW"); bare, it is the client's.
    A one-word name ("Grace") may be any word: it withholds consent, but makes
    no message a client's and blocks nobody. A name two clients share is
    where it belongs with either."""
    if not found:
        return frozenset(), frozenset(), []
    own = _own_names(message, directory, sender)
    staff = {phrase_form(n) for n in directory.staff_names} & found.keys()
    if staff:
        own |= _titled_only(staff, phrase_form("\n".join(texts)))
    named: set[str] = set()
    groups = []
    for phrase, owners in found.items():
        named |= owners
        if phrase in own:
            continue
        if " " in phrase:
            reach = frozenset().union(*(directory.client_links.get(c, {c}) for c in owners))
            groups.append((owners, reach))
    identified = frozenset().union(*(owners for owners, _ in groups))
    return frozenset(named), identified, groups


# Words around a person's name in a From line that are not the name.
_TITLES = frozenset({"dr", "doctor", "mr", "mrs", "ms", "mx", "miss", "prof", "rev"})
_CREDENTIALS = frozenset({
    "md", "do", "phd", "psyd", "edd", "lmft", "lcsw", "licsw", "lpc", "lpcc", "lmhc", "lcpc",
    "msw", "ma", "ms", "msc", "mft", "rn", "np", "pa", "bcba", "ncc", "lac", "cadc", "jr", "sr",
})


def _own_names(message: Message, directory: Directory, sender: str) -> frozenset[str]:
    """The names of the From line (scanned form), when it is a staff
    member's own line: the envelope sender and every From address staff."""
    froms = getaddresses([str(v) for v in message.get_all("from") or ()])
    staff = {sender, *(a for _, a in froms)} - {""}
    try:
        if not staff or any(directory.identify(normalise_address(a)).role is not Role.STAFF
                            for a in staff):
            return frozenset()
    except AddressError:
        return frozenset()
    own = set()
    for display, _ in froms:
        words = phrase_form(display).split()
        while words and words[0] in _TITLES:
            words = words[1:]
        while words and words[-1] in _CREDENTIALS:
            words = words[:-1]
        if words:
            own.add(" ".join(words))
    return frozenset(own)


def _titled_only(names: set[str], scanned: str) -> frozenset[str]:
    """Those of ``names`` (scanned form) that ``scanned`` never writes without
    a title before them or a credential after them: a staff member's."""
    words = scanned.split()
    titled = set()
    for name in names:
        size = len(name.split())
        spots = [i for i in range(len(words) - size + 1)
                 if " ".join(words[i:i + size]) == name]
        if spots and all((i > 0 and words[i - 1] in _TITLES)
                         or (i + size < len(words) and words[i + size] in _CREDENTIALS)
                         for i in spots):
            titled.add(name)
    return frozenset(titled)


class _Copies:
    """For each recipient: the clients its copy concerns besides its own (no
    consent covers them), and those of them it is not linked to at all (it
    may not receive the copy). A client or contact linked to a client named
    in the text, or sharing a client with each address its copy shows (a
    parent beside the child), is where it belongs; a client's address beside
    another family's, or another client's name, tells it what it may not know."""

    __slots__ = ("concerned", "everyone", "groups", "named_surely", "shown")

    def __init__(self, shown: set[str], links: Mapping[str, frozenset[str]],
                 named: frozenset[str], identified: frozenset[str],
                 groups: list[tuple[frozenset[str], frozenset[str]]]) -> None:
        self.groups = groups  # (clients a name belongs to, clients linked with them)
        self.named_surely = identified  # the owners of every name in ``groups``
        self.shown = [(a, links[a]) for a in shown if links[a]]  # those that reveal a client
        self.concerned = named.union(*(theirs for _, theirs in self.shown))
        self.everyone = tuple(sorted(self.concerned))  # for whoever is linked to none

    def of(self, address: str, me: Identity) -> tuple[tuple[str, ...], tuple[str, ...]]:
        mine = me.linked_ids
        if not mine:  # staff, partners (any client's), a third party (rule 5 on its own)
            return self.everyone, ()
        concerned = tuple(sorted((self.concerned | mine).difference(me.client_ids)))
        if self.concerned <= mine:  # everything the copy tells is this recipient's
            return concerned, ()
        unrelated: set[str] = set()
        # What else the copy is about: the other addresses it shows, the names.
        context = set(self.named_surely)
        for other, theirs in self.shown:
            if other != address:
                context |= theirs
                if not theirs & mine:
                    unrelated |= theirs
        for owners, reach in self.groups:
            # A client named is this recipient's own, or one linked to a client
            # of its own that the copy is about anyway (the mother who is a
            # client too, on her child's thread); not her own notes sent to
            # the child's other parent.
            if not owners & mine and not (reach - owners) & mine & context:
                unrelated |= owners
        return concerned, tuple(sorted(unrelated))


# Other headers that show addresses to every recipient (read loosely: they can
# only make a copy reveal more, never less).
_OTHER_SHOWN = ("resent-from", "resent-sender", "resent-to", "resent-cc",
                "disposition-notification-to", "return-receipt-to", "mail-followup-to",
                "mail-reply-to")


_OTHER_SHOWN_LINE = re.compile(
    rb"(?im)^(?:resent-(?:from|sender|to|cc)|disposition-notification-to|return-receipt-to"
    rb"|mail-followup-to|mail-reply-to)[ \t]*:")


def _other_shown(view: MessageView) -> set[str]:
    end = view.raw.find(b"\r\n\r\n")
    if view.message is None or not _OTHER_SHOWN_LINE.search(
            view.raw, 0, end if end >= 0 else len(view.raw)):
        return set()
    found = set()
    for address in loose_recipients(view.message, _OTHER_SHOWN):
        try:
            found.add(normalise_address(address))
        except AddressError:
            continue
    return found


def _forwarded_addresses(forwarded: Sequence[Message]) -> set[str]:
    """Addresses in the headers of forwarded messages, read loosely: they can
    only make a message client-related (stricter), never less so."""
    found: set[str] = set()
    for inner in forwarded:
        # An attached message shows its Bcc too (a sent item keeps it).
        values = [str(v) for name in ("from", "sender", "reply-to", "to", "cc", "bcc")
                  for v in inner.get_all(name) or ()]
        for _, address in getaddresses(values):
            try:
                found.add(normalise_address(address))
            except AddressError:
                continue
    return found


def _malformed(view: MessageView, kind: str, detail: str, sender: str,
               rcpt_tos: Sequence[str], directory: Directory) -> Facts:
    # Recipients are reported as given (unverified) so each still gets a decision
    # (every one is blocked). Its role and where it appears are read as well as
    # they can be, for the audit record: a client in To is not "a third party
    # in Bcc". An address that cannot be read is a third party in Bcc.
    sources = _loose_sources(view.message)
    recipients = []
    for r in dict.fromkeys(rcpt_tos):
        address = _printable(r)
        try:
            role = directory.identify(normalise_address(r)).role
        except AddressError:
            role = Role.THIRD_PARTY
        recipients.append(RecipientFacts(address, sources.get(address, Source.BCC), role))
    return Facts(message_id=view.message_id, sender=sender, encryption=Encryption.NONE,
                 recipients=tuple(recipients), malformed=kind, malformed_detail=detail)


def _loose_sources(message: Message | None) -> dict[str, Source]:
    """Where each address of a message that failed strict parsing appears (To
    or Cc), read loosely: for the record only, never for a decision."""
    out: dict[str, Source] = {}
    if message is None:
        return out
    for name, source in (("cc", Source.CC), ("to", Source.TO)):  # To wins over Cc
        for address in loose_recipients(message, (name,)):
            try:
                out[normalise_address(address)] = source
            except AddressError:
                continue
    return out


def _printable(address: str) -> str:
    try:
        return normalise_address(address)
    except AddressError:
        return address.encode("unicode_escape").decode("ascii")[:254]
