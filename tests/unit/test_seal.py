"""AES-256-GCM sealing: round trip, and any change to blob, key or binding fails."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemail.crypto.seal import (
    KEY_BYTES,
    SealError,
    associated_data,
    decode_key,
    encode_key,
    new_key,
    open_sealed,
    seal,
)

AAD = associated_data("abc123", "<m1@riverside.example>", "jane@mail.example")


@given(st.binary(max_size=4096))
def test_round_trip(plaintext: bytes) -> None:
    key = new_key()
    assert open_sealed(seal(plaintext, key, aad=AAD), key, aad=AAD) == plaintext


@given(st.binary(min_size=1, max_size=256), st.data())
def test_any_flipped_bit_is_refused(plaintext: bytes, data: st.DataObject) -> None:
    key = new_key()
    blob = bytearray(seal(plaintext, key, aad=AAD))
    i = data.draw(st.integers(0, len(blob) - 1))
    blob[i] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(SealError):
        open_sealed(bytes(blob), key, aad=AAD)


@pytest.mark.parametrize("aad", [
    associated_data("abc124", "<m1@riverside.example>", "jane@mail.example"),
    associated_data("abc123", "<m2@riverside.example>", "jane@mail.example"),
    associated_data("abc123", "<m1@riverside.example>", "dad@mail.example"),
])
def test_blob_is_bound_to_id_message_and_recipient(aad: bytes) -> None:
    key = new_key()
    with pytest.raises(SealError):
        open_sealed(seal(b"note", key, aad=AAD), key, aad=aad)


def test_wrong_key_and_truncated_blob_are_refused() -> None:
    key = new_key()
    blob = seal(b"note", key, aad=AAD)
    with pytest.raises(SealError):
        open_sealed(blob, new_key(), aad=AAD)
    with pytest.raises(SealError):
        open_sealed(blob[:20], key, aad=AAD)
    assert str(SealError()) == "sealed message cannot be opened"  # says nothing about why


def test_every_seal_uses_a_fresh_nonce() -> None:
    key = new_key()
    nonces = {seal(b"same", key, aad=AAD)[1:13] for _ in range(200)}
    assert len(nonces) == 200


def test_key_text_round_trip_and_shape() -> None:
    key = new_key()
    text = encode_key(key)
    assert len(key) == KEY_BYTES and len(text) == 43 and "=" not in text
    assert decode_key(text) == key
    for bad in ("", "short", text[:-1], text + "AA", "!" * 43):
        with pytest.raises(SealError):
            decode_key(bad)
