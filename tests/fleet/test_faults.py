"""Broker cuts, tampered chunks, untrusted signatures, offline restarts and the telemetry outbox."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter

from protos import fleet_topics
from protos.gen import fleet_pb2
from tests.control_plane.conftest import free_port, wait_for
from tests.fleet.conftest import CHUNK_SIZE, Fleet, Packages
from tests.fleet.helpers import download_stats, serving, wait_reported, wait_serving


class ChunkCounter:
    """Counts ChunkData answers on one device's subtree (control plane identity), per index."""

    def __init__(self, fleet: Fleet, device_id: str) -> None:
        self.fleet, self.device_id = fleet, device_id
        self.topic = fleet_topics.device_topic(device_id, fleet_topics.CHUNKS_DATA)
        self.per_index: Counter[int] = Counter()
        self.attach()

    def attach(self) -> None:
        probe = self.fleet.observer()
        probe.client.on_message = self._on_message
        probe.subscribe(self.topic)

    def _on_message(self, _c, _u, msg) -> None:  # type: ignore[no-untyped-def]
        answer = fleet_pb2.ChunkData()
        answer.ParseFromString(msg.payload)
        if not answer.error:
            self.per_index[answer.index] += 1

    @property
    def total(self) -> int:
        return sum(self.per_index.values())


