"""The errors practice software and mail servers see: replies that say what to
fix, and exceptions that survive pickling (Celery, process pools)."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemail.errors import Blocked, ConfigError, UpstreamRefused
from securemail.model import HELD_WITH_OFFENDER, Action, Decision, Mode, Role, Source, Verdict

CLIENT = Decision("pat@client.example", Source.TO, Role.CLIENT, Action.BLOCK,
                  ("unauthorised-recipient",),
                  f"{HELD_WITH_OFFENDER} stranger@other.example, who may not receive it")
STRANGER = Decision("stranger@other.example", Source.CC, Role.THIRD_PARTY, Action.BLOCK,
                    ("unauthorised-recipient",), "not an authorised contact of client c-1")


def test_a_whole_message_block_names_who_caused_it_first() -> None:
    reply = Blocked(Verdict("<m@x>", Mode.ENFORCE, False, True, (CLIENT, STRANGER))).smtp_reply
    assert reply == ("550 5.7.1 Blocked by policy (unauthorised-recipient): not authorised:"
                     " stranger@other.example; blocked with them: pat@client.example; check"
                     " them (a wrong autocomplete?) and the client names in the text: take off"
                     " who may not have it, or ask the office to add them as authorised"
                     " contacts")


def test_a_client_who_may_not_receive_it_is_named_as_the_cause() -> None:
    # The new rule: another client's message to a client. The client is the
    # cause, not one "blocked with them" (before, only third parties were).
    wrong = Decision("sam@client.example", Source.TO, Role.CLIENT, Action.BLOCK,
                     ("unauthorised-recipient",), "the message concerns client c-1, and ...")
    held = Decision("nurse@practice.example", Source.CC, Role.STAFF, Action.BLOCK,
                    ("unauthorised-recipient",),
                    f"{HELD_WITH_OFFENDER} sam@client.example, who may not receive it")
    reply = Blocked(Verdict("<m@x>", Mode.ENFORCE, False, True, (held, wrong))).smtp_reply
    assert reply.startswith("550 5.7.1 Blocked by policy (unauthorised-recipient): not"
                            " authorised: sam@client.example; blocked with them:"
                            " nurse@practice.example; check them")


def test_a_block_without_a_cause_lists_the_recipients() -> None:
    restricted = Decision("pat@client.example", Source.TO, Role.CLIENT, Action.BLOCK,
                          ("phi-restricted",), "restricted")
    reply = Blocked(Verdict("<m@x>", Mode.ENFORCE, False, True, (restricted,))).smtp_reply
    assert reply == "550 5.7.1 Blocked by policy (phi-restricted): pat@client.example"


@given(st.integers(0, 30), st.integers(0, 30), st.integers(1, 60))
def test_every_policy_reply_is_one_line_under_512_octets(causes: int, held: int,
                                                         width: int) -> None:
    decisions = tuple(
        Decision(f"{'c' * width}{i}@x.example", Source.TO, Role.THIRD_PARTY, Action.BLOCK,
                 ("unauthorised-recipient",), "r") for i in range(causes)) + tuple(
        Decision(f"{'h' * width}{i}@x.example", Source.TO, Role.CLIENT, Action.BLOCK,
                 ("unauthorised-recipient",), f"{HELD_WITH_OFFENDER} c, who may not receive it")
        for i in range(held))
    if not decisions:
        return
    reply = Blocked(Verdict("<m>", Mode.ENFORCE, False, True, decisions)).smtp_reply
    assert reply.startswith("550 5.7.1 ") and len(reply.encode()) < 512 and "\n" not in reply
    # Each list names somebody, or says how many: never "blocked with them:  and 2 more".
    assert ":  " not in reply and ": and " not in reply, reply
    if causes and held:
        assert "; blocked with them: h" in reply or f"; blocked with them: {held} recipient" \
            in reply, reply


@pytest.mark.parametrize("error", [
    ConfigError("/etc/securemail/securemail.toml", "upstream.url", "needs a port"),
    Blocked(Verdict("<m@x>", Mode.ENFORCE, False, True, (CLIENT, STRANGER))),
    UpstreamRefused("no recipient accepted the message", ("552 5.3.4",)),
])
def test_errors_survive_pickling(error: Exception) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error)
    assert getattr(copy, "smtp_reply", None) == getattr(error, "smtp_reply", None)
    if isinstance(error, Blocked):
        assert isinstance(copy, Blocked) and copy.verdict == error.verdict



def test_recipients_deferred_says_how_many_and_why() -> None:
    from securemail.errors import RecipientsDeferred
    from securemail.model import (
        Action,
        Mode,
        Outcome,
        RecipientOutcome,
        Status,
        Verdict,
    )

    verdict = Verdict("<m@x>", Mode.ENFORCE, False, False, ())
    every = Outcome(verdict, (RecipientOutcome("a@x.example", Action.DELIVER, Status.DEFERRED),),
                    "0" * 64)
    exc = RecipientsDeferred(every, ("upstream: upstream 127.0.0.1:1 unavailable "
                                     "(SMTPConnectError)",))
    assert str(exc) == ("every recipient deferred (upstream: upstream 127.0.0.1:1 unavailable"
                        " (SMTPConnectError)); retry the same bytes later")
    some = Outcome(verdict, (
        RecipientOutcome("a@x.example", Action.DELIVER, Status.DELIVERED),
        RecipientOutcome("b@x.example", Action.PORTAL, Status.DEFERRED)), "0" * 64)
    assert str(RecipientsDeferred(some)).startswith("1 of 2 recipients deferred")
    import pickle

    again = pickle.loads(pickle.dumps(exc))
    assert again.causes == exc.causes and str(again) == str(exc)


def test_decision_for_matches_an_address_as_the_policy_does() -> None:
    import pytest

    from securemail.model import Action, Decision, Mode, Role, Source, Verdict

    d = Decision("jane@xn--bcher-kva.example", Source.TO, Role.CLIENT, Action.PORTAL,
                 ("protected-portal",), "r")
    verdict = Verdict("<m@x>", Mode.ENFORCE, False, True, (d,))
    assert verdict.decision_for("Jane@BÜCHER.example") is d
    assert verdict.decision_for("jane@xn--bcher-kva.example") is d
    with pytest.raises(KeyError, match="not a recipient"):
        verdict.decision_for("nobody@x.example")
    with pytest.raises(KeyError):
        verdict.decision_for("not an address")
