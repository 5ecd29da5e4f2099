"""The notification: complete, honest, no content, nothing that looks like phishing."""

from __future__ import annotations

import email
import re
from dataclasses import replace
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securemail.config import PortalSettings, Settings
from securemail.notify import notification_message
from securemail.portal.service import PortalService

from .portal_helpers import CLIENT, NOW, SECRET_BODY, STAFF, make_rig, original


def notification(tmp: Path, **portal: object) -> tuple[bytes, str]:
    rig = make_rig(tmp, **portal)
    sealed = rig.service.seal(original(), message_id="<orig-1@riverside.example>",
                              sender=STAFF, recipient=CLIENT, now=NOW)
    raw = rig.service.notification(sealed, sender=STAFF, recipient=CLIENT, now=NOW)
    assert rig.audit.kinds() == []  # recorded only once upstream accepts it
    rig.service.notified(sealed.id, now=NOW)
    assert rig.audit.kinds() == ["notified"]
    return raw, sealed.url


def parts(raw: bytes) -> tuple[EmailMessage, str, str]:
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    text, html = (msg.get_body(preferencelist=(k,)) for k in ("plain", "html"))
    assert text is not None and html is not None
    return msg, text.get_content(), html.get_content()


def test_complete_message_with_link_and_no_content(tmp_path: Path) -> None:
    raw, url = notification(tmp_path)
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF throughout
    msg, text, html = parts(raw)
    assert msg["From"] == f"Riverside Counselling <{STAFF}>"
    assert msg["To"] == CLIENT and msg["Date"] and msg["Message-ID"]
    assert msg["Subject"] == "Secure message from Riverside Counselling"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert url in text
    # The link's visible text is the link itself: the recipient sees the real host.
    assert re.findall(r'<a href="([^"]+)"[^>]*>([^<]+)</a>', html) == [(url, url)]
    # "MRN 99812", not bare digits: the Message-ID's random decimal number may hold those.
    for leaked in ("Jane Doe", "your results", "F41.1", "MRN 99812", "labs.pdf", SECRET_BODY):
        assert leaked not in raw.decode()
    assert "<img" not in html.lower()  # no tracking pixel, no remote image at all
    # How to check it is genuine.
    for words in ("+1 555 0100", "https://riverside.example", "https://secure.riverside.example/",
                  STAFF):
        assert words in text and words in html


def test_sender_name_and_notify_from_are_used(tmp_path: Path) -> None:
    raw, _ = notification(tmp_path, sender_name="Riverside Secure Mail",
                          notify_from="portal@riverside.example")
    msg, _, _ = parts(raw)
    assert msg["From"] == "Riverside Secure Mail <portal@riverside.example>"


def test_html_escapes_configured_text(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    settings = replace(rig.settings, practice=replace(rig.settings.practice,
                                                      name="A&B <Clinic>"),
                       portal=PortalSettings(base_url="https://secure.riverside.example"))
    service = PortalService(settings, rig.conn, rig.transport, None, None)
    sealed = service.seal(original(), message_id="<m@x>", sender=STAFF, recipient=CLIENT,
                          now=NOW)
    _, _, html = parts(service.notification(sealed, sender=STAFF, recipient=CLIENT, now=NOW))
    assert "A&amp;B &lt;Clinic&gt;" in html and "<Clinic>" not in html


def _reference(name: str, recipient: str, raw: bytes) -> EmailMessage:
    """What the email package itself builds from the same fields and bodies."""
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    ref = EmailMessage(policy=policy.SMTP)
    ref["From"] = Address(display_name=name, addr_spec=STAFF)
    ref["To"] = recipient
    ref["Subject"] = f"Secure message from {name}"
    _, text, html = parts(raw)
    ref.set_content(text, cte="quoted-printable")
    ref.add_alternative(html, subtype="html", cte="quoted-printable")
    return ref


_RIGS: dict[str, Settings] = {}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=60)
       .filter(lambda s: s.strip() == s and s.strip()),
       recipient=st.sampled_from([CLIENT, "o'brien+x@mail.example", "jürgen@例え.jp",
                                  "a.b-c@sub.mail.example"]))
def test_notification_reads_as_the_email_package_would_build_it(tmp_path_factory: Any,
                                                                name: str,
                                                                recipient: str) -> None:
    if "rig" not in _RIGS:
        _RIGS["rig"] = make_rig(tmp_path_factory.mktemp("n")).settings
    base = _RIGS["rig"]
    s = replace(base, practice=replace(base.practice, name=name))
    raw = notification_message(s, url="https://secure.riverside.example/m/abc#k", expires=NOW,
                               sender=STAFF, recipient=recipient, now=NOW)
    assert b"\n" not in raw.replace(b"\r\n", b"")
    head, body = raw.split(b"\r\n\r\n", 1)
    # Header fields are folded by the email package (RFC 5322's hard limit holds);
    # the bodies and our own fields keep to 78.
    assert max(len(line) for line in head.split(b"\r\n")) <= 998
    assert max(len(line) for line in body.split(b"\r\n")) <= 78
    msg, text, html = parts(raw)
    assert not msg.defects and not any(p.defects for p in msg.walk())
    ref, ref_text, ref_html = parts(_reference(name, recipient, raw).as_bytes(
        policy=policy.SMTP))
    for field in ("From", "To", "Subject"):
        assert msg[field] == ref[field]
    assert (text, html) == (ref_text, ref_html)
    assert "https://secure.riverside.example/m/abc#k" in text
    assert msg["Date"] and msg["Message-ID"] and msg["Auto-Submitted"] == "auto-generated"


