"""The ``securemail`` command. Each command group lives in its own module."""

from __future__ import annotations

from securemail.cli.base import main

__all__ = ["main"]
