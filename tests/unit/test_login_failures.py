"""The per-client login throttle of the submission listener."""

from __future__ import annotations


def test_login_failures_count_an_ipv6_subscriber_as_one_client() -> None:
    from securemail.smtp import LoginFailures

    fails = LoginFailures(limit=10, window=900, capacity=100)
    for i in range(10):  # ten addresses of one /64: one guesser
        fails.add(f"2001:db8:1:2::{i + 1:x}", now=0.0)
    assert fails.blocked("2001:db8:1:2::ffff", now=1.0)
    assert not fails.blocked("2001:db8:1:3::1", now=1.0)  # the next /64 is someone else
    for _ in range(10):
        fails.add("::ffff:192.0.2.7", now=0.0)  # IPv4-mapped is the IPv4 address
    assert fails.blocked("192.0.2.7", now=1.0)
    assert not fails.blocked("192.0.2.7", now=901.0)  # the window passes


def test_a_flood_of_new_clients_does_not_free_a_blocked_one() -> None:
    from securemail.smtp import LoginFailures

    fails = LoginFailures(limit=10, window=900, capacity=50)
    for _ in range(10):
        fails.add("192.0.2.7", now=0.0)
    for i in range(5000):
        fails.add(f"10.{i // 250}.{i % 250}.1", now=1.0)
    assert fails.blocked("192.0.2.7", now=2.0)
    assert len(fails._seen) <= 50  # still bounded
