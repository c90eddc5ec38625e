"""The keys this device trusts: its configured ``trusted_keys`` plus the last trust set received.

After a key rotation the control plane publishes a signed trust set (``protos/fleet_trust.py``,
retained on ``<prefix>/trust``). ``DeviceTrust.offer`` accepts it only when it is newer than the
set held and one of its signatures is by a key trusted now (checked by the caller's ``verify``,
the same check packages get, without ``cryptography`` by default); it then writes the keys and
the set atomically under ``<data_dir>/trust/`` (key files first, ``trust.json`` last: a crash
leaves the old set or the new one) and from then on trusts the new keys.

A key the set marks retired is refused once its ``not_after`` has passed, whether it came from
the set or from the configured files (a device registered before the rotation has the old key
only there). Key ids of configured files are read from the PEM itself (the raw key is the last
32 bytes of an Ed25519 SubjectPublicKeyInfo), so the agent needs no ``cryptography`` for this.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_agent.fsutil import atomic_write_bytes, atomic_write_json, read_json
from model_packager.errors import SignatureError
from model_packager.signature_doc import raw_key_id, raw_public_key
from protos.fleet_trust import SignedTrustSet, TrustedKey, signature_key_id

log = logging.getLogger(__name__)

#: ``verify(data, signature, key_files) -> key id``, raising ``SignatureError``.
Verify = Callable[[bytes, bytes, Sequence[Path]], str]


def pem_key_id(pem: str | bytes) -> str | None:
    """``model_packager.signing.key_id`` of an Ed25519 public key PEM; None if it is not one."""
    raw = raw_public_key(pem)
    return raw_key_id(raw) if raw is not None else None


@dataclass(frozen=True)
class Offer:
    """What became of a received trust set: ``accepted``, ``repeat`` or ``refused``."""

    outcome: str
    reason: str = ""
    version: int = 0
    signed_by: str = ""


class DeviceTrust:
    def __init__(self, configured: Sequence[Path], data_dir: Path) -> None:
        self.configured = [Path(p) for p in configured]
        self.folder = Path(data_dir) / "trust"
        self._state_path = self.folder / "trust.json"
        doc = read_json(self._state_path) or {}
        self.version = int(doc.get("version", 0))
        self.keys = {
            k["key_id"]: TrustedKey(k["key_id"], "", int(k.get("not_after", 0)))
            for k in doc.get("keys", [])
        }

    def _configured_files(self) -> list[Path]:
        files: list[Path] = []
        for p in self.configured:
            files.extend(sorted([*p.glob("*.pub"), *p.glob("*.pem")]) if p.is_dir() else [p])
        return files

    def key_files(self, now: float | None = None) -> list[Path]:
        """The public key files trusted now: configured ones and the set's, minus expired keys."""
        now = time.time() if now is None else now
        out = []
        for f in self._configured_files():
            kid = pem_key_id(f.read_bytes()) if f.is_file() else None
            key = self.keys.get(kid) if kid else None
            if key is None or not key.expired(now):
                out.append(f)  # unreadable files are left to the verifier, which names them
        configured_ids = {pem_key_id(f.read_bytes()) for f in out if f.is_file()}
        for kid, key in sorted(self.keys.items()):
            if kid not in configured_ids and not key.expired(now):
                out.append(self.folder / "keys" / f"{kid}.pub")
        return out

    def refusal(self, signature_bytes: bytes | None, now: float | None = None) -> str | None:
        """Why a package with this signature is refused before any check: a retired key past
        its grace period. None otherwise (the signature is then checked as usual)."""
        kid = signature_key_id(signature_bytes) if signature_bytes else None
        key = self.keys.get(kid) if kid else None
        if key is None or not key.expired(time.time() if now is None else now):
            return None
        return f"package is signed by key {kid}, which was retired and is past its grace period"

    def offer(self, signed: SignedTrustSet, verify: Verify) -> Offer:
        """Accept a newer set signed by a key trusted now; persist it, then trust its keys."""
        ts = signed.trust_set
        if ts.version <= self.version:
            return Offer("repeat", version=ts.version)
        now = time.time()
        trusted_files = self.key_files(now)
        trusted_ids = {pem_key_id(f.read_bytes()) for f in trusted_files if f.is_file()}
        candidates = [s for s in signed.signatures if signature_key_id(s) in trusted_ids]
        if not candidates:
            named = sorted({signature_key_id(s) or "?" for s in signed.signatures})
            return Offer(
                "refused",
                f"trust set version {ts.version} is signed by {', '.join(named) or 'no key'}, "
                "none of which this device trusts",
                ts.version,
            )
        if all(k.expired(now) for k in ts.keys):
            return Offer("refused", "every key in the trust set is past its end", ts.version)
        for k in ts.keys:
            if pem_key_id(k.public_key_pem) != k.key_id:
                return Offer(
                    "refused", f"key {k.key_id} is not the Ed25519 key it names", ts.version
                )
        signer, errors = "", []
        for sig in candidates:
            try:
                signer = verify(signed.trust_set_bytes, sig, trusted_files)
                break
            except SignatureError as exc:
                errors.append(str(exc))
        if not signer:
            return Offer("refused", "; ".join(errors), ts.version)
        self._persist(ts.version, ts.keys)
        log.info("trust set version %d accepted (signed by %s)", ts.version, signer)
        return Offer("accepted", version=ts.version, signed_by=signer)

    def _persist(self, version: int, keys: Sequence[TrustedKey]) -> None:
        for k in keys:
            atomic_write_bytes(self.folder / "keys" / f"{k.key_id}.pub", k.public_key_pem.encode())
        atomic_write_json(
            self._state_path,
            {
                "version": version,
                "keys": [{"key_id": k.key_id, "not_after": k.not_after} for k in keys],
            },
        )
        self.version = version
        self.keys = {k.key_id: TrustedKey(k.key_id, "", k.not_after) for k in keys}
