"""Build Facts/Verdicts from a config and raw bytes without a Relay (no I/O)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from securemail.classify import classify
from securemail.config import Settings, load_settings
from securemail.directory import Directory
from securemail.model import Facts, Verdict
from securemail.parse import parse_message
from securemail.phi import Detectors
from securemail.policy import PolicyRule, decide

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


class FakeKeys:
    """Key lookup stand-in: address -> kinds. (The real Keyring is tested separately.)"""

    def __init__(self, kinds: dict[str, set[str]] | None = None) -> None:
        self.kinds = kinds or {}

    def usable_kinds_many(self, addresses: Sequence[str], now: dt.datetime
                          ) -> dict[str, frozenset[str]]:
        return {a: frozenset(self.kinds.get(a, set())) for a in addresses}


def facts_for(settings: Settings, raw: bytes, mail_from: str, rcpt_tos: Sequence[str],
              keys: FakeKeys | None = None, now: dt.datetime = NOW) -> Facts:
    directory = Directory(settings.practice.domains, settings.directory)
    detectors = Detectors(settings.policy, name_owners=directory.client_names,
                          address_owners=directory.client_addresses)
    return classify(parse_message(raw, settings.limits), mail_from=mail_from, rcpt_tos=rcpt_tos,
                    directory=directory, detectors=detectors, keys=keys or FakeKeys(),
                    restricted_header=settings.policy.restricted_header,
                    scan_limit=settings.limits.scan_text_bytes, now=now)


def verdict_for(config: Path | Settings, raw: bytes, mail_from: str, rcpt_tos: Sequence[str],
                keys: FakeKeys | None = None, now: dt.datetime = NOW,
                plugins: Sequence[PolicyRule] = ()) -> Verdict:
    settings = config if isinstance(config, Settings) else load_settings(config)
    facts = facts_for(settings, raw, mail_from, rcpt_tos, keys, now)
    return decide(facts, settings.policy, now=now, portal_enabled=settings.portal.enabled,
                  plugins=plugins)
