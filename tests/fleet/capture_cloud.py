"""A test-side control plane for captured samples: subscribes, reassembles, acknowledges.

``CaptureCloud`` plays the control plane's part of ``protos/fleet_capture.py`` on a real broker,
with nothing else of the control plane: it takes ``CaptureChunk``s on ``<root>/+/captures/up``,
keeps each record's chunks until it has them all, checks the whole record's sha256 against its
digest and answers on ``captures/ack`` per the contract:

* all chunks in, digest right: ``STORED`` (and ``STORED`` again for a record it already holds:
  a record is stored once per digest);
* digest wrong, or in ``reject``: ``REJECTED``;
* the last chunk in with earlier ones missing: ``PARTIAL`` from the first one missing.

It counts what a test needs to say "each record exactly once, nothing lost": ``stored`` (digest
-> the record as first stored), ``store_count`` (times a digest was stored *anew*: never more than
1), ``acks`` (every ack sent). ``hold_acks`` keeps answering back until ``release``: a device then
keeps its records, as with a control plane that is slow or gone. ``purge`` publishes the retained
``captures/ctl``. The client reconnects by itself (paho's loop), so a broker restart is survived.

Shared by the device's tests (tests/fleet/test_capture.py) and meant for the control plane's
end-to-end tests to compare against.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from protos import fleet_capture as fc
from protos import fleet_topics as topics


@dataclass
class Record:
    device_id: str
    digest: str
    data: bytes
    meta: fc.CaptureMeta


@dataclass
class _Partial:
    size: int
    count: int
    chunks: dict[int, bytes] = field(default_factory=dict)
    meta: fc.CaptureMeta | None = None


class CaptureCloud:
    def __init__(
        self,
        port: int,
        username: str | None = None,
        password: str | None = None,
        root: str = topics.DEFAULT_ROOT,
    ) -> None:
        self.root = root
        self.stored: dict[str, Record] = {}
        self.store_count: dict[str, int] = {}
        self.acks: list[tuple[str, fc.CaptureAck]] = []
        self.status: dict[str, fc.CaptureStatus] = {}
        self.bad_chunks = 0
        self.reject: set[str] = set()
        self._partial: dict[tuple[str, str], _Partial] = {}
        self._held: list[tuple[str, fc.CaptureAck]] = []
        self._hold = False
        self._lock = threading.Condition()
        self.connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=username or f"capture-cloud-{uuid.uuid4().hex[:8]}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise AssertionError("the capture cloud could not connect to the broker")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    # --- broker callbacks (paho's thread) ---------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, rc: object, _p: object
    ) -> None:
        if getattr(rc, "is_failure", False):
            return
        for leaf in (fc.UP, fc.STATUS):
            client.subscribe(topics.all_devices_filter(leaf, self.root), qos=1)
        self.connected.set()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        parsed = topics.parse_topic(msg.topic, self.root)
        if parsed is None:
            return
        payload = bytes(msg.payload)
        with self._lock:
            if parsed.leaf == fc.STATUS and payload:
                self.status[parsed.device_id] = fc.decode_status(payload)
            elif parsed.leaf == fc.UP:
                self._on_chunk(parsed.device_id, payload)
            self._lock.notify_all()

    def _on_chunk(self, device_id: str, payload: bytes) -> None:
        try:
            chunk = fc.decode_chunk(payload)
        except ValueError:
            self.bad_chunks += 1
            return
        if chunk.device_id != device_id:
            self.bad_chunks += 1
            return
        digest = chunk.digest
        if digest in self.stored:
            self._ack(device_id, fc.CaptureAck(digest, fc.STORED))
            return
        key = (device_id, digest)
        part = self._partial.get(key)
        if part is None or part.size != chunk.size:
            part = self._partial[key] = _Partial(chunk.size, chunk.count)
        part.chunks[chunk.index] = chunk.data
        if chunk.meta is not None:
            part.meta = chunk.meta
        missing = [i for i in range(part.count) if i not in part.chunks]
        if missing:
            if chunk.index == part.count - 1:
                self._ack(device_id, fc.CaptureAck(digest, fc.PARTIAL, missing[0]))
            return
        del self._partial[key]
        data = b"".join(part.chunks[i] for i in range(part.count))
        if fc.digest_of(data) != digest or digest in self.reject or part.meta is None:
            self._ack(device_id, fc.CaptureAck(digest, fc.REJECTED, reason="refused"))
            return
        self.stored[digest] = Record(device_id, digest, data, part.meta)
        self.store_count[digest] = self.store_count.get(digest, 0) + 1
        self._ack(device_id, fc.CaptureAck(digest, fc.STORED))

    def _ack(self, device_id: str, ack: fc.CaptureAck) -> None:
        if self._hold:
            self._held.append((device_id, ack))
            return
        self._send_ack(device_id, ack)

    def _send_ack(self, device_id: str, ack: fc.CaptureAck) -> None:
        self.acks.append((device_id, ack))
        topic = topics.device_topic(device_id, fc.ACK, self.root)
        self.client.publish(topic, fc.encode_ack(ack), qos=1)

    # --- what tests call --------------------------------------------------------------------

    def hold_acks(self) -> None:
        with self._lock:
            self._hold = True

    def release(self) -> None:
        """Answer again, and drop what was held: the device resends what it still lacks an
        answer for (as it would to a control plane that lost its state)."""
        with self._lock:
            self._hold = False
            self._held.clear()

    def purge(self, device_id: str, purge_id: str, before_ms: int) -> None:
        topic = topics.device_topic(device_id, fc.CONTROL, self.root)
        payload = fc.encode_control(fc.CaptureControl(device_id, purge_id, before_ms))
        self.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)

    def wait(self, predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"capture cloud: {what or 'condition'} not met; stored "
                        f"{len(self.stored)}, status {self.status}"
                    )
                self._lock.wait(min(left, 0.2))

    def wait_status(
        self, device_id: str, predicate: Callable[[fc.CaptureStatus], bool], timeout: float = 20.0
    ) -> fc.CaptureStatus:
        def ok() -> bool:
            s = self.status.get(device_id)
            return s is not None and predicate(s)

        self.wait(ok, timeout, f"status of {device_id}")
        return self.status[device_id]


def anonymous_broker_conf(port: int) -> str:
    """A Mosquitto config for loopback tests that need no identities (no control plane)."""
    return (
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "log_dest stdout\n"
        "log_type error\n"
        "log_type warning\n"
    )
