"""The default rules, one by one, on real message bytes."""

from __future__ import annotations

import datetime as dt
import email
from email.message import EmailMessage
from pathlib import Path

import pytest

from securemail.model import Action, Facts, RecipientFacts, Role, Source
from securemail.policy import PluginError, RuleHit
from securemail.testing import build_message
from tests.unit.policy_helpers import FakeKeys, verdict_for

DR = "dr.lee@riverside.example"
PHI_BODY = "Jane Roe, SSN 123-45-6789, diagnosis F32.1. Next session Tuesday."


def msg(to=(), cc=(), bcc=(), body="See you Tuesday.", subject="Next week", **kw) -> bytes:
    return build_message(sender=DR, to=list(to), cc=list(cc), bcc=list(bcc), body=body,
                         subject=subject, **kw)


def actions(verdict) -> dict[str, str]:
    return {d.address: d.action.value for d in verdict.decisions}


def test_staff_recipient_delivers_even_with_phi(config_path: Path) -> None:
    v = verdict_for(config_path, msg(to=["nurse@riverside.example"], body=PHI_BODY), DR,
                    ["nurse@riverside.example"])
    assert actions(v) == {"nurse@riverside.example": "deliver"}
    assert v.decisions[0].rules == ("staff-recipient",)
    assert v.phi


def test_unrelated_mail_without_phi_is_delivered(config_path: Path) -> None:
    raw = msg(to=["vendor@supplies.example"], body="Our therapy office needs toner.")
    v = verdict_for(config_path, raw, DR, ["vendor@supplies.example"])
    assert actions(v) == {"vendor@supplies.example": "deliver"}
    assert v.decisions[0].rules == ("no-phi",)
    assert not v.phi


def test_client_without_key_goes_to_portal(config_path: Path) -> None:
    v = verdict_for(config_path, msg(to=["jane@mail.example"]), DR, ["jane@mail.example"])
    d = v.decisions[0]
    assert (d.role, d.action, d.rules) == (Role.CLIENT, Action.PORTAL, ("protected-portal",))
    assert not v.blocked


def test_client_with_key_is_encrypted_in_preference_order(config_path: Path) -> None:
    keys = FakeKeys({"jane@mail.example": {"pgp", "smime"}})
    v = verdict_for(config_path, msg(to=["jane@mail.example"]), DR, ["jane@mail.example"], keys)
    assert v.decisions[0].action is Action.ENCRYPT_PGP
    keys = FakeKeys({"jane@mail.example": {"smime"}})
    v = verdict_for(config_path, msg(to=["jane@mail.example"]), DR, ["jane@mail.example"], keys)
    assert v.decisions[0].action is Action.ENCRYPT_SMIME
    assert v.decisions[0].rules == ("protected-smime",)


def test_preference_can_put_smime_first(make_config) -> None:
    cfg = make_config(extra='')
    text = cfg.read_text().replace('unauthorised_recipients = "block"',
                                   'unauthorised_recipients = "block"\n'
                                   'encryption_preference = ["smime", "pgp"]')
    cfg.write_text(text)
    keys = FakeKeys({"jane@mail.example": {"pgp", "smime"}})
    v = verdict_for(cfg, msg(to=["jane@mail.example"]), DR, ["jane@mail.example"], keys)
    assert v.decisions[0].action is Action.ENCRYPT_SMIME


def test_consent_covers_the_client_address_only(config_path: Path) -> None:
    raw = msg(to=["sam@mail.example"], body="SSN 123-45-6789, diagnosis F32.1. See you Tuesday.")
    v = verdict_for(config_path, raw, DR, ["sam@mail.example"])
    assert actions(v) == {"sam@mail.example": "deliver"}
    assert v.decisions[0].rules == ("consent-unencrypted",)
    assert "c-1002" in v.decisions[0].reason  # whose consent it is


def test_consent_never_releases_another_clients_phi(config_path: Path) -> None:
    # Misdirected mail: Jane Roe's (c-1001) notes to Sam, who consented for
    # himself. Not even protected: Sam may not have them at all.
    raw = msg(to=["sam@mail.example"], body=PHI_BODY)
    v = verdict_for(config_path, raw, DR, ["sam@mail.example"])
    d = v.decisions[0]
    assert (d.action, d.rules) == (Action.BLOCK, ("unauthorised-recipient",))
    assert "concerns client c-1001" in d.reason
    assert v.facts is not None and v.facts.named_client_ids == ("c-1001",)


