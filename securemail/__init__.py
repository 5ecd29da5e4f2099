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
    PluginError,
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
    TLSInfo,
    Verdict,
)
from securemail.policy import RuleHit
from securemail.relay import Relay, RelayClosed, UsageError, load
from securemail.transport import DeliveryResult, SentMessage, Transport

__all__ = [
    "Action",
    "Blocked",
    "ConfigError",
    "Decision",
    "DeliveryResult",
    "Encryption",
    "Envelope",
    "Facts",
    "InputError",
    "MalformedMessage",
    "Mode",
    "Outcome",
    "PermanentFailure",
    "PluginError",
    "RecipientFacts",
    "RecipientOutcome",
    "RecipientsDeferred",
    "Relay",
    "RelayClosed",
    "RenderError",
    "Role",
    "RuleHit",
    "SecuremailError",
    "SentMessage",
    "Source",
    "Status",
    "StoreError",
    "TLSInfo",
    "TemporaryFailure",
    "Transport",
    "UpstreamRefused",
    "UpstreamUnavailable",
    "UsageError",
    "Verdict",
    "load",
]

__version__ = "0.1.0"
