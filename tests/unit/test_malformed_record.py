"""A malformed message is blocked for everyone; its record still says who each
recipient is and where they appeared (before: every one "third party in Bcc",
so compliance read of Bcc'd outsiders that never were)."""

from __future__ import annotations

from pathlib import Path

from securemail.model import Action, Role, Source
from tests.unit.policy_helpers import verdict_for

SENDER = "dr@riverside.example"


def test_roles_and_sources_of_a_malformed_message_are_read_for_the_record(
        config_path: Path) -> None:
    raw = (b"From: dr@riverside.example\r\nTo: Jane <jane@mail.example>\r\n"
           b"Cc: nurse@riverside.example\r\nSubject: One\r\nSubject: Two\r\n"
           b"Message-ID: <m@riverside.example>\r\n\r\nHello\r\n")
    verdict = verdict_for(config_path, raw, SENDER,
                          ["jane@mail.example", "nurse@riverside.example", "x@other.example"])
    assert verdict.malformed and verdict.decisions[0].rules == ("malformed-message",)
    got = {d.address: (d.action, d.source, d.role) for d in verdict.decisions}
    assert got == {
        "jane@mail.example": (Action.BLOCK, Source.TO, Role.CLIENT),
        "nurse@riverside.example": (Action.BLOCK, Source.CC, Role.STAFF),
        "x@other.example": (Action.BLOCK, Source.BCC, Role.THIRD_PARTY),
    }


def test_an_unreadable_envelope_address_is_still_a_third_party_in_bcc(
        config_path: Path) -> None:
    raw = (b"From: dr@riverside.example\r\nTo: jane@mail.example\r\nSubject: Hi\r\n"
           b"Message-ID: <m2@riverside.example>\r\n\r\nHello\r\n")
    verdict = verdict_for(config_path, raw, SENDER, ["jane@mail.example", "not an address"])
    assert verdict.malformed and verdict.decisions[0].rules == ("malformed-address",)
    got = {d.address: (d.source, d.role) for d in verdict.decisions}
    assert got["jane@mail.example"] == (Source.TO, Role.CLIENT)
    assert (Source.BCC, Role.THIRD_PARTY) in got.values()
