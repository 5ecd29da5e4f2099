"""Each client or contact only gets what is theirs (trial 42: misdirected mail).

The demo directory (tests/conftest.py): c-1001 Jane Roe (jane@mail.example,
parent guardian@mail.example), c-1002 Sam (sam@mail.example, consent),
c-1003 Kim; partners in their own domain.
"""

from __future__ import annotations

import email
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securemail.config import load_settings
from securemail.errors import Blocked
from securemail.model import Action
from securemail.testing import build_message
from tests.unit.policy_helpers import verdict_for

DR = "dr.lee@riverside.example"
JANE_NOTE = "Jane Roe is doing better; her anxiety scores dropped."


def msg(to=(), cc=(), bcc=(), body="See you Tuesday.", subject="Next week") -> bytes:
    return build_message(sender=DR, to=list(to), cc=list(cc), bcc=list(bcc), body=body,
                         subject=subject)


def by_address(verdict) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {d.address: (d.action.value, d.rules) for d in verdict.decisions}


def test_a_named_client_makes_the_message_client_related(config_path: Path) -> None:
    # No health word: before, "concerns no client" and out in clear to anyone.
    raw = msg(to=["friend@elsewhere.example"], body="Jane Roe's appointment moved to 4 pm.")
    v = verdict_for(config_path, raw, DR, ["friend@elsewhere.example"])
    assert by_address(v) == {"friend@elsewhere.example": ("block", ("unauthorised-recipient",))}
    assert "c-1001" in v.decisions[0].reason
    assert v.facts is not None and v.facts.client_related and not v.facts.phi


def test_an_inline_forward_header_names_the_client_by_address(config_path: Path) -> None:
    body = ("FYI, see below.\n\n-----Original Message-----\n"
            "From: J. Roe <jane@mail.example>\nSubject: running late\n\nI will be late.")
    v = verdict_for(config_path, msg(to=["me@gmail.example"], body=body), DR,
                    ["me@gmail.example"])
    assert by_address(v)["me@gmail.example"][0] == "block"


def test_a_message_naming_nobody_still_goes_in_clear(config_path: Path) -> None:
    raw = msg(to=["friend@elsewhere.example"], body="Lunch on Friday?")
    v = verdict_for(config_path, raw, DR, ["friend@elsewhere.example"])
    assert by_address(v) == {"friend@elsewhere.example": ("deliver", ("no-phi",))}


def test_another_clients_note_to_a_client_is_blocked(config_path: Path) -> None:
    # Autocomplete picked Sam: before, Jane's note went to him through the portal.
    v = verdict_for(config_path, msg(to=["sam@mail.example"], body=JANE_NOTE), DR,
                    ["sam@mail.example"])
    d = v.decisions[0]
    assert (d.action, d.rules) == (Action.BLOCK, ("unauthorised-recipient",))
    assert "concerns client c-1001" in d.reason
    assert "client c-1002's own address" in d.reason


def test_the_clients_own_contact_gets_the_note(config_path: Path) -> None:
    v = verdict_for(config_path, msg(to=["guardian@mail.example"], body=JANE_NOTE), DR,
                    ["guardian@mail.example"])
    assert by_address(v)["guardian@mail.example"] == ("portal", ("protected-portal",))


def test_a_contact_gets_no_other_clients_note(config_path: Path) -> None:
    body = "Sam's session notes: diagnosis F32.1, see you Tuesday. Sam, call me."
    cfg = _with_names(config_path, {"c-1002": "Sam Park"})
    v = verdict_for(cfg, msg(to=["guardian@mail.example"], body=body.replace("Sam", "Sam Park")),
                    DR, ["guardian@mail.example"])
    d = v.decisions[0]
    assert (d.action, d.rules) == (Action.BLOCK, ("unauthorised-recipient",))
    assert "c-1002" in d.reason and "authorised contact of client c-1001" in d.reason


