"""In-process checks of the fleet building blocks that need no broker."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.config import FleetSettings
from edge_agent.fleet.backoff import Backoff
from edge_agent.fleet.domain import ChunkAnswer, Result
from edge_agent.fleet.downloads import ChunkDownload, ChunkPuller, DownloadError
from edge_agent.fleet.link import LinkEvent, Message, MqttLink
from edge_agent.fleet.outbox import Outbox
from model_packager.signing import key_id
from protos.fleet_state import DesiredModel


def _public_pem(private: Ed25519PrivateKey) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_outbox_bounded_ordered_and_persistent(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path, max_records=5)
    seqs = [box.append("metrics", {"n": i}) for i in range(8)]
    assert seqs == list(range(1, 9))
    assert [r.seq for r in box.oldest(10)] == [4, 5, 6, 7, 8]  # oldest dropped first
    assert box.dropped == 3
    box.acknowledge(5)
    assert [r.seq for r in box.oldest(10)] == [6, 7, 8]
    box.close()
    again = Outbox(path, max_records=5)  # seq and drop count survive a restart
    assert again.append("metrics", {}) == 9
    assert again.dropped == 3
    assert len(again) == 4


def test_backoff_is_jittered_and_capped() -> None:
    b = Backoff(0.5, 4.0, random.Random(1))
    delays = [b.next() for _ in range(10)]
    assert all(0.5 <= d <= 4.0 for d in delays)
    assert len(set(delays)) == len(delays)
    b.reset()
    assert b.next() == 0.5  # the first window is [min, min]


def _model(blob: bytes, size: int = 10) -> DesiredModel:
    pieces = [blob[i : i + size] for i in range(0, len(blob), size)]
    return DesiredModel(
        "dep",
        "m",
        "1",
        hashlib.sha256(blob).hexdigest(),
        len(blob),
        size,
        len(pieces),
        tuple(hashlib.sha256(p).digest() for p in pieces),
    )


def test_download_resumes_and_checks_the_whole_file(tmp_path: Path) -> None:
    blob = bytes(range(256)) * 2
    m = _model(blob)
    dl = ChunkDownload(tmp_path, m)
    for i in range(0, m.chunk_count, 2):
        assert dl.verify_chunk(i, blob[i * 10 : i * 10 + 10])
        dl.write_chunk(i, blob[i * 10 : i * 10 + 10])
    assert not dl.verify_chunk(1, b"x" * 10)
    (dl.chunks_dir / "00000002.chunk").write_bytes(b"damaged!!!")  # caught on reopen
    resumed = ChunkDownload(tmp_path, m)
    assert resumed.missing() == [i for i in range(m.chunk_count) if i % 2 or i == 2]
    for i in resumed.missing():
        resumed.write_chunk(i, blob[i * 10 : i * 10 + 10])
    assert resumed.assemble().read_bytes() == blob
    assert ChunkDownload(tmp_path, m).assembled() is not None


def test_download_refuses_inconsistent_geometry(tmp_path: Path) -> None:
    m = _model(b"a" * 100)
    bad = DesiredModel(
        *[getattr(m, f) for f in ("deployment_id", "name", "version")],
        m.package_digest,
        99999,
        m.chunk_size,
        m.chunk_count,
        m.chunk_sha256,
    )
    with pytest.raises(DownloadError):
        ChunkDownload(tmp_path, bad)


class _Control:
    """A stand-in for the control plane behind ``ChunkPuller.send``: answers every request."""

    def __init__(self, blob: bytes, size: int, corrupt_once: set[int] | None = None) -> None:
        self.blob, self.size = blob, size
        self.corrupt = set(corrupt_once or ())
        self.requests: list[list[int]] = []
        self.refuse = False
        self.puller: ChunkPuller | None = None

    def send(self, indexes: list[int]) -> str:
        request_id = f"r{len(self.requests)}"
        self.requests.append(indexes)
        asyncio.get_running_loop().call_soon(self._answer, request_id, indexes)
        return request_id

    def _answer(self, request_id: str, indexes: list[int]) -> None:
        assert self.puller is not None
        digest = self.puller.download.model.package_digest
        if self.refuse:
            self.puller.offer(ChunkAnswer(digest, 0, b"", request_id, "unknown package"))
            return
        for i in indexes:
            data = self.blob[i * self.size : (i + 1) * self.size]
            if i in self.corrupt:
                self.corrupt.discard(i)
                data = b"x" * len(data)
            self.puller.offer(ChunkAnswer(digest, i, data, request_id, ""))
            self.puller.offer(ChunkAnswer("another-package", i, b"", request_id, ""))  # ignored


def _puller(tmp_path: Path, control: _Control, m: DesiredModel, **limits: float) -> ChunkPuller:
    fs = FleetSettings(url="mqtt://localhost", **limits)
    connected = asyncio.Event()
    connected.set()
    progress: list[int] = []
    puller = ChunkPuller(
        ChunkDownload(tmp_path, m),
        fs,
        send=control.send,
        connected=connected,
        still_wanted=lambda: None,
        on_chunk=progress.append,
    )
    control.puller = puller
    return puller


def test_chunk_puller_keeps_a_window_and_asks_again_for_rejected_chunks(tmp_path: Path) -> None:
    blob = bytes(range(256)) * 2
    m = _model(blob)
    control = _Control(blob, 10, corrupt_once={3})
    puller = _puller(tmp_path, control, m, chunk_window=2, chunks_per_request=4)
    asyncio.run(puller.run())
    assert puller.download.complete()
    assert puller.download.assemble().read_bytes() == blob
    assert control.requests[:2] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # a window of 2 requests of 4
    assert all(len(r) <= 4 for r in control.requests)
    assert puller.stats["rejected"] == 1 and puller.stats["fetched"] == m.chunk_count
    assert sum(r.count(3) for r in control.requests) == 2  # the damaged chunk was asked again


def test_chunk_puller_gives_up_after_repeated_refusals(tmp_path: Path) -> None:
    blob = b"z" * 30
    control = _Control(blob, 10)
    control.refuse = True
    puller = _puller(tmp_path, control, _model(blob), max_chunk_rejects=2, chunk_timeout_s=0.05)
    with pytest.raises(DownloadError, match="refused"):
        asyncio.run(puller.run())


def test_link_hands_every_event_to_the_loop_in_order_despite_a_failing_handler() -> None:
    """Events from the network thread reach the loop in order, a burst with one wake-up, and
    a handler that raises loses neither the events behind it nor later ones."""
    got: list[str] = []

    def on_event(event: LinkEvent) -> None:
        assert isinstance(event, Message)
        got.append(event.topic)
        if event.topic == "t13":
            raise RuntimeError("a broken handler")

    async def main() -> None:
        link = MqttLink(
            FleetSettings(url="mqtt://localhost"),
            "dev",
            [],
            "edge/dev/status",
            b"on",
            b"off",
            asyncio.get_running_loop(),
            on_event,
        )
        sender = threading.Thread(
            target=lambda: [link._emit(Message(f"t{i}", b"")) for i in range(500)]
        )
        sender.start()
        await asyncio.to_thread(sender.join)
        for _ in range(100):
            if len(got) == 500:
                break
            await asyncio.sleep(0.01)
        link._emit(Message("after", b""))
        await asyncio.sleep(0.05)

    asyncio.run(main())
    assert got == [f"t{i}" for i in range(500)] + ["after"]


def test_result_constructors_fill_the_deployment_fields() -> None:
    m = _model(b"q" * 25)
    assert Result.installed(m) == Result("dep", "INSTALLED", "commit", "", 3, 3, m.package_digest)
    assert Result.in_progress(m, "download", 1) == Result(
        "dep", "IN_PROGRESS", "download", "", 1, 3, m.package_digest
    )
    assert Result.failed(m, "load", "bad") == Result(
        "dep", "FAILED", "load", "bad", 3, 3, m.package_digest
    )
    assert Result.failed(m, "download", "cut", chunks_done=2).chunks_done == 2
    assert Result.failed(m, "x", "y").final and not Result.in_progress(m, "install", 3).final


def test_fleet_package_keeps_mqtt_out_of_other_agent_modules() -> None:
    """paho is imported only by edge_agent/fleet/link.py."""
    root = Path(__file__).resolve().parents[2] / "edge_agent"
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "paho" in p.read_text())
    assert users == ["fleet/link.py"] or users == ["fleet/__init__.py", "fleet/link.py"]


def test_registration_bundle_becomes_agent_config(tmp_path: Path) -> None:
    """The bundle's ``mqtt`` object is the ``fleet`` section as is; keys become files."""
    import yaml

    from edge_agent.config import load_settings
    from edge_agent.fleet.bundle import config_from_bundle

    private = Ed25519PrivateKey.generate()
    pem = _public_pem(private)
    bundle = {
        "device_id": "cam-1",
        "mqtt": {
            "url": "mqtt://broker:1883",
            "client_id": "cam-1",
            "username": "cam-1",
            "password": "s3cret-s3cret-s3cret",
            "topic_prefix": "edge/cam-1",
        },
        "trusted_keys_pem": [pem],
    }
    config = config_from_bundle(bundle, tmp_path / "keys", data_dir=str(tmp_path / "data"))
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path)
    assert settings.device_id == "cam-1"
    assert settings.fleet is not None
    assert settings.fleet.url == "mqtt://broker:1883"
    assert settings.fleet.password is not None
    assert settings.fleet.password.get_secret_value() == "s3cret-s3cret-s3cret"
    assert settings.fleet.topic_prefix == "edge/cam-1"
    assert [p.read_text() for p in settings.trusted_keys] == bundle["trusted_keys_pem"]
    # Named by the key id the registry shows, and absolute: the agent may run from any directory.
    assert [p.name for p in settings.trusted_keys] == [f"{key_id(private.public_key())}.pub"]
    assert all(p.is_absolute() for p in settings.trusted_keys)