def test_consent_never_releases_a_roster_of_people_not_in_the_directory(
        config_path: Path) -> None:
    """A waitlist with other patients' dates of birth, sent to Sam, who
    consented for himself: nobody in it is in the directory."""
    raw = msg(to=["sam@mail.example"],
              body="Waitlist: A. Vega DOB 03/14/1985 anxiety; B. Lee DOB 07/01/1990 panic disorder")
    v = verdict_for(config_path, raw, DR, ["sam@mail.example"])
    d = v.decisions[0]
    assert (d.action, d.rules) == (Action.PORTAL, ("consent-several-people", "protected-portal"))
    assert "more than one date of birth or SSN" in d.reason
    # His own date of birth, written twice: his consent applies.
    own = msg(to=["sam@mail.example"],
              body="Your DOB 03/14/1985 (DOB: March 14th, 1985; born 3/14/85), anxiety")
    assert verdict_for(config_path, own, DR, ["sam@mail.example"]).decisions[0].rules == (
        "consent-unencrypted",)


def test_a_second_date_of_birth_in_the_subject_counts_too(config_path: Path) -> None:
    raw = msg(to=["sam@mail.example"], subject="Re: B. Lee DOB 07/01/1990",
              body="A. Vega DOB 03/14/1985, diagnosis F41.1")
    d = verdict_for(config_path, raw, DR, ["sam@mail.example"]).decisions[0]
    assert d.rules == ("consent-several-people", "protected-portal")


def test_consent_never_covers_contacts(config_path: Path) -> None:
    # guardian is Jane's contact; Jane has no consent, and consent never transfers anyway
    raw = msg(to=["jane@mail.example"], cc=["guardian@mail.example"])
    v = verdict_for(config_path, raw, DR, ["jane@mail.example", "guardian@mail.example"])
    assert actions(v) == {"jane@mail.example": "portal", "guardian@mail.example": "portal"}
    assert v.decision_for("guardian@mail.example").role is Role.CONTACT


def test_expired_consent_no_longer_applies(config_path: Path) -> None:
    raw = msg(to=["kim@bücher.example"])
    before = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    after = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
    rcpt = ["kim@xn--bcher-kva.example"]
    assert verdict_for(config_path, raw, DR, rcpt, now=before).decisions[0].action is Action.DELIVER
    assert verdict_for(config_path, raw, DR, rcpt, now=after).decisions[0].action is Action.PORTAL


def test_restricted_class_overrides_consent(config_path: Path) -> None:
    raw = msg(to=["sam@mail.example"], headers={"X-Securemail-Restricted": "psychotherapy-notes"})
    v = verdict_for(config_path, raw, DR, ["sam@mail.example"])
    assert v.decisions[0].action is Action.PORTAL
    assert v.decisions[0].rules == ("restricted-class", "protected-portal")


def test_partner_is_always_protected(config_path: Path) -> None:
    raw = msg(to=["claims@billing-partner.example"], body=PHI_BODY)
    v = verdict_for(config_path, raw, DR, ["claims@billing-partner.example"])
    d = v.decisions[0]
    assert (d.role, d.action) == (Role.PARTNER, Action.PORTAL)


def test_cc_parent_not_authorised_blocks_whole_message(config_path: Path) -> None:
    raw = msg(to=["jane@mail.example"], cc=["mom@mail.example"])
    v = verdict_for(config_path, raw, DR, ["jane@mail.example", "mom@mail.example"])
    assert v.blocked
    assert actions(v) == {"jane@mail.example": "block", "mom@mail.example": "block"}
    mom = v.decision_for("mom@mail.example")
    assert mom.rules == ("unauthorised-recipient",)
    assert mom.source is Source.CC and mom.role is Role.THIRD_PARTY
    assert mom.reason == "not an authorised contact of client c-1001"
    assert "mom@mail.example" in v.decision_for("jane@mail.example").reason