def test_two_families_in_one_to_line_are_blocked(config_path: Path) -> None:
    # A group email with every member in To shows each one the others.
    v = verdict_for(config_path, msg(to=["jane@mail.example", "sam@mail.example"]), DR,
                    ["jane@mail.example", "sam@mail.example"])
    assert {a: act for a, (act, _) in by_address(v).items()} == {
        "jane@mail.example": "block", "sam@mail.example": "block"}
    with pytest.raises(Blocked) as caught:
        raise Blocked(v)
    reply = caught.value.smtp_reply
    assert reply.startswith("550 5.7.1 Blocked by policy (unauthorised-recipient):")
    assert "check them (a wrong autocomplete?) and the client names in the text" in reply
    assert len(reply) < 512


def test_the_same_clients_in_bcc_each_get_their_copy(config_path: Path) -> None:
    # Bcc: no copy shows another Bcc recipient. Sam's consent still counts.
    raw = msg(to=[DR], bcc=["jane@mail.example", "sam@mail.example"],
              body="The office is closed on Friday.")
    v = verdict_for(config_path, raw, DR, ["jane@mail.example", "sam@mail.example"])
    assert by_address(v) == {
        "jane@mail.example": ("portal", ("protected-portal",)),
        "sam@mail.example": ("deliver", ("consent-unencrypted",)),
    }


def test_a_parent_beside_the_child_is_where_they_belong(config_path: Path) -> None:
    raw = msg(to=["jane@mail.example"], cc=["guardian@mail.example"], body=JANE_NOTE)
    v = verdict_for(config_path, raw, DR, ["jane@mail.example", "guardian@mail.example"])
    assert {a: act for a, (act, _) in by_address(v).items()} == {
        "jane@mail.example": "portal", "guardian@mail.example": "portal"}


def test_a_parent_who_is_a_client_too_keeps_the_parent_link(tmp_path: Path,
                                                             config_path: Path) -> None:
    # Karen is Jane's parent and a client herself (c-1111): the block reason for
    # an unauthorised Cc named her own file before, not Jane's.
    cfg = _with_extra(config_path, tmp_path, """
        [[directory.clients]]
        id = "c-1111"
        addresses = ["guardian@mail.example"]
        """)
    raw = msg(to=["guardian@mail.example"], body=JANE_NOTE)
    v = verdict_for(cfg, raw, DR, ["guardian@mail.example"])
    assert by_address(v)["guardian@mail.example"][0] == "portal"
    raw = msg(to=["guardian@mail.example"], cc=["exhusband@mail.example"], body=JANE_NOTE)
    v = verdict_for(cfg, raw, DR, ["guardian@mail.example", "exhusband@mail.example"])
    reason = {d.address: d.reason for d in v.decisions}["exhusband@mail.example"]
    assert reason.startswith("not an authorised contact of clients c-1001")  # Jane first


def test_staff_and_partners_may_receive_any_client(config_path: Path) -> None:
    settings_ = load_settings(config_path)
    partner = next(iter(settings_.directory.partners))
    address = (partner.addresses[0] if partner.addresses
               else f"claims@{partner.domains[0]}")
    raw = msg(to=["nurse@riverside.example", address], body=JANE_NOTE)
    v = verdict_for(config_path, raw, DR, ["nurse@riverside.example", address])
    got = {a: act for a, (act, _) in by_address(v).items()}
    assert got["nurse@riverside.example"] == "deliver"
    assert got[address] in ("portal", "encrypt-pgp", "encrypt-smime")


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # config is read-only
@given(named=st.sampled_from(["", "Jane Roe", "jane@mail.example"]),
       to=st.sets(st.sampled_from(["jane@mail.example", "sam@mail.example",
                                   "guardian@mail.example"]),
                  min_size=1, max_size=3))
def test_no_client_or_contact_gets_a_copy_about_a_client_not_theirs(
        config_path: Path, named: str, to: set[str]) -> None:
    """Property: whoever gets a copy (not blocked) is linked to every client the
    message names and to every client or contact its To line shows."""
    links = {"jane@mail.example": {"c-1001"}, "guardian@mail.example": {"c-1001"},
             "sam@mail.example": {"c-1002"}}
    body = f"Note about {named}. Diagnosis F32.1." if named else "Diagnosis F32.1 pending."
    rcpts = sorted(to)
    v = verdict_for(config_path, msg(to=rcpts, body=body), DR, rcpts)
    for d in v.decisions:
        if d.action is Action.BLOCK:
            continue
        concerned = {"c-1001"} if named else set()
        for other in rcpts:
            concerned |= links[other]
        assert concerned <= links[d.address], (d.address, concerned)


