"""Worker processes of ``scripts/bench-rollout``: raw broadcast subscribers and simulated devices.

They run as separate processes for the same reason the agents do: a Python process has one GIL,
so 20 paho clients (or 200 device sessions) in the benchmark's own process would measure the GIL,
not the broker or the control plane. The benchmark starts them, reads their stdout line protocol
(``ready ...``, ``done <unix time> ...``, ``installed <device> <unix time>``) and stops them.

``raw-sub``: one plain paho subscriber (QoS 1) that counts messages on one topic and prints the
time it received the last one. Nothing is verified or written: this is the floor the fleet
channel is compared with.

``sim``: many simulated devices in one process, each a real MQTT session with its own device
credentials, client id and Last Will, speaking the protocol as the agent does and encoding with the
agent's own codec and types (``edge_agent.fleet.codec``, ``edge_agent.fleet.domain``): retained
ONLINE status and ReportedState at connect; on a DesiredState of a higher generation, IN_PROGRESS,
then a pull of the package's chunks (ChunkRequest -> ChunkData, each chunk checked against
``chunk_sha256`` and the whole file against ``package_digest``; the benchmark deploys a one-chunk
package), then INSTALLED with the model in ``models``. No model is loaded and nothing is written to
disk: these devices load the control plane and the broker, not themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

QOS = 1
AGENT_VERSION = "sim-0.1"
#: A pull not finished this long after its request is asked again (chunk queue full, lost reply).
CHUNK_RETRY_S = 10.0


def _say(line: str) -> None:
    """One protocol line to the benchmark (stdout is a pipe: flush every line)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# --- raw-sub ----------------------------------------------------------------------------------