def test_bcc_third_party_is_detected_and_blocked(config_path: Path) -> None:
    raw = msg(to=["jane@mail.example"])
    v = verdict_for(config_path, raw, DR, ["jane@mail.example", "partner@else.example"])
    d = v.decision_for("partner@else.example")
    assert (d.source, d.action, d.rules) == (Source.BCC, Action.BLOCK, ("unauthorised-recipient",))


def test_strip_mode_blocks_only_the_offender(make_config) -> None:
    cfg = make_config(unauthorised="strip")
    raw = msg(to=["jane@mail.example"], cc=["mom@mail.example", "nurse@riverside.example"])
    v = verdict_for(cfg, raw, DR, ["jane@mail.example", "mom@mail.example",
                                   "nurse@riverside.example"])
    assert actions(v) == {"jane@mail.example": "portal", "mom@mail.example": "block",
                          "nurse@riverside.example": "deliver"}


def test_phi_to_unknown_address_without_client_is_blocked(config_path: Path) -> None:
    raw = msg(to=["someone@else.example"], body=PHI_BODY.replace("Jane Roe", "Pat Doe"))
    v = verdict_for(config_path, raw, DR, ["someone@else.example"])
    assert v.blocked and v.phi
    assert "contains PHI" in v.decisions[0].reason


def test_already_encrypted_is_delivered(config_path: Path, tmp_path: Path) -> None:
    from tests.unit.test_encryption_state import gpg_encrypted_message

    raw = gpg_encrypted_message(tmp_path, sender=DR, to="jane@mail.example")
    v = verdict_for(config_path, raw, DR, ["jane@mail.example"])
    assert v.encrypted
    assert v.decisions[0].rules == ("already-encrypted",)


def test_portal_disabled_blocks_protected_recipients(make_config) -> None:
    cfg = make_config(portal=False)
    v = verdict_for(cfg, msg(to=["jane@mail.example"]), DR, ["jane@mail.example"])
    assert v.decisions[0].action is Action.BLOCK
    assert v.decisions[0].rules == ("portal-disabled",)


def test_shadow_mode_reports_the_same_verdict(make_config) -> None:
    raw = msg(to=["jane@mail.example"], cc=["mom@mail.example"])
    rcpts = ["jane@mail.example", "mom@mail.example"]
    enforce = verdict_for(make_config(), raw, DR, rcpts)
    shadow = verdict_for(make_config(mode="shadow"), raw, DR, rcpts)
    assert shadow.mode.value == "shadow" and shadow.blocked
    assert shadow.decisions == enforce.decisions


def test_malformed_address_blocks_everyone(config_path: Path) -> None:
    raw = (b"From: dr.lee@riverside.example\r\n"
           b"To: jane@mail.example)<collector@evil.example>\r\n"
           b"Subject: hi\r\n\r\nbody\r\n")
    v = verdict_for(config_path, raw, DR, ["jane@mail.example"])
    assert v.blocked and v.malformed
    assert v.decisions[0].rules == ("malformed-address",)


def test_plugin_can_tighten_but_not_loosen(config_path: Path) -> None:
    def no_minors(facts: Facts, r: RecipientFacts) -> RuleHit | None:
        if r.role is Role.CONTACT:
            return RuleHit(Action.BLOCK, "mypractice-no-contacts", "contacts get phone calls")
        return None

    raw = msg(to=["jane@mail.example"], cc=["guardian@mail.example"])
    v = verdict_for(config_path, raw, DR, ["jane@mail.example", "guardian@mail.example"],
                    plugins=[no_minors])
    g = v.decision_for("guardian@mail.example")
    assert g.action is Action.BLOCK
    assert g.rules == ("protected-portal", "mypractice-no-contacts")
    assert v.decision_for("jane@mail.example").action is Action.PORTAL

    def loosen(facts: Facts, r: RecipientFacts) -> RuleHit | None:
        return RuleHit(Action.DELIVER, "bad", "let it through")

    with pytest.raises(PluginError):
        verdict_for(config_path, raw, DR, ["jane@mail.example"], plugins=[loosen])


def test_plugin_crash_defers_instead_of_guessing(config_path: Path) -> None:
    def broken(facts: Facts, r: RecipientFacts) -> RuleHit | None:
        raise RuntimeError("boom")

    with pytest.raises(PluginError) as err:
        verdict_for(config_path, msg(to=["jane@mail.example"]), DR, ["jane@mail.example"],
                    plugins=[broken])
    assert err.value.smtp_reply.startswith("451 4.3.0")


