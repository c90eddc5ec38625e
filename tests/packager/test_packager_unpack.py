"""One-pass verification and extraction (``model_packager.unpack``) and the signature check in a
child process (``model_packager.signature_check``).

The one pass must accept exactly what ``verify_package`` + ``extract_package`` accept, give the
same digest as ``sha256_file``, read the file once, and leave nothing behind on any failure.
"""

from __future__ import annotations

import builtins
import tarfile
from pathlib import Path
from typing import Any

import pytest

from model_packager.archive import extract_package, open_package, sha256_file
from model_packager.errors import DigestMismatch, InvalidPackage, SignatureError, UnsafeArchive
from model_packager.signature_check import verify_in_child
from model_packager.signing import verify_manifest
from model_packager.unpack import unpack_verified
from tests.packager.conftest import tree

ARTIFACT = "artifacts/onnx-fp32.onnx"
GOLDEN = "golden/onnx-fp32.npz"


def _flip(pkg: Path, member: str) -> None:
    with tarfile.open(pkg) as tar:
        m = tar.getmember(member)
        pos = m.offset_data + m.size // 2
    data = bytearray(pkg.read_bytes())
    data[pos] ^= 0x01
    pkg.write_bytes(bytes(data))


def _no_check(manifest: bytes, signature: bytes | None) -> str:
    return "unchecked"


