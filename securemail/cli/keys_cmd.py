"""``securemail keys import FILE...`` / ``keys list [--json]`` / ``keys remove ADDR-or-FPR``.

Each import and removal is also written to the audit log (fingerprints, key
kinds and addresses only), so compliance can see when a recipient's key came in
and which key went.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from securemail.cli.base import EXIT_BAD_INPUT, EXIT_PROBLEM, config_option, handle_errors

if TYPE_CHECKING:
    from securemail.audit.log import AdminEvent
    from securemail.config import Settings
    from securemail.keys import KeyRemoval, Keyring

_T = TypeVar("_T")

__all__ = ["commands", "keys_group"]


@click.group("keys")
def keys_group() -> None:
    """Recipients' OpenPGP public keys and S/MIME certificates."""


def _open(config_path: str) -> tuple[Settings, Keyring]:
    from securemail.config import load_settings
    from securemail.keys import Keyring
    from securemail.store.sqlite import open_database

    settings = load_settings(config_path)
    return settings, Keyring(open_database(settings.storage.sqlite_path))


def _change_and_record(config_path: str, now: dt.datetime,
                       change: Callable[[Keyring], tuple[_T, list[AdminEvent]]]) -> _T:
    """Run ``change`` on the keyring and commit it with its audit events, together."""
    from securemail.audit import AuditLog
    from securemail.config import load_settings
    from securemail.keys import Keyring

    log = AuditLog.open(load_settings(config_path))  # a wrong signing key stops here
    try:
        return log.change_and_record(lambda conn: change(Keyring(conn)), now=now)
    finally:
        log.close(now)


def _full(file: str) -> str:
    """A file as the audit records name it: its full path, unambiguous years later."""
    return str(Path(file).resolve())


@keys_group.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@config_option
@handle_errors
def keys_import(files: tuple[str, ...], config_path: str) -> None:
    """Import armored OpenPGP public keys and PEM/DER S/MIME certificates.

    Each FILE is all or nothing; a refused file is named with its reason and
    the others are still imported (exit 2 if any file was refused).
    """
    from securemail.errors import InputError
    from securemail.keys import KeyWithdrawn

    now = dt.datetime.now(dt.UTC)

    def change(keyring: Keyring) -> tuple[tuple[list[str], list[str]], list[AdminEvent]]:
        done: list[str] = []
        refused: list[str] = []
        events: list[AdminEvent] = []
        for file in files:
            try:
                report = keyring.import_report(file, now)
            except KeyWithdrawn as exc:  # the owner revoked or expired it: the stored copy went
                # A revocation certificate asks for exactly this: not a refusal.
                (done if exc.requested else refused).append(str(exc))
                reason = "revocation-certificate" if exc.requested else "withdrawn-by-reimport"
                kinds = exc.kinds if len(exc.kinds) == len(exc.removed) else ()
                events += [("key-remove", {"fingerprint": fpr, "count": 1, "file": _full(file),
                                           **({"key_kind": kinds[i]} if kinds else {}),
                                           "reason_code": reason,
                                           "actor": "cli"}) for i, fpr in enumerate(exc.removed)]
                continue
            except InputError as exc:
                refused.append(str(exc))
                continue
            for key in report.imported:
                expires = f"expires {key.expires:%Y-%m-%d}" if key.expires else "no expiry"
                if key.usable_from is not None and key.usable_from > now:
                    # Stored, but not offered before then: say so now, not at send time.
                    expires += f", not valid until {key.usable_from:%Y-%m-%d %H:%M} UTC"
                verb = "updated" if key.replaced else "imported"
                done.append(f"{verb} {key.kind} {key.fingerprint} ({key.algorithm}, {expires}) "
                            f"for {', '.join(key.addresses)}")
                events.append(("key-import", {
                    "fingerprint": key.fingerprint, "key_kind": key.kind,
                    "address": ",".join(key.addresses)[:500], "file": _full(file), "actor": "cli",
                    "expires": key.expires.date().isoformat() if key.expires else None}))
            done += [f"{file}: {line}" for line in report.skipped]
        done += _several_keys_notes(keyring, [e[1] for e in events if e[0] == "key-import"],
                                    now)
        return (done, refused), events

    # Reported once the keys and their audit records are committed together.
    done, refused = _change_and_record(config_path, now, change)
    for line in done:
        click.echo(line)
    for problem in refused:
        click.echo(f"securemail: {problem}", err=True)
    if refused:
        raise SystemExit(EXIT_BAD_INPUT)


