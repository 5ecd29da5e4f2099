"""Enhanced status codes (RFC 2034, RFC 3463) on every SMTP reply that lacks one.

Our own replies carry them; aiosmtpd's built-in ones ("503 Error: nested MAIL
command", "530 Must issue a STARTTLS command first", "221 Bye") do not. With
ENHANCEDSTATUSCODES advertised, a client may rely on them, so the listener
adds the closest code to those replies. RFC 2034 leaves out the greeting, the
EHLO/HELO reply, and intermediate (3xx) replies; the caller skips EHLO/HELO.
"""

from __future__ import annotations

import re

__all__ = ["with_enhanced_code"]

# The closest RFC 3463 code for each basic reply aiosmtpd sends without one.
_ENHANCED = {
    "221": "2.0.0", "250": "2.0.0", "252": "2.5.0",
    "421": "4.3.0", "451": "4.3.0", "452": "4.3.1", "454": "4.7.0",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "530": "5.7.0", "535": "5.7.8", "550": "5.0.0", "552": "5.3.4", "553": "5.1.3",
    "554": "5.0.0", "555": "5.5.4",
}
_REPLY = re.compile(r"(?P<code>[245]\d\d)(?P<sep>[ -])(?P<text>.*)", re.DOTALL)
_HAS_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?: |$)")


def with_enhanced_code(reply: str) -> str:
    """``reply`` with an enhanced status code after the basic one, if it has none."""
    m = _REPLY.fullmatch(reply)
    if m is None or _HAS_ENHANCED.match(m["text"]):
        return reply
    enhanced = _ENHANCED.get(m["code"])
    if enhanced is None:  # 220 (the greeting, STARTTLS's go-ahead) and anything rare
        return reply
    return f"{m['code']}{m['sep']}{enhanced} {m['text']}".rstrip()
