"""PHI in an Outlook ``winmail.dat`` (TNEF): its body and the files packed in it.

Outlook's "Rich Text" messages carry the body (compressed RTF) and every
attachment inside one ``application/ms-tnef`` part. Before this was read, a
note with a client's diagnosis left for an outsider in clear: the part was an
unknown binary. The files are made by ``tests/tnef_maker.py`` and checked with
Debian's ``tnef`` tool, so the maker is held to another implementation too.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemail.documents import Unreadable, document_text, is_document
from securemail.model import Action
from securemail.tnef_text import decompress_rtf
from tests.document_makers import pdf_with_text
from tests.tnef_maker import attribute, compress_rtf, props, winmail_dat
from tests.unit.policy_helpers import verdict_for

SENDER = "dr@riverside.example"
OUTSIDER = "colleague@other-clinic.example"
PHI_RTF = (b"{\\rtf1\\ansi\\ansicpg1252\\deff0{\\fonttbl{\\f0\\fswiss Calibri;}}\\pard\\f0"
           b" Patient Jane Roe, MRN: 12345678, diagnosis: major depressive disorder.\\par}")
PHI_TEXT = "Patient Jane Roe, MRN: 12345678, diagnosis: major depressive disorder."


def mail_with_tnef(tnef: bytes) -> bytes:
    """What Outlook sends: a short text part and winmail.dat."""
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = OUTSIDER
    msg["Subject"] = "Notes"
    msg["Message-ID"] = "<tnef-1@riverside.example>"
    msg.set_content("See attached.")
    msg.add_attachment(tnef, maintype="application", subtype="ms-tnef", filename="winmail.dat")
    return msg.as_bytes()


def outsider_decision(config_path: Path, tnef: bytes) -> tuple[Action, set[str]]:
    verdict = verdict_for(config_path, mail_with_tnef(tnef), SENDER, [OUTSIDER])
    signals = {s.detector for s in verdict.facts.phi_signals} if verdict.facts else set()
    return verdict.decisions[0].action, signals


@pytest.mark.skipif(shutil.which("tnef") is None, reason="Debian's tnef is not installed")
def test_the_test_files_unpack_with_debians_tnef_tool(tmp_path: Path) -> None:
    pdf = pdf_with_text("Hello")
    data = winmail_dat(subject="Notes", rtf=PHI_RTF,
                       attachments=(("notes.txt", b"plain notes"), ("letter.pdf", pdf)))
    (tmp_path / "winmail.dat").write_bytes(data)
    subprocess.run(["tnef", "-f", "winmail.dat", "-C", ".", "--save-body=body",
                    "--body-pref=R"], cwd=tmp_path, check=True, capture_output=True, timeout=30)
    assert (tmp_path / "notes.txt").read_bytes() == b"plain notes"
    assert (tmp_path / "letter.pdf").read_bytes() == pdf
    assert (tmp_path / "body.rtf").read_bytes() == PHI_RTF  # our LZFu, their decompressor


def test_the_compressed_rtf_body_is_read() -> None:
    assert decompress_rtf(compress_rtf(PHI_RTF)) == PHI_RTF
    text = document_text(winmail_dat(rtf=PHI_RTF), 100_000)
    assert text is not None and PHI_TEXT in text
    assert "fswiss" not in text  # control words and the font table are not text


def test_files_packed_in_it_are_read_as_documents() -> None:
    data = winmail_dat(body="See the notes.", attachments=(
        ("letter.pdf", pdf_with_text("Client: Jane Roe", "Diagnosis: F32.1")),
        ("notes.txt", b"MRN 12345678"),
        ("photo.jpg", b"\xff\xd8\xff\xe0 not text at all"),
    ))
    assert is_document(data)
    text = document_text(data, 100_000)
    assert text is not None
    for expected in ("See the notes.", "Client: Jane Roe", "Diagnosis: F32.1", "MRN 12345678",
                     "letter.pdf", "photo.jpg"):
        assert expected in text
    assert "not text at all" not in text  # an image is not read as text


def test_phi_in_winmail_dat_does_not_leave_for_an_outsider(config_path: Path) -> None:
    action, signals = outsider_decision(config_path, winmail_dat(rtf=PHI_RTF))
    assert action is Action.BLOCK
    assert signals & {"phi-client-name", "phi-mrn", "phi-diagnosis"}
    action, _ = outsider_decision(config_path, winmail_dat(
        body="See attached.", attachments=(("notes.txt", PHI_TEXT.encode()),)))
    assert action is Action.BLOCK


def test_a_winmail_dat_without_phi_still_goes_in_clear(config_path: Path) -> None:
    rtf = b"{\\rtf1\\ansi\\pard Lunch on Friday? The usual place at noon.\\par}"
    action, signals = outsider_decision(config_path, winmail_dat(rtf=rtf, attachments=(
        ("menu.txt", b"Soup of the day"),)))
    assert action is Action.DELIVER and not signals


def test_a_damaged_winmail_dat_cannot_be_ruled_out(config_path: Path) -> None:
    data = winmail_dat(rtf=PHI_RTF)
    with pytest.raises(Unreadable, match="cut short"):
        document_text(data[:-40], 100_000)
    action, signals = outsider_decision(config_path, data[:-40])
    assert action is Action.BLOCK and signals == {"phi-unscanned"}


def test_a_property_of_an_unknown_type_is_unreadable_not_skipped() -> None:
    # Skipping a value we cannot size would lose our place in the stream and
    # with it every property after it: refuse instead.
    odd = struct.pack("<HHI", 0x0099, 0x1234, 0)
    data = winmail_dat() + attribute(1, 0x00069003, props(odd))
    with pytest.raises(Unreadable, match="type"):
        document_text(data, 100_000)


def test_an_attached_message_inside_is_read() -> None:
    # An email attached in Outlook travels as a PT_OBJECT: an interface id, then TNEF again.
    inner = winmail_dat(rtf=PHI_RTF)
    iid = bytes(16)
    obj = struct.pack("<HHII", 0x000D, 0x3701, 1, len(iid + inner)) + iid + inner
    obj += b"\x00" * (-len(iid + inner) % 4)
    outer = bytearray(winmail_dat(body="Forwarding this."))
    outer += attribute(2, 0x00069002, bytes(14))
    outer += attribute(2, 0x00069005, props(obj))
    text = document_text(bytes(outer), 100_000)
    assert text is not None and PHI_TEXT in text


def test_an_rtf_body_stored_uncompressed_is_read() -> None:
    stored = struct.pack("<IIII", len(PHI_RTF) + 12, len(PHI_RTF), 0x414C454D, 0) + PHI_RTF
    assert decompress_rtf(stored) == PHI_RTF


@settings(max_examples=150, deadline=None)
@given(cut=st.integers(min_value=0, max_value=400), flip=st.integers(min_value=6, max_value=400),
       byte=st.integers(min_value=0, max_value=255))
def test_damage_anywhere_is_text_or_unreadable_never_a_crash(cut: int, flip: int,
                                                             byte: int) -> None:
    data = bytearray(winmail_dat(rtf=PHI_RTF, attachments=(("a.txt", b"Jane Roe"),)))
    data[flip % len(data)] = byte
    damaged = bytes(data[:len(data) - cut])
    try:
        text = document_text(damaged, 100_000)
    except Unreadable:
        return
    assert text is None or isinstance(text, str)