def _several_keys_notes(keyring: Keyring, imported: list[Mapping[str, Any]],
                        now: dt.datetime) -> list[str]:
    """Say when an address now has more than one usable key of a kind: every
    copy is encrypted to each of them, so a lost or replaced key keeps
    receiving mail until it is removed."""
    notes: list[str] = []
    stored = [i for i in keyring.list(now) if i.usable]
    for event in imported:
        kind, fpr = event["key_kind"], event["fingerprint"]
        for address in str(event["address"]).split(","):
            others = [i.fingerprint for i in stored if i.kind == kind
                      and i.fingerprint != fpr and address in i.addresses]
            if others:
                notes.append(
                    f"note: {address} now has {len(others) + 1} usable {kind} keys; each copy"
                    f" is encrypted to all of them. If {', '.join(others[:3])} is an old or"
                    " lost key, remove it: securemail keys remove FINGERPRINT")
    return notes


@keys_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@config_option
@handle_errors
def keys_list(as_json: bool, config_path: str) -> None:
    """List stored keys: fingerprint, addresses, algorithm, expiry, usable now (or why not)."""
    _, keyring = _open(config_path)
    infos = keyring.list(dt.datetime.now(dt.UTC))
    if as_json:
        click.echo(json.dumps([i.as_json() for i in infos], indent=2))
        return
    if not infos:
        click.echo("no keys stored")
    for i in infos:
        expires = f"{i.expires:%Y-%m-%d}" if i.expires else "never"
        state = "usable" if i.usable else f"NOT usable ({i.reason or 'see its dates'})"
        click.echo(f"{i.kind:5} {i.fingerprint}  {i.algorithm}  expires {expires}  {state}  "
                   f"{', '.join(i.addresses)}")


@keys_group.command("remove")
@click.argument("target", metavar="ADDR-or-FINGERPRINT")
@config_option
@handle_errors
def keys_remove(target: str, config_path: str) -> None:
    """Remove a key by fingerprint, or an address from its keys (exit 1 if none matched).

    By address, a key that has other addresses too is kept for those and only
    loses this one; a key left with no address is deleted.
    """
    now = dt.datetime.now(dt.UTC)

    def change(keyring: Keyring) -> tuple[list[KeyRemoval], list[AdminEvent]]:
        removals = keyring.remove_keys(target)
        return removals, [_removal_event(r) for r in removals]

    removals = _change_and_record(config_path, now, change)
    if not removals:
        click.echo(f"securemail: no stored key matches {target}", err=True)
        raise SystemExit(EXIT_PROBLEM)
    for r in removals:
        if r.deleted:
            click.echo(f"removed key {r.fingerprint} ({r.kind}) for "
                       f"{', '.join(r.addresses) or 'no address'}")
        else:
            click.echo(f"detached {r.detached} from key {r.fingerprint} ({r.kind}), which is "
                       f"still used for {', '.join(r.remaining)}")
    deleted = sum(r.deleted for r in removals)
    kept = len(removals) - deleted
    summary = f"removed {deleted} key(s)" if deleted else "removed no key"
    click.echo(summary + (f"; {kept} key(s) kept for their other addresses" if kept else ""))


def _removal_event(removal: KeyRemoval) -> AdminEvent:
    """``key-remove`` for one key: deleted (``removed``) or only detached from an address."""
    if removal.deleted:
        return ("key-remove", {"fingerprint": removal.fingerprint, "key_kind": removal.kind,
                               "address": ",".join(removal.addresses)[:500], "count": 1,
                               "reason_code": "removed", "actor": "cli"})
    return ("key-remove", {"fingerprint": removal.fingerprint, "key_kind": removal.kind,
                           "address": removal.detached, "count": 0,
                           "reason_code": "address-detached", "actor": "cli"})


commands: list[click.Command] = [keys_group]
