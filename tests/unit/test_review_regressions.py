"""Attacks and edge cases found in review: each once let PHI out or lost track of it."""

from __future__ import annotations

import base64
from pathlib import Path

from securemail.model import Action, Encryption
from tests.unit.policy_helpers import verdict_for
from tests.unit.test_encryption_state import gpg_armor, pgp_mime, state

DR = "dr@riverside.example"
STRANGER = "stranger@evil.example"
PHI = b"Jane Roe, SSN 123-45-6789, diagnosis F32.1 major depression; DOB 1980-02-03"
HEAD = (b"From: dr@riverside.example\r\nTo: stranger@evil.example\r\n"
        b"Message-ID: <r@riverside.example>\r\n")


def armor(blob: bytes) -> bytes:
    return (b"-----BEGIN PGP MESSAGE-----\r\n\r\n" + base64.encodebytes(blob)
            + b"-----END PGP MESSAGE-----\r\n")


def actions(config: Path, raw: bytes) -> set[Action]:
    return {d.action for d in verdict_for(config, raw, DR, [STRANGER]).decisions}


def test_plaintext_in_openpgp_framing_is_not_encrypted(config_path: Path) -> None:
    tricks = [
        b"\x84\x00" + b"\xa7" + PHI,  # empty PKESK + indeterminate-length SED
        b"\xc1\x0c\x03" + b"\x00" * 11 + b"\xd2" + bytes([len(PHI) + 1]) + b"\x01" + PHI,  # SEIPD
    ]
    for blob in tricks:
        raw = HEAD + b"Subject: notes\r\n\r\n" + armor(blob)
        assert state(raw) is Encryption.NONE
        assert actions(config_path, raw) == {Action.BLOCK}


def test_plaintext_in_cms_framing_is_not_encrypted(config_path: Path) -> None:
    der = (b"\x30\x80" + bytes.fromhex("06092a864886f70d010703") + b"\xa0\x80\x30\x80\x02\x01\x00"
           + PHI)
    raw = (HEAD + b"Subject: hi\r\nMIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; "
           b"smime-type=enveloped-data; name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(der))
    assert state(raw) is Encryption.NONE
    # It claims to be encrypted but is not: what we could not read counts as PHI.
    assert actions(config_path, raw) == {Action.BLOCK}


def test_phi_in_the_clear_subject_of_real_pgp_mail_is_caught(config_path: Path,
                                                             tmp_path: Path) -> None:
    raw = pgp_mime(gpg_armor(tmp_path, b"Content-Type: text/plain\r\n\r\nhi\r\n"), DR, STRANGER)
    raw = raw.replace(b"Subject: ...", b"Subject: Jane Roe SSN 123-45-6789 diagnosis F32.1")
    v = verdict_for(config_path, raw, DR, [STRANGER])
    assert v.encrypted and v.phi and v.blocked


def test_phi_in_a_multipart_preamble_is_caught(config_path: Path, tmp_path: Path) -> None:
    raw = pgp_mime(gpg_armor(tmp_path, b"x"), DR, STRANGER)
    raw = raw.replace(b'boundary="b1"\r\n\r\n', b'boundary="b1"\r\n\r\n' + PHI + b"\r\n")
    assert verdict_for(config_path, raw, DR, [STRANGER]).blocked


def test_obsolete_header_syntax_cannot_hide_the_body(config_path: Path) -> None:
    body = base64.encodebytes(PHI)
    raw = (HEAD + b"Subject: hi\r\nX-Mailer : app\r\nContent-Type: text/plain\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + body)
    v = verdict_for(config_path, raw, DR, [STRANGER])
    assert v.malformed and v.blocked


def test_duplicate_subject_or_content_type_is_malformed(config_path: Path) -> None:
    for extra in (b"Subject: a\r\nSubject: b\r\n",
                  b"Content-Type: text/plain\r\nContent-Type: text/html\r\n"):
        v = verdict_for(config_path, HEAD + extra + b"\r\nhello\r\n", DR, [STRANGER])
        assert v.decisions[0].rules == ("malformed-message",)


def test_a_message_without_from_is_malformed(config_path: Path) -> None:
    raw = b"To: stranger@evil.example\r\nSubject: x\r\n\r\nhello\r\n"
    assert verdict_for(config_path, raw, DR, [STRANGER]).decisions[0].rules == (
        "malformed-message",)


def test_an_empty_restricted_marker_still_restricts(config_path: Path) -> None:
    raw = (b"From: dr@riverside.example\r\nTo: sam@mail.example\r\nSubject: x\r\n"
           b"X-Securemail-Restricted:\r\n\r\nhomework\r\n")
    v = verdict_for(config_path, raw, DR, ["sam@mail.example"])
    assert v.decisions[0].action is Action.PORTAL
    assert "restricted-class" in v.decisions[0].rules


def test_text_past_the_scan_limit_counts_as_phi(make_config) -> None:
    cfg = make_config(extra="""
        [limits]
        scan_text_bytes = 4096
        """)
    raw = HEAD + b"Subject: hi\r\n\r\n" + b" \r\n" * 3000 + PHI + b"\r\n"
    v = verdict_for(cfg, raw, DR, [STRANGER])
    assert v.phi and v.blocked
    assert "phi-unscanned" in {s.detector for s in v.facts.phi_signals}


def test_policy_reply_stays_under_512_octets() -> None:
    from securemail.errors import Blocked
    from securemail.model import Decision, Mode, Role, Source, Verdict

    decisions = tuple(Decision(f"{'x' * 60}{i}@{'y' * 60}.example", Source.TO, Role.THIRD_PARTY,
                               Action.BLOCK, ("unauthorised-recipient",), "r")
                      for i in range(20))
    reply = Blocked(Verdict("<m>", Mode.ENFORCE, False, True, decisions)).smtp_reply
    assert reply.startswith("550 5.7.1 ") and len(reply) < 512
    assert " more; check them (a wrong autocomplete?)" in reply


def test_signature_with_altered_base64_padding_bits_is_rejected() -> None:
    """Found by hypothesis: a flipped bit in base64's unused bits kept an export valid."""
    import base64 as b64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from securemail.audit.chain import signature_valid

    key = Ed25519PrivateKey.generate()
    good = b64.b64encode(key.sign(b"manifest")).decode()
    assert good.endswith("==") and signature_valid(key.public_key(), good, b"manifest")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = good[-3]
    twin = good[:-3] + alphabet[alphabet.index(last) ^ 1] + "=="  # same decoded bytes
    assert b64.b64decode(twin) == b64.b64decode(good)
    assert not signature_valid(key.public_key(), twin, b"manifest")


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_scalars = (st.none() | st.booleans() | st.integers(-(2**53), 2**53)
            | st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=12), _values, max_size=12))
def test_canonical_audit_encoding_equals_the_stdlib_reference(record: dict) -> None:
    """Verifiers may re-encode with the standard library: the bytes must agree."""
    import json

    from securemail.audit.chain import canonical

    body = {k: v for k, v in record.items() if k != "hash"}
    assert canonical(record) == json.dumps(body, sort_keys=True, separators=(",", ":"),
                                           ensure_ascii=False).encode()
