"""Capture receiving benchmark: records filed by a real ``control-plane serve`` against a raw MQTT
publish of the same bytes, in the same run.

A test-side device (the device's own broker identity) sends N image records on
``edge/<D>/captures/up`` in the contract's 256 KiB chunks, at most ``--window`` records unanswered
at a time (the agent's upload window), and waits for every ``STORED``: the control plane stages
each chunk in its database, verifies the digest, probes the image, writes the sample and its
pre-label and the capture row, and answers. The raw baseline publishes the same chunk payloads at
QoS 1, with the same window, to a plain subscriber that only counts them. Raw runs before and
after the captures (their mean is the baseline), so a machine whose load changes meanwhile skews
the ratio less; the load average is printed with each phase. Always exits 0.
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import statistics
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (HERE, REPO):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import numpy as np  # noqa: E402
from fleet_stack import (  # noqa: E402
    Stack,
    build_signed,
    log,
    make_onnx,
    mqtt_client,
    start_broker,
    start_control_plane,
    wait_credentials,
)
from PIL import Image  # noqa: E402
from script_support import free_port, run_in_work_folder  # noqa: E402

from protos import fleet_capture as wire  # noqa: E402
from protos import fleet_topics as topics  # noqa: E402

DEVICE = "bench-cap"
RAW_PUB, RAW_SUB = "bench-raw-capture-pub", "bench-raw-capture-sub"
RAW_TOPIC = topics.device_topic("bench-raw", wire.UP)


def records(n: int, side: int) -> list[bytes]:
    """``n`` distinct noise PNGs of ``side`` x ``side`` RGB pixels (they do not compress)."""
    rng = np.random.default_rng(3)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def meta() -> wire.CaptureMeta:
    return wire.CaptureMeta(
        model="bench",
        version="1",
        reason=wire.LOW_CONFIDENCE,
        captured_at_ms=int(time.time() * 1000),
        input_name="image",
        input_kind=wire.IMAGE,
        media_type="image/png",
        top_k=(wire.Prediction(0, "a", 0.4), wire.Prediction(1, "b", 0.35)),
    )


class Window:
    """At most ``size`` items unanswered; ``wait_all`` until every one is answered."""

    def __init__(self, size: int) -> None:
        self.free = threading.Semaphore(size)
        self.done = 0
        self.lock = threading.Condition()

    def release(self) -> None:
        self.free.release()
        with self.lock:
            self.done += 1
            self.lock.notify_all()

    def wait_all(self, n: int, timeout: float) -> None:
        with self.lock:
            if not self.lock.wait_for(lambda: self.done >= n, timeout):
                raise TimeoutError(f"{self.done} of {n} answered after {timeout} s")


def captures_run(stack: Stack, bundle: dict[str, Any], data: list[bytes], window: int) -> float:
    m = bundle["mqtt"]
    client = mqtt_client(stack.broker_port, m["username"], m["password"], m["client_id"])
    win = Window(window)
    pending = {wire.digest_of(d) for d in data}
    states: dict[str, int] = {}

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        ack = wire.decode_ack(msg.payload)
        states[ack.state] = states.get(ack.state, 0) + 1
        if ack.digest in pending:
            pending.discard(ack.digest)
            win.release()

    client.on_message = on_message
    client.subscribe(topics.device_topic(DEVICE, wire.ACK), qos=1)
    time.sleep(0.5)  # the SUBACK
    up = topics.device_topic(DEVICE, wire.UP)
    t0 = time.perf_counter()
    for d in data:
        win.free.acquire()
        for chunk in wire.chunks_of(DEVICE, d, meta()):
            client.publish(up, wire.encode_chunk(chunk), qos=1)
    win.wait_all(len(data), 600)
    seconds = time.perf_counter() - t0
    client.disconnect()
    client.loop_stop()
    if set(states) != {wire.STORED}:
        raise RuntimeError(f"answers other than STORED: {states}")
    return seconds


def raw_run(stack: Stack, data: list[bytes], window: int) -> float:
    """The same chunk payloads, QoS 1, the same window, to a subscriber that only counts."""
    payloads = [[wire.encode_chunk(c) for c in wire.chunks_of(DEVICE, d, meta())] for d in data]
    sub = mqtt_client(stack.broker_port, RAW_SUB, stack.local_password, RAW_SUB)
    pub = mqtt_client(stack.broker_port, RAW_PUB, stack.local_password, RAW_PUB)
    win = Window(window)
    per_record = [len(p) for p in payloads]
    got = [0]
    counts = iter(np.cumsum(per_record).tolist())
    boundary = [next(counts)]

    def on_message(_c: Any, _u: Any, _msg: Any) -> None:
        got[0] += 1
        while boundary[0] is not None and got[0] >= boundary[0]:
            win.release()
            boundary[0] = next(counts, None)

    sub.on_message = on_message
    sub.subscribe(RAW_TOPIC, qos=1)
    time.sleep(0.5)
    t0 = time.perf_counter()
    for record in payloads:
        win.free.acquire()
        for payload in record:
            pub.publish(RAW_TOPIC, payload, qos=1)
    win.wait_all(len(payloads), 600)
    seconds = time.perf_counter() - t0
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()
    return seconds


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from model_packager.signing import generate_keypair

    keys = work / "keys"
    generate_keypair(keys / "release.key", keys / "release.pub")
    package = build_signed(
        make_onnx(work / "m.onnx", 4, 2, 1), "bench", "1", keys / "release.key", work
    )
    stack = Stack(
        work=work,
        broker_port=free_port(),
        api_port=free_port(),
        api_token=secrets.token_hex(16),
        mqtt_password=secrets.token_hex(16),
        trusted_pub=keys / "release.pub",
    )
    stack.local_identities |= {RAW_PUB: [f"write {RAW_TOPIC}"], RAW_SUB: [f"read {RAW_TOPIC}"]}
    data = records(args.records, args.side)
    size = sum(len(d) for d in data)
    chunks = sum(wire.chunk_count(len(d)) for d in data)
    with ExitStack() as cleanup:
        cleanup.callback(stack.close)
        start_broker(stack)
        start_control_plane(stack)
        bundle = stack.call("POST", "/devices", json={"device_id": DEVICE})["bundle"]
        wait_credentials(stack, bundle)
        with open(package, "rb") as f:
            stack.call("POST", "/packages", files={"file": (package.name, f)})
        log(f"{args.records} records, {size / 2**20:.1f} MiB in {chunks} chunks")
        raws = [raw_run(stack, data, args.window)]
        load_raw = os.getloadavg()[0]
        cap = captures_run(stack, bundle, data, args.window)
        load_cap = os.getloadavg()[0]
        raws.append(raw_run(stack, data, args.window))
        held = stack.call("GET", "/captures", params={"limit": 1000})
        if len(held) != args.records:
            raise RuntimeError(f"{len(held)} captures held, {args.records} sent")
    raw = statistics.mean(raws)
    print(
        f"\nraw QoS 1 publish ({chunks} chunks, window {args.window}): "
        f"{raw:.2f} s ({size / 2**20 / raw:.1f} MiB/s; runs {raws[0]:.2f}, {raws[1]:.2f} s; "
        f"load {load_raw:.1f})"
    )
    print(
        f"captures filed by the control plane (STORED): {cap:.2f} s "
        f"({args.records / cap:.0f} records/s, {size / 2**20 / cap:.1f} MiB/s; load {load_cap:.1f})"
    )
    print(f"captures / raw: {cap / raw:.1f}x")
    return {"raw_s": raws, "captures_s": cap, "records": args.records, "bytes": size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-captures-cloud", description=__doc__)
    parser.add_argument("--records", type=int, default=200, help="records to send (200)")
    parser.add_argument("--side", type=int, default=128, help="PNG side in pixels (128: 48 KiB)")
    parser.add_argument("--window", type=int, default=8, help="records unanswered at most (8)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args(argv)
    print(
        f"bench-captures-cloud: {args.records} records of {args.side}x{args.side} RGB noise PNGs "
        f"to `control-plane serve` (SQLite) through Mosquitto; {os.cpu_count()} CPUs, load "
        f"average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return run_in_work_folder("bench-captures-cloud", run, args)


if __name__ == "__main__":
    sys.exit(main())
