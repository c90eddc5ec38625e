"""Delta updates without a broker: chunk indexes, reading installed packages back, the delta.

The control plane's side is played by ``FakeControlPlane``: it answers the agent's delta
requests from a real package file and its real chunk index, the way ``control_plane/fleet/
delta.py`` does, and counts what it sent. The real channel is exercised in test_delta.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge_agent.config import FleetSettings
from edge_agent.fleet.delta import INDEX_FILE, MIN_REUSED_SHARE, DeltaUpdates
from edge_agent.fleet.domain import ChunkAnswer
from edge_agent.fleet.downloads import ChunkDownload
from edge_agent.fleet.held_chunks import ChunkSource, HeldChunks
from model_packager import cdc
from model_packager.chunk_index import ChunkIndex
from model_packager.errors import InvalidPackage
from model_packager.signing import generate_keypair
from model_packager.unpack import unpack_verified
from protos.fleet_state import DesiredModel
from protos.gen import fleet_pb2
from tests.fleet.delta_packages import head_package

FIXED = 16 * 1024


@pytest.fixture(scope="module")
def pkgs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """v1 and v2 share the first layer (head retrained); v3 shares nothing with either; v4 only
    v1's head (~1% of the bytes)."""
    out = tmp_path_factory.mktemp("delta-pkgs")
    key = out / "k.key"
    generate_keypair(key, out / "k.pub")
    return {
        "v1": head_package(out, "1", base_seed=1, head_seed=1, key=key),
        "v2": head_package(out, "2", base_seed=1, head_seed=2, key=key),
        "v3": head_package(out, "3", base_seed=3, head_seed=3, key=key),
        "v4": head_package(out, "4", base_seed=3, head_seed=1, key=key),
    }


def desired(path: Path, chunk_size: int = FIXED, with_index: bool = True) -> DesiredModel:
    data = path.read_bytes()
    pieces = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    index = cdc.chunk_file(path)
    return DesiredModel.of_chunks(
        deployment_id="dep",
        name="deltamlp",
        version=path.name[:8],
        package_digest=hashlib.sha256(data).hexdigest(),
        package_size=len(data),
        chunk_size=chunk_size,
        chunk_sha256=[hashlib.sha256(p).digest() for p in pieces],
        cdc_index_sha256=index.sha256() if with_index else b"",
    )


def install(data_dir: Path, package: Path) -> str:
    """Extract a package as the installer does (data_dir/packages/<digest>)."""
    packages = data_dir / "packages"
    unpacked = unpack_verified(package, lambda m, s: "test-key", packages)
    os.replace(unpacked.staged, packages / unpacked.digest)
    return unpacked.digest


@dataclass
class FakeControlPlane:
    """Answers delta requests for one package from its file, like control_plane/fleet/delta.py."""

    delta: DeltaUpdates
    package: Path
    sent_bytes: int = 0
    sent_chunks: int = 0
    index_requests: int = 0
    digests_asked: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.index = cdc.chunk_file(self.package)
        self.blob = self.package.read_bytes()

    def send(self, payload: bytes) -> bool:
        req = fleet_pb2.ChunkRequest.FromString(payload)
        assert not req.indexes, "a delta request names no fixed chunk"
        answers = []
        if req.cdc_index:
            self.index_requests += 1
            answers.append(
                ChunkAnswer(
                    req.package_digest, 0, b"", req.request_id, "", cdc_index=self.index.encode()
                )
            )
        for d in req.cdc_sha256:
            d = bytes(d)
            self.digests_asked.append(d)
            j = self.index.digests.index(d)
            at, n = self.index.offsets[j], self.index.sizes[j]
            self.sent_bytes += n
            self.sent_chunks += 1
            answers.append(
                ChunkAnswer(
                    req.package_digest, j, self.blob[at : at + n], req.request_id, "", True, d
                )
            )
        loop = asyncio.get_event_loop()
        for a in answers:
            loop.call_soon(self.delta.offer, a)
        return True


def run_seed(delta: DeltaUpdates, dl: ChunkDownload, committed: set[str], cp: FakeControlPlane):
    async def go():
        connected = asyncio.Event()
        connected.set()
        return await delta.seed(
            dl, committed, send=cp.send, connected=connected, still_wanted=lambda: None
        )

    return asyncio.run(go())


def make_delta(data_dir: Path) -> DeltaUpdates:
    fs = FleetSettings(url="mqtt://localhost", chunk_timeout_s=2.0)
    return DeltaUpdates(fs, HeldChunks(data_dir / "fleet" / "held_chunks", data_dir / "packages"))


