"""Fixes from a practice-software integrator's trial (53): another client's
information that reached a consenting client in clear.

1. A name typed with only some of its accents ("Jose Nuñez") is the client's.
2. A text attachment labelled as something else (octet-stream with no file
   extension, "application/pdf" that is no PDF) is read as the text it is.
3. A file name joining a client's names by case ("JaneSmith_Statement.pdf").
Images and other binary attachments stay name-only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from securemail.model import Action
from securemail.testing import build_message
from tests.unit.policy_helpers import verdict_for

DR = "dr.lee@riverside.example"
LUCIA = "lucia@mail.example"  # consents to unencrypted email
CLIENTS = '''
[[directory.clients]]
id = "c-2001"
addresses = ["jose@mail.example"]
names = ["José Núñez", "Jane Smith"]

[[directory.clients]]
id = "c-2002"
addresses = ["lucia@mail.example"]
names = ["Lucía Fernández"]
consent_unencrypted = { granted = "2026-01-10", warning = "v1" }
'''
ABOUT_JOSE = "Superbill: DOB 04/02/1979, diagnosis F41.1 generalized anxiety disorder."


@pytest.fixture
def config(make_config: Callable[..., Path]) -> Path:
    return make_config(extra=CLIENTS)


def to_lucia(config: Path, body: str, attachments: list[tuple[str, str, bytes]] | None = None
             ) -> tuple[Action, str]:
    raw = build_message(sender=DR, to=[LUCIA], subject="Your statement", body=body,
                        attachments=attachments or [])
    [d] = verdict_for(config, raw, DR, [LUCIA]).decisions
    return d.action, d.reason


@pytest.mark.parametrize("written", ["Nuñez, Jose", "Jose Nuñez", "José Nunez", "JOSE NUÑEZ"])
def test_a_name_with_some_of_its_accents_is_the_clients(config: Path, written: str) -> None:
    action, reason = to_lucia(config, f"{written} - {ABOUT_JOSE}")
    assert action is Action.BLOCK and "c-2001" in reason


def test_a_consenting_client_still_gets_her_own_mail_in_clear(config: Path) -> None:
    action, _ = to_lucia(config, "Lucia Fernández: your appointment is Tuesday at 3 pm.")
    assert action is Action.DELIVER


@pytest.mark.parametrize(("filename", "ctype"), [
    ("statement", "application/octet-stream"),  # no extension, generic label
    ("statement.pdf", "application/pdf"),  # says PDF, is text
    ("statement.dat", "application/octet-stream"),
])
def test_a_mislabelled_text_attachment_is_read(config: Path, filename: str, ctype: str) -> None:
    text = f"Patient: José Núñez\n{ABOUT_JOSE}\n".encode()
    action, reason = to_lucia(config, "Please see the attached statement.",
                              [(filename, ctype, text)])
    assert action is Action.BLOCK and "c-2001" in reason


def test_a_binary_attachment_stays_name_only(config: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8
    action, _ = to_lucia(config, "A photo of the new office.", [("office.png", "image/png", png)])
    assert action is Action.DELIVER


def test_a_file_name_joining_a_clients_names_by_case(config: Path) -> None:
    action, reason = to_lucia(config, "Attached.",
                              [("JaneSmith_Statement.txt", "text/plain", b"Balance due: $120")])
    assert action is Action.BLOCK and "c-2001" in reason


# 4. A therapist who shares a client's name.
ANA = '''
[directory]
staff_names = ["Ana Rivera"]

[[directory.clients]]
id = "c-2012"
addresses = ["ana.r@mail.example"]
names = ["Ana Rivera"]
'''
FRONT_DESK = "front.desk@riverside.example"


@pytest.mark.parametrize("listed", [False, True])
def test_a_staff_name_a_client_shares_does_not_block_reminders(
        make_config: Callable[..., Path], listed: bool) -> None:
    cfg = make_config(extra=CLIENTS + (ANA if listed else ANA.split("\n\n", 1)[1]))

    def to(rcpt: str, body: str) -> tuple[Action, str]:
        raw = build_message(sender=FRONT_DESK, to=[rcpt], subject="Reminder", body=body)
        [d] = verdict_for(cfg, raw, FRONT_DESK, [rcpt]).decisions
        return d.action, d.reason

    for body in ("Hi Lucia, your appointment with Dr. Ana Rivera is Tuesday 3pm.",
                 "Hi Lucia, see you Tuesday.\n--\nAna Rivera, LCSW\nRiverside Counseling"):
        action, reason = to(LUCIA, body)
        # Listed: the therapist's name blocks nobody; it may still be the client's,
        # so consent does not send it in clear.
        assert action is (Action.PORTAL if listed else Action.BLOCK) and "c-2012" in reason
    # Bare, without a title or credential, the name is the client's: still blocked.
    action, reason = to("jose@mail.example", "Ana Rivera, DOB 02/03/1990: intake notes.")
    assert action is Action.BLOCK and "c-2012" in reason
    action, _ = to("jose@mail.example", "Dr. Ana Rivera saw Ana Rivera today.")
    assert action is Action.BLOCK
