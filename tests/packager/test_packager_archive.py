"""Safe extraction: hostile archives are refused with the right error and leave nothing on disk."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from model_packager.archive import (
    ArchiveLimits,
    PackageReader,
    extract_package,
    open_package,
    sha256_file,
    verify_package,
    write_archive,
)
from model_packager.errors import (
    DigestMismatch,
    InvalidPackage,
    PackageError,
    UnsafeArchive,
)

MANIFEST = "manifest.json"
ARTIFACT = "artifacts/onnx-fp32.onnx"
GOLDEN = "golden/onnx-fp32.npz"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Where packages get extracted; holds one unrelated entry so 'nothing new' is meaningful."""
    s = tmp_path / "store"
    s.mkdir()
    (s / "existing").write_text("keep me")
    return s


def install(pkg: Path, dest: Path, limits: ArchiveLimits | None = None) -> Path:
    """What an installer does: open (structure), then extract (digests)."""
    return extract_package(open_package(pkg, limits), dest)


def assert_refused(
    pkg: Path,
    store: Path,
    error: type[PackageError],
    match: str | None,
    snapshot,
    limits: ArchiveLimits | None = None,
) -> None:
    before = snapshot(store.parent)
    with pytest.raises(error, match=match) as info:
        install(pkg, store / "pkg", limits)
    assert isinstance(info.value, PackageError)
    assert snapshot(store.parent) == before  # no dest, no .partial folder, nothing
    assert not list(store.parent.rglob("*.partial"))


# ------------------------------------------------------------------------- the honest baseline


def test_crafted_baseline_installs(tarkit, tmp_path: Path, store: Path) -> None:
    """The hostile cases below differ from this one only in what they break."""
    pkg = tarkit.write(tmp_path / "ok.tar", tarkit.honest_members())
    dest = install(pkg, store / "pkg")
    assert (dest / ARTIFACT).read_bytes() == tarkit.ARTIFACT
    assert (dest / GOLDEN).read_bytes() == tarkit.GOLDEN
    assert (dest / MANIFEST).read_bytes() == tarkit.manifest().to_bytes()
    assert not (dest / "signature.json").exists()
    assert sorted(p.name for p in store.iterdir()) == ["existing", "pkg"]


def test_extract_creates_missing_parents(tarkit, tmp_path: Path) -> None:
    pkg = tarkit.write(tmp_path / "ok.tar", tarkit.honest_members())
    dest = install(pkg, tmp_path / "a" / "b" / "pkg")
    assert (dest / ARTIFACT).is_file()


def test_failed_extract_removes_the_parents_it_created(tarkit, tmp_path: Path, snapshot) -> None:
    members = tarkit.honest_members()
    ti, data = members[1]
    members[1] = (ti, bytes([data[0] ^ 1]) + data[1:])  # same size, wrong digest
    pkg = tarkit.write(tmp_path / "pkgs" / "bad.tar", members)
    before = snapshot(tmp_path)
    with pytest.raises(DigestMismatch):
        install(pkg, tmp_path / "a" / "b" / "pkg")
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "a").exists()


def test_extract_refuses_an_existing_destination(tarkit, tmp_path: Path, store: Path) -> None:
    pkg = tarkit.write(tmp_path / "ok.tar", tarkit.honest_members())
    (store / "pkg").mkdir()
    (store / "pkg" / "mine").write_text("x")
    with pytest.raises(FileExistsError):
        install(pkg, store / "pkg")
    assert [p.name for p in (store / "pkg").iterdir()] == ["mine"]
    assert sorted(p.name for p in store.iterdir()) == ["existing", "pkg"]


