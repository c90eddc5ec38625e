"""Check a manifest's signature without loading ``cryptography`` into the calling process.

Loading ``cryptography`` costs a process about 7 MB of resident memory that it never gives back
(extension modules are not unloaded). A device agent checks a signature once per install and
must stay within its memory budget for days after. ``verify_without_cryptography`` is how it
checks: through the OpenSSL library the process has already mapped (``openssl_ed25519``: no
memory, about 0.1 ms), and where that library cannot check Ed25519, in a short-lived child
process (``verify_in_child``) that reads the trusted key files, checks the signature with
``signing.verify_manifest`` and exits, taking that memory with it, for the price of one
interpreter start (about 0.05 CPU seconds per install, ``scripts/bench-install`` reports it).
Both refuse the same inputs with the same reasons as ``signing.verify_manifest``.

Protocol: the trusted key paths are arguments; stdin carries
``{"manifest": base64, "signature": base64 | null}``; stdout answers ``{"key_id": ...}`` or
``{"error": ..., "kind": "signature" | "key"}``; the exit status is 0 only for a good signature.

    python -m model_packager.signature_check KEY_OR_FOLDER... < request.json
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from model_packager import openssl_ed25519
from model_packager.errors import SignatureError
from model_packager.signature_doc import parse_signature, read_raw_keys

#: A child that does not answer within this is killed and the package refused.
TIMEOUT_S = 60.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def _child_path() -> str:
    """The child's ``PYTHONPATH``: this package's root and the folder holding ``cryptography``
    (found without importing it). The child starts with ``-S``: no ``site`` processing, no
    ``.pth`` files, which halves its start-up CPU."""
    spec = importlib.util.find_spec("cryptography")
    roots = [_PACKAGE_ROOT]
    if spec is not None and spec.origin:
        roots.append(str(Path(spec.origin).parent.parent))
    return os.pathsep.join(filter(None, [*roots, os.environ.get("PYTHONPATH")]))


def verify_without_cryptography(
    manifest_bytes: bytes, signature_bytes: bytes | None, trusted_keys: Sequence[Path]
) -> str:
    """The signing key id: checked through OpenSSL in this process when it can check Ed25519
    here, else in a child process. ``SignatureError`` otherwise."""
    binding = openssl_ed25519.load()
    if binding is None:
        return verify_in_child(manifest_bytes, signature_bytes, trusted_keys)
    return verify_with_openssl(binding, manifest_bytes, signature_bytes, trusted_keys)


def verify_with_openssl(
    binding: openssl_ed25519.OpenSslEd25519,
    manifest_bytes: bytes,
    signature_bytes: bytes | None,
    trusted_keys: Sequence[Path],
) -> str:
    """``signing.verify_manifest`` through ``binding``, the trusted keys read from their files
    (in the child's order: unreadable keys first, then the signature)."""
    keys = read_raw_keys(trusted_keys)
    kid, sig = parse_signature(signature_bytes)
    raw = keys.get(kid)
    if raw is None:
        raise SignatureError(f"package is signed by key {kid}, which is not trusted")
    if not binding.verify(raw, sig, manifest_bytes):
        raise SignatureError(f"signature by key {kid} does not match the manifest")
    return kid


def verify_in_child(
    manifest_bytes: bytes, signature_bytes: bytes | None, trusted_keys: Sequence[Path]
) -> str:
    """The signing key id, checked by a child process; ``SignatureError`` otherwise."""
    request = {
        "manifest": base64.b64encode(manifest_bytes).decode(),
        "signature": (
            base64.b64encode(signature_bytes).decode() if signature_bytes is not None else None
        ),
    }
    import subprocess  # here: the child itself never needs it

    try:
        done = subprocess.run(
            [
                sys.executable,
                "-S",
                "-m",
                "model_packager.signature_check",
                *map(str, trusted_keys),
            ],
            input=json.dumps(request).encode(),
            capture_output=True,
            timeout=TIMEOUT_S,
            env={**os.environ, "PYTHONPATH": _child_path()},
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SignatureError(f"the signature check did not finish in {TIMEOUT_S:.0f}s") from None
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise SignatureError(
            f"the signature check failed (exit {done.returncode}): {' '.join(tail)}"
        ) from None
    if done.returncode != 0 or "key_id" not in answer:
        raise SignatureError(str(answer.get("error", "the signature check failed")))
    return str(answer["key_id"])


def main(argv: Sequence[str]) -> int:
    from model_packager.signing import TrustStore, verify_manifest

    try:
        trust = TrustStore.from_paths(Path(p) for p in argv)
    except Exception as exc:  # any unreadable key: say which, never a traceback
        print(json.dumps({"error": f"trusted keys cannot be read: {exc}", "kind": "key"}))
        return 1
    try:
        request = json.loads(sys.stdin.buffer.read())
        manifest = base64.b64decode(request["manifest"], validate=True)
        signature = request["signature"]
        signature_bytes = (
            base64.b64decode(signature, validate=True) if signature is not None else None
        )
    except (ValueError, KeyError, TypeError) as exc:
        print(json.dumps({"error": f"bad request: {exc}", "kind": "signature"}))
        return 2
    try:
        kid = verify_manifest(manifest, signature_bytes, trust)
    except SignatureError as exc:
        print(json.dumps({"error": str(exc), "kind": "signature"}))
        return 1
    print(json.dumps({"key_id": kid}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