def test_one_pass_matches_the_reference_path(
    onnx_pkg: Path, signer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real_open = builtins.open

    def counting_open(file: Any, *args: Any, **kw: Any) -> Any:
        if Path(str(file)) == onnx_pkg:
            opened.append(str(file))
        return real_open(file, *args, **kw)

    monkeypatch.setattr(builtins, "open", counting_open)
    trust = signer.trust
    got = unpack_verified(onnx_pkg, lambda m, s: verify_manifest(m, s, trust), tmp_path / "st")
    monkeypatch.undo()
    assert opened == [str(onnx_pkg)]  # the file is opened, and read, once
    assert got.size == onnx_pkg.stat().st_size
    assert got.digest == sha256_file(onnx_pkg)
    assert got.key_id == signer.key_id
    assert got.staged.parent == tmp_path / "st" and got.staged.name.startswith(".")

    reference = extract_package(open_package(onnx_pkg), tmp_path / "ref")
    assert tree(got.staged) == tree(reference)
    for rel in tree(reference):
        if (reference / rel).is_file():
            assert (got.staged / rel).read_bytes() == (reference / rel).read_bytes(), rel


@pytest.mark.parametrize("member", [ARTIFACT, GOLDEN])
def test_tampered_member_fails_and_leaves_nothing(
    onnx_pkg: Path, pkg_copy: Any, tmp_path: Path, member: str
) -> None:
    pkg = pkg_copy(onnx_pkg)
    _flip(pkg, member)
    staging = tmp_path / "st"
    with pytest.raises(DigestMismatch, match=member):
        unpack_verified(pkg, _no_check, staging)
    assert tree(staging) == set()


def test_signature_is_checked_once_and_its_error_kept(
    onnx_pkg: Path, tmp_path: Path, signer: Any
) -> None:
    calls: list[bytes] = []

    def refuse(manifest: bytes, signature: bytes | None) -> str:
        calls.append(manifest)
        raise SignatureError("package is signed by key x, which is not trusted")

    with pytest.raises(SignatureError, match="not trusted"):
        unpack_verified(onnx_pkg, refuse, tmp_path / "st")
    assert calls == [open_package(onnx_pkg).manifest_bytes]
    assert tree(tmp_path / "st") == set()


def test_crafted_archives(tarkit: Any, tmp_path: Path) -> None:
    honest = tarkit.honest_members()
    ok = unpack_verified(tarkit.write(tmp_path / "ok.tar", honest), _no_check, tmp_path / "a")
    assert (ok.staged / ARTIFACT).read_bytes() == tarkit.ARTIFACT
    assert ok.manifest.name == "crafted"

    cases = [
        ("extra", [*honest, tarkit.file("extra.bin", b"x")], InvalidPackage, "does not pin"),
        ("missing", honest[:2], InvalidPackage, "which the archive lacks"),
        ("nomanifest", honest[1:], InvalidPackage, "no manifest.json"),
        ("dup", [*honest, honest[1]], UnsafeArchive, "appears twice"),
        ("parent", [*honest, tarkit.file("../evil", b"x")], UnsafeArchive, "parent-relative"),
        ("abs", [*honest, tarkit.file("/etc/evil", b"x")], UnsafeArchive, "absolute"),
        (
            "link",
            [*honest, tarkit.special("ln", tarfile.SYMTYPE, "/etc/passwd")],
            UnsafeArchive,
            "is a link",
        ),
        (
            "sparse",  # member bytes are read by position: a sparse map would mislead that
            [*honest, tarkit.special("holes.bin", tarfile.GNUTYPE_SPARSE)],
            UnsafeArchive,
            "not a regular file",
        ),
        (
            "size",
            [honest[0], tarkit.file(ARTIFACT, tarkit.ARTIFACT + b"!"), honest[2]],
            DigestMismatch,
            "manifest says",
        ),
    ]
    for name, members, error, message in cases:
        staging = tmp_path / f"st-{name}"
        pkg = tarkit.write(tmp_path / f"{name}.tar", members)
        with pytest.raises(error, match=message):
            unpack_verified(pkg, _no_check, staging)
        assert tree(staging) == set(), name

    truncated = tmp_path / "trunc.tar"
    truncated.write_bytes((tmp_path / "ok.tar").read_bytes()[:1500])
    with pytest.raises(InvalidPackage, match="not a readable package archive"):
        unpack_verified(truncated, _no_check, tmp_path / "st-trunc")
    assert tree(tmp_path / "st-trunc") == set()


def test_signature_check_in_a_child_process(
    onnx_pkg: Path, unsigned_pkg: Path, signer: Any, stranger: Any, tmp_path: Path
) -> None:
    reader = open_package(onnx_pkg)
    good = reader.manifest_bytes, reader.signature_bytes
    assert verify_in_child(*good, [signer.public_path]) == signer.key_id
    # The folder form of trusted_keys (the stranger's key is in it too).
    assert verify_in_child(*good, [signer.public_path.parent]) == signer.key_id
    with pytest.raises(SignatureError, match="which is not trusted"):
        verify_in_child(*good, [stranger.public_path])
    with pytest.raises(SignatureError, match="does not match the manifest"):
        verify_in_child(good[0] + b" ", good[1], [signer.public_path])
    unsigned = open_package(unsigned_pkg)
    with pytest.raises(SignatureError, match="package is not signed"):
        verify_in_child(unsigned.manifest_bytes, None, [signer.public_path])
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("not a key")
    with pytest.raises(SignatureError, match="trusted keys cannot be read"):
        verify_in_child(*good, [bad_key])


def test_a_known_digest_skips_only_the_whole_file_hash(
    onnx_pkg: Path, pkg_copy: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import model_packager.unpack as unpack

    pkg = pkg_copy(onnx_pkg)
    digest = sha256_file(pkg)
    fed: list[int] = []
    real = unpack._HashingReader.readinto

    def spy(self: Any, buffer: memoryview) -> int:
        n = real(self, buffer)
        fed.append(n if self._hash else 0)
        return n

    monkeypatch.setattr(unpack._HashingReader, "readinto", spy)
    got = unpack_verified(pkg, _no_check, tmp_path / "a", known_digest=digest)
    assert got.digest == digest and got.size == pkg.stat().st_size
    assert sum(fed) == 0  # the caller had the digest: the file's bytes were not hashed again
    _flip(pkg, ARTIFACT)  # a member's own digest is still checked
    with pytest.raises(DigestMismatch):
        unpack_verified(pkg, _no_check, tmp_path / "b", known_digest=digest)
    assert not any((tmp_path / "b").iterdir())
