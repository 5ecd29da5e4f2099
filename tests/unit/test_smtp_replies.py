"""Enhanced status codes on replies that lack them (RFC 2034 / RFC 3463)."""

from __future__ import annotations

import pytest

from securemail.smtp_replies import with_enhanced_code


@pytest.mark.parametrize(("reply", "expected"), [
    ("503 Error: need MAIL command", "503 5.5.1 Error: need MAIL command"),
    ("530 Must issue a STARTTLS command first", "530 5.7.0 Must issue a STARTTLS command first"),
    ("221 Bye", "221 2.0.0 Bye"),
    ("250-SIZE 1000", "250-2.0.0 SIZE 1000"),
    ("550 5.7.1 Blocked by policy", "550 5.7.1 Blocked by policy"),  # has one: untouched
    ("451 4.3.0 Temporary failure", "451 4.3.0 Temporary failure"),
    ("220 relay.example ESMTP", "220 relay.example ESMTP"),  # the greeting: never
    ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
    ("334 VXNlcm5hbWU6", "334 VXNlcm5hbWU6"),
])
def test_the_closest_code_is_added_only_where_one_is_missing(reply: str, expected: str) -> None:
    assert with_enhanced_code(reply) == expected