def test_join_refuses_a_bundle_key_that_is_not_a_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``edge-agent join`` run from the bundle's folder with a relative ``--out``: a bad key is
    one clear error and writes nothing; a good bundle gives key paths usable from elsewhere."""
    import json

    from edge_agent.cli import main

    monkeypatch.chdir(tmp_path)
    mqtt = {"url": "mqtt://b:1883", "client_id": "d", "username": "d", "topic_prefix": "edge/d"}
    bad = {"device_id": "d", "mqtt": mqtt, "trusted_keys_pem": ["not a key"]}
    Path("bad.json").write_text(json.dumps(bad))
    assert main(["join", "bad.json", "--out", "bad.yaml"]) == 1
    assert "a trusted key of the bundle" in capsys.readouterr().err
    assert not Path("bad.yaml").exists() and not Path("trusted-keys").exists()

    pem = _public_pem(Ed25519PrivateKey.generate())
    Path("good.json").write_text(json.dumps({**bad, "trusted_keys_pem": [pem]}))
    assert main(["join", "good.json", "--out", "agent.yaml"]) == 0
    import yaml

    written = yaml.safe_load(Path("agent.yaml").read_text())["trusted_keys"]
    assert len(written) == 1 and Path(written[0]).is_absolute()
    assert Path(written[0]).read_text() == pem


class _CountingHash:
    """Stands in for the whole-file sha256 and counts the bytes fed to it."""

    def __init__(self) -> None:
        self.inner = hashlib.sha256()
        self.fed = 0

    def update(self, data: bytes) -> None:
        self.fed += len(data)
        self.inner.update(data)

    def hexdigest(self) -> str:
        return self.inner.hexdigest()


@pytest.mark.parametrize("held_bytes", [0, 1 << 20])
def test_download_hashes_every_byte_once_in_any_arrival_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held_bytes: int
) -> None:
    import edge_agent.fleet.downloads as downloads

    monkeypatch.setattr(downloads, "HELD_BYTES", held_bytes)  # 0: early chunks read back
    blob = random.Random(3).randbytes(1000)
    m = _model(blob, size=64)
    order = list(range(m.chunk_count))
    random.Random(4).shuffle(order)
    dl = ChunkDownload(tmp_path, m)
    counter = _CountingHash()
    dl._whole = counter  # type: ignore[assignment]
    for n, i in enumerate(order):
        dl.write_chunk(i, blob[i * 64 : (i + 1) * 64])
        if n == len(order) // 2:
            # In-order prefix only: what is hashed is exactly what is in .part.
            assert counter.fed == dl.part_path.stat().st_size
    assert counter.fed == len(blob)  # each byte once, never re-read for the digest
    assert not list(dl.chunks_dir.iterdir())  # early chunks were folded into the file
    assert dl.assemble().read_bytes() == blob


def test_download_resumes_from_a_torn_part_file(tmp_path: Path) -> None:
    blob = random.Random(5).randbytes(700)
    m = _model(blob, size=100)
    dl = ChunkDownload(tmp_path, m)
    for i in (0, 1, 2, 5):
        dl.write_chunk(i, blob[i * 100 : (i + 1) * 100])
    with open(dl.part_path, "ab") as f:
        f.write(b"half a chunk")  # the agent died while appending chunk 3
    resumed = ChunkDownload(tmp_path, m)
    assert resumed.missing() == [3, 4, 6] and resumed.done == 4
    for i in resumed.missing():
        resumed.write_chunk(i, blob[i * 100 : (i + 1) * 100])
    assert resumed.assemble().read_bytes() == blob


def test_download_refuses_chunks_that_do_not_make_the_package(tmp_path: Path) -> None:
    blob = b"q" * 50
    m = _model(blob)
    wrong = DesiredModel(
        *[getattr(m, f) for f in ("deployment_id", "name", "version")],
        "0" * 64,
        m.package_size,
        m.chunk_size,
        m.chunk_count,
        m.chunk_sha256,
    )
    dl = ChunkDownload(tmp_path, wrong)
    for i in range(m.chunk_count):
        dl.write_chunk(i, blob[i * 10 : (i + 1) * 10])
    with pytest.raises(DownloadError, match="sha256"):
        dl.assemble()
    assert dl.assembled() is None
