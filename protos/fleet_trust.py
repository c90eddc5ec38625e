"""A device's trust set as plain dataclasses, and its ``fleet_pb2.SignedTrustSet`` bytes.

After a key rotation the control plane publishes the set of signing keys (retained on
``<root>/<D>/trust``) and the agent decodes it. Both sides import this module, so what a field
means (``not_after`` 0 = no end, the signatures cover the encoded ``TrustSet`` bytes) cannot drift;
tests/fleet/test_key_rotation.py round-trips cloud encode -> device decode. The signatures are
made and checked with ``model_packager.signing`` (the format of a package's signature file):
this module only carries them, so the agent can decode a set without loading ``cryptography``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from protos.gen import fleet_pb2

#: A retained set bigger than this is refused unread: a few keys are a few hundred bytes each.
MAX_TRUST_SET_BYTES = 64 * 1024


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    public_key_pem: str
    not_after: int = 0  # Unix seconds after which the key's packages are refused; 0: no end

    def expired(self, now: float) -> bool:
        return self.not_after > 0 and now >= self.not_after


@dataclass(frozen=True)
class TrustSet:
    version: int
    keys: tuple[TrustedKey, ...]
    issued_at: int = 0


@dataclass(frozen=True)
class SignedTrustSet:
    """The set as signed bytes plus its signature documents (and the set they decode to)."""

    trust_set_bytes: bytes
    signatures: tuple[bytes, ...]
    trust_set: TrustSet


def encode_trust_set(trust_set: TrustSet) -> bytes:
    msg = fleet_pb2.TrustSet(version=trust_set.version, issued_at=trust_set.issued_at)
    for k in trust_set.keys:
        msg.keys.add(key_id=k.key_id, public_key_pem=k.public_key_pem, not_after=k.not_after)
    return msg.SerializeToString(deterministic=True)


def encode_signed(trust_set_bytes: bytes, signatures: list[bytes]) -> bytes:
    return fleet_pb2.SignedTrustSet(
        trust_set=trust_set_bytes, signatures=signatures
    ).SerializeToString(deterministic=True)


def decode_signed(payload: bytes) -> SignedTrustSet:
    """The set and its signatures; ``ValueError`` for anything that is not a usable set."""
    if len(payload) > MAX_TRUST_SET_BYTES:
        raise ValueError(f"trust set of {len(payload)} bytes is over {MAX_TRUST_SET_BYTES}")
    outer = fleet_pb2.SignedTrustSet()
    inner = fleet_pb2.TrustSet()
    try:
        outer.ParseFromString(payload)
        inner.ParseFromString(outer.trust_set)
    except DecodeError as exc:
        raise ValueError(f"not a {outer.DESCRIPTOR.full_name}: {exc}") from exc
    keys = tuple(TrustedKey(k.key_id, k.public_key_pem, k.not_after) for k in inner.keys)
    if not keys:
        raise ValueError("trust set names no key")
    if any(not k.key_id or not k.public_key_pem for k in keys):
        raise ValueError("trust set has a key without an id or a PEM")
    return SignedTrustSet(
        outer.trust_set, tuple(outer.signatures), TrustSet(inner.version, keys, inner.issued_at)
    )


def signature_key_id(signature: bytes) -> str | None:
    """The ``key_id`` a signature document names (unchecked), or None when it names none."""
    try:
        kid = json.loads(signature).get("key_id")
    except (ValueError, AttributeError):
        return None
    return kid if isinstance(kid, str) else None