def test_chunk_index_round_trip_and_refusals(pkgs: dict[str, Path]) -> None:
    index = cdc.chunk_file(pkgs["v1"])
    data = pkgs["v1"].read_bytes()
    assert index.package_size == len(data) and index.count > 20
    assert all(cdc.MIN_SIZE <= s <= cdc.MAX_SIZE for s in index.sizes[:-1])
    for j in (0, index.count // 2, index.count - 1):  # offsets and digests name the bytes
        at, n = index.offsets[j], index.sizes[j]
        assert hashlib.sha256(data[at : at + n]).digest() == index.digests[j]
    encoded = index.encode()
    assert ChunkIndex.decode(encoded) == index
    with pytest.raises(InvalidPackage, match="magic"):
        ChunkIndex.decode(b"X" + encoded[1:])
    with pytest.raises(InvalidPackage, match="cannot hold"):
        ChunkIndex.decode(encoded[:-1])
    with pytest.raises(InvalidPackage, match="add up"):
        ChunkIndex.decode(encoded[:20] + (1).to_bytes(8, "big") + encoded[28:])


def test_content_defined_chunks_survive_an_insertion() -> None:
    """Bytes inserted near the start shift everything after them; the chunks still match."""
    rng = random.Random(0)
    blob = rng.randbytes(1 << 20)
    old, new = (
        Path("/dev/shm") / f"cdc-old-{os.getpid()}",
        Path("/dev/shm") / f"cdc-new-{os.getpid()}",
    )
    try:
        old.write_bytes(blob)
        new.write_bytes(blob[:5000] + b"inserted!" * 100 + blob[5000:])
        held = set(cdc.chunk_file(old).digests)
        count, size = cdc.missing_bytes(cdc.chunk_file(new), held)
        assert 0 < size < 4 * cdc.MAX_SIZE  # around the insertion only
        assert count <= 4
    finally:
        old.unlink(missing_ok=True)
        new.unlink(missing_ok=True)


def test_installed_package_reads_back_byte_exact(pkgs: dict[str, Path], tmp_path: Path) -> None:
    digest = install(tmp_path, pkgs["v1"])
    held = HeldChunks(tmp_path / "held", tmp_path / "packages")
    held.remember(digest, pkgs["v1"], cdc.chunk_file(pkgs["v1"]).encode())
    [pkg] = held.load({digest})
    data = pkgs["v1"].read_bytes()
    assert pkg.read(0, len(data)) == data  # headers, members, padding, end blocks
    source = ChunkSource([pkg])
    index = cdc.chunk_file(pkgs["v1"])
    assert len(source) == len(set(index.digests))
    assert all(
        source.read(d) == data[o : o + n]
        for d, o, n in zip(index.digests, index.offsets, index.sizes, strict=True)
    )
    assert held.load(set()) == []  # only committed packages count
    held.prune(set())
    assert held.load({digest}) == []


def test_delta_fetches_only_missing_chunks(pkgs: dict[str, Path], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    v1 = install(data_dir, pkgs["v1"])
    delta = make_delta(data_dir)
    delta.held.remember(v1, pkgs["v1"], cdc.chunk_file(pkgs["v1"]).encode())
    m = desired(pkgs["v2"])
    dl = ChunkDownload(tmp_path / "downloads", m)
    cp = FakeControlPlane(delta, pkgs["v2"])

    stats = run_seed(delta, dl, {v1}, cp)

    assert stats is not None and dl.complete()
    held = set(cdc.chunk_file(pkgs["v1"]).digests)
    expected_chunks, expected_bytes = cdc.missing_bytes(cp.index, held)
    assert (cp.sent_chunks, cp.sent_bytes) == (expected_chunks, expected_bytes)
    assert not held & set(cp.digests_asked)  # nothing the device holds was asked for
    size = pkgs["v2"].stat().st_size
    assert 0 < cp.sent_bytes < 0.25 * size, (cp.sent_bytes, size)
    assert stats.fetched_bytes == cp.sent_bytes and stats.reused_bytes > 0.7 * size
    assert dl.assemble().read_bytes() == pkgs["v2"].read_bytes()  # whole-file digest checked
    assert (dl.dir / INDEX_FILE).read_bytes() == cp.index.encode()  # kept for remember()


def test_nothing_held_is_a_full_download(pkgs: dict[str, Path], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    v1 = install(data_dir, pkgs["v1"])
    delta = make_delta(data_dir)
    delta.held.remember(v1, pkgs["v1"], cdc.chunk_file(pkgs["v1"]).encode())
    dl = ChunkDownload(tmp_path / "downloads", desired(pkgs["v3"]))
    cp = FakeControlPlane(delta, pkgs["v3"])
    assert run_seed(delta, dl, {v1}, cp) is None
    assert cp.sent_chunks == 0 and dl.done == 0  # the fixed-chunk pull does it all
    assert cp.index_requests == 1 and (dl.dir / INDEX_FILE).exists()  # for the next version
    # Too little held to be worth a delta (the head only): pulled whole as well.
    index4 = cdc.chunk_file(pkgs["v4"])
    _, missing4 = cdc.missing_bytes(index4, set(cdc.chunk_file(pkgs["v1"]).digests))
    assert 0 < index4.package_size - missing4 < MIN_REUSED_SHARE * index4.package_size
    dl4 = ChunkDownload(tmp_path / "downloads4", desired(pkgs["v4"]))
    cp4 = FakeControlPlane(delta, pkgs["v4"])
    assert run_seed(delta, dl4, {v1}, cp4) is None and cp4.sent_chunks == 0 and dl4.done == 0
    # No chunk index in the desired state (an older control plane): nothing is asked at all.
    dl2 = ChunkDownload(tmp_path / "downloads2", desired(pkgs["v3"], with_index=False))
    cp2 = FakeControlPlane(delta, pkgs["v3"])
    assert run_seed(delta, dl2, {v1}, cp2) is None and cp2.index_requests == 0


def test_damaged_local_chunk_falls_back(
    pkgs: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    v1 = install(data_dir, pkgs["v1"])
    delta = make_delta(data_dir)
    delta.held.remember(v1, pkgs["v1"], cdc.chunk_file(pkgs["v1"]).encode())
    artifact = next((data_dir / "packages" / v1 / "artifacts").iterdir())
    with open(artifact, "r+b") as f:  # one byte in the shared first layer changes on disk
        f.seek(200_000)
        byte = f.read(1)
        f.seek(200_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    dl = ChunkDownload(tmp_path / "downloads", desired(pkgs["v2"]))
    cp = FakeControlPlane(delta, pkgs["v2"])

    with caplog.at_level("WARNING", logger="edge_agent.fleet.delta"):
        assert run_seed(delta, dl, {v1}, cp) is None
    assert f"of installed package {v1[:12]} does not match its digest" in caplog.text
    assert not dl.complete()  # what is missing is pulled whole; nothing wrong was written
    for i in range(dl.model.chunk_count):
        if dl.has(i):
            assert dl.verify_chunk(i, dl.read_chunk(i))
    assert delta.held.load({v1}) == []  # the damaged package is no longer a source


def test_device_holding_nothing_asks_for_the_index_beside_the_pull(
    pkgs: dict[str, Path], tmp_path: Path
) -> None:
    """No round trip waited for on a first install; the index still arrives for next time."""
    delta = make_delta(tmp_path / "data")
    dl = ChunkDownload(tmp_path / "downloads", desired(pkgs["v1"]))
    cp = FakeControlPlane(delta, pkgs["v1"])

    async def go() -> tuple[object, bool]:
        connected = asyncio.Event()
        connected.set()
        result = await delta.seed(
            dl, set(), send=cp.send, connected=connected, still_wanted=lambda: None
        )
        before = (dl.dir / INDEX_FILE).exists()  # seed returned before the answer came
        await asyncio.sleep(0.1)
        return result, before

    result, before = asyncio.run(go())
    assert result is None and not before and cp.index_requests == 1 and dl.done == 0
    assert (dl.dir / INDEX_FILE).read_bytes() == cp.index.encode()
    package = dl.dir / "pkg"
    package.write_bytes(pkgs["v1"].read_bytes())
    digest = install(tmp_path / "data", pkgs["v1"])
    delta.remember(dl.dir, digest, package)  # what the client does after the install
    assert [p.digest for p in delta.held.load({digest})] == [digest]


def test_delta_resumes_without_fetching_again(pkgs: dict[str, Path], tmp_path: Path) -> None:
    """After a break: chunks fetched by digest before it, and fixed chunks written, stay."""
    data_dir = tmp_path / "data"
    v1 = install(data_dir, pkgs["v1"])
    delta = make_delta(data_dir)
    delta.held.remember(v1, pkgs["v1"], cdc.chunk_file(pkgs["v1"]).encode())
    m = desired(pkgs["v2"])
    dl = ChunkDownload(tmp_path / "downloads", m)
    cp = FakeControlPlane(delta, pkgs["v2"])
    missing = [
        d
        for d in dict.fromkeys(cp.index.digests)
        if d not in set(delta.held.load({v1})[0].index.digests)
    ]
    assert len(missing) >= 2
    # What an interrupted run left: the index, one fetched chunk and one fixed chunk.
    (dl.dir / INDEX_FILE).write_bytes(cp.index.encode())
    (dl.dir / "cdc").mkdir()
    j = cp.index.digests.index(missing[0])
    at = cp.index.offsets[j]
    (dl.dir / "cdc" / missing[0].hex()).write_bytes(cp.blob[at : at + cp.index.sizes[j]])
    dl.write_chunk(0, cp.blob[: m.chunk_size])
    dl = ChunkDownload(tmp_path / "downloads", m)  # reopened, as after a restart
    assert dl.done == 1

    assert run_seed(delta, dl, {v1}, cp) is not None and dl.complete()
    assert cp.index_requests == 0  # the kept index was used
    assert missing[0] not in cp.digests_asked
    assert set(cp.digests_asked) <= set(missing[1:])
    assert dl.assemble().read_bytes() == cp.blob