def test_a_non_ascii_recipient_is_written_in_utf8_not_in_encoded_words(tmp_path: Path) -> None:
    """RFC 2047 forbids encoded words inside an address; RFC 6532 allows UTF-8."""
    settings = make_rig(tmp_path).settings
    for recipient in ("jürgen@xn--bcher-kva.example", "jürgen@bücher.example"):
        raw = notification_message(settings, url="https://secure.riverside.example/m/a#k",
                                   expires=NOW, sender=STAFF, recipient=recipient, now=NOW)
        assert b"=?utf-8?" not in raw.split(b"\r\n\r\n", 1)[0].lower()
        assert _to_addresses(raw) == ["jürgen@xn--bcher-kva.example"]  # domain normalised


def test_the_recipients_notice_to_a_non_ascii_sender_has_a_valid_to(tmp_path: Path) -> None:
    from securemail.model import Action as Act
    from securemail.model import Decision, Mode, RecipientOutcome, Role, Source, Status, Verdict
    from securemail.notices import recipients_notice

    settings = make_rig(tmp_path).settings
    d = Decision("x@other.example", Source.TO, Role.THIRD_PARTY, Act.BLOCK,
                 ("unauthorised-recipient",), "not an authorised contact")
    verdict = Verdict("<m@riverside.example>", Mode.ENFORCE, False, False, (d,))
    raw = recipients_notice(settings, "rezeptión@riverside.example", verdict,
                            [RecipientOutcome(d.address, d.action, Status.BLOCKED)], NOW)
    assert _to_addresses(raw) == ["rezeptión@riverside.example"]


def test_the_recipients_notice_says_which_message_it_is_about(tmp_path: Path) -> None:
    # Trial 42: a therapist could not tell which email a notice was about from
    # its Message-ID alone. Now it threads with the original and says when.
    import email

    from securemail.model import Action as Act
    from securemail.model import Decision, Mode, RecipientOutcome, Role, Source, Status, Verdict
    from securemail.notices import recipients_notice

    settings = make_rig(tmp_path).settings
    out = Decision("x@other.example", Source.CC, Role.THIRD_PARTY, Act.BLOCK,
                   ("unauthorised-recipient",), "not an authorised contact")
    ok = Decision("nurse@riverside.example", Source.TO, Role.STAFF, Act.DELIVER,
                  ("staff-recipient",), "recipient is practice staff")
    verdict = Verdict("<m-7@riverside.example>", Mode.ENFORCE, False, False, (ok, out))
    raw = recipients_notice(settings, "dr@riverside.example", verdict,
                            [RecipientOutcome(out.address, out.action, Status.BLOCKED)], NOW)
    notice = email.message_from_bytes(raw)
    assert notice["In-Reply-To"] == notice["References"] == "<m-7@riverside.example>"
    text = notice.get_payload(decode=True).decode()
    assert (f"<m-7@riverside.example> (sent {NOW:%Y-%m-%d %H:%M} UTC to 2 recipients) to these"
            " recipients:") in " ".join(text.split())
    odd = Verdict("no brackets", Mode.ENFORCE, False, False, (ok, out))
    raw = recipients_notice(settings, "dr@riverside.example", odd,
                            [RecipientOutcome(out.address, out.action, Status.BLOCKED)], NOW)
    assert email.message_from_bytes(raw)["In-Reply-To"] is None  # never a malformed header
    # An Outlook-length Message-ID stays as it is (folded, it became encoded words).
    long_id = "<" + "A" * 60 + "@" + "NAM12-PROD.prod.outlook.example" + ">"
    raw = recipients_notice(settings, "dr@riverside.example",
                            Verdict(long_id, Mode.ENFORCE, False, False, (ok, out)),
                            [RecipientOutcome(out.address, out.action, Status.BLOCKED)], NOW)
    assert f"\r\nIn-Reply-To: {long_id}\r\n".encode() in raw


def _to_addresses(raw: bytes) -> list[str]:
    """The To addresses as the relay's strict parser reads them (RFC 6532 UTF-8
    accepted; an encoded word inside an address is refused as ambiguous)."""
    from securemail.config import LimitSettings
    from securemail.parse import parse_message

    view = parse_message(raw, LimitSettings())
    assert view.malformed is None, view.malformed_detail
    return list(view.addresses("to"))
