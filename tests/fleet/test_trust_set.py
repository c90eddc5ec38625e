"""The device's trust set without a broker: decoding, acceptance rules, persistence, expiry.

The end-to-end path (control plane -> Mosquitto -> running agent) is test_key_rotation.py; this
file pins the rules an agent applies to each set it is offered, with the real signing code.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from edge_agent.install.trust import DeviceTrust, pem_key_id
from model_packager.signing import (
    TrustStore,
    generate_keypair,
    key_id,
    load_private_key,
    sign_manifest,
    verify_manifest,
)
from protos.fleet_trust import (
    TrustedKey,
    TrustSet,
    decode_signed,
    encode_signed,
    encode_trust_set,
    signature_key_id,
)


def _verify(data: bytes, signature: bytes, files: Sequence[Path]) -> str:
    return verify_manifest(data, signature, TrustStore.from_paths(files))


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("a", "b", "stranger"):
        generate_keypair(tmp_path / f"{name}.key", tmp_path / f"{name}.pub")
        out[name] = tmp_path / f"{name}.key"
    return out


def _entry(private: Path, not_after: int = 0) -> TrustedKey:
    pub = private.with_suffix(".pub").read_text()
    return TrustedKey(key_id(load_private_key(private).public_key()), pub, not_after)


def _signed(version: int, entries: Sequence[TrustedKey], signers: Sequence[Path]) -> bytes:
    body = encode_trust_set(TrustSet(version=version, keys=tuple(entries)))
    return encode_signed(body, [sign_manifest(body, load_private_key(s)) for s in signers])


def test_pem_key_id_is_the_signing_key_id(keys: dict[str, Path]) -> None:
    for private in keys.values():
        expected = key_id(load_private_key(private).public_key())
        assert pem_key_id(private.with_suffix(".pub").read_text()) == expected
    assert pem_key_id("-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----") is None


def test_offer_accepts_newer_sets_signed_by_a_trusted_key(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    a, b = keys["a"], keys["b"]
    trust = DeviceTrust([a.with_suffix(".pub")], tmp_path / "data")
    grace_end = int(time.time()) + 3600
    payload = _signed(2, [_entry(a, grace_end), _entry(b)], [a, b])
    signed = decode_signed(payload)
    assert [signature_key_id(s) for s in signed.signatures] == [_entry(a).key_id, _entry(b).key_id]

    offer = trust.offer(signed, _verify)
    assert (offer.outcome, offer.version, offer.signed_by) == ("accepted", 2, _entry(a).key_id)
    assert trust.offer(signed, _verify).outcome == "repeat"  # a retained repeat
    # Persisted: a restarted agent holds version 2 and trusts b's key from the set's folder.
    again = DeviceTrust([a.with_suffix(".pub")], tmp_path / "data")
    assert again.version == 2
    ids = {pem_key_id(f.read_bytes()) for f in again.key_files()}
    assert ids == {_entry(a).key_id, _entry(b).key_id}

    # After a's grace, a's packages are refused and a no longer vouches for a set.
    later = grace_end + 1
    assert {pem_key_id(f.read_bytes()) for f in again.key_files(later)} == {_entry(b).key_id}
    sig_a = sign_manifest(b"manifest", load_private_key(a))
    assert "past its grace period" in (again.refusal(sig_a, later) or "")
    assert again.refusal(sign_manifest(b"manifest", load_private_key(b)), later) is None


def test_offer_refuses_strangers_and_sets_that_would_lock_the_device_out(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    a, stranger = keys["a"], keys["stranger"]
    trust = DeviceTrust([a.with_suffix(".pub")], tmp_path / "data")
    forged = decode_signed(_signed(5, [_entry(stranger)], [stranger]))
    offer = trust.offer(forged, _verify)
    assert offer.outcome == "refused" and "none of which this device trusts" in offer.reason
    # A signature document naming a's key id over bytes a never signed is caught by the check.
    body = encode_trust_set(TrustSet(version=6, keys=(_entry(stranger),)))
    lying = sign_manifest(body, load_private_key(stranger)).replace(
        _entry(stranger).key_id.encode(), _entry(a).key_id.encode()
    )
    offer = trust.offer(decode_signed(encode_signed(body, [lying])), _verify)
    assert offer.outcome == "refused" and "signature" in offer.reason
    expired = decode_signed(_signed(7, [_entry(a, 1)], [a]))
    assert trust.offer(expired, _verify).outcome == "refused"
    assert trust.version == 0 and not (tmp_path / "data" / "trust" / "trust.json").exists()
    with pytest.raises(ValueError, match="names no key"):
        decode_signed(encode_signed(encode_trust_set(TrustSet(version=1, keys=())), []))
    with pytest.raises(ValueError, match="not a"):
        decode_signed(b"\xff\xff\xff")
