"""securemail: a HIPAA-minded secure email relay for therapy and medical practices.

>>> import securemail
>>> relay = securemail.load("securemail.toml")                 # doctest: +SKIP
>>> verdict = relay.check(raw_bytes)                            # doctest: +SKIP
>>> verdict.blocked, [d.action for d in verdict.decisions]      # doctest: +SKIP
"""

from securemail.errors import (
    Blocked,
    ConfigError,
    InputError,
    MalformedMessage,
    PermanentFailure,
    RecipientsDeferred,
    RenderError,
    SecuremailError,
    StoreError,
    TemporaryFailure,
    UpstreamRefused,
    UpstreamUnavailable,
)
from securemail.model import (
    Action,
    Decision,
    Encryption,
    Envelope,
    Facts,
    Mode,
    Outcome,
    RecipientFacts,
    RecipientOutcome,
    Role,
    Source,
    Status,
    Verdict,
)
from securemail.policy import RuleHit
from securemail.relay import Relay, RelayClosed, UsageError, load

__all__ = [
    "Action",
    "Blocked",
    "ConfigError",
    "Decision",
    "Encryption",
    "Envelope",
    "Facts",
    "InputError",
    "MalformedMessage",
    "Mode",
    "Outcome",
    "PermanentFailure",
    "RecipientFacts",
    "RecipientOutcome",
    "RecipientsDeferred",
    "Relay",
    "RelayClosed",
    "RenderError",
    "Role",
    "RuleHit",
    "SecuremailError",
    "Source",
    "Status",
    "StoreError",
    "TemporaryFailure",
    "UpstreamRefused",
    "UpstreamUnavailable",
    "UsageError",
    "Verdict",
    "load",
]

__version__ = "0.1.0"
