"""The signature document and Ed25519 public key files, read without ``cryptography``.

A package's ``signature.json`` is ``{"algorithm": "ed25519", "key_id", "signature"}``; a trusted
key is a PEM SubjectPublicKeyInfo file. Both the checks in ``signing`` (through ``cryptography``)
and the one the agent makes through OpenSSL (``openssl_ed25519``) read them here, so that they
refuse the same inputs with the same words.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from model_packager.errors import SignatureError

ALGORITHM = "ed25519"

#: DER of an Ed25519 SubjectPublicKeyInfo up to its 32-byte raw key (RFC 8410).
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def parse_signature(signature_bytes: bytes | None) -> tuple[str, bytes]:
    """The key id a signature document names and the raw signature; ``SignatureError`` for an
    unsigned package, a malformed document or another algorithm."""
    if signature_bytes is None:
        raise SignatureError("package is not signed")
    try:
        doc = json.loads(signature_bytes)
        algorithm, kid = doc["algorithm"], doc["key_id"]
        sig = base64.b64decode(doc["signature"], validate=True)
        if not isinstance(kid, str) or not isinstance(algorithm, str):
            raise TypeError("algorithm and key_id must be strings")
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"signature file is malformed: {exc}") from exc
    if algorithm != ALGORITHM:
        raise SignatureError(f"unsupported signature algorithm {algorithm!r}")
    return kid, sig


def raw_public_key(pem: str | bytes) -> bytes | None:
    """The 32-byte raw key of an Ed25519 public key PEM; None when it is not one."""
    text = pem.decode(errors="replace") if isinstance(pem, bytes) else pem
    body = "".join(line for line in text.strip().splitlines() if not line.startswith("-----"))
    try:
        der = base64.b64decode(body, validate=True)
    except ValueError:
        return None
    if len(der) != len(ED25519_SPKI_PREFIX) + 32 or not der.startswith(ED25519_SPKI_PREFIX):
        return None
    return der[len(ED25519_SPKI_PREFIX) :]


def raw_key_id(raw: bytes) -> str:
    """``signing.key_id`` of a raw public key: the first 16 hex digits of its sha256."""
    return hashlib.sha256(raw).hexdigest()[:16]


def read_raw_keys(paths: Iterable[Path]) -> dict[str, bytes]:
    """Key id -> raw key of each trusted key file (a PEM file, or a folder whose ``*.pub`` and
    ``*.pem`` files are read, as ``signing.TrustStore.from_paths``). A file that cannot be read
    or is not an Ed25519 public key raises ``SignatureError`` naming it."""
    keys: dict[str, bytes] = {}
    for p in map(Path, paths):
        files = sorted([*p.glob("*.pub"), *p.glob("*.pem")]) if p.is_dir() else [p]
        for f in files:
            try:
                raw = raw_public_key(f.read_bytes())
            except OSError as exc:
                raise SignatureError(f"trusted keys cannot be read: {exc}") from exc
            if raw is None:
                raise SignatureError(
                    f"trusted keys cannot be read: {f}: not an Ed25519 public key (PEM)"
                )
            keys[raw_key_id(raw)] = raw
    return keys
