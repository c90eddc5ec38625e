"""Signature checks without ``cryptography``: through OpenSSL in process, or in a child process.

Both paths must give the key id of a good signature and refuse everything else with the reasons
``signing.verify_manifest`` gives (the agent reports them). ``verify_without_cryptography`` must
take the OpenSSL path where it can (no child started) and the child where it cannot.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from model_packager import openssl_ed25519, signature_check
from model_packager.archive import open_package
from model_packager.errors import SignatureError
from model_packager.signature_check import (
    verify_in_child,
    verify_with_openssl,
    verify_without_cryptography,
)
from model_packager.signature_doc import raw_public_key

Check = Callable[[bytes, bytes | None, Sequence[Path]], str]


def _openssl(manifest: bytes, signature: bytes | None, keys: Sequence[Path]) -> str:
    binding = openssl_ed25519.load()
    assert binding is not None, "this interpreter's libcrypto checks Ed25519"
    return verify_with_openssl(binding, manifest, signature, keys)


def _tampered_signature(signature: bytes) -> bytes:
    doc = json.loads(signature)
    raw = bytearray(base64.b64decode(doc["signature"]))
    raw[5] ^= 0x01
    doc["signature"] = base64.b64encode(bytes(raw)).decode()
    return json.dumps(doc).encode()


@pytest.mark.parametrize("check", [_openssl, verify_in_child], ids=["openssl", "child"])
def test_accepts_the_trusted_signature_and_refuses_the_rest(
    check: Check, onnx_pkg: Path, unsigned_pkg: Path, signer: Any, stranger: Any, tmp_path: Path
) -> None:
    reader = open_package(onnx_pkg)
    manifest, signature = reader.manifest_bytes, reader.signature_bytes
    assert signature is not None
    assert check(manifest, signature, [signer.public_path]) == signer.key_id
    # The folder form of trusted_keys (the stranger's key is in it too).
    assert check(manifest, signature, [signer.public_path.parent]) == signer.key_id
    with pytest.raises(SignatureError, match="which is not trusted"):
        check(manifest, signature, [stranger.public_path])
    with pytest.raises(SignatureError, match="does not match the manifest"):
        check(manifest + b" ", signature, [signer.public_path])
    with pytest.raises(SignatureError, match="does not match the manifest"):
        check(manifest, _tampered_signature(signature), [signer.public_path])
    with pytest.raises(SignatureError, match="package is not signed"):
        check(open_package(unsigned_pkg).manifest_bytes, None, [signer.public_path])
    with pytest.raises(SignatureError, match="signature file is malformed"):
        check(manifest, b"{not json", [signer.public_path])
    wrong_algorithm = json.loads(signature) | {"algorithm": "rsa"}
    with pytest.raises(SignatureError, match="unsupported signature algorithm"):
        check(manifest, json.dumps(wrong_algorithm).encode(), [signer.public_path])
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("not a key")
    with pytest.raises(SignatureError, match="trusted keys cannot be read"):
        check(manifest, signature, [bad_key])


def test_openssl_agrees_with_cryptography_on_random_keys_and_messages() -> None:
    binding = openssl_ed25519.load()
    assert binding is not None
    for i in range(20):
        key = Ed25519PrivateKey.generate()
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert raw_public_key(pem) == raw
        message = os.urandom(i * 97)
        sig = key.sign(message)
        assert binding.verify(raw, sig, message)
        assert not binding.verify(raw, sig, message + b"\0")
        assert not binding.verify(raw, sig[:-1] + bytes([sig[-1] ^ 0x80]), message)
        assert not binding.verify(raw, sig[:63], message)  # wrong length: refused, not read
        other = Ed25519PrivateKey.generate().public_key()
        other_raw = other.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert not binding.verify(other_raw, sig, message)


def _accepts_and_refuses_tampering(package: Path, signer: Any) -> None:
    """The default check accepts the package's own signature and refuses a tampered one."""
    reader = open_package(package)
    signature = reader.signature_bytes
    assert signature is not None
    assert (
        verify_without_cryptography(reader.manifest_bytes, signature, [signer.public_path])
        == signer.key_id
    )
    with pytest.raises(SignatureError, match="does not match the manifest"):
        verify_without_cryptography(
            reader.manifest_bytes, _tampered_signature(signature), [signer.public_path]
        )


def _no_child(*args: object, **kwargs: object) -> Any:
    raise AssertionError("no child process may be started")


def test_without_cryptography_checks_in_process_where_openssl_can(
    onnx_pkg: Path, signer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subprocess, "run", _no_child)
    _accepts_and_refuses_tampering(onnx_pkg, signer)


def test_without_cryptography_falls_back_to_the_child(
    onnx_pkg: Path, signer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No usable libcrypto (an OpenSSL without Ed25519, a missing symbol): the child checks."""
    monkeypatch.setattr(signature_check.openssl_ed25519, "load", lambda: None)
    children: list[object] = []
    real_run = subprocess.run

    def counting_run(*args: Any, **kwargs: Any) -> Any:
        children.append(args[0])
        return real_run(*args, **kwargs)

    monkeypatch.setattr(subprocess, "run", counting_run)
    _accepts_and_refuses_tampering(onnx_pkg, signer)
    assert len(children) == 2


def test_a_library_without_the_symbols_is_not_used() -> None:
    """``OpenSslEd25519`` over a C library lacking the EVP calls cannot be built (``load``
    then tries the next candidate, and at worst returns None)."""
    import ctypes
    import ctypes.util

    # The maths library (and what it depends on) has no EVP calls; the process's global
    # namespace would not do: another test's import may have put libcrypto's symbols there.
    libm = ctypes.util.find_library("m")
    assert libm is not None
    with pytest.raises(AttributeError):
        openssl_ed25519.OpenSslEd25519(ctypes.CDLL(libm))
