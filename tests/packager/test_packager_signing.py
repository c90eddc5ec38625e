"""Signatures, trust and tampering: the agent installs only what a trusted key signed, unchanged."""

from __future__ import annotations

import base64
import json
import stat
import tarfile
from pathlib import Path

import pytest

from model_packager.archive import extract_package, open_package, sha256_file, verify_package
from model_packager.build import sign_package
from model_packager.errors import DigestMismatch, InvalidPackage, SignatureError
from model_packager.signing import (
    TrustStore,
    generate_keypair,
    load_private_key,
    load_public_key,
    sign_manifest,
    verify_manifest,
)


def _data_offset(pkg: Path, member: str) -> tuple[int, int]:
    with tarfile.open(pkg) as tar:
        m = tar.getmember(member)
        return m.offset_data, m.size


def _patch(pkg: Path, offset: int, new: bytes) -> None:
    with open(pkg, "r+b") as f:
        f.seek(offset)
        f.write(new)


def _flip(pkg: Path, member: str, where: float = 0.5) -> None:
    start, size = _data_offset(pkg, member)
    pos = start + int(size * where)
    old = pkg.read_bytes()[pos]
    _patch(pkg, pos, bytes([old ^ 0x01]))


def test_unsigned_package_fails_verify(unsigned_pkg: Path, signer) -> None:
    assert open_package(unsigned_pkg).signature_bytes is None
    with pytest.raises(SignatureError, match="not signed"):
        verify_package(unsigned_pkg, signer.trust)


def test_untrusted_key_fails(onnx_pkg: Path, signer, stranger) -> None:
    with pytest.raises(SignatureError, match=f"{signer.key_id}, which is not trusted"):
        verify_package(onnx_pkg, stranger.trust)
    with pytest.raises(SignatureError, match="not trusted"):
        verify_package(onnx_pkg, TrustStore({}))
    # Trusting both keys is fine: the signature names which one to use.
    both = TrustStore.from_paths([signer.public_path, stranger.public_path])
    assert verify_package(onnx_pkg, both)[1] == signer.key_id


def test_tampered_manifest_byte_fails(onnx_pkg: Path, pkg_copy, signer) -> None:
    pkg = pkg_copy(onnx_pkg)
    start, size = _data_offset(pkg, "manifest.json")
    raw = pkg.read_bytes()[start : start + size]
    pos = raw.index(b'"1.0.0"') + 5  # version 1.0.0 -> 1.0.1: still a valid manifest
    _patch(pkg, start + pos, b"1")
    reader = open_package(pkg)
    assert reader.manifest.version == "1.0.1"
    with pytest.raises(SignatureError, match="does not match the manifest"):
        verify_package(pkg, signer.trust)


def test_manifest_byte_that_breaks_json_is_invalid(onnx_pkg: Path, pkg_copy, signer) -> None:
    pkg = pkg_copy(onnx_pkg)
    start, _ = _data_offset(pkg, "manifest.json")
    _patch(pkg, start, b"[")
    with pytest.raises(InvalidPackage, match="manifest"):
        verify_package(pkg, signer.trust)


@pytest.mark.parametrize(
    "member", ["artifacts/onnx-fp32.onnx", "golden/onnx-fp32.npz"], ids=["artifact", "golden"]
)
def test_tampered_file_byte_fails_with_digest_mismatch(
    onnx_pkg: Path, pkg_copy, signer, member: str, tmp_path: Path, snapshot
) -> None:
    pkg = pkg_copy(onnx_pkg)
    _flip(pkg, member)
    assert pkg.stat().st_size == onnx_pkg.stat().st_size
    reader = open_package(pkg)  # structure and sizes are still right
    with pytest.raises(DigestMismatch, match=member):
        verify_package(pkg, signer.trust)
    store = tmp_path / "store"
    store.mkdir()
    (store / "other").mkdir()
    before = snapshot(store)
    with pytest.raises(DigestMismatch, match=member):
        extract_package(reader, store / "pkg")
    assert snapshot(store) == before


@pytest.mark.parametrize(
    "doc",
    [
        b"not json",
        b"[]",
        b"{}",
        json.dumps({"algorithm": "ed25519", "key_id": ["x"], "signature": ""}).encode(),
        json.dumps({"algorithm": "ed25519", "key_id": None, "signature": ""}).encode(),
        json.dumps({"algorithm": "ed25519", "key_id": "abc", "signature": "@@@"}).encode(),
    ],
)
def test_malformed_signature_file(doc: bytes, signer) -> None:
    with pytest.raises(SignatureError):
        verify_manifest(b"{}", doc, signer.trust)


