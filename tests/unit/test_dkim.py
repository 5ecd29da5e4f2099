"""DKIM signing: dkimpy must verify our signature over the exact bytes we return."""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from dkim.canonicalization import Relaxed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securemail.cli.dkim_cmd import commands, dkim_group
from securemail.config import Settings, parse_settings
from securemail.dkim import (
    DkimSigner,
    dns_record_name,
    generate_key,
    relaxed_body,
    split_message,
    txt_strings,
)
from securemail.errors import ConfigError, RenderError

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
DOMAIN, SELECTOR = "riverside.example", "sm1"

MESSAGE = (
    b"From: Dr Ada <ada@riverside.example>\r\n"
    b"To: Jane <jane@mail.example>\r\n"
    b"Cc: guardian@mail.example\r\n"
    b"Subject: =?utf-8?q?Termin_f=C3=BCr_Montag?=\r\n"
    b"Date: Mon, 01 Jun 2026 12:00:00 +0000\r\n"
    b"Message-ID: <m1@riverside.example>\r\n"
    b"Received: from pc.riverside.example by relay\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe, see you Monday.  \r\n"
    b".a line starting with a dot\r\n"
    b"\ttabbed   and   spaced\r\n"
    b"\r\n\r\n"
)


class Keys:
    """A signer and the TXT record a resolver would return for it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.pem, self.record = generate_key(kind)
        self.signer = DkimSigner.from_pem(self.pem, domain=DOMAIN, selector=SELECTOR)

    def dnsfunc(self, name: bytes, timeout: int = 5) -> bytes:
        assert name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode()
        return self.record.encode()


@pytest.fixture(scope="module", params=["rsa", "ed25519"])
def keys(request: pytest.FixtureRequest) -> Keys:
    return Keys(request.param)


@pytest.fixture(scope="module")
def ed_keys() -> Keys:
    return Keys("ed25519")


def verify(keys: Keys, message: bytes) -> bool:
    return bool(dkim.verify(message, dnsfunc=keys.dnsfunc))


def tags(signed: bytes) -> dict[bytes, bytes]:
    headers, _ = dkim.rfc822_parse(signed)
    name, value = headers[0]
    assert name == b"DKIM-Signature"
    return dict(dkim.util.parse_tag_value(value))


# ---------------------------------------------------------------- signing


def test_dkimpy_verifies_the_exact_bytes_and_the_rest_is_unchanged(keys: Keys) -> None:
    signed = keys.signer.sign(MESSAGE, now=NOW)
    assert signed.startswith(b"DKIM-Signature:")
    assert signed.endswith(MESSAGE)  # the message itself is not touched
    assert signed.count(b"DKIM-Signature:") == 1
    assert verify(keys, signed)


def test_signature_tags(keys: Keys) -> None:
    t = tags(keys.signer.sign(MESSAGE, now=NOW))
    assert t[b"a"] == (b"rsa-sha256" if keys.kind == "rsa" else b"ed25519-sha256")
    assert t[b"c"] == b"relaxed/relaxed"
    assert (t[b"d"], t[b"s"]) == (DOMAIN.encode(), SELECTOR.encode())
    assert t[b"t"] == str(int(NOW.timestamp())).encode()
    assert b"l" not in t  # a length limit would let anyone append under our name
    signed = re.split(rb"\s*:\s*", t[b"h"])
    assert signed.count(b"from") == 2  # over-signed: another From breaks it
    for name in (b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version",
                 b"content-type", b"content-transfer-encoding", b"reply-to"):
        assert name in signed
    assert b"received" not in signed  # MTAs add and rewrite these


def test_signature_header_lines_fit_rfc5322(keys: Keys) -> None:
    signed = keys.signer.sign(MESSAGE, now=NOW)
    header = signed[: signed.index(b"\r\nFrom:")]
    assert all(len(line) <= 78 for line in header.split(b"\r\n"))
    assert b"\n" not in header.replace(b"\r\n", b"")


@pytest.mark.parametrize("tamper", [
    pytest.param(lambda m: m.replace(b"see you Monday", b"see you Tuesday"), id="body"),
    pytest.param(lambda m: m.replace(b"Dr Ada <ada@", b"Dr Eve <ada@"), id="from"),
    pytest.param(lambda m: m.replace(b"Subject: =?utf", b"Subject: =?UTF"), id="subject"),
    pytest.param(lambda m: m + b"appended line\r\n", id="appended-body"),
])
def test_a_changed_message_fails_verification(keys: Keys,
                                              tamper: Callable[[bytes], bytes]) -> None:
    signed = keys.signer.sign(MESSAGE, now=NOW)
    changed = tamper(signed)
    assert changed != signed
    assert not verify(keys, changed)


@pytest.mark.parametrize("extra", [b"From: attacker@evil.example\r\n",
                                   b"Reply-To: attacker@evil.example\r\n"])
def test_an_added_from_or_reply_to_fails_verification(keys: Keys, extra: bytes) -> None:
    signed = keys.signer.sign(MESSAGE, now=NOW)
    split = signed.index(b"\r\n\r\n") + 2
    assert not verify(keys, signed[:split] + extra + signed[split:])


def test_relaxed_canonicalisation_survives_harmless_rewrapping(keys: Keys) -> None:
    signed = keys.signer.sign(MESSAGE, now=NOW)
    # What MTAs do in transit: refold a header, change white space in the body.
    rewrapped = signed.replace(b"To: Jane <jane@mail.example>", b"To: Jane\r\n <jane@mail.example>")
    rewrapped = rewrapped.replace(b"see you Monday.", b"see  you\tMonday.")
    assert verify(keys, rewrapped)


def test_lf_input_is_signed_as_crlf(keys: Keys) -> None:
    lf = MESSAGE.replace(b"\r\n", b"\n")
    signed = keys.signer.sign(lf, now=NOW)
    assert signed.endswith(MESSAGE)
    assert b"\n" not in signed.replace(b"\r\n", b"")
    assert verify(keys, signed)


def test_message_that_is_only_headers_and_an_empty_body(ed_keys: Keys) -> None:
    for message in (b"From: a@riverside.example\r\n",
                    b"From: a@riverside.example\r\n\r\n",
                    b"From: a@riverside.example\r\nSubject: x\r\n\r\n\r\n"):
        assert verify(ed_keys, ed_keys.signer.sign(message, now=NOW))


def test_without_from_signing_fails_closed(ed_keys: Keys) -> None:
    with pytest.raises(RenderError) as info:
        ed_keys.signer.sign(b"To: jane@mail.example\r\nSubject: Diagnosis\r\n\r\nbody\r\n")
    assert "Diagnosis" not in str(info.value)


@pytest.mark.parametrize("message", [
    b"From: a@riverside.example\r\nno colon Diagnosis\r\n\r\nbody\r\n",
    b" Diagnosis: folded first line\r\nFrom: a@riverside.example\r\n\r\nbody\r\n",
])
def test_unparsable_header_block_fails_closed(ed_keys: Keys, message: bytes) -> None:
    with pytest.raises(RenderError) as info:
        ed_keys.signer.sign(message)
    assert "Diagnosis" not in str(info.value)


def test_a_library_fault_while_signing_is_a_render_error(
        ed_keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: DkimSigner, data: bytes) -> bytes:
        raise RuntimeError("Subject: secret diagnosis")

    monkeypatch.setattr(DkimSigner, "_sign_bytes", broken)
    with pytest.raises(RenderError) as info:
        ed_keys.signer.sign(MESSAGE)
    assert "diagnosis" not in str(info.value)
    assert info.value.smtp_reply.startswith("451")


def test_a_library_fault_while_signing_with_rsa_is_a_render_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rsa_keys = Keys("rsa")

    def broken(self: DkimSigner, data: bytes) -> bytes:
        raise RuntimeError("Subject: secret diagnosis")

    monkeypatch.setattr(DkimSigner, "_sign_bytes", broken)
    with pytest.raises(RenderError) as info:
        rsa_keys.signer.sign(MESSAGE)
    assert "diagnosis" not in str(info.value)


def test_repr_shows_no_key_material(keys: Keys) -> None:
    text = repr(keys.signer)
    assert DOMAIN in text and "PRIVATE" not in text and len(text) < 120


# ---------------------------------------------------------------- same bytes as dkimpy

_line = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_spacey = st.lists(st.sampled_from([b" ", b"\t", b"  ", b"\r", b"x", b"\xc3\xa9", b""]),
                   max_size=8).map(b"".join)
_body = st.lists(st.one_of(_line, _spacey), max_size=12).map(b"\r\n".join)


@given(body=_body, trailing=st.sampled_from([b"", b"\r\n", b"\r\n\r\n", b" \r\n\t\r\n"]))
def test_relaxed_body_matches_dkimpy(body: bytes, trailing: bytes) -> None:
    data = body + trailing
    assert relaxed_body(data) == Relaxed.canonicalize_body(data)


_header = st.tuples(st.sampled_from([b"From", b"To", b"Subject", b"X-A"]),
                    _spacey, st.sampled_from([b"", b"\r\n folded", b"\r\n\tmore"]))


@given(headers=st.lists(_header, max_size=5), body=_body,
       sep=st.sampled_from([b"\r\n", b"", b"\r\n\r\n"]))
def test_split_message_matches_dkimpy(headers: list[tuple[bytes, bytes, bytes]],
                                      body: bytes, sep: bytes) -> None:
    message = b"".join(n + b":" + v + f + b"\r\n" for n, v, f in headers) + sep + body
    try:
        expected = dkim.rfc822_parse(message)
    except (dkim.MessageFormatError, IndexError):  # dkimpy IndexErrors on a leading fold
        with pytest.raises(dkim.MessageFormatError):
            split_message(message)
        return
    assert split_message(message) == expected


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(subject=_spacey, body=_body)
def test_any_body_verifies(ed_keys: Keys, subject: bytes, body: bytes) -> None:
    message = (b"From: a@riverside.example\r\nSubject: " + subject.replace(b"\r", b"")
               + b"\r\n\r\n" + body)
    assert verify(ed_keys, ed_keys.signer.sign(message, now=NOW))


# ---------------------------------------------------------------- keys from settings


def dkim_settings(tmp_path: Path, key_file: str) -> Settings:
    data = {"dkim": {"domain": DOMAIN, "selector": SELECTOR, "key_file": key_file}}
    return parse_settings(data, str(tmp_path / "securemail.toml"))


def test_no_dkim_section_means_no_signer(tmp_path: Path) -> None:
    assert DkimSigner.from_settings(parse_settings({}, str(tmp_path / "s.toml"))) is None


def test_relative_key_file_is_read_beside_the_config(tmp_path: Path, ed_keys: Keys) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "dkim.key").write_bytes(ed_keys.pem)
    signer = DkimSigner.from_settings(dkim_settings(tmp_path, "keys/dkim.key"))
    assert signer is not None
    assert (signer.domain, signer.selector) == (DOMAIN, SELECTOR)
    assert verify(ed_keys, signer.sign(MESSAGE))


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
         encryption: serialization.KeySerializationEncryption) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8, encryption)


@pytest.mark.parametrize(("content", "problem"), [
    (None, "file not found"),
    (b"", "not a PEM private key"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a PEM private key"),
    ("ec", "must be an RSA"),
    ("rsa1024", "at least 2048"),
    ("encrypted", "password-protected"),
    ("public", "not a PEM private key"),
])
def test_bad_key_file_is_a_config_error_naming_file_and_key(
        tmp_path: Path, content: bytes | str | None, problem: str) -> None:
    path = tmp_path / "dkim.key"
    if content == "ec":
        content = _pem(ec.generate_private_key(ec.SECP256R1()), serialization.NoEncryption())
    elif content == "rsa1024":
        content = _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024),
                       serialization.NoEncryption())
    elif content == "encrypted":
        content = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048),
                       serialization.BestAvailableEncryption(b"pw"))
    elif content == "public":
        content = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(
        ).public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    if isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        DkimSigner.from_settings(dkim_settings(tmp_path, "dkim.key"))
    err = info.value
    assert err.file == str(tmp_path / "securemail.toml")
    assert err.key == "dkim.key_file"
    assert problem in err.problem
    assert str(path) in err.problem
    assert "BEGIN" not in str(err) and "AAAA" not in str(err)  # no key material


def test_unreadable_key_file(tmp_path: Path) -> None:
    (tmp_path / "dkim.key").mkdir()  # a directory: reading it fails with an OSError
    with pytest.raises(ConfigError, match="cannot read"):
        DkimSigner.from_settings(dkim_settings(tmp_path, "dkim.key"))


def test_generate_key_rejects_unknown_type() -> None:
    with pytest.raises(ValueError, match="rsa"):
        generate_key("dsa")


def test_dns_helpers() -> None:
    assert dns_record_name("sm1", "riverside.example") == "sm1._domainkey.riverside.example"
    value = "v=DKIM1; k=rsa; p=" + "A" * 600
    parts = txt_strings(value)
    assert [len(p) for p in parts] == [255, 255, 108] and "".join(parts) == value


# ---------------------------------------------------------------- CLI


def run(args: list[str], cwd: Path) -> tuple[int, str]:
    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(dkim_group, args)
    finally:
        os.chdir(old)
    return result.exit_code, result.output


def printed_record(output: str) -> tuple[str, str]:
    name = re.search(r"^  name:  (\S+)$", output, re.M)
    value = re.search(r"^  value: (.+)$", output, re.M)
    bind = re.search(r"IN TXT \( (.+) \)$", output, re.M)
    assert name and value and bind
    # The BIND-style strings, each <= 255 characters, join to the same value.
    strings = re.findall(r'"([^"]*)"', bind.group(1))
    assert all(len(s) <= 255 for s in strings)
    assert "".join(strings) == value.group(1)
    return name.group(1), value.group(1)


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_keygen_writes_a_private_key_and_prints_a_record_that_verifies(
        tmp_path: Path, kind: str) -> None:
    assert commands == [dkim_group]
    code, output = run(["keygen", "--domain", "Riverside.Example", "--selector", "sm1",
                        "--type", kind, "-o", "dkim.key"], tmp_path)
    assert code == 0, output
    key_file = tmp_path / "dkim.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in output
    name, value = printed_record(output)
    assert name == "sm1._domainkey.riverside.example"
    assert f"k={kind}" in value

    signer = DkimSigner.from_settings(dkim_settings(tmp_path, "dkim.key"))
    assert signer is not None
    signed = signer.sign(MESSAGE)

    def dnsfunc(qname: bytes, timeout: int = 5) -> bytes:
        return value.encode() if qname == (name + ".").encode() else b""

    assert dkim.verify(signed, dnsfunc=dnsfunc)

    code, shown = run(["record", "-c", str(tmp_path / "securemail.toml")], tmp_path)
    assert code == 2  # no config file yet: a clear error, exit 2
    (tmp_path / "securemail.toml").write_text(
        f'[dkim]\ndomain = "{DOMAIN}"\nselector = "sm1"\nkey_file = "dkim.key"\n')
    code, shown = run(["record", "-c", str(tmp_path / "securemail.toml")], tmp_path)
    assert code == 0, shown
    assert printed_record(shown) == (name, value)


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "dkim-sm1.key").write_bytes(b"old key")
    code, output = run(["keygen", "--domain", DOMAIN, "--selector", "sm1"], tmp_path)
    assert code == 2
    assert "already exists" in output
    assert (tmp_path / "dkim-sm1.key").read_bytes() == b"old key"


@pytest.mark.parametrize("args", [["--domain", "not a domain", "--selector", "sm1"],
                                  ["--domain", DOMAIN, "--selector", "bad selector"],
                                  ["--domain", DOMAIN, "--selector", "s", "--type", "dsa"]])
def test_keygen_rejects_bad_options(tmp_path: Path, args: list[str]) -> None:
    code, _ = run(["keygen", *args], tmp_path)
    assert code == 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sender", [
    "ceo@evil.example",                       # a foreign domain
    "ceo@riverside.example.evil.example",     # ours as a prefix only
    "Front Desk <desk@riverside.example>, outsider@evil.example",  # one of two
])
def test_mail_from_another_domain_is_not_signed(keys: Keys, sender: str) -> None:
    # A signature vouches for the From: a filter that also sees forged or
    # foreign mail must not lend it the practice's domain.
    message = MESSAGE.replace(b"From: Dr Ada <ada@riverside.example>",
                              b"From: " + sender.encode())
    assert b"From: " + sender.encode() in message
    out = keys.signer.sign(message)
    assert b"DKIM-Signature" not in out and out == message


@pytest.mark.parametrize("sender", ["ada@riverside.example",
                                    "Billing <billing@mail.riverside.example>"])
def test_mail_from_our_domain_or_a_subdomain_is_signed(keys: Keys,
                                                       sender: str) -> None:
    message = MESSAGE.replace(b"From: Dr Ada <ada@riverside.example>",
                              b"From: " + sender.encode())
    signed = keys.signer.sign(message)
    assert signed.startswith(b"DKIM-Signature:") and verify(keys, signed)


@pytest.mark.parametrize("lines", [
    b"From : CEO <ceo@evil.example>\r\n",
    b"From ceo@evil.example Sat Jan  3 00:00:00 2026\r\n",
    # After a trace header, as the relay signs it: still caught.
    b"Received: from x ([127.0.0.1])\r\n\tby relay (securemail);\r\n\tSun, 29 Nov 2026\r\n"
    b"From : CEO <ceo@evil.example>\r\n",
])
def test_a_from_line_that_readers_disagree_on_is_never_signed(keys: Keys, lines: bytes) -> None:
    # dkimpy (and Python's parser) skip it as an mbox line; a mail program may
    # show it as the From: signing would lend our name to the hidden sender.
    with pytest.raises(RenderError):
        keys.signer.sign(lines + MESSAGE)


def test_from_in_the_body_does_not_stop_signing(keys: Keys) -> None:
    signed = keys.signer.sign(MESSAGE + b"From here on, see below.\r\n")
    assert verify(keys, signed)


def test_keygen_takes_the_config_like_every_command(tmp_path: Path) -> None:
    # INTERFACE.md: every command takes -c. keygen refused it ("no such option").
    site = tmp_path / "site"
    site.mkdir()
    cfg = site / "securemail.toml"
    cfg.write_text('[practice]\ndomains = ["Riverside.Example"]\n')
    code, output = run(["keygen", "-c", str(cfg), "--selector", "sm2"], tmp_path)
    assert code == 0, output
    assert (site / "dkim-sm2.key").exists() and not (tmp_path / "dkim-sm2.key").exists()
    name, _ = printed_record(output)
    assert name == "sm2._domainkey.riverside.example"  # the config's domain


def test_keygen_without_domain_or_config_says_what_is_missing(tmp_path: Path) -> None:
    code, output = run(["keygen", "-c", str(tmp_path / "none.toml"), "--selector", "sm1"],
                       tmp_path)
    assert code == 2
    assert "--domain: required" in output
    assert list(tmp_path.iterdir()) == []