def _with_names(config_path: Path, names: dict[str, str]) -> Path:
    text = config_path.read_text()
    for cid, name in names.items():
        text = text.replace(f'id = "{cid}"\n', f'id = "{cid}"\nnames = ["{name}"]\n', 1)
    out = config_path.with_name("named.toml")
    out.write_text(text)
    return out


def _with_extra(config_path: Path, tmp_path: Path, extra: str) -> Path:
    out = tmp_path / "extra.toml"
    out.write_text(config_path.read_text() + textwrap.dedent(extra))
    return out


# ---- review 45: false blocks a therapist would notice, leaks still open

def client(cid: str, address: str, name: str) -> str:
    """A directory client as config TOML, for ``make_config(extra=...)``."""
    return f'[[directory.clients]]\nid = "{cid}"\naddresses = ["{address}"]\nnames = ["{name}"]\n'


KAREN = client("c-1111", "guardian@mail.example", "Karen Roe")
ANA_RIVERA = client("c-2050", "ana.r@mail.example", "Ana Rivera")  # shares Dr Rivera's name


def test_a_parent_who_is_a_client_named_on_the_childs_thread_is_fine(make_config) -> None:
    # Gmail's quote line names the mother (a client too): the child's own mail
    # was blocked as "concerning c-1111".
    cfg = make_config(extra=KAREN)
    body = ("See you Tuesday.\n\nOn Mon, Karen Roe <guardian@mail.example> wrote:\n"
            "> Jane is anxious about the move.")
    raw = msg(to=["jane@mail.example"], cc=["guardian@mail.example"], body=body)
    v = verdict_for(cfg, raw, DR, ["jane@mail.example", "guardian@mail.example"])
    assert {d.action for d in v.decisions} == {Action.PORTAL}, [d.reason for d in v.decisions]


def test_the_senders_own_name_is_not_a_clients(make_config) -> None:
    # Dr Ana Rivera shares a client's name: her signature named "the client"
    # in every message, and every message to a client or outsider was blocked.
    cfg = make_config(extra=ANA_RIVERA)
    raw = build_message(sender="Dr. Ana Rivera <ana@riverside.example>", to=["jane@mail.example"],
                        body="See you Tuesday.\n\n-- \nAna Rivera, LMFT")
    v = verdict_for(cfg, raw, "ana@riverside.example", ["jane@mail.example"])
    assert v.decisions[0].action is Action.PORTAL
    assert v.facts is not None and v.facts.identified_client_ids == ()
    vendor = build_message(sender="Dr. Ana Rivera <ana@riverside.example>",
                           to=["orders@supplies.example"], body="Toner, please.\n-- \nAna Rivera")
    v = verdict_for(cfg, vendor, "ana@riverside.example", ["orders@supplies.example"])
    assert by_address(v) == {"orders@supplies.example": ("deliver", ("no-phi",))}


def test_a_from_display_name_does_not_hide_a_client(make_config, config_path: Path) -> None:
    # Review 47: the exclusion matched any name *inside* the From display name,
    # for consent too: "Dr. Lee re Jane Roe" sent Jane's note to Sam in clear.
    note = "Jane Roe is struggling with depression."
    for sender in ("Dr. Lee re Jane Roe <dr.lee@riverside.example>",
                   "Mary Jane Roe <dr.lee@riverside.example>"):
        raw = build_message(sender=sender, to=["sam@mail.example"], body=note)
        sam = verdict_for(config_path, raw, DR, ["sam@mail.example"]).decisions[0]
        assert sam.action is Action.BLOCK, sender
    # Even the exact name never lets consent through: it only stops the block.
    cfg = make_config(extra=ANA_RIVERA)
    raw = build_message(sender="Ana Rivera <ana@riverside.example>", to=["sam@mail.example"],
                        body="See you Tuesday.\n-- \nAna Rivera")
    sam = verdict_for(cfg, raw, "ana@riverside.example", ["sam@mail.example"]).decisions[0]
    assert (sam.action, sam.rules) == (Action.PORTAL, ("consent-other-client", "protected-portal"))
    # And only a staff sender's own From line counts.
    outsider = build_message(sender="Ana Rivera <ana@elsewhere.example>",
                             to=["friend@elsewhere.example"], body="Ana Rivera's session moved.")
    v = verdict_for(cfg, outsider, "ana@elsewhere.example", ["friend@elsewhere.example"])
    assert v.decisions[0].action is Action.BLOCK