def test_signature_checks(signer, stranger) -> None:
    manifest = b'{"a": 1}\n'
    sig = sign_manifest(manifest, signer.private)
    assert verify_manifest(manifest, sig, signer.trust) == signer.key_id
    with pytest.raises(SignatureError, match="does not match"):
        verify_manifest(manifest + b" ", sig, signer.trust)
    doc = json.loads(sig)
    wrong_alg = json.dumps({**doc, "algorithm": "rsa"}).encode()
    with pytest.raises(SignatureError, match="unsupported signature algorithm"):
        verify_manifest(manifest, wrong_alg, signer.trust)
    # A stranger's signature relabelled with the trusted key id does not verify.
    forged = json.loads(sign_manifest(manifest, stranger.private))
    forged["key_id"] = signer.key_id
    with pytest.raises(SignatureError, match="does not match"):
        verify_manifest(manifest, json.dumps(forged).encode(), signer.trust)
    # A corrupted signature value does not verify either.
    raw = bytearray(base64.b64decode(doc["signature"]))
    raw[0] ^= 1
    bad = json.dumps({**doc, "signature": base64.b64encode(bytes(raw)).decode()}).encode()
    with pytest.raises(SignatureError, match="does not match"):
        verify_manifest(manifest, bad, signer.trust)


def test_sign_package_makes_an_unsigned_package_verifiable(
    unsigned_pkg: Path, signer, tmp_path: Path
) -> None:
    signed = sign_package(unsigned_pkg, signer.private, tmp_path)
    assert signed != unsigned_pkg
    assert signed.name == f"{sha256_file(signed)}.edgepkg"
    assert sha256_file(signed) != sha256_file(unsigned_pkg)
    reader, kid = verify_package(signed, signer.trust)
    assert kid == signer.key_id
    original = open_package(unsigned_pkg)
    assert reader.manifest_bytes == original.manifest_bytes
    assert original.signature_bytes is None  # the source is left as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == [signed.name]
    # Signing again with the same key is deterministic (Ed25519): same bytes, same name.
    assert sign_package(unsigned_pkg, signer.private, tmp_path) == signed


def test_sign_package_next_to_the_source_by_default(unsigned_pkg: Path, pkg_copy, signer) -> None:
    src = pkg_copy(unsigned_pkg)
    signed = sign_package(src, signer.private)
    assert signed.parent == src.parent
    verify_package(signed, signer.trust)


def test_resigning_replaces_the_signature(onnx_pkg: Path, signer, stranger, tmp_path) -> None:
    resigned = sign_package(onnx_pkg, stranger.private, tmp_path)
    assert verify_package(resigned, stranger.trust)[1] == stranger.key_id
    with pytest.raises(SignatureError):
        verify_package(resigned, signer.trust)


def test_sign_package_refuses_a_tampered_package(unsigned_pkg: Path, pkg_copy, signer) -> None:
    src = pkg_copy(unsigned_pkg)
    _flip(src, "artifacts/onnx-fp32.onnx")
    with pytest.raises(DigestMismatch, match="not signing"):
        sign_package(src, signer.private)
    assert [p.name for p in src.parent.iterdir()] == [src.name]


def test_keys(tmp_path: Path, signer) -> None:
    kid = generate_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    assert len(kid) == 16 and int(kid, 16) >= 0
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600
    assert (tmp_path / "k.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    pub = (tmp_path / "k.pub").read_bytes()
    assert pub.startswith(b"-----BEGIN PUBLIC KEY-----")
    # PEM as bytes, text or path all load, and name the same key.
    ids = {
        next(iter(TrustStore.from_keys([load_public_key(x)]).keys))
        for x in (pub, pub.decode(), tmp_path / "k.pub")
    }
    assert ids == {kid}
    with pytest.raises(FileExistsError):
        generate_keypair(tmp_path / "k.key", tmp_path / "other.pub")
    with pytest.raises(FileExistsError):
        generate_keypair(tmp_path / "new.key", tmp_path / "k.pub")
    assert not (tmp_path / "new.key").exists()


def test_bad_key_files(tmp_path: Path, signer) -> None:
    with pytest.raises(SignatureError):
        load_private_key(signer.public_path)
    with pytest.raises(SignatureError):
        load_private_key(tmp_path / "missing.key")
    with pytest.raises(SignatureError):
        load_public_key(signer.private_path)
    with pytest.raises(SignatureError):
        load_public_key(b"garbage")
    with pytest.raises(SignatureError):
        load_public_key(tmp_path / "missing.pub")
    with pytest.raises(SignatureError):
        TrustStore.from_paths([tmp_path / "missing.pub"])


def test_trust_store_from_a_folder(tmp_path: Path, signer, stranger) -> None:
    folder = tmp_path / "trusted"
    folder.mkdir()
    (folder / "a.pub").write_bytes(signer.public_path.read_bytes())
    (folder / "b.pem").write_bytes(stranger.public_path.read_bytes())
    (folder / "README").write_text("ignored")
    assert set(TrustStore.from_paths([folder]).keys) == {signer.key_id, stranger.key_id}
    (tmp_path / "empty").mkdir()
    assert TrustStore.from_paths([tmp_path / "empty"]).keys == {}