def run_raw_subscriber(args: argparse.Namespace) -> int:
    """Subscribe, say ready, count ``--count`` messages, print the time of the last one."""
    got = 0
    nbytes = 0
    subscribed = threading.Event()
    finished = threading.Event()
    done_at = 0.0

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{args.client_id}-{uuid.uuid4().hex[:6]}",
        clean_session=True,
        protocol=mqtt.MQTTv311,
    )
    client.username_pw_set(args.username, os.environ["BENCH_MQTT_PASSWORD"])

    def on_connect(c: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        if getattr(rc, "is_failure", False):
            _say(f"error connect refused: {rc}")
            finished.set()
            return
        c.subscribe(args.topic, QOS)

    def on_subscribe(_c: mqtt.Client, _u: object, _m: int, _rc: object, _p: object) -> None:
        subscribed.set()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal got, nbytes, done_at
        got += 1
        nbytes += len(msg.payload)
        if got == args.count:
            done_at = time.time()
            finished.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(args.host, args.port, keepalive=60)
    client.loop_start()
    if not subscribed.wait(30):
        _say("error not subscribed within 30 s")
        return 1
    _say("ready")
    if not finished.wait(args.timeout):
        _say(f"error timeout after {got} of {args.count} messages")
        return 1
    _say(f"done {done_at:.6f} {got} {nbytes}")
    client.disconnect()
    client.loop_stop()
    return 0


# --- sim --------------------------------------------------------------------------------------


class SimDevice:
    """One simulated device: a real session with the device's credentials, no inference.

    Callbacks run on this client's paho thread only, so the device's state needs no lock; the
    retry check from the main thread only reads it and publishes (paho's publish is thread-safe).
    """

    def __init__(self, bundle: dict[str, Any], host: str, port: int) -> None:
        from edge_agent.fleet import codec, domain

        self.codec, self.domain = codec, domain
        self.device_id: str = bundle["device_id"]
        m = bundle["mqtt"]
        prefix = m["topic_prefix"]
        self.t_desired = f"{prefix}/desired"
        self.t_reported = f"{prefix}/reported"
        self.t_status = f"{prefix}/status"
        self.t_req = f"{prefix}/chunks/req"
        self.t_data = f"{prefix}/chunks/data"
        self.host, self.port = host, port
        self.acted_generation = 0
        self.models: list[Any] = []
        self.last_result: Any = None
        self.pulling: Any = None  # the DesiredModel being pulled
        self.shared_topic = ""  # its shared package topic, while pulling it (as the agent does)
        self.chunks: dict[int, bytes] = {}
        self.asked_at = 0.0
        self.ready = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=m["client_id"],
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self.client.username_pw_set(m["username"], m["password"])
        self.client.will_set(
            self.t_status, codec.status_to_proto(False, AGENT_VERSION), qos=QOS, retain=True
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=60)
        self.client.loop_start()

    def stop(self) -> None:
        info = self.client.publish(
            self.t_status, self.codec.status_to_proto(False, AGENT_VERSION), qos=QOS, retain=True
        )
        with contextlib.suppress(RuntimeError, ValueError):  # not connected: nothing to wait for
            info.wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()

    # --- protocol (paho thread) ---

    def _report(self) -> None:
        c = self.codec
        state = self.domain.Reported(
            self.device_id, AGENT_VERSION, self.models, self.last_result, self.acted_generation
        )
        self.client.publish(self.t_reported, c.reported_to_proto(state), qos=QOS, retain=True)

    def _on_connect(self, cl: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        if getattr(rc, "is_failure", False):
            _say(f"error {self.device_id} refused: {rc}")
            return
        cl.subscribe([(self.t_desired, QOS), (self.t_data, QOS)])
        cl.publish(
            self.t_status, self.codec.status_to_proto(True, AGENT_VERSION), qos=QOS, retain=True
        )
        self._report()

    def _on_subscribe(self, _c: mqtt.Client, _u: object, _m: int, _rc: object, _p: object) -> None:
        self.ready.set()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic == self.t_desired and msg.payload:
                self._on_desired(self.codec.desired_from_proto(msg.payload))
            elif msg.topic == self.t_data or (self.shared_topic and msg.topic == self.shared_topic):
                self._on_chunk(self.codec.chunk_from_proto(msg.payload))
        except ValueError as exc:
            _say(f"error {self.device_id} bad payload on {msg.topic}: {exc}")

    def _on_desired(self, desired: Any) -> None:
        if desired.generation <= self.acted_generation or not desired.models:
            return  # a repeat (retained message on reconnect) or an older state
        self.acted_generation = desired.generation
        m = desired.models[-1]
        if any(r.package_digest == m.package_digest for r in self.models):
            return
        self.pulling, self.chunks = m, {}
        if m.chunk_topic:  # subscribed before the first request, as the agent does
            self.shared_topic = m.chunk_topic
            self.client.subscribe(m.chunk_topic, QOS)
        self._set_result("IN_PROGRESS", "download", 0)
        self.ask()

    def ask(self) -> None:
        """Request the missing chunks (at most 64 indexes per request, as the protocol says)."""
        m = self.pulling
        if m is None:
            return
        missing = [i for i in range(m.chunk_count) if i not in self.chunks]
        for start in range(0, len(missing), 64):
            payload = self.codec.chunk_request_to_proto(
                m.package_digest, missing[start : start + 64], uuid.uuid4().hex[:12]
            )
            self.client.publish(self.t_req, payload, qos=QOS)
        self.asked_at = time.monotonic()

    def _on_chunk(self, answer: Any) -> None:
        m = self.pulling
        if m is None or answer.package_digest != m.package_digest:
            return
        if answer.error:
            _say(f"error {self.device_id} chunk request refused: {answer.error}")
            return
        i = answer.index
        if i >= m.chunk_count or hashlib.sha256(answer.data).digest() != m.chunk_sha256[i]:
            return  # asked again by the retry check
        self.chunks[i] = answer.data
        if len(self.chunks) < m.chunk_count:
            return
        whole = hashlib.sha256(b"".join(self.chunks[j] for j in range(m.chunk_count)))
        if whole.hexdigest() != m.package_digest:
            self._set_result("FAILED", "download", len(self.chunks), "package digest mismatch")
        else:
            self.models = [r for r in self.models if r.name != m.name] + [
                self.domain.ModelReport(m.name, m.version, "onnx", m.package_digest, True)
            ]
            self._set_result("INSTALLED", "commit", m.chunk_count)
            _say(f"installed {self.device_id} {time.time():.6f}")
        if self.shared_topic:
            self.client.unsubscribe(self.shared_topic)
        self.pulling, self.chunks, self.shared_topic = None, {}, ""

    def _set_result(self, outcome: str, step: str, done: int, reason: str = "") -> None:
        m = self.pulling
        self.last_result = self.domain.Result(
            m.deployment_id, outcome, step, reason, done, m.chunk_count, m.package_digest
        )
        self._report()


def run_sim(args: argparse.Namespace) -> int:
    """Connect every device of the bundle file, say ready, then serve until stdin closes."""
    bundles = json.loads(Path(args.bundles).read_text())
    devices = [SimDevice(b, args.host, args.port) for b in bundles]
    for d in devices:
        d.start()
        time.sleep(args.connect_spacing)  # a fleet does not reconnect in one instant
    deadline = time.monotonic() + 60
    for d in devices:
        if not d.ready.wait(max(0.0, deadline - time.monotonic())):
            _say(f"error {d.device_id} not subscribed within 60 s")
            return 1
    _say(f"ready {len(devices)}")

    stop = threading.Event()

    def retry_loop() -> None:
        while not stop.wait(1.0):
            now = time.monotonic()
            for d in devices:
                if d.pulling is not None and now - d.asked_at > CHUNK_RETRY_S:
                    d.ask()

    threading.Thread(target=retry_loop, daemon=True).start()
    sys.stdin.read()  # the benchmark closes our stdin to stop us
    stop.set()
    for d in devices:
        d.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    raw = sub.add_parser("raw-sub", help="one QoS 1 subscriber counting messages")
    raw.add_argument("--host", default="127.0.0.1")
    raw.add_argument("--port", type=int, required=True)
    raw.add_argument("--username", required=True, help="password in $BENCH_MQTT_PASSWORD")
    raw.add_argument("--client-id", required=True)
    raw.add_argument("--topic", required=True)
    raw.add_argument("--count", type=int, required=True)
    raw.add_argument("--timeout", type=float, default=600)
    raw.set_defaults(func=run_raw_subscriber)
    sim = sub.add_parser("sim", help="simulated devices from a JSON list of config bundles")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, required=True)
    sim.add_argument("--bundles", required=True)
    sim.add_argument("--connect-spacing", type=float, default=0.01)
    sim.set_defaults(func=run_sim)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