def test_write_archive_is_deterministic(tmp_path: Path) -> None:
    files: dict[str, Path | bytes] = {"b/x.bin": b"1" * 10, "a.bin": b"2" * 3}
    one = write_archive(tmp_path / "one", b"{}", files)
    two = write_archive(tmp_path / "two", b"{}", files)
    assert one.name == two.name == f"{sha256_file(one)}.edgepkg"
    with tarfile.open(one) as tar:
        assert tar.getnames() == ["manifest.json", "a.bin", "b/x.bin"]
        assert {(m.mtime, m.uid, m.gid, m.uname) for m in tar} == {(0, 0, 0, "")}


# ------------------------------------------------------------------------- hostile members


def _with_member(tarkit, extra) -> list:
    return [*tarkit.honest_members(), extra]


HOSTILE = {
    "absolute path": (
        lambda k: _with_member(k, k.file("/etc/evil", b"x")),
        UnsafeArchive,
        "absolute",
    ),
    "dotdot": (lambda k: _with_member(k, k.file("../evil", b"x")), UnsafeArchive, "parent"),
    "inner dotdot": (
        lambda k: _with_member(k, k.file("artifacts/../../evil", b"x")),
        UnsafeArchive,
        "parent",
    ),
    "symlink": (
        lambda k: _with_member(k, k.special("artifacts/link", tarfile.SYMTYPE, "/etc/passwd")),
        UnsafeArchive,
        "link",
    ),
    "symlink in place of an artifact": (
        lambda k: [
            k.honest_members()[0],
            k.special(ARTIFACT, tarfile.SYMTYPE, "/etc/passwd"),
            k.honest_members()[2],
        ],
        UnsafeArchive,
        "link",
    ),
    "hardlink": (
        lambda k: _with_member(k, k.special("hard", tarfile.LNKTYPE, MANIFEST)),
        UnsafeArchive,
        "link",
    ),
    "char device": (
        lambda k: _with_member(k, k.special("dev", tarfile.CHRTYPE)),
        UnsafeArchive,
        "device",
    ),
    "block device": (
        lambda k: _with_member(k, k.special("blk", tarfile.BLKTYPE)),
        UnsafeArchive,
        "device",
    ),
    "fifo": (lambda k: _with_member(k, k.special("fifo", tarfile.FIFOTYPE)), UnsafeArchive, "fifo"),
    "directory": (
        lambda k: _with_member(k, k.special("artifacts", tarfile.DIRTYPE)),
        UnsafeArchive,
        "not a regular file",
    ),
    "backslash": (
        lambda k: _with_member(k, k.file("..\\evil", b"x")),
        UnsafeArchive,
        "absolute or parent",
    ),
    "duplicate artifact": (
        lambda k: _with_member(k, k.file(ARTIFACT, b"y" * len(k.ARTIFACT))),
        UnsafeArchive,
        "twice",
    ),
    "duplicate manifest": (
        lambda k: _with_member(k, k.file(MANIFEST, k.manifest(description="2nd").to_bytes())),
        UnsafeArchive,
        "twice",
    ),
    "member not pinned": (
        lambda k: _with_member(k, k.file("artifacts/extra.bin", b"payload")),
        InvalidPackage,
        "does not pin: artifacts/extra.bin",
    ),
    "manifest missing": (lambda k: k.honest_members()[1:], InvalidPackage, "no manifest.json"),
    "pinned file missing": (
        lambda k: k.honest_members()[:2],
        InvalidPackage,
        "lacks",
    ),
    "file size differs from the manifest": (
        lambda k: [*k.honest_members()[:2], k.file(GOLDEN, k.GOLDEN + b"!")],
        DigestMismatch,
        "manifest says",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_archive_is_refused_and_writes_nothing(
    case: str, tarkit, tmp_path: Path, store: Path, snapshot
) -> None:
    build, error, match = HOSTILE[case]
    pkg = tarkit.write(tmp_path / "pkgs" / "hostile.tar", build(tarkit))
    assert_refused(pkg, store, error, match, snapshot)


def test_gnu_format_links_are_refused_too(tarkit, tmp_path: Path, store: Path, snapshot) -> None:
    members = _with_member(tarkit, tarkit.special("l", tarfile.SYMTYPE, "../../x"))
    pkg = tarkit.write(tmp_path / "gnu.tar", members, fmt=tarfile.GNU_FORMAT)
    assert_refused(pkg, store, UnsafeArchive, "link", snapshot)


def test_long_pax_path_cannot_smuggle_dotdot(tarkit, tmp_path: Path, store: Path, snapshot) -> None:
    long_name = "a/" * 80 + "../" * 81 + "evil"  # > 100 chars: stored in a PAX header
    pkg = tarkit.write(tmp_path / "pax.tar", _with_member(tarkit, tarkit.file(long_name, b"x")))
    assert_refused(pkg, store, UnsafeArchive, "parent", snapshot)


# ------------------------------------------------------------------------------ limits


def test_too_many_members(tarkit, tmp_path: Path, store: Path, snapshot) -> None:
    many = [tarkit.file(f"junk/{i}", b"") for i in range(70)]
    pkg = tarkit.write(tmp_path / "many.tar", [*tarkit.honest_members(), *many])
    assert_refused(pkg, store, UnsafeArchive, "more than 64 members", snapshot)
    # The limit is configurable, and counts every member.
    ok = tarkit.write(tmp_path / "ok.tar", tarkit.honest_members())
    assert_refused(ok, store, UnsafeArchive, "more than 2", snapshot, ArchiveLimits(max_members=2))
    install(ok, store / "pkg", ArchiveLimits(max_members=3))


def test_member_over_the_size_limit(tarkit, tmp_path: Path, store: Path, snapshot) -> None:
    pkg = tarkit.write(tmp_path / "ok.tar", tarkit.honest_members())
    limit = len(tarkit.ARTIFACT) - 1
    assert_refused(
        pkg,
        store,
        UnsafeArchive,
        f"over the {limit}",
        snapshot,
        ArchiveLimits(max_member_bytes=limit),
    )
    total = len(tarkit.ARTIFACT) + len(tarkit.GOLDEN)
    assert_refused(
        pkg, store, UnsafeArchive, "exceeds", snapshot, ArchiveLimits(max_total_bytes=total)
    )
    assert_refused(
        pkg,
        store,
        UnsafeArchive,
        "manifest.json is too large",
        snapshot,
        ArchiveLimits(max_manifest_bytes=100),
    )


def test_huge_declared_size_is_refused_before_reading(
    tarkit, tmp_path: Path, store: Path, snapshot
) -> None:
    """A header claiming 3 GiB is refused from the header alone (the data is not there)."""
    pkg = tarkit.write(tmp_path / "ok.tar", tarkit.honest_members())
    ti = tarkit.info("artifacts/huge.bin", 3 << 30)
    with open(pkg, "r+b") as f:  # append a header with no data after the last real member
        with tarfile.open(pkg) as tar:
            end = max(m.offset_data + ((m.size + 511) // 512) * 512 for m in tar)
        f.seek(end)
        f.write(ti.tobuf(tarfile.PAX_FORMAT))
        f.truncate()
    assert_refused(pkg, store, UnsafeArchive, "over the", snapshot)


# ------------------------------------------------------------------- truncated and corrupt


def _offsets(pkg: Path) -> dict[str, int]:
    with tarfile.open(pkg) as tar:
        members = tar.getmembers()
    last = members[-1]
    return {
        "inside the first header": 100,
        "after the first header": members[0].offset_data,
        "inside the manifest": members[0].offset_data + members[0].size // 2,
        "inside the second header": members[1].offset + 300,
        "at the last header": last.offset,
        "inside the last member": last.offset_data + last.size // 2,
        "one byte short of the last member": last.offset_data + last.size - 1,
    }


@pytest.mark.parametrize(
    "where",
    [
        "inside the first header",
        "after the first header",
        "inside the manifest",
        "inside the second header",
        "at the last header",
        "inside the last member",
        "one byte short of the last member",
    ],
)
def test_truncated_archive(where: str, tarkit, tmp_path: Path, store: Path, snapshot) -> None:
    pkg = tarkit.write(tmp_path / "cut.tar", tarkit.honest_members())
    cut = _offsets(pkg)[where]
    with open(pkg, "r+b") as f:
        f.truncate(cut)
    assert_refused(pkg, store, InvalidPackage, None, snapshot)


@pytest.mark.parametrize("where", [0.3, 0.6, 0.9])
def test_truncated_real_package(
    where: float, onnx_pkg: Path, pkg_copy, store: Path, snapshot, signer
) -> None:
    pkg = pkg_copy(onnx_pkg)
    with open(pkg, "r+b") as f:
        f.truncate(int(pkg.stat().st_size * where))
    with pytest.raises(InvalidPackage):
        verify_package(pkg, signer.trust)
    assert_refused(pkg, store, InvalidPackage, None, snapshot)


def test_cut_in_the_end_of_archive_padding_keeps_every_pinned_byte(
    onnx_pkg: Path, pkg_copy, signer
) -> None:
    """Only zero padding is lost, so the content still verifies; the file's name (its sha256)
    is what tells the cut file from the original."""
    pkg = pkg_copy(onnx_pkg)
    with open(pkg, "r+b") as f:
        f.truncate(pkg.stat().st_size - 512)
    verify_package(pkg, signer.trust)
    assert pkg.name != f"{sha256_file(pkg)}.edgepkg"


def test_file_truncated_after_open_is_refused_by_extract(
    onnx_pkg: Path, pkg_copy, store: Path, snapshot, signer
) -> None:
    """open_package, then the file shrinks: extract must still fail cleanly, as a PackageError."""
    pkg = pkg_copy(onnx_pkg)
    reader = open_package(pkg)
    with tarfile.open(pkg) as tar:
        art = tar.getmember(ARTIFACT)
    with open(pkg, "r+b") as f:
        f.truncate(art.offset_data + art.size // 2)
    before = snapshot(store.parent)
    with pytest.raises(InvalidPackage):
        extract_package(reader, store / "pkg")
    assert snapshot(store.parent) == before
    with pytest.raises(InvalidPackage):
        verify_package(pkg, signer.trust)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, not a tar\n", os.urandom(4096), b"\x1f\x8b\x08\x00" + b"\x00" * 600],
    ids=["empty", "text", "random", "gzip-magic"],
)
def test_corrupt_non_tar_file(content: bytes, tmp_path: Path, store: Path, snapshot) -> None:
    pkg = tmp_path / "junk.edgepkg"
    pkg.write_bytes(content)
    assert_refused(pkg, store, InvalidPackage, "not a readable package archive", snapshot)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidPackage, match=r"missing\.edgepkg"):
        open_package(tmp_path / "missing.edgepkg")


def test_manifest_that_is_not_valid_is_refused(tarkit, tmp_path: Path, store: Path, snapshot):
    members = tarkit.honest_members(manifest_bytes=b'{"name": "x"}')
    pkg = tarkit.write(tmp_path / "bad.tar", members)
    assert_refused(pkg, store, InvalidPackage, "manifest is invalid", snapshot)


def test_extract_rechecks_digests_even_without_verify(tarkit, tmp_path: Path, store: Path):
    """extract_package never trusts the reader: a swapped file under the same name is caught."""
    ok = tarkit.write(tmp_path / "ok.tar", tarkit.honest_members())
    reader = open_package(ok)
    members = tarkit.honest_members()
    ti, data = members[2]
    members[2] = (ti, data[::-1])  # same size, same position, different bytes
    tarkit.write(ok, members)
    with pytest.raises(DigestMismatch, match="golden"):
        extract_package(reader, store / "pkg")
    assert sorted(p.name for p in store.iterdir()) == ["existing"]
    assert isinstance(reader, PackageReader)