def test_duplicate_envelope_recipient_gets_one_decision(config_path: Path) -> None:
    v = verdict_for(config_path, msg(to=["jane@mail.example"]), DR,
                    ["jane@mail.example", "JANE@Mail.Example"])
    assert [d.address for d in v.decisions] == ["jane@mail.example"]


FAMILY = """
[[directory.clients]]
id = "c-2001"
addresses = ["family@home.example"]
consent_unencrypted = { granted = "2026-01-10", warning = "v1" }

[[directory.clients]]
id = "c-2002"
addresses = ["family@home.example"]
names = ["Sam Family"]

[[directory.clients]]
id = "c-2003"
addresses = ["pat.parent@home.example"]
consent_unencrypted = { granted = "2026-01-10", warning = "v1" }

[[directory.clients]]
id = "c-2004"
addresses = ["robin@home.example"]
contacts = [{ address = "pat.parent@home.example", relation = "parent" }]
"""


@pytest.mark.parametrize("address", [
    "family@home.example",  # shared with c-2002, who did not consent
    "pat.parent@home.example",  # a client, and also the parent (contact) of c-2004
])
def test_consent_is_not_used_for_an_address_that_may_get_someone_elses_phi(
        make_config, address: str) -> None:
    cfg = make_config(extra=FAMILY)
    raw = msg(to=[address], body="SSN 123-45-6789: PTSD treatment plan attached.")
    v = verdict_for(cfg, raw, DR, [address])
    assert (v.decisions[0].action, v.decisions[0].rules) == (Action.PORTAL, ("protected-portal",))


def test_expired_consent_is_named_in_the_reason(config_path: Path) -> None:
    # kim (c-1003) consented until 2026-03-01; the tests' clock is later.
    v = verdict_for(config_path, msg(to=["kim@bücher.example"],
                                     body="Your diagnosis F32.1 is on the claim. DOB 3/4/1990."),
                    DR, ["kim@bücher.example"])
    assert v.decisions[0].action is Action.PORTAL
    assert "consent to unencrypted email expired on 2026-03-01" in v.decisions[0].reason


def test_a_clients_forwarded_email_is_client_mail(config_path: Path) -> None:
    # Jane's own email, forwarded as an attachment to someone outside: no name,
    # no health word, but it is Jane's correspondence with the practice.
    inner = (b"From: jane@mail.example\r\nTo: dr.lee@riverside.example\r\n"
             b"Subject: Tuesday\r\n\r\nCan we move Tuesday?\r\n")
    outer = EmailMessage()
    outer["From"], outer["To"], outer["Subject"] = DR, "coach@school.example", "FYI"
    outer.set_content("See below.")
    outer.add_attachment(email.message_from_bytes(inner))
    v = verdict_for(config_path, outer.as_bytes(), DR, ["coach@school.example"])
    assert actions(v) == {"coach@school.example": "block"}
    assert v.decisions[0].reason == "not an authorised contact of client c-1001"


def test_consent_never_releases_another_clients_email_or_address(config_path: Path) -> None:
    # Jane's (c-1001) own email forwarded to Sam (c-1002, consented): no name in
    # the text, yet it is Jane's. And Jane in Cc of a message to Sam.
    inner = (b"From: jane@mail.example\r\nTo: dr.lee@riverside.example\r\n"
             b"Subject: Tuesday\r\n\r\nMy anxiety is worse.\r\n")
    forward = EmailMessage()
    forward["From"], forward["To"], forward["Subject"] = DR, "sam@mail.example", "FYI"
    forward.set_content("See below.")
    forward.add_attachment(email.message_from_bytes(inner))
    cc = msg(to=["sam@mail.example"], cc=["jane@mail.example"], body="Group therapy moves.")
    for raw, rcpts in ((forward.as_bytes(), ["sam@mail.example"]),
                       (cc, ["sam@mail.example", "jane@mail.example"])):
        v = verdict_for(config_path, raw, DR, rcpts)
        sam = v.decisions[0]
        assert (sam.address, sam.action) == ("sam@mail.example", Action.BLOCK)
        assert sam.rules == ("unauthorised-recipient",)
        assert "concerns client c-1001" in sam.reason


