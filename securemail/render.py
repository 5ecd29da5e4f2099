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
                if relay.settings.policy.on_encryption_error != "portal" or relay.portal is None:
                    raise
                log.warning("encryption failed; sending through the portal instead",
                            extra={"event": {"action": d.action.value}})
                return await _portal(relay, d, raw, verdict, envelope, now)
        if d.action is Action.PORTAL:
            if relay.portal is None:
                raise RenderError("the portal is disabled")
            return await _portal(relay, d, raw, verdict, envelope, now)
    except TemporaryFailure:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed on any library fault
        log.error("render failed", extra={"event": {"action": d.action.value,
                                                     "error": type(exc).__name__}})
        raise RenderError("rendering failed") from None
    raise RenderError(f"no renderer for {d.action.value}")


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
    from securemail.portal.content import original_addresses

    # The notice names the author (From), and the client's reply goes to the
    # original's Reply-To/From: the envelope sender may be a VERP bounce address
    # or empty (MAIL FROM:<>, e.g. an auto-reply).
    author, reply_to = original_addresses(raw, envelope.mail_from)
    # Durable before the notice can leave: a link must never point at nothing.
    sealed = await relay.portal.seal_async(raw, message_id=verdict.message_id,
                                           sender=author, recipient=d.address, now=now,
                                           reply_to=reply_to)
    try:
        notice = relay.portal.notification(sealed, sender=author, recipient=d.address, now=now)
    except BaseException:
        # No notice, no link: the sealed copy must not stay behind, active.
        relay.portal.revoke(sealed.id, now, actor="relay")
        raise
    return Output((Decision(d.address, d.source, d.role, Action.PORTAL, d.rules, d.reason),),
                  notice, sealed.id)