def test_broker_cut_mid_transfer_resumes(
    fleet: Fleet, packages: Packages, start_fleet_agent
) -> None:
    bundle = fleet.register("cam-cut")
    # One chunk per request, one request in flight: slow enough to cut in the middle.
    agent = start_fleet_agent(bundle, chunk_window=1, chunks_per_request=1).start()
    digest = fleet.upload(packages.v2)
    chunks = -(-packages.v2.stat().st_size // CHUNK_SIZE)
    counter = ChunkCounter(fleet, "cam-cut")
    dep = fleet.deploy(digest, device_id="cam-cut")

    wait_for(lambda: counter.total >= chunks // 3, timeout=30, interval=0.005)
    fleet.stop_broker()
    before_cut = counter.total
    assert before_cut < chunks, "the transfer finished before the cut"
    assert serving(agent.address, packages.models) == "v1"  # serves through the outage
    time.sleep(1.0)
    fleet.start_broker()
    wait_for(fleet.app.state.fleet.connected.is_set, timeout=40, interval=0.1)
    counter.attach()

    targets = fleet.wait_final(dep, ["cam-cut"], timeout=60)
    assert targets["cam-cut"]["state"] == "installed", targets
    wait_serving(agent.address, packages.models, "v2", timeout=5)
    [stats] = download_stats(agent.log())
    allowed = 1 + 0.05 * chunks
    # Device side: chunks received that were already on disk.
    assert stats["duplicates"] <= allowed, stats
    assert stats["fetched"] == chunks == stats["total"]
    # Wire side, seen by an observer with the control plane's rights: answers per index.
    refetched = sum(n - 1 for n in counter.per_index.values() if n > 1)
    assert refetched <= allowed, (refetched, counter.per_index)
    print(
        f"\nbroker cut after {before_cut}/{chunks} chunks: device duplicates "
        f"{stats['duplicates']}, wire re-fetches {refetched}, timeouts {stats['timeouts']}"
    )


def test_tampered_chunk_is_rejected_and_reported(
    fleet: Fleet, packages: Packages, start_fleet_agent
) -> None:
    """A publisher with control-plane credentials answers chunk 5 with wrong bytes, always."""
    bundle = fleet.register("cam-tamper")
    agent = start_fleet_agent(bundle).start()
    fleet.app.state.fleet.stop()  # the fake below is the only one answering
    blob = packages.v2.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    pieces = [blob[i : i + CHUNK_SIZE] for i in range(0, len(blob), CHUNK_SIZE)]
    fake = fleet.observer()
    req_topic = fleet_topics.device_topic("cam-tamper", fleet_topics.CHUNKS_REQUEST)
    data_topic = fleet_topics.device_topic("cam-tamper", fleet_topics.CHUNKS_DATA)
    tampered = Counter[int]()
    lock = threading.Lock()

    def answer(_c, _u, msg) -> None:  # type: ignore[no-untyped-def]
        if msg.topic != req_topic:
            return
        req = fleet_pb2.ChunkRequest()
        req.ParseFromString(msg.payload)
        for i in req.indexes:
            data = pieces[i]
            if i == 5:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
                with lock:
                    tampered[i] += 1
            out = fleet_pb2.ChunkData(
                package_digest=digest,
                index=i,
                chunk_count=len(pieces),
                sha256=hashlib.sha256(pieces[i]).digest(),  # claims the right digest
                data=data,
                request_id=req.request_id,
            )
            fake.client.publish(data_topic, out.SerializeToString(), qos=1)

    fake.client.on_message = answer
    fake.subscribe(req_topic)
    desired = fleet_pb2.DesiredState(device_id="cam-tamper", generation=1, deployment_id="dep-x")
    desired.models.add(
        deployment_id="dep-x",
        name="mlp",
        version="2",
        package_digest=digest,
        package_size=len(blob),
        chunk_size=CHUNK_SIZE,
        chunk_count=len(pieces),
        chunk_sha256=[hashlib.sha256(p).digest() for p in pieces],
    )
    fake.publish(
        fleet_topics.device_topic("cam-tamper", fleet_topics.DESIRED),
        desired.SerializeToString(),
        retain=True,
    )
    state = wait_reported(
        fleet.observer(), "cam-tamper", lambda s: s.last_result.outcome == 3, timeout=30
    )
    assert state.last_result.deployment_id == "dep-x"
    assert state.last_result.step == "download"
    assert "chunk 5 failed its sha256 check 3 times" in state.last_result.reason
    assert tampered[5] == 3  # asked again after each rejection, then gave up
    assert serving(agent.address, packages.models) == "v1"
    assert [(m.version, m.active) for m in state.models] == [("1", True)]


def test_unknown_signing_key_fails_at_verify(
    fleet: Fleet, packages: Packages, start_fleet_agent
) -> None:
    bundle = fleet.register("cam-key")
    agent = start_fleet_agent(bundle).start()
    dep = fleet.deploy(fleet.upload(packages.unknown_key), device_id="cam-key")
    target = fleet.wait_final(dep, ["cam-key"])["cam-key"]
    assert target["state"] == "failed"
    assert target["step"] == "verify"
    assert target["reason"]
    assert serving(agent.address, packages.models) == "v1"
    reported = fleet.device("cam-key")["reported"]
    assert [(m["version"], m["active"]) for m in reported["models"]] == [("1", True)]


def test_offline_restart_serves_within_2s(
    fleet: Fleet, packages: Packages, start_fleet_agent
) -> None:
    """Broker down (nothing listens on the port): start-up and serving must not wait for it."""
    bundle = fleet.register("cam-offline")
    bundle["mqtt"]["url"] = f"mqtt://127.0.0.1:{free_port()}"
    agent = start_fleet_agent(bundle)
    t0 = time.monotonic()
    agent.start()
    while serving(agent.address, packages.models) != "v1":
        assert time.monotonic() - t0 < 10
        time.sleep(0.02)
    elapsed = time.monotonic() - t0
    print(f"\noffline restart: serving mlp 1 {elapsed:.2f} s after the process started")
    assert elapsed < 5.0  # the target is 2 s; generous against a loaded CI machine
    assert "unreachable" in agent.log()


def test_offline_telemetry_arrives_once_in_order(
    fleet: Fleet, packages: Packages, start_fleet_agent
) -> None:
    bundle = fleet.register("cam-tele")
    agent = start_fleet_agent(bundle, telemetry_interval_s=0.1).start()
    wait_for(lambda: fleet.device("cam-tele")["telemetry_seq"] >= 3, timeout=15)
    fleet.stop_broker()
    time.sleep(2.0)  # ~20 snapshots written while offline
    offline_from = time.time() - 2.0
    fleet.start_broker()
    wait_for(fleet.app.state.fleet.connected.is_set, timeout=40, interval=0.1)
    agent.stop()  # no more records: everything written so far must arrive
    outbox = agent.workdir / "data" / "fleet" / "outbox.sqlite3"
    import sqlite3

    with sqlite3.connect(outbox) as db:
        written = db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()[0] - 1
        pending = db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    # agent.stop() may cut a batch short; restart it offline-free to flush whatever remains
    if pending:
        agent.start()
        wait_for(lambda: fleet.device("cam-tele")["telemetry_seq"] >= written, timeout=20)
        agent.stop()
    records = fleet.api.get("/api/v1/devices/cam-tele/telemetry").json()
    seqs = [r["seq"] for r in records]
    assert seqs[:written] == list(range(1, written + 1)), seqs
    assert len(seqs) == len(set(seqs))
    offline = [r for r in records if r["recorded_at"] and _epoch(r["recorded_at"]) >= offline_from]
    assert len(offline) >= 10
    assert all(json.loads(r["payload"]) for r in records)
    assert fleet.device("cam-tele")["telemetry_dropped"] == 0
    print(f"\ntelemetry: {written} records, {len(offline)} written during the outage")


def _epoch(iso: str) -> float:
    import datetime as dt

    value = dt.datetime.fromisoformat(iso)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()
