"""Cryptography for securemail: OpenPGP, S/MIME and portal sealing (AES-256-GCM)."""

from __future__ import annotations

__all__ = ["KeyProblem"]


class KeyProblem(ValueError):
    """A key or certificate we refuse; ``str()`` is one line a person can act on."""