def test_two_clients_sharing_a_name_each_get_their_mail(make_config) -> None:
    cfg = make_config(extra=client("c-2081", "maria.g@mail.example", "Maria Garcia")
                      + client("c-2082", "mgarcia@work.example", "Maria Garcia"))
    raw = msg(to=["maria.g@mail.example"], body="Hi Maria Garcia, see you Tuesday.")
    v = verdict_for(cfg, raw, DR, ["maria.g@mail.example"])
    assert v.decisions[0].action is Action.PORTAL


def test_a_one_word_name_withholds_consent_but_blocks_nobody(make_config) -> None:
    cfg = make_config(extra=client("c-2090", "grace.h@mail.example", "Grace"))
    order = msg(to=["orders@supplies.example"], body="Saying grace before lunch: 40 chairs.")
    v = verdict_for(cfg, order, DR, ["orders@supplies.example"])
    assert by_address(v) == {"orders@supplies.example": ("deliver", ("no-phi",))}
    to_sam = msg(to=["sam@mail.example"], body="Amazing grace. See you Tuesday.")
    sam = verdict_for(cfg, to_sam, DR, ["sam@mail.example"]).decisions[0]
    assert (sam.action, sam.rules) == (Action.PORTAL, ("consent-other-client",
                                                       "protected-portal"))


def test_a_forwarded_sent_item_shows_its_bcc(config_path: Path) -> None:
    # The attached copy of a sent group email keeps its Bcc line: Sam sees Jane.
    from email.message import EmailMessage

    inner = (b"From: dr.lee@riverside.example\r\nTo: dr.lee@riverside.example\r\n"
             b"Bcc: jane@mail.example, sam@mail.example\r\nSubject: group\r\n\r\nRoom 4.\r\n")
    outer = EmailMessage()
    outer["From"], outer["To"], outer["Subject"] = DR, "sam@mail.example", "FYI"
    outer.set_content("See below.")
    outer.add_attachment(email.message_from_bytes(inner))
    v = verdict_for(config_path, outer.as_bytes(), DR, ["sam@mail.example"])
    assert by_address(v)["sam@mail.example"][0] == "block"


