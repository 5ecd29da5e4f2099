"""Shared fixtures: a practice config, a relay with a capturing upstream."""

from __future__ import annotations

import datetime as dt
import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings

# No per-example deadline anywhere (Hypothesis's default is 200 ms): on a
# shared 2-core CI runner one slow example (a key generated, a GC pause) is no
# failure. Speed is measured in bench/, and tests that assert it say so.
# Derandomized: every run tries the same examples, so a run's verdict is the
# code's, not the draw's; new examples come from the strategies' changes and
# from @example cases of what was found (SECUREMAIL_HYPOTHESIS_EXPLORE=1
# draws fresh ones, for a session spent looking).
settings.register_profile("securemail", deadline=None,
                          derandomize=not os.environ.get("SECUREMAIL_HYPOTHESIS_EXPLORE"))
settings.load_profile("securemail")

# Shared fixtures: the portal's HTTP rig (rig, clock, client), for tests/unit and
# tests/portal; an audit log with checkpoints and its export (audit, export).
pytest_plugins = ["tests.unit.portal_http", "tests.unit.test_audit_support"]

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)

BASE_CONFIG = """
[practice]
name = "Riverside Counseling"
domains = ["riverside.example"]
phone = "+1 555 0100"

[relay]
listen = "127.0.0.1:10025"

[upstream]
url = "smtp://127.0.0.1:10026"
tls = "none"

[policy]
mode = "{mode}"
unauthorised_recipients = "{unauthorised}"

[storage]
url = "sqlite:data/securemail.db"

[portal]
enabled = {portal}
base_url = "http://127.0.0.1:8080"

[[directory.clients]]
id = "c-1001"
addresses = ["jane@mail.example"]
contacts = [{{ address = "guardian@mail.example", relation = "parent" }}]
names = ["Jane Roe"]

[[directory.clients]]
id = "c-1002"
addresses = ["sam@mail.example"]
consent_unencrypted = {{ granted = "2026-01-10", warning = "v1" }}

[[directory.clients]]
id = "c-1003"
addresses = ["kim@bücher.example"]
consent_unencrypted = {{ granted = "2026-01-10", warning = "v1", expires = "2026-03-01" }}

[[directory.partners]]
name = "Billing Partner"
domains = ["billing-partner.example"]
"""


ConfigFactory = Callable[..., Path]


@pytest.fixture
def make_config(tmp_path: Path) -> ConfigFactory:
    """Write a practice config; keyword args tweak the common switches."""

    def make(mode: str = "enforce", unauthorised: str = "block", portal: bool = True,
             extra: str = "") -> Path:
        text = BASE_CONFIG.format(mode=mode, unauthorised=unauthorised,
                                  portal="true" if portal else "false")
        path = tmp_path / "securemail.toml"
        path.write_text(text + textwrap.dedent(extra), encoding="utf-8")
        return path

    return make


@pytest.fixture
def config_path(make_config: ConfigFactory) -> Path:
    return make_config()


@pytest.fixture
def now() -> dt.datetime:
    return NOW
