"""Ed25519 keys and manifest signatures.

Key files are PEM (PKCS#8 private, SubjectPublicKeyInfo public) so standard tools read them. A key
is named by its *key id*: the first 16 hex digits of the sha256 of its raw 32-byte public key, which
lets a signature say which trusted key to check without shipping the key itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from model_packager.errors import SignatureError
from model_packager.signature_doc import ALGORITHM, parse_signature


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(private_path: Path, public_path: Path) -> str:
    """Write a new key pair (private file mode 0600); returns the key id. Refuses to overwrite."""
    for p in (private_path, public_path):
        if p.exists():
            raise FileExistsError(f"{p} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(priv)
    public_path.write_bytes(pub)
    return key_id(key.public_key())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        raise SignatureError(f"cannot read private key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(data: bytes | str | Path) -> Ed25519PublicKey:
    """Load a public key from PEM bytes/text or a PEM file path.

    Errors about a file name it: a trust folder holds many keys, and "not Ed25519" alone does
    not say which one to fix.
    """
    where = ""
    if isinstance(data, Path):
        where = f"{data}: "
        try:
            data = data.read_bytes()
        except OSError as exc:
            raise SignatureError(f"cannot read public key: {exc}") from exc
    if isinstance(data, str):
        data = data.encode()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{where}not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{where}public key is not Ed25519")
    return key


def public_key_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@dataclass(frozen=True)
class TrustStore:
    """The public keys an agent (or the control plane) accepts package signatures from."""

    keys: dict[str, Ed25519PublicKey]

    @classmethod
    def from_keys(cls, keys: Iterable[Ed25519PublicKey]) -> TrustStore:
        return cls({key_id(k): k for k in keys})

    @classmethod
    def from_paths(cls, paths: Iterable[Path]) -> TrustStore:
        """Each path is a PEM file, or a folder whose ``*.pub`` / ``*.pem`` files are read."""
        keys: list[Ed25519PublicKey] = []
        for p in paths:
            p = Path(p)
            files = sorted([*p.glob("*.pub"), *p.glob("*.pem")]) if p.is_dir() else [p]
            keys.extend(load_public_key(f) for f in files)
        return cls.from_keys(keys)


def sign_manifest(manifest_bytes: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """The signature file's bytes for exactly these manifest bytes."""
    sig = private_key.sign(manifest_bytes)
    doc = {
        "algorithm": ALGORITHM,
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(sig).decode(),
    }
    return (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode()


def verify_manifest(manifest_bytes: bytes, signature_bytes: bytes | None, trust: TrustStore) -> str:
    """Check the signature against the trusted keys; returns the signing key id."""
    kid, sig = parse_signature(signature_bytes)
    key = trust.keys.get(kid)
    if key is None:
        raise SignatureError(f"package is signed by key {kid}, which is not trusted")
    try:
        key.verify(sig, manifest_bytes)
    except InvalidSignature:
        raise SignatureError(f"signature by key {kid} does not match the manifest") from None
    return str(kid)
