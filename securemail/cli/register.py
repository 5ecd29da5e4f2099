"""Imports every command module and attaches its commands to the root group."""

from __future__ import annotations

import importlib

import click

# Each module exposes `commands`: a list of click commands/groups.
MODULES = [
    "securemail.cli.check",
    "securemail.cli.config_cmd",
    "securemail.cli.directory_cmd",
    "securemail.cli.keys_cmd",
    "securemail.cli.dkim_cmd",
    "securemail.cli.audit_cmd",
    "securemail.cli.portal_cmd",
    "securemail.cli.serve_cmd",
    "securemail.cli.users_cmd",
]


def add_all(root: click.Group) -> None:
    for name in MODULES:
        module = importlib.import_module(name)
        for command in module.commands:
            root.add_command(command)
