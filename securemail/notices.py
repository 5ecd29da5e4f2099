"""The notice a sender gets when some recipients did not receive a message.

Lists addresses, actions and rule ids with the policy's reason; never the
Subject or any content of the original. Sent with an empty envelope sender
(like a DSN) so it can never loop.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from collections.abc import Sequence
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8

from securemail.config import Settings
from securemail.model import RecipientOutcome, Status, Verdict

__all__ = ["recipients_notice"]


def recipients_notice(settings: Settings, sender: str, verdict: Verdict,
                      undelivered: Sequence[RecipientOutcome], now: dt.datetime) -> bytes:
    total = len(verdict.decisions)
    lines = [
        f"{settings.practice.name}'s secure mail relay could not deliver your message",
        f"{verdict.message_id or '(no Message-ID)'} (sent {now.astimezone(dt.UTC):%Y-%m-%d %H:%M}"
        f" UTC to {total} recipient{'s' if total != 1 else ''}) to these recipients:",
        "",
    ]
    for r in undelivered:
        d = verdict.decision_for(r.address)
        if r.status is Status.BLOCKED:
            why = f"blocked by policy ({', '.join(d.rules)}): {d.reason}"
        else:
            why = f"refused by the receiving server ({r.upstream_reply or 'permanent error'})"
        lines.append(f"  {r.address}: {why}")
    lines += [
        "",
        "All other recipients received it. Nothing needs to be done unless one of",
        "the recipients above should have received it; in that case contact your",
        "practice's IT or privacy officer.",
    ]
    msg = EmailMessage()
    domain = _notice_domain(settings)
    msg["From"] = f"Mail Delivery System <MAILER-DAEMON@{domain}>"
    msg["To"] = sender
    msg["Subject"] = "Some recipients did not receive your message"
    msg["Date"] = email.utils.format_datetime(now)
    msg["Message-ID"] = email.utils.make_msgid(domain=domain)
    msg["Auto-Submitted"] = "auto-replied"
    if _MESSAGE_ID.fullmatch(verdict.message_id or ""):
        # Mail programs show the notice beside the message it is about.
        msg["In-Reply-To"] = msg["References"] = verdict.message_id
    msg.set_content("\n".join(lines))
    # A non-ASCII sender address goes in raw UTF-8 (RFC 6532): SMTP's policy
    # would put an encoded word inside the address, which RFC 2047 forbids.
    return msg.as_bytes(policy=_WIRE if sender.isascii() else _WIRE_UTF8)


_MESSAGE_ID = re.compile(r"<[!-;=?-~]{1,250}@[!-;=?-~]{1,250}>")  # printable ASCII, no < or >
# An Outlook Message-ID is longer than 78 octets: folded, it would become
# encoded words and mail programs would no longer thread the notice.
_WIRE = SMTP.clone(max_line_length=998)
_WIRE_UTF8 = SMTPUTF8.clone(max_line_length=998)


def _notice_domain(settings: Settings) -> str:
    """The DKIM signing domain (so the notice passes DMARC alignment), else the
    practice's first domain, else our host name."""
    if settings.dkim is not None:
        return settings.dkim.domain
    if settings.practice.domains:
        return settings.practice.domains[0]
    return settings.relay.hostname
