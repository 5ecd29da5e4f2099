"""The writer's chaining loop and its signer: byte for byte what a verifier recomputes."""

from __future__ import annotations

import base64
import builtins
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from securemail.audit import AuditLog, store, verify_store
from securemail.audit.chain import (
    GENESIS_HASH,
    Signer,
    checkpoint_message,
    head_message,
    record_hash,
    sign,
    signature_valid,
)
from securemail.audit.log import Chainer
from securemail.audit.records import message_fields
from securemail.model import Action
from tests.unit.test_audit_support import T0, decision, envelope, make_settings, outcome

AT = "2026-03-02T09:00:00.000000Z"

_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
            | st.text(alphabet=st.characters(codec="utf-8"), max_size=30))
_values = _scalars | st.lists(st.text(alphabet=st.characters(codec="utf-8"),
                                      max_size=10), max_size=4)
# Field names include the chain's own ("seq", "at", ...) and "hash": the chain's
# values win and "hash" is never part of what is hashed, as in canonical().
_names = st.sampled_from(["hash", "seq", "at", "prev_hash", "v", "kind", "zeta", "Ä", "a b"]) \
    | st.text(max_size=12)


def _reference(fields: dict[str, Any], seq: int, prev: str) -> bytes:
    """docs/compliance.md's canonical encoding, with the standard library only."""
    record = {**fields, "at": AT, "prev_hash": prev, "seq": seq, "v": 1}
    record.pop("hash", None)
    return json.dumps(record, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def _without_pynacl(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_nacl(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("nacl"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nacl)


def _chainer(every: int = 10**9) -> Chainer:
    return Chainer(Ed25519PrivateKey.generate(), every, 10**9)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(_names, _values, max_size=10), min_size=1, max_size=5))
def test_chained_rows_are_the_reference_encoding_and_its_hash(bodies: list[dict[str, Any]]
                                                              ) -> None:
    items = [({**b, "kind": "opened"}, AT) for b in bodies]
    chainer = _chainer()
    head = store.Head(7, "ab" * 32, "", 7, AT)
    rows, new = chainer._chain(head, items)
    prev = head.hash
    for i, ((fields, _), row) in enumerate(zip(items, rows, strict=True)):
        expected = _reference(fields, 8 + i, prev)
        assert row == (8 + i, "opened", AT, prev, hashlib.sha256(expected).hexdigest(),
                       expected.decode("utf-8"))
        assert record_hash(json.loads(row[5])) == row[4]  # what the verifier recomputes
        prev = row[4]
    assert (new.seq, new.hash) == (7 + len(items), prev)
    assert signature_valid(chainer.key.public_key(), new.signature, head_message(new.seq, prev))


def test_a_value_orjson_refuses_is_encoded_by_the_reference_encoder() -> None:
    fields = {"kind": "opened", "count": 2**70}  # beyond 64 bits: orjson raises TypeError
    rows, _ = _chainer()._chain(store.Head(0, GENESIS_HASH, "", 0, AT), [(fields, AT)])
    expected = _reference(fields, 1, GENESIS_HASH)
    assert rows[0][5] == expected.decode() and rows[0][4] == hashlib.sha256(expected).hexdigest()


def test_checkpoints_fall_due_by_count_inside_a_batch() -> None:
    chainer = _chainer(every=3)
    rows, new = chainer._chain(store.Head(0, GENESIS_HASH, "", 0, AT),
                               [({"kind": "opened"}, AT)] * 7)
    assert [r[1] for r in rows] == ["opened"] * 3 + ["checkpoint"] + ["opened"] * 3 \
        + ["checkpoint"] + ["opened"]
    cp = json.loads(rows[3][5])
    assert (cp["covers_seq"], cp["covers_hash"], cp["reason"]) == (3, rows[2][4], "count")
    assert signature_valid(chainer.key.public_key(), cp["signature"],
                           checkpoint_message(3, rows[2][4]))
    assert (new.seq, new.last_checkpoint_seq) == (9, 8)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300))
def test_signer_gives_the_one_ed25519_signature(message: bytes) -> None:
    key = Ed25519PrivateKey.generate()
    assert Signer(key).sign(message) == sign(key, message)


def test_libsodium_signs_when_pynacl_is_installed() -> None:
    pytest.importorskip("nacl.bindings")
    assert Signer(Ed25519PrivateKey.generate()).uses_libsodium


def test_without_pynacl_cryptography_signs(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_pynacl(monkeypatch)
    key = Ed25519PrivateKey.generate()
    signer = Signer(key)
    assert not signer.uses_libsodium
    assert signer.sign(b"head") == sign(key, b"head")


def test_a_libsodium_that_disagrees_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    bindings = pytest.importorskip("nacl.bindings")
    monkeypatch.setattr(bindings, "crypto_sign", lambda message, secret: bytes(64) + message)
    key = Ed25519PrivateKey.generate()
    signer = Signer(key)
    assert not signer.uses_libsodium
    assert base64.b64decode(signer.sign(b"head")) == key.sign(b"head")


def test_a_store_written_with_each_signer_verifies(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    settings_ = make_settings(tmp_path, checkpoint_every=5)
    audit = AuditLog.open(settings_)
    audit.append_many([{"kind": "opened", "category": "portal", "portal_id": "p"}] * 12, now=T0)
    _without_pynacl(monkeypatch)
    other = AuditLog.open(settings_)  # the same key, signed by cryptography this time
    assert not other.chainer.signer.uses_libsodium
    other.append_many([{"kind": "opened", "category": "portal", "portal_id": "q"}] * 4, now=T0)
    other.close(T0)
    audit.record_event("opened", now=T0, portal_id="r")  # chains after the other writer
    report = verify_store(audit.conn, audit.public_key)
    assert report.ok, report.summary()
    assert report.last_seq == store.bounds(audit.conn)[1]
    audit.close(T0)


def test_a_message_body_is_chained_with_its_placeholders_filled() -> None:
    ds = [decision("jane@mail.example", Action.PORTAL, ("phi-unencrypted",))]
    (body,) = message_fields(envelope(ds), outcome(ds), config_digest="c" * 64, instance_id="i")
    assert [body[k] for k in ("at", "prev_hash", "seq", "v")] == [None] * 4
    rows, _ = _chainer()._chain(store.Head(0, GENESIS_HASH, "", 0, AT), [(body, AT)])
    expected = _reference(body, 1, GENESIS_HASH)
    assert rows[0][5] == expected.decode()
    stored = json.loads(rows[0][5])
    assert (stored["at"], stored["prev_hash"], stored["seq"], stored["v"]) == (
        AT, GENESIS_HASH, 1, 1)
