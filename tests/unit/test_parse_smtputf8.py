"""SMTPUTF8 / RFC 6532 address headers: UTF-8 local parts and IDN domains are
accepted, anything that could be read two ways is still rejected, and the fast
path and the full parse agree."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemail.config import LimitSettings
from securemail.directory import AddressError, normalise_address
from securemail.parse import (
    _SIMPLE_LIST,
    _parse_full,
    _parse_simple,
    loose_recipients,
    parse_address_list,
    parse_message,
)

LIMITS = LimitSettings()
JOHN = "jöhn@xn--bcher-kva.example"


@pytest.mark.parametrize(("value", "expected"), [
    ("jöhn@bücher.example", [JOHN]),
    ('"J. Doe" <jöhn@bücher.example>', [JOHN]),
    ("=?utf-8?q?J=C3=B6hn?= <jöhn@bücher.example>", [JOHN]),
    ("Jöhn Dœ <jöhn@bücher.example>", [JOHN]),
    ("JÖHN@BÜCHER.example", [JOHN]),
    ("jöhn@xn--bcher-kva.example", [JOHN]),
    ("jöhn@example.org", ["jöhn@example.org"]),
    ("John <jöhn@example.org>", ["jöhn@example.org"]),
    ("john@bücher.example", ["john@xn--bcher-kva.example"]),
    ("jöhn@bücher.example, \"Roe, Jane\" <jane@mail.example>", [JOHN, "jane@mail.example"]),
    ("team: jöhn@bücher.example, kim@x.example;", [JOHN, "kim@x.example"]),
    ("δοκιμή@παράδειγμα.δοκιμή", ["δοκιμή@xn--hxajbheg2az3al.xn--jxalpdlp"]),
    ("用户@例子.广告", ["用户@xn--fsqu00a.xn--4rr70v"]),
    ("x@ΑΣ.example", ["x@xn--mxa0b.example"]),  # capital sigma is not the final-sigma deviation
    ("Jöhn<jöhn@example.org>", ["jöhn@example.org"]),  # no space: the fast path read
    ("John<john@example.org>", ["john@example.org"]),  # "John<john@..." as the address
])
def test_utf8_addresses_parse(value: str, expected: list[str]) -> None:
    assert parse_address_list(value) == expected


@pytest.mark.parametrize("value", [
    "jöhn@@bücher.example",
    '"jöhn@bücher.example',
    "<jöhn@bücher.example",
    "jöhn@bücher.example>",
    "x <jöhn@bücher.example> y",
    "jöhn@bücher.example)<collector@evil.example>",
    '"j@ö"@bücher.example',
    '"jöhn"@example.org',  # quoted local part: the two parsers read it differently
    "jo\u0308hn@bücher.example",  # NFD: looks like jöhn, is another mailbox
    "jö\u200bhn@bücher.example",  # zero-width space
    "jö\u202ehn@bücher.example",  # bidi override
    "jö\u00a0hn@bücher.example",  # no-break space
    "jö\u2028hn@bücher.example",  # line separator
    "jane\uff20mail.example@evil.example",  # full-width "@"
    "jöhn\uff1cx@bücher.example",  # full-width "<"
    "\ufdfa@bücher.example",  # a letter whose compatibility form holds spaces
    "jöhn@faß.de",  # IDNA 2003 "fass.de", IDNA 2008 "xn--fa-hia.de"
    "jöhn@xn--fa-hia.de",
    "jöhn@\u03c2.example",  # final sigma: another IDNA 2003/2008 deviation
    "jöhn@evil\u3002example",  # ideographic full stop, a dot to IDNA 2003
    "jöhn@evil\uff0eexample",  # full-width full stop
    "jöhn@bu\u0308cher.example",  # NFD domain
    "jöhn@b\u200dücher.example",  # zero-width joiner
    "jöhn@[127.0.0.1]",
])
def test_ambiguous_utf8_addresses_are_rejected(value: str) -> None:
    with pytest.raises(AddressError):
        parse_address_list(value)


def _message(to: str) -> bytes:
    return (f"From: dr@practice.example\r\nTo: {to}\r\nSubject: grüße\r\n\r\n"
            f"hallo\r\n").encode()


@pytest.mark.parametrize("to", [
    "jöhn@bücher.example",
    '"J. Doe" <jöhn@bücher.example>',
    "=?utf-8?q?J=C3=B6hn?= <jöhn@bücher.example>",
])
def test_smtputf8_message_is_not_malformed(to: str) -> None:
    view = parse_message(_message(to), LIMITS)
    assert view.malformed is None
    assert view.addresses("to") == (JOHN,)
    # the same recipient as the envelope's RCPT TO, however it was spelled
    assert normalise_address("jöhn@bücher.example") == JOHN
    assert normalise_address("jöhn@xn--bcher-kva.example") == JOHN


def test_8bit_header_that_is_not_utf8_is_malformed() -> None:
    raw = b"From: dr@practice.example\r\nTo: j\xf6hn@example.org\r\n\r\nx\r\n"
    assert parse_message(raw, LIMITS).malformed == "malformed-address"


def test_loose_recipients_decode_utf8_headers_without_loss() -> None:
    view = parse_message(_message("jöhn@faß.de, kim@bücher.example"), LIMITS)
    assert view.malformed == "malformed-address" and view.message is not None
    assert loose_recipients(view.message) == ["jöhn@faß.de", "kim@bücher.example"]
    raw = b"From: dr@practice.example\r\nTo: j\xf6hn@b\xc3\xbccher.example\r\n\r\nx\r\n"
    view = parse_message(raw, LIMITS)
    assert view.message is not None
    assert loose_recipients(view.message) == ["j\ufffdhn@bücher.example"]


# ----------------------------------------------------------------- properties

# Letters and digits, less the few whose compatibility form holds ASCII
# punctuation or a space (e.g. U+FDFA): those are refused on purpose, see
# test_ambiguous_utf8_addresses_are_rejected.
_LOCAL_CHARS = st.characters(categories=("Lu", "Ll", "Lo", "Nd")).filter(
    lambda c: not any(k.isascii() and not k.isalnum() for k in unicodedata.normalize("NFKC", c)))
_LABEL_ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyz0123456789äöüéèñçåøæ",
    "αβγδεζηθικλμνξοπρστυφχψω",
    "абвгдежзийклмнопрстуфхцчшщыьэюяіїє",
    "例子测试用户网址中文邮件",
]


@st.composite
def _utf8_local(draw: st.DrawFn) -> str:
    return unicodedata.normalize("NFC", draw(st.text(_LOCAL_CHARS, min_size=1, max_size=20)))


@st.composite
def _idn_domain(draw: st.DrawFn) -> str:
    labels = []
    for _ in range(draw(st.integers(1, 3))):
        alphabet = draw(st.sampled_from(_LABEL_ALPHABETS))
        labels.append(draw(st.text(alphabet, min_size=1, max_size=12)))
    labels.append(draw(st.sampled_from(["example", "org", "de", "δοκιμή", "广告", "укр"])))
    return ".".join(labels)


def _outcome(fn: Callable[[str], list[str]], value: str) -> list[str] | str:
    try:
        return fn(value)
    except AddressError:
        return "rejected"


@settings(max_examples=400, deadline=None)
@given(_utf8_local(), _idn_domain(),
       st.sampled_from(["{a}", "Jöhn <{a}>", '"Doe, J." <{a}>', "=?utf-8?q?J=C3=B6hn?= <{a}>",
                        "J <{a}>, kim@x.example"]),
       st.booleans())
def test_utf8_addresses_round_trip(local: str, domain: str, form: str, upper: bool) -> None:
    spec = f"{local}@{domain}"
    if upper:
        spec = spec.upper() if unicodedata.is_normalized("NFC", spec.upper()) else spec
    try:
        expected = normalise_address(spec)
    except AddressError:  # e.g. a local part over 64 characters after upper-casing
        with pytest.raises(AddressError):
            parse_address_list(form.format(a=spec))
        return
    got = parse_address_list(form.format(a=spec))
    assert got[0] == expected
    # U-label and A-label spellings of the domain compare equal
    a_label = expected.rpartition("@")[2]
    assert parse_address_list(f"{spec.rpartition('@')[0]}@{a_label}") == [expected]
    assert expected.rpartition("@")[2].isascii()


_BROKEN = [
    "{l}@@{d}", "{l}@{d}@{d}", '"{l}@{d}', '{l}"@{d}', "<{l}@{d}", "{l}@{d}>",
    "J <{l}@{d}", "J {l}@{d}>", "J <<{l}@{d}>>", "J <{l}@{d}> x", "{l}@{d})<evil@evil.example>",
]


@settings(max_examples=400, deadline=None)
@given(_utf8_local(), _idn_domain(), st.sampled_from(_BROKEN))
def test_broken_utf8_addresses_are_rejected(local: str, domain: str, form: str) -> None:
    with pytest.raises(AddressError):
        parse_address_list(form.format(l=local, d=domain))


_ATOM_CHARS = st.sampled_from(
    list("abcXYZ019!#$%&'*+/=?^_`{|}~-.[]") + list("äöüßςΣ用ǅﬁ٣") +
    ["\u0308", "\u200b", "\u200d", "\u202e", "\u00ad", "\uff20", "\uff0e", "\u2024", "\ufe52"])
_NAME = st.text(st.sampled_from(list("Ab9 _'-.")), max_size=8)
_DOMAIN = st.text(st.sampled_from(list("abXY09.-")), min_size=1, max_size=12)


@st.composite
def _simple_list(draw: st.DrawFn) -> str:
    items = []
    for _ in range(draw(st.integers(1, 3))):
        addr = draw(st.text(_ATOM_CHARS, min_size=1, max_size=10)) + "@" + draw(_DOMAIN)
        items.append(f"{draw(_NAME)}<{addr}>" if draw(st.booleans()) else addr)
    return ", ".join(items)


@settings(max_examples=1000, deadline=None)
@given(_simple_list())
def test_fast_path_and_full_parse_agree(value: str) -> None:
    if not _SIMPLE_LIST.fullmatch(value):
        return
    assert _outcome(_parse_simple, value) == _outcome(_parse_full, value)


@pytest.mark.parametrize(("value", "addresses"), [
    ("J. Doe <john@x.example>", ["john@x.example"]),
    ('Dr. Jane Smith <jane@x.example>, "Doe, John" <john@x.example>',
     ["jane@x.example", "john@x.example"]),
    ("J.Doe <john@x.example>, St. Clair <sc@x.example>", ["john@x.example", "sc@x.example"]),
    ("John Smith Jr. <js@x.example>", ["js@x.example"]),
    ("Jane D. <jd@x.example>, Ann <ann@x.example>", ["ann@x.example", "jd@x.example"]),
    ("Smith Jr.<s@x.example>", ["s@x.example"]),  # no space before "<"
    ('Dr.<a@x.example>, "Doe, J.<x" <j@x.example>', ["a@x.example", "j@x.example"]),
])
def test_a_period_in_a_display_name_is_read_as_a_name(value: str, addresses: list[str]) -> None:
    # RFC 5322 obs-phrase: "Dr. Jane Smith" is a display name, never an address.
    # Such headers always take the full parser (the fast path has no periods in
    # names), so a header reads the same whatever else it holds.
    assert not _SIMPLE_LIST.fullmatch(value)
    assert sorted(parse_address_list(value)) == addresses


def test_a_message_to_dr_smith_and_a_quoted_name_is_not_malformed() -> None:
    # The quoted comma sends the header to the full parser, which used to
    # refuse the whole message (554) over the period in "Dr.".
    raw = (b'From: Front Desk <desk@riverside.example>\r\n'
           b'To: Dr. Jane Smith <jane@mail.example>, "Doe, John" <john@mail.example>\r\n'
           b"Subject: Rota\r\n\r\nHello\r\n")
    view = parse_message(raw, LimitSettings())
    assert not view.malformed
    assert sorted(view.addresses("to")) == ["jane@mail.example", "john@mail.example"]


@pytest.mark.parametrize("value", [
    "a.b@c.example <x@y.example>",  # an address where a display name should be
    ".<a@x.example>",
    "a.<b@x.example>@y.example",  # the space trick must not make a new address
])
def test_a_period_does_not_excuse_other_defects(value: str) -> None:
    with pytest.raises(AddressError):
        _parse_full(value)


@pytest.mark.parametrize("first", [b"From : Evil CEO <ceo@evil.example>",
                                   b"From ceo@evil.example Sat Jan  3 00:00:00 2026",
                                   b"from\t: ceo@evil.example"])
def test_a_first_header_line_without_a_colon_after_from_is_malformed(first: bytes) -> None:
    # Python's parser drops it as an mbox envelope line and would read only
    # the second From; a mail program may show this one.
    raw = first + (b"\r\nFrom: a@riverside.example\r\nTo: b@mail.example\r\n"
                   b"Subject: x\r\n\r\nhello\r\n")
    view = parse_message(raw, LIMITS)
    assert view.malformed == "malformed-message"
