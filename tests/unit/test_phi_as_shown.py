"""The detectors read headers and HTML as a mail program shows them.

Two leaks a new-user trial found: a Subject or attachment name written as raw
UTF-8 (SMTPUTF8 mail; Python's ``policy.SMTPUTF8``, which the library uses
for a message with a non-ASCII address) was read as U+FFFD, so "Jürgen Müller"
was never matched; and an HTML tag inside a word ("<span>Ja</span>ne") split
it in two.
"""

from __future__ import annotations

import email.policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from securemail.model import Action
from tests.conftest import ConfigFactory
from tests.unit.policy_helpers import verdict_for

SENDER = "dr@riverside.example"
OUTSIDER = "someone@other.example"

EXTRA = """
[[directory.clients]]
id = "c-2001"
addresses = ["juergen@mail.example"]
names = ["Jürgen Müller"]
"""


def signals(config: Path, raw: bytes) -> tuple[Action, set[str]]:
    verdict = verdict_for(config, raw, SENDER, [OUTSIDER])
    assert verdict.facts is not None
    return verdict.decisions[0].action, {s.detector for s in verdict.facts.phi_signals}


def smtputf8_mail(subject: str, body: str = "See you Tuesday.", filename: str = "") -> bytes:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["Reply-To"] = "rezeptión@riverside.example"  # non-ASCII: SMTPUTF8 serialisation
    msg["To"] = OUTSIDER
    msg["Subject"] = subject
    msg.set_content(body)
    if filename:
        msg.add_attachment(b"\x89PNG\r\n\x1a\n" + bytes(64), maintype="image",
                           subtype="png", filename=filename)
    raw = msg.as_bytes(policy=email.policy.SMTPUTF8)
    assert "Jürgen".encode() in raw  # raw UTF-8 in the header, not an encoded word
    return raw


def test_a_raw_utf8_subject_is_read(make_config: ConfigFactory) -> None:
    config = make_config(extra=EXTRA)
    action, found = signals(config, smtputf8_mail("Jürgen Müller, diagnosis F32.1"))
    assert action is Action.BLOCK
    assert {"phi-client-name", "phi-icd10"} <= found


def test_a_raw_utf8_attachment_name_is_read(make_config: ConfigFactory) -> None:
    config = make_config(extra=EXTRA)
    action, found = signals(config, smtputf8_mail("Photos", "Our depression group photo.",
                                                  filename="Jürgen_Müller_intake.png"))
    assert action is Action.BLOCK
    assert {"phi-client-name", "phi-keyword"} <= found


def test_a_raw_utf8_forwarded_subject_is_read(make_config: ConfigFactory) -> None:
    config = make_config(extra=EXTRA)
    inner = smtputf8_mail("Jürgen Müller: anxiety follow-up")
    outer = EmailMessage()
    outer["From"] = SENDER
    outer["To"] = OUTSIDER
    outer["Subject"] = "Fwd"
    outer.set_content("FYI")
    outer.add_attachment(inner, maintype="application", subtype="octet-stream",
                         filename="forward.eml")
    action, found = signals(config, outer.as_bytes())
    assert action is Action.BLOCK and "phi-client-name" in found


def html_mail(markup: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = OUTSIDER
    msg["Subject"] = "Note"
    msg.set_content(markup, subtype="html")
    return msg.as_bytes()


@pytest.mark.parametrize("markup", [
    "<p><span>Ja</span>ne Roe, dx F32.1</p>",
    "<p>Jane <span style=color:red>R</span>oe, dx F32.1</p>",
    "<p>Jane Ro<span class=SpellE>e</span>, dx F32.1</p>",   # Word's spell-check marks
    "<p>Jane R<!-- -->oe, dx F32.1</p>",
    "<p>Jane <b\nclass=x>Roe</b>, d<i>x</i> F32.1</p>",
])
def test_inline_html_tags_inside_a_word_do_not_split_it(markup: str, config_path: Path) -> None:
    action, found = signals(config_path, html_mail(markup))
    assert action is Action.BLOCK
    assert {"phi-client-name", "phi-icd10"} <= found


def test_an_ssn_with_a_bold_group_is_one_ssn(config_path: Path) -> None:
    action, found = signals(config_path, html_mail("<p>SSN 123-<b>45</b>-6789, diagnosis"
                                                   " F32.1</p>"))
    assert action is Action.BLOCK and "phi-ssn" in found


@pytest.mark.parametrize("markup", ["<p>Jane</p><p>Roe</p>", "Jane<br>Roe", "<td>Jane</td>"
                                    "<td>Roe</td>", "Jane<img src=x>Roe"])
def test_block_tags_still_end_a_word(markup: str) -> None:
    from securemail.markup import html_text

    assert "JaneRoe" not in html_text(markup)


@pytest.mark.parametrize("markup", [
    # Outlook blocks images by default and shows their alt text instead.
    '<p>Hello <img src="x.png" alt="Patient Jane Roe, MRN: 12345678, diagnosis F32.1"></p>',
    "<p>See <a title='Jane Roe, dx F32.1' href=x>notes</a></p>",
    '<p>Form: <a href="https://forms.example/?patient=Jane+Roe&amp;dx=F32.1">open</a></p>',
    '<p>Write to <a href="mailto:x@other.example?subject=Jane%20Roe%2C%20dx%20F32.1">us</a>',
    "<p>Hello</p><!-- Patient Jane Roe, diagnosis F32.1 -->",
    '<input placeholder="Jane Roe, dx F32.1">',
    '<div aria-label="Jane Roe, diagnosis F32.1"></div>',
])
def test_phi_in_what_an_html_part_carries_besides_its_text_is_found(
        markup: str, config_path: Path) -> None:
    # These used to leave for an outsider in clear: only the flowing text was read.
    action, found = signals(config_path, html_mail(markup))
    assert action is Action.BLOCK
    assert "phi-client-name" in found


def test_attribute_and_comment_text_does_not_join_the_flowing_text() -> None:
    from securemail.markup import html_text

    text = html_text('<p>Ja<span title="x">ne</span> Roe<!-- c --> <img alt="y"></p>')
    assert text.splitlines()[0].split() == ["Jane", "Roe"]
    assert text.splitlines()[1:] == ["x", "y", " c "]
