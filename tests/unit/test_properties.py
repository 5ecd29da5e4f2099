"""Property tests (hypothesis) on parsing and policy."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securemail.config import LimitSettings, PolicySettings, load_settings
from securemail.model import (
    Action,
    Consent,
    Encryption,
    Facts,
    Mode,
    PhiSignal,
    RecipientFacts,
    Role,
    Source,
)
from securemail.parse import parse_message
from securemail.policy import decide
from securemail.testing import build_message
from tests.conftest import BASE_CONFIG
from tests.unit.policy_helpers import verdict_for

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
DETECTORS = ["phi-ssn", "phi-dob", "phi-mrn", "phi-client-name", "phi-icd10", "phi-keyword"]

consents = st.none() | st.builds(
    Consent, granted=st.sampled_from(["2025-01-01", "2026-07-01"]), warning=st.just("v1"),
    expires=st.none() | st.sampled_from(["2026-01-01", "2027-01-01"]))
recipient_facts = st.builds(
    RecipientFacts,
    address=st.from_regex(r"[a-z]{1,6}@[a-z]{1,6}\.example", fullmatch=True),
    source=st.sampled_from(Source), role=st.sampled_from(Role),
    client_ids=st.lists(st.sampled_from(["c-1", "c-2"]), max_size=2).map(tuple),
    key_kinds=st.frozensets(st.sampled_from(["pgp", "smime"])),
    consent=consents,
)
facts_strategy = st.builds(
    Facts,
    message_id=st.just("<m@x>"), sender=st.just("dr@riverside.example"),
    encryption=st.sampled_from(Encryption),
    recipients=st.lists(recipient_facts, max_size=6, unique_by=lambda r: r.address).map(tuple),
    client_ids=st.lists(st.sampled_from(["c-1", "c-2"]), max_size=2, unique=True).map(tuple),
    phi_signals=st.lists(st.builds(PhiSignal, st.sampled_from(DETECTORS),
                                   st.sampled_from(["subject", "body"])), max_size=4).map(tuple),
    restricted=st.none() | st.just("psychotherapy-notes"),
    malformed=st.none() | st.sampled_from(["malformed-message", "malformed-address"]),
)
policies = st.builds(
    PolicySettings, mode=st.sampled_from(Mode),
    unauthorised_recipients=st.sampled_from(["block", "strip"]),
    encryption_preference=st.sampled_from([("pgp", "smime"), ("smime", "pgp"), ("pgp",), ()]),
)


@given(facts_strategy, policies, st.booleans())
def test_decide_never_raises_and_covers_every_recipient(facts, policy, portal) -> None:
    v = decide(facts, policy, now=NOW, portal_enabled=portal)
    assert [d.address for d in v.decisions] == [r.address for r in facts.recipients]
    for d in v.decisions:
        assert d.rules and d.reason
        if d.action is Action.DELIVER and (facts.phi or facts.client_related) \
                and facts.encryption is Encryption.NONE:
            assert d.role is Role.STAFF or "consent-unencrypted" in d.rules
        if d.action is Action.ENCRYPT_PGP:
            assert "pgp" in next(r for r in facts.recipients if r.address == d.address).key_kinds


@given(facts_strategy, policies, st.booleans(), st.sampled_from(Source))
def test_adding_a_third_party_never_turns_a_block_into_a_delivery(facts, policy, portal,
                                                                   source) -> None:
    facts = replace(facts, phi_signals=(PhiSignal("phi-ssn", "body"),
                                        PhiSignal("phi-icd10", "body")))
    before = decide(facts, policy, now=NOW, portal_enabled=portal)
    intruder = RecipientFacts("intruder@evil.example", source, Role.THIRD_PARTY)
    after = decide(replace(facts, recipients=(*facts.recipients, intruder)), policy, now=NOW,
                   portal_enabled=portal)
    for b, a in zip(before.decisions, after.decisions, strict=False):
        if b.action is Action.BLOCK:
            assert a.action is Action.BLOCK
        assert a.action.strictness >= b.action.strictness
    if facts.encryption is Encryption.NONE:
        assert after.decisions[-1].action is Action.BLOCK


ADDRESSES = ["jane@mail.example", "guardian@mail.example", "mom@mail.example",
             "nurse@riverside.example", "claims@billing-partner.example", "sam@mail.example"]


def _recase(address: str, flips: list[bool]) -> str:
    local, _, domain = address.partition("@")
    return local + "@" + "".join(c.upper() if f else c
                                 for c, f in zip(domain, flips + [False] * len(domain),
                                                 strict=False))


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture],
          deadline=None)
@given(st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=4, unique=True),
       st.lists(st.booleans(), max_size=30), st.booleans())
def test_domain_case_never_changes_a_verdict(tmp_path_factory, rcpts, flips, phi) -> None:
    path = Path(tmp_path_factory.mktemp("cfg")) / "securemail.toml"
    path.write_text(BASE_CONFIG.format(mode="enforce", unauthorised="block", portal="true"))
    cfg = load_settings(path)
    body = "Diagnosis F32.1, SSN 123-45-6789" if phi else "hello"
    plain = verdict_for(cfg, build_message(sender="dr@riverside.example", to=rcpts, body=body),
                        "dr@riverside.example", rcpts)
    recased = [_recase(a, flips) for a in rcpts]
    shouted = verdict_for(cfg, build_message(sender="dr@RIVERSIDE.example", to=recased, body=body),
                          "dr@RIVERSIDE.example", recased)
    assert plain.decisions == shouted.decisions


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_parse_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    parse_message(data, LimitSettings(max_message_bytes=2000))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_parse_never_raises_on_arbitrary_address_headers(value: str) -> None:
    raw = ("From: a@b.example\r\nTo: " + value.replace("\r", " ").replace("\n", " ")
           + "\r\n\r\nx").encode("utf-8", "surrogatepass")
    view = parse_message(raw, LimitSettings())
    assert view.malformed in (None, "malformed-address", "malformed-message")
