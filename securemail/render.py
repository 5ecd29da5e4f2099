"""Actions -> the bytes that leave, for one protected recipient.

``deliver`` needs no rendering (the original bytes, minus the practice's
restricted-class marker, go to every pass-through recipient at once). Every
other action produces one message per recipient, so no ciphertext or portal
link is ever shared between To, Cc and Bcc. Any failure becomes a
:class:`~securemail.errors.RenderError` (451): never the original in clear.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from securemail.errors import RenderError, TemporaryFailure
from securemail.model import Action, Decision, Envelope, Verdict

if TYPE_CHECKING:
    from securemail.relay import Relay

__all__ = ["Output", "render_protected"]

log = logging.getLogger("securemail.render")


@dataclass(frozen=True, slots=True)
class Output:
    """One message to hand to the transport, and whom it is for."""

    recipients: tuple[Decision, ...]
    data: bytes
    portal_id: str | None = None


async def render_protected(relay: Relay, d: Decision, raw: bytes, verdict: Verdict,
                           envelope: Envelope, now: dt.datetime) -> Output:
    try:
        if d.action in (Action.ENCRYPT_PGP, Action.ENCRYPT_SMIME):
            try:
                return Output((d,), _encrypt(relay, d, raw, now))
            except TemporaryFailure:
                other = _other_encryption(relay, d, now)
                if other is not None:
                    try:
                        encrypted = _encrypt(relay, other, raw, now)
                    except TemporaryFailure:
                        pass
                    else:
                        log.warning("encryption with the recipient's preferred key failed;"
                                    " encrypted with their other usable key instead",
                                    extra={"event": {"action": d.action.value,
                                                     "instead": other.action.value}})
                        return Output((other,), encrypted)
                if relay.settings.policy.on_encryption_error != "portal" \
                        or not relay.portal_sealing:
                    raise
                log.warning("encryption failed; sending through the portal instead",
                            extra={"event": {"action": d.action.value}})
                return await _portal(relay, d, raw, verdict, envelope, now)
        if d.action is Action.PORTAL:
            if not relay.portal_sealing:
                raise RenderError("the portal is disabled")
            return await _portal(relay, d, raw, verdict, envelope, now)
    except TemporaryFailure:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed on any library fault
        log.error("render failed", extra={"event": {"action": d.action.value,
                                                     "error": type(exc).__name__}})
        raise RenderError("rendering failed") from None
    raise RenderError(f"no renderer for {d.action.value}")


_KIND_OF = {Action.ENCRYPT_PGP: "pgp", Action.ENCRYPT_SMIME: "smime"}
_ACTION_OF = {kind: action for action, kind in _KIND_OF.items()}
_KIND_NAME = {"pgp": "OpenPGP", "smime": "S/MIME"}


def _other_encryption(relay: Relay, d: Decision, now: dt.datetime) -> Decision | None:
    """The same decision with the recipient's other usable kind of key (in the
    practice's preference order), when the preferred one failed at send time."""
    usable = relay.keyring.usable_kinds(d.address, now)
    for kind in relay.settings.policy.encryption_preference:
        if kind != _KIND_OF[d.action] and kind in usable:
            rules = tuple(r for r in d.rules if not r.startswith("protected-"))
            reason = (f"protected content; the recipient's {_KIND_NAME[_KIND_OF[d.action]]}"
                      f" key could not be used, their {_KIND_NAME[kind]} key was")
            return Decision(d.address, d.source, d.role, _ACTION_OF[kind],
                            (*rules, f"protected-{kind}"), reason)
    return None


def _encrypt(relay: Relay, d: Decision, raw: bytes, now: dt.datetime) -> bytes:
    if d.action is Action.ENCRYPT_PGP:
        from securemail.crypto.pgp import render_pgp_mime

        keys = relay.keyring.pgp_keys(d.address, now)
        if not keys:
            raise RenderError("no usable OpenPGP key")
        return render_pgp_mime(raw, keys, relay.archive_key, now=now)
    from securemail.crypto.smime import render_smime

    certs = relay.keyring.smime_certs(d.address, now)
    if not certs:
        raise RenderError("no usable S/MIME certificate")
    return render_smime(raw, certs)


async def _portal(relay: Relay, d: Decision, raw: bytes, verdict: Verdict, envelope: Envelope,
                  now: dt.datetime) -> Output:
    from securemail.portal.content import original_reply

    # The notice names the author (From): the envelope sender may be a VERP
    # bounce address or empty (MAIL FROM:<>, e.g. an auto-reply). The client's
    # reply goes to the original's Reply-To or From when that is the practice's
    # (PortalService chooses). The audit keeps the envelope sender (mail_from),
    # as the message's own record does.
    author, _, _ = original_reply(raw, envelope.mail_from)
    # Durable before the notice can leave: a link must never point at nothing.
    sealed = await relay.portal.seal_async(raw, message_id=verdict.message_id,
                                           sender=author, recipient=d.address, now=now,
                                           mail_from=envelope.mail_from)
    try:
        notice = relay.portal.notification(sealed, sender=author, recipient=d.address, now=now)
    except BaseException:
        # No notice, no link: the sealed copy must not stay behind, active.
        relay.portal.revoke(sealed.id, now, actor="relay")
        raise
    return Output((Decision(d.address, d.source, d.role, Action.PORTAL, d.rules, d.reason),),
                  notice, sealed.id)