def _pgp_mime(to: list[str], subject: str) -> bytes:
    import warnings

    from tests.integration.crypto_fixtures import pgpy_secret_key

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgpy

        key, _ = pgpy.PGPKey.from_blob(pgpy_secret_key("X", "x@mail.example")[0])
        armored = str(key.encrypt(pgpy.PGPMessage.new("hello"))).encode()
    return (f"From: {DR}\r\nTo: {', '.join(to)}\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";'
            ' boundary="b1"\r\n\r\n--b1\r\nContent-Type: application/pgp-encrypted\r\n\r\n'
            "Version: 1\r\n\r\n--b1\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode() + armored.replace(b"\n", b"\r\n") + b"\r\n--b1--\r\n"


def test_what_an_encrypted_message_shows_in_clear_still_counts(config_path: Path) -> None:
    # The To line and the Subject travel in clear: two families in one To, or
    # a client's name in the Subject to an outsider, were delivered as sealed.
    both = ["jane@mail.example", "sam@mail.example"]
    v = verdict_for(config_path, _pgp_mime(both, "..."), DR, both)
    assert {d.action for d in v.decisions} == {Action.BLOCK}
    out = verdict_for(config_path, _pgp_mime(["friend@elsewhere.example"],
                                             "Jane Roe - appointment moved"),
                      DR, ["friend@elsewhere.example"])
    assert out.decisions[0].action is Action.BLOCK
    own = verdict_for(config_path, _pgp_mime(["jane@mail.example"], "Jane Roe - Tuesday"),
                      DR, ["jane@mail.example"])
    assert by_address(own) == {"jane@mail.example": ("deliver", ("already-encrypted",))}


def test_a_contacts_address_in_the_text_tells_whose_family_it_is(config_path: Path) -> None:
    # Review 45: an inline forward of Jane's guardian's email ("my daughter is
    # struggling with depression") went to Sam in clear; attached, it was blocked.
    body = ("FYI below.\n\n-----Original Message-----\nFrom: G. Roe <guardian@mail.example>\n"
            "My daughter is struggling with depression.")
    v = verdict_for(config_path, msg(to=["sam@mail.example"], body=body), DR,
                    ["sam@mail.example"])
    assert by_address(v)["sam@mail.example"] == ("block", ("unauthorised-recipient",))
    v = verdict_for(config_path, msg(to=["jane@mail.example"], body=body), DR,
                    ["jane@mail.example"])
    assert by_address(v)["jane@mail.example"][0] == "portal"  # her own family's


def test_a_parent_clients_own_notes_do_not_reach_the_childs_other_parent(make_config) -> None:
    # Review 47: Karen (a client, and Jane's guardian) named in her own notes,
    # sent to Jane's other contact: her link to Jane let them through.
    cfg = make_config(extra=KAREN)
    cfg.write_text(cfg.read_text().replace(
        'contacts = [{ address = "guardian@mail.example", relation = "parent" }]',
        'contacts = [{ address = "guardian@mail.example", relation = "parent" },'
        ' { address = "dad@mail.example", relation = "parent" }]', 1))
    notes = "Karen Roe: session notes, depression, see you Tuesday."
    v = verdict_for(cfg, msg(to=["dad@mail.example"], body=notes), DR, ["dad@mail.example"])
    assert by_address(v)["dad@mail.example"] == ("block", ("unauthorised-recipient",))
    assert v.decisions[0].reason.startswith("the message concerns client c-1111")
    assert "(it is an authorised contact of client c-1001)" in v.decisions[0].reason
    # Jane's own thread with her mother on it, quoting her: still fine.
    body = "See you Tuesday.\n\nOn Mon, Karen Roe <guardian@mail.example> wrote:\n> hi"
    v = verdict_for(cfg, msg(to=["jane@mail.example"], cc=["guardian@mail.example"], body=body),
                    DR, ["jane@mail.example", "guardian@mail.example"])
    assert {d.action for d in v.decisions} == {Action.PORTAL}


def test_resent_and_receipt_headers_show_their_addresses(config_path: Path) -> None:
    # Review 47: "Resent-To: jane@..." on a copy to Sam was not counted as shown.
    for header in ("Resent-To", "Disposition-Notification-To", "Mail-Followup-To"):
        raw = msg(to=["sam@mail.example"], body="Group moves to room 4.").replace(
            b"\r\nSubject:", f"\r\n{header}: jane@mail.example\r\nSubject:".encode(), 1)
        v = verdict_for(config_path, raw, DR, ["sam@mail.example"])
        assert by_address(v)["sam@mail.example"][0] == "block", header


def test_consent_does_not_cover_text_that_was_not_read(make_config) -> None:
    # Review 47: text past the scan limit may be anybody's; Sam's consent let
    # it go in clear.
    cfg = make_config()
    cfg.write_text(cfg.read_text() + "\n[limits]\nscan_text_bytes = 2000\n")
    raw = msg(to=["sam@mail.example"], body="See you Tuesday. " + "Notes. " * 600)
    sam = verdict_for(cfg, raw, DR, ["sam@mail.example"]).decisions[0]
    assert (sam.action, sam.rules) == (Action.PORTAL, ("consent-unscanned", "protected-portal"))
    assert "could not be read" in sam.reason