def test_consent_never_releases_a_linked_clients_information(make_config) -> None:
    # Sam's wife is his authorised contact and a client herself: beside him she
    # belongs (they share his file), but his consent does not cover her file.
    cfg = make_config(extra="""
[[directory.clients]]
id = "c-1005"
addresses = ["pat@mail.example"]
""")
    cfg.write_text(cfg.read_text().replace(
        'addresses = ["sam@mail.example"]\n',
        'addresses = ["sam@mail.example"]\n'
        'contacts = [{ address = "pat@mail.example", relation = "spouse" }]\n', 1))
    v = verdict_for(cfg, msg(to=["sam@mail.example"], cc=["pat@mail.example"]), DR,
                    ["sam@mail.example", "pat@mail.example"])
    sam = v.decision_for("sam@mail.example")
    assert (sam.action, sam.rules) == (Action.PORTAL, ("consent-other-client", "protected-portal"))
    assert "concerns client c-1005" in sam.reason


def test_a_client_listing_an_address_twice_keeps_their_consent(make_config) -> None:
    cfg = make_config(extra="""
[[directory.clients]]
id = "c-3001"
addresses = ["ann@mail.example", "Ann@Mail.Example"]
consent_unencrypted = { granted = "2026-01-10", warning = "v1" }
""")
    v = verdict_for(cfg, msg(to=["ann@mail.example"], body="Therapy moves to 3pm."), DR,
                    ["ann@mail.example"])
    assert v.decisions[0].rules == ("consent-unencrypted",)


def test_the_reason_says_why_consent_on_file_was_not_used(make_config) -> None:
    cfg = make_config(extra=FAMILY)
    v = verdict_for(cfg, msg(to=["family@home.example"], body="Therapy moves to 3pm."), DR,
                    ["family@home.example"])
    assert v.decisions[0].reason.endswith(
        "(consent on file is not used: this address is shared by clients c-2001, c-2002)")
    v = verdict_for(cfg, msg(to=["pat.parent@home.example"], body="Therapy moves to 3pm."), DR,
                    ["pat.parent@home.example"])
    assert v.decisions[0].reason.endswith(
        "(consent on file is not used: this address is also an authorised contact of"
        " client c-2004)")


def test_a_clients_email_address_identifies_the_client(config_path: Path) -> None:
    """An address is one of HIPAA's identifiers: with a health word, and no
    name in sight, it is still a client's PHI (and whose)."""
    about_jane = msg(to=["coach@school.example"],
                     body="Re jane@mail.example: her anxiety is improving, says her therapist.")
    v = verdict_for(config_path, about_jane, DR, ["coach@school.example"])
    assert actions(v) == {"coach@school.example": "block"}
    assert v.decisions[0].rules == ("unauthorised-recipient",)
    assert v.decisions[0].reason == "not an authorised contact of client c-1001"
    # Without the address: no identifier, so no PHI to withhold.
    plain = msg(to=["coach@school.example"],
                body="Re the student: her anxiety is improving, says her therapist.")
    assert actions(verdict_for(config_path, plain, DR, ["coach@school.example"])) == {
        "coach@school.example": "deliver"}
    # Written with its domain in Unicode, and in capitals across a line break.
    for body in ("Kim (kim@bücher.example) has a diagnosis of F41.1",
                 "KIM@XN--BCHER-KVA.EXAMPLE\r\nhas a diagnosis of F41.1"):
        v = verdict_for(config_path, msg(to=["coach@school.example"], body=body), DR,
                        ["coach@school.example"])
        assert actions(v) == {"coach@school.example": "block"}, body
    # Sam consented for himself; Jane's address in his message is Jane's PHI.
    to_sam = msg(to=["sam@mail.example"],
                 body="You and jane@mail.example both mentioned panic attacks.")
    sam = verdict_for(config_path, to_sam, DR, ["sam@mail.example"]).decisions[0]
    assert sam.rules == ("unauthorised-recipient",)  # not his to receive at all
    # His own address in his own message: his consent applies.
    own = msg(to=["sam@mail.example"], body="Confirming sam@mail.example for your anxiety notes.")
    assert verdict_for(config_path, own, DR, ["sam@mail.example"]).decisions[0].rules == (
        "consent-unencrypted",)
