"""A misbehaving device for ``scripts/fleet-soak`` and ``scripts/bench-flood``: it floods.

One process, one real MQTT session with a registered device's own credentials (its bundle), on
its own topics only (the broker ACL allows nothing else), speaking the protocol's messages with
the wrong manners:

* ``ChunkRequest`` at a steady ``--rate`` per second (default 400), each for ``--indexes`` chunks
  (default 8, as the agent asks) of the package in its retained desired state, cycling through
  the package; with no desired state, for a made-up digest (the control plane then answers each
  with an error). A well-behaved agent keeps at most ``chunk_window`` (4) requests in flight.
* A ``TelemetryBatch`` of ``--telemetry-kib`` (default 1024) every ``1 / --telemetry-per-s``
  seconds (default 1): well-formed, four times over the 256 KiB the control plane accepts, so it
  must be refused unread and counted (``fleet.telemetry_batches_refused``).

It subscribes to its ``chunks/data`` like an agent, so the chunks it is served cost the broker and
the control plane what they would on a fleet, and checks each against the desired state's
digests. Nothing is published while disconnected (paho reconnects by itself), as an agent does.

When asked to stop (SIGTERM, SIGINT or ``--duration``) it reports the deployment it was given as
FAILED (retained ReportedState, step ``download``, reason "flood device: does not install"), so
the deployment reaches a final state as it would for a real device that gave up, waits for the
broker's PUBACK (reconnecting if needed, ``--final-timeout`` at most), prints one JSON line of
counts and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from protos import fleet_topics  # noqa: E402
from protos.gen import fleet_pb2  # noqa: E402

QOS = 1
AGENT_VERSION = "flood-0.1"
RECORD_PAYLOAD_BYTES = 64 * 1024


class Flooder:
    """The device's state; paho callbacks and the sending loop share it under ``lock``."""

    def __init__(self, bundle: dict[str, Any], args: argparse.Namespace) -> None:
        m = bundle["mqtt"]
        self.device_id: str = bundle["device_id"]
        self.args = args
        prefix = m["topic_prefix"]
        self.t_desired = f"{prefix}/{fleet_topics.DESIRED}"
        self.t_reported = f"{prefix}/{fleet_topics.REPORTED}"
        self.t_status = f"{prefix}/{fleet_topics.STATUS}"
        self.t_req = f"{prefix}/{fleet_topics.CHUNKS_REQUEST}"
        self.t_data = f"{prefix}/{fleet_topics.CHUNKS_DATA}"
        self.t_telemetry = f"{prefix}/{fleet_topics.TELEMETRY}"
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.connected = threading.Event()
        self.desired: fleet_pb2.DesiredState | None = None
        self.verified: set[int] = set()
        self.counts = {
            "requests_sent": 0,
            "requests_skipped_offline": 0,
            "telemetry_batches_sent": 0,
            "telemetry_bytes_each": 0,
            "chunks_received": 0,
            "chunks_bad": 0,
            "chunk_errors": 0,
            "connects": 0,
        }
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=m["client_id"],
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self.client.username_pw_set(m["username"], m["password"])
        self.client.reconnect_delay_set(min_delay=0.2, max_delay=1.0)
        self.client.max_inflight_messages_set(100)
        self.client.will_set(self.t_status, self._status(False), qos=QOS, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    @staticmethod
    def _status(online: bool) -> bytes:
        state = fleet_pb2.DeviceStatus.ONLINE if online else fleet_pb2.DeviceStatus.OFFLINE
        return fleet_pb2.DeviceStatus(state=state, agent_version=AGENT_VERSION).SerializeToString()

    # --- paho callbacks ---------------------------------------------------------------------

    def _on_connect(self, c: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        if getattr(rc, "is_failure", False):
            print(f"flood: connect refused: {rc}", file=sys.stderr, flush=True)
            return
        c.subscribe([(self.t_desired, QOS), (self.t_data, QOS)])
        c.publish(self.t_status, self._status(True), qos=QOS, retain=True)
        with self.lock:
            self.counts["connects"] += 1
        self.connected.set()

    def _on_disconnect(self, *_a: object) -> None:
        self.connected.clear()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.t_desired:
            if not msg.payload:
                return
            desired = fleet_pb2.DesiredState()
            desired.ParseFromString(msg.payload)
            with self.lock:
                if self.desired is None or desired.generation > self.desired.generation:
                    self.desired = desired
                    self.verified = set()
            return
        answer = fleet_pb2.ChunkData()
        answer.ParseFromString(msg.payload)
        with self.lock:
            if answer.error:
                self.counts["chunk_errors"] += 1
                return
            self.counts["chunks_received"] += 1
            model = self._model()
            if model is None or answer.package_digest != model.package_digest:
                return
            expected = model.chunk_sha256[answer.index] if answer.index < model.chunk_count else b""
            if hashlib.sha256(answer.data).digest() == expected:
                self.verified.add(answer.index)
            else:
                self.counts["chunks_bad"] += 1

    def _model(self) -> fleet_pb2.DesiredModel | None:
        return self.desired.models[0] if self.desired and self.desired.models else None

    # --- the flood --------------------------------------------------------------------------

    def _request(self, n: int) -> bytes:
        with self.lock:
            model = self._model()
            if model is None:
                digest, count = "0" * 64, 1
            else:
                digest, count = model.package_digest, max(1, model.chunk_count)
        k = min(self.args.indexes, fleet_topics.MAX_CHUNK_INDEXES_PER_REQUEST)
        start = (n * k) % count
        indexes = sorted({(start + i) % count for i in range(k)})
        return fleet_pb2.ChunkRequest(
            package_digest=digest, indexes=indexes, request_id=f"flood-{n}"
        ).SerializeToString()

    def _telemetry(self) -> bytes:
        n_records = max(1, (self.args.telemetry_kib * 1024) // RECORD_PAYLOAD_BYTES)
        batch = fleet_pb2.TelemetryBatch(device_id=self.device_id, dropped=0)
        blob = json.dumps({"pad": "x" * (RECORD_PAYLOAD_BYTES - 12)})
        now = int(time.time() * 1000)
        for i in range(n_records):
            batch.records.add(seq=i + 1, kind="flood", timestamp_ms=now, payload_json=blob)
        return batch.SerializeToString()

    def run(self, port: int) -> dict[str, Any]:
        telemetry = self._telemetry()
        self.counts["telemetry_bytes_each"] = len(telemetry)
        self.client.connect_async("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        t0 = time.monotonic()
        deadline = t0 + self.args.duration if self.args.duration > 0 else float("inf")
        period = 1.0 / self.args.rate if self.args.rate > 0 else float("inf")
        tele_period = 1.0 / self.args.telemetry_per_s if self.args.telemetry_per_s > 0 else 0.0
        next_req = next_tele = time.monotonic()
        n = 0
        print("ready", flush=True)
        while not self.stop.is_set() and time.monotonic() < deadline:
            now = time.monotonic()
            if now - next_req > 1.0:  # fell behind (a stall): do not burst to catch up
                next_req = now
            if tele_period and now >= next_tele:
                next_tele = now + tele_period
                if self.connected.is_set():
                    self.client.publish(self.t_telemetry, telemetry, qos=QOS)
                    self.counts["telemetry_batches_sent"] += 1
            if now >= next_req:
                next_req += period
                if self.connected.is_set():
                    self.client.publish(self.t_req, self._request(n), qos=QOS)
                    self.counts["requests_sent"] += 1
                    n += 1
                else:
                    self.counts["requests_skipped_offline"] += 1
                continue
            self.stop.wait(min(next_req, next_tele if tele_period else next_req) - now)
        flood_s = time.monotonic() - t0
        final = self._report_final()
        if self.connected.is_set():  # a clean disconnect suppresses the Last Will: say it
            info = self.client.publish(self.t_status, self._status(False), QOS, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()
        with self.lock:
            model = self._model()
            return {
                **self.counts,
                "seconds": round(flood_s, 3),
                "request_rate": round(self.counts["requests_sent"] / max(flood_s, 1e-6), 1),
                "deployment_id": model.deployment_id if model else "",
                "chunks_verified": len(self.verified),
                "chunk_count": model.chunk_count if model else 0,
                "final_report": final,
            }

    def _report_final(self) -> str:
        """Report the given deployment FAILED (retained), waiting for the PUBACK; what happened."""
        with self.lock:
            desired, model = self.desired, self._model()
            done = len(self.verified)
        if desired is None or model is None:
            return "no deployment"
        msg = fleet_pb2.ReportedState(
            device_id=self.device_id,
            agent_version=AGENT_VERSION,
            timestamp_ms=int(time.time() * 1000),
            desired_generation=desired.generation,
        )
        msg.last_result.CopyFrom(
            fleet_pb2.DeploymentResult(
                deployment_id=model.deployment_id,
                outcome=fleet_pb2.DeploymentResult.FAILED,
                reason="flood device: does not install",
                step="download",
                chunks_done=done,
                chunks_total=model.chunk_count,
            )
        )
        deadline = time.monotonic() + self.args.final_timeout
        while time.monotonic() < deadline:
            if not self.connected.wait(max(0.0, min(1.0, deadline - time.monotonic()))):
                continue
            info = self.client.publish(self.t_reported, msg.SerializeToString(), QOS, retain=True)
            try:
                info.wait_for_publish(max(0.1, min(5.0, deadline - time.monotonic())))
            except (RuntimeError, ValueError):
                continue  # not queued: the connection dropped in between
            if info.is_published():
                return "FAILED reported"
        return "final report not acknowledged"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleet_flood.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="the device's bundle (JSON)")
    parser.add_argument("--port", type=int, required=True, help="broker port on 127.0.0.1")
    parser.add_argument("--rate", type=float, default=400.0, help="chunk requests per second")
    parser.add_argument("--indexes", type=int, default=8, help="chunk indexes per request")
    parser.add_argument("--telemetry-kib", type=int, default=1024, help="bytes per batch, KiB")
    parser.add_argument("--telemetry-per-s", type=float, default=1.0, help="batches per second")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds; 0 = until SIGTERM")
    parser.add_argument("--final-timeout", type=float, default=30.0, help="final report, seconds")
    args = parser.parse_args(argv)
    flooder = Flooder(json.loads(args.bundle.read_text()), args)

    def stop(_sig: int, _frame: object) -> None:
        flooder.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(json.dumps(flooder.run(args.port)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
