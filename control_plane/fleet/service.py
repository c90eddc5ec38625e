"""The fleet service: the control plane's one MQTT client, and the only module doing MQTT I/O.

It publishes each device's retained desired state, keeps the registry current from the devices'
retained reported state and Last-Will status, serves package chunks on request, and records
telemetry. It connects with its own broker identity (``mqtt_username``), which the broker ACL
allows on the whole ``edge/#`` tree.

Threads: paho's network thread runs the callbacks and is the only one that moves bytes to and
from the broker, so it decodes nothing and stores nothing:

- Telemetry goes to a "telemetry" thread that decodes and stores each batch in its own database
  session. Acknowledgements are manual: the broker's PUBACK (and with it the persistent session's
  copy) goes only after the batch is stored, so a record is never lost between the broker and the
  database. A batch over ``MAX_TELEMETRY_BATCH_BYTES`` or ``MAX_TELEMETRY_BATCH_RECORDS`` (both in
  ``protos/fleet_topics.py``) is refused unread, acknowledged and counted against its device.
- Status and reported state go, in arrival order, to a FIFO served by a "records" thread: they
  are retained, so one not yet stored when the control plane stops is delivered again at its next
  subscribe, and their commits (one per progress report of every device pulling) never hold up
  the chunks in flight.
- Chunk requests go to a ``FairQueue``: one bounded FIFO per device, served round-robin by one
  worker thread, so reading package blobs never stalls the network loop and a device that floods
  requests fills only its own FIFO. What is dropped is counted per device (``counters``); the
  device asks again after its timeout.

Chunk answers are pipelined: the worker keeps publishing while up to ``UNACKED_CHUNK_BYTES`` of
chunks wait for the broker's PUBACK, and waits for the oldest only beyond that. Waiting for the
PUBACK of every request's last chunk instead (one round trip per request of 8 chunks) held paho
to ~50 MiB/s against a loopback Mosquitto, ~400 MiB/s pipelined; scripts/bench-rollout (20 agents,
20 MiB) went from ~23 s to ~14 s with this and the records thread. The bound still keeps paho's
in-memory queue small whatever the number of devices pulling.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from control_plane.core.context import AppContext
from control_plane.core.errors import ControlPlaneError, NotFound
from control_plane.deployments.service import DeploymentService
from control_plane.devices.service import DeviceService
from control_plane.devices.telemetry.service import TelemetryService
from control_plane.fleet import broker_config, codec
from control_plane.fleet.fair_queue import FairQueue
from control_plane.registry.packages.service import PackageService
from protos import fleet_topics as topics

logger = logging.getLogger(__name__)

# The device-to-cloud messages that one replica handles (see FleetService._filter).
SHARED_LEAVES = (topics.CHUNKS_REQUEST, topics.TELEMETRY)

QOS = 1
#: Chunk bytes published but not yet acknowledged by the broker before the worker waits (at least
#: one chunk is always allowed, whatever the chunk size).
UNACKED_CHUNK_BYTES = 8 << 20
#: How long the worker waits for one PUBACK before it stops counting that message.
PUBACK_TIMEOUT_S = 30.0
#: Status and reported-state messages waiting to be stored; beyond, the network thread waits.
RECORD_QUEUE_SIZE = 10_000
#: Telemetry batches waiting to be stored. Each is unacknowledged until stored, and the broker
#: holds back a client's messages beyond its in-flight window, so this rarely fills.
TELEMETRY_QUEUE_SIZE = 256


class FleetExtension(Protocol):
    """A channel of its own on the fleet connection: the device leaves it receives (every
    device's, subscribed at each connect) and what it does with them, off the network thread.

    An extension may also name ``shared_leaves``: those of its leaves that, with replicas, go
    through the shared subscription like chunk requests (each message to one replica)."""

    leaves: tuple[str, ...]

    def handle(self, device_id: str, leaf: str, payload: bytes) -> None: ...

    def connected(self) -> None: ...

    def forget_device(self, device_id: str) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class _Telemetry:
    """A telemetry batch waiting to be stored, and how to acknowledge it once it is."""

    device_id: str
    payload: bytes
    mid: int
    qos: int
    epoch: int  # the connection it arrived on: a PUBACK is only valid on that one


@dataclass(frozen=True)
class _Record:
    """A status or reported-state message waiting to be stored."""

    device_id: str
    leaf: str
    payload: bytes


class FleetService:
    def __init__(self, ctx: AppContext, broker_url: str) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.root = self.settings.mqtt.topic_root
        self.address = topics.parse_broker_url(broker_url)
        self.connected = threading.Event()
        self._stopping = threading.Event()
        self._jobs: FairQueue[str, bytes] = FairQueue(
            per_key=self.settings.mqtt.chunk_queue_per_device,
            total=self.settings.mqtt.chunk_queue_size,
        )
        self._worker = threading.Thread(target=self._serve_chunks, name="fleet-chunks", daemon=True)
        self._telemetry: queue.Queue[_Telemetry | None] = queue.Queue(TELEMETRY_QUEUE_SIZE)
        self._telemetry_thread = threading.Thread(
            target=self._store_telemetry, name="fleet-telemetry", daemon=True
        )
        self._telemetry_refused: dict[str, int] = {}
        # Bumped on every (dis)connect: a message id is only meaningful on its own connection.
        self._epoch = 0
        self._records: queue.Queue[_Record | None] = queue.Queue(RECORD_QUEUE_SIZE)
        self._recorder = threading.Thread(
            target=self._store_records, name="fleet-records", daemon=True
        )
        # Chunk publishes not yet acknowledged, oldest first, with their sizes (worker thread only).
        self._unacked: deque[tuple[mqtt.MQTTMessageInfo, int]] = deque()
        self._unacked_bytes = 0
        # A fixed client id with a persistent session: QoS 1 telemetry sent while the control
        # plane is down waits in the broker instead of being lost.
        # Replicas connect as identities of their own (``<username>-<replica id>``): the broker
        # ties the client id to the user name, and one id shared would take sessions over.
        self.identity = ctx.settings.mqtt_identity
        # With replicas the session is clean instead: a persistent session of a replica that died
        # would stay in the shared subscriptions and keep its share of the requests queued for it.
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.identity,
            clean_session=ctx.settings.replicas.id is not None,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        self.client.username_pw_set(self.identity, self.settings.mqtt.password.get_secret_value())
        if self.address.tls:
            m = self.settings.mqtt  # a client certificate too, for a certificate listener
            self.client.tls_set(
                ca_certs=str(m.ca_file) if m.ca_file else None,
                certfile=str(m.client_cert) if m.client_cert else None,
                keyfile=str(m.client_key) if m.client_key else None,
            )
        self.client.max_inflight_messages_set(64)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        # Channels of their own on the same connection (device batch jobs: batch_channel.py).
        self.extensions: list[FleetExtension] = []
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, wait: float = 10.0) -> None:
        """Connect (retrying in the background) and wait up to ``wait`` s for the first CONNACK."""
        self._worker.start()
        self._recorder.start()
        self._telemetry_thread.start()
        self.client.connect_async(self.address.host, self.address.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(wait):
            logger.warning(
                "broker %s:%d not reachable yet; retrying in the background",
                self.address.host,
                self.address.port,
            )

    def stop(self) -> None:
        self._stopping.set()
        self._jobs.close()
        for q in (self._records, self._telemetry):
            with contextlib.suppress(queue.Full):  # a full queue: the thread sees _stopping
                q.put_nowait(None)  # type: ignore[arg-type]
        for ext in self.extensions:
            ext.stop()
        self.client.disconnect()
        self.client.loop_stop()
        self._worker.join(timeout=5)
        self._recorder.join(timeout=5)
        self._telemetry_thread.join(timeout=5)

    def counters(self, device_id: str) -> dict[str, int]:
        """What the fleet channel refused from a device since the control plane started."""
        return {
            "chunk_requests_dropped": self._jobs.dropped.get(device_id, 0),
            "telemetry_batches_refused": self._telemetry_refused.get(device_id, 0),
        }

    # --- FleetPublisher ---------------------------------------------------------------------

    def publish_desired(self, device_ids: list[str]) -> None:
        """Publish each device's retained desired state; return once the broker holds them.

        Waiting for the PUBACKs (while connected, ``PUBACK_TIMEOUT_S`` at most) means that once
        a deployment call has returned, a device subscribing finds the new state retained instead
        of the previous one that the new one is still racing to the broker.
        """
        infos = self._publish_desired(device_ids)
        deadline = time.monotonic() + PUBACK_TIMEOUT_S
        for info in infos:
            if not self.connected.is_set():
                return  # paho resends them on the persistent session
            with contextlib.suppress(RuntimeError, ValueError):  # never queued: no connection
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))

    def _publish_desired(self, device_ids: list[str]) -> list[mqtt.MQTTMessageInfo]:
        infos = []
        with self.ctx.sessions() as session:
            service = DeploymentService(session, self.ctx)
            for device_id in device_ids:
                view = service.desired_state(device_id)
                if view is None:
                    continue
                topic = topics.device_topic(device_id, topics.DESIRED, self.root)
                payload = codec.desired_state_to_proto(view)
                infos.append(self.client.publish(topic, payload, qos=QOS, retain=True))
                logger.info(
                    "published desired state of %s (generation %d)", device_id, view.generation
                )
        return infos

    def forget_device(self, device_id: str) -> None:
        """Clear the retained messages of a deleted device (an empty retained payload)."""
        for leaf in (topics.DESIRED, topics.REPORTED, topics.STATUS):
            self.client.publish(
                topics.device_topic(device_id, leaf, self.root), b"", qos=QOS, retain=True
            )
        for ext in self.extensions:
            ext.forget_device(device_id)

    def devices_changed(self) -> None:
        broker_config.sync_registry_files(self.ctx)

    # --- callbacks (paho network thread) ----------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, rc: object, _p: object
    ) -> None:
        if getattr(rc, "is_failure", False):
            logger.error("broker refused the control plane: %s", rc)
            return
        client.subscribe(
            [
                (self._filter(topics.all_devices_filter(leaf, self.root), leaf), QOS)
                for leaf in topics.CONTROL_PLANE_SUBSCRIBES
                + tuple(leaf for ext in self.extensions for leaf in ext.leaves)
            ]
        )
        for ext in self.extensions:
            ext.connected()
        self._epoch += 1
        self.connected.set()
        logger.info("connected to broker %s:%d", self.address.host, self.address.port)
        # Retained desired state is the contract; republish it in case the broker lost it
        # (a restarted broker without persistence, such as the embedded one).
        with self.ctx.sessions() as session:
            ids = DeploymentService(session, self.ctx).device_ids_with_desired_state()
        if ids:
            self._publish_desired(ids)  # not waiting: this thread is the one reading PUBACKs

    def _filter(self, topic_filter: str, leaf: str) -> str:
        """With replicas, chunk requests and telemetry go through an MQTT shared subscription
        (``$share/<group>/...``): the broker hands each message to one replica only. Status and
        reported state stay plain subscriptions: they are retained, and a broker sends retained
        messages to plain subscriptions only; every replica records the same latest value."""
        shared = SHARED_LEAVES + tuple(
            leaf for ext in self.extensions for leaf in getattr(ext, "shared_leaves", ())
        )
        if self.settings.replicas.id is None or leaf not in shared:
            return topic_filter
        return f"$share/{self.settings.mqtt.username}/{topic_filter}"

    def _on_disconnect(
        self, _c: mqtt.Client, _u: object, _f: object, rc: object, _p: object
    ) -> None:
        self._epoch += 1
        self.connected.clear()
        logger.warning("disconnected from broker: %s", rc)

    def _on_message(self, client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        """Hand the message on; acknowledge it now unless the telemetry thread will, once stored."""
        parsed = topics.parse_topic(msg.topic, self.root)
        deferred = False
        try:
            if parsed is not None:
                deferred = self._dispatch(parsed.device_id, parsed.leaf, msg)
        except ValueError as exc:
            logger.warning("bad payload on %s: %s", msg.topic, exc)
        except Exception:
            logger.exception("handling a message on %s failed", msg.topic)
        finally:
            if not deferred:
                client.ack(msg.mid, msg.qos)

    def _dispatch(self, device_id: str, leaf: str, msg: mqtt.MQTTMessage) -> bool:
        """Route one message; True when its acknowledgement is left to the telemetry thread."""
        payload = msg.payload
        if leaf == topics.CHUNKS_REQUEST:
            if not self._jobs.put(device_id, payload):
                logger.debug("%s: chunk request queue full; request dropped", device_id)
            return False
        if leaf in (topics.STATUS, topics.REPORTED):
            self._put_waiting(self._records, _Record(device_id, leaf, payload))
            return False
        for ext in self.extensions:
            if leaf in ext.leaves:
                ext.handle(device_id, leaf, payload)
                return False
        if leaf == topics.TELEMETRY:
            if len(payload) > topics.MAX_TELEMETRY_BATCH_BYTES:  # not even scanned
                self._refuse_telemetry(device_id, f"{len(payload)} bytes")
                return False
            item = _Telemetry(device_id, payload, msg.mid, msg.qos, self._epoch)
            return self._put_waiting(self._telemetry, item)
        return False

    def _put_waiting(self, q: queue.Queue[Any], item: Any) -> bool:
        """Put, waiting while the queue is full (the broker's messages wait meanwhile)."""
        while not self._stopping.is_set():
            try:
                q.put(item, timeout=0.5)
                return True
            except queue.Full:
                logger.warning(
                    "fleet %s queue full; the broker's messages wait", type(item).__name__
                )
        return False

    def _refuse_telemetry(self, device_id: str, why: str) -> None:
        self._telemetry_refused[device_id] = self._telemetry_refused.get(device_id, 0) + 1
        logger.warning("%s: telemetry batch refused unread (%s)", device_id, why)

    # --- telemetry (telemetry thread) -------------------------------------------------------

    def _store_telemetry(self) -> None:
        while (item := self._telemetry.get()) is not None and not self._stopping.is_set():
            try:
                why = codec.telemetry_refusal(item.payload)
                if why is not None:
                    self._refuse_telemetry(item.device_id, why)
                else:
                    records, dropped = codec.telemetry_from_proto(item.device_id, item.payload)
                    with self.ctx.sessions() as session:
                        TelemetryService(session, self.ctx).record_batch(
                            item.device_id, records, dropped
                        )
            except ValueError as exc:
                logger.warning("bad telemetry from %s: %s", item.device_id, exc)
            except Exception:
                # Not stored and not acknowledged: the broker redelivers it after a reconnect.
                logger.exception("storing telemetry of %s failed", item.device_id)
                continue
            if item.epoch == self._epoch:
                self.client.ack(item.mid, item.qos)

    # --- status and reported state (records thread) -----------------------------------------

    def _store_records(self) -> None:
        while (rec := self._records.get()) is not None and not self._stopping.is_set():
            try:
                self._store(rec)
            except ValueError as exc:
                logger.warning("bad payload on %s/%s: %s", rec.device_id, rec.leaf, exc)
            except Exception:
                logger.exception("storing %s of %s failed", rec.leaf, rec.device_id)

    def _store(self, rec: _Record) -> None:
        with self.ctx.sessions() as session:
            devices = DeviceService(session, self.ctx)
            if rec.leaf == topics.STATUS:
                devices.record_status(rec.device_id, codec.status_from_proto(rec.payload))
            elif rec.payload:  # reported state; empty = retained message cleared
                report, result = codec.reported_from_proto(rec.device_id, rec.payload)
                devices.record_reported(report)
                if result is not None and devices.find(rec.device_id) is not None:
                    DeploymentService(session, self.ctx).record_result(rec.device_id, result)

    # --- chunk serving (worker thread) ------------------------------------------------------

    def _serve_chunks(self) -> None:
        while (job := self._jobs.get()) is not None and not self._stopping.is_set():
            device_id, payload = job
            try:
                self._answer(device_id, payload)
            except Exception:
                logger.exception("serving chunks to %s failed", device_id)

    def _answer(self, device_id: str, payload: bytes) -> None:
        topic = topics.device_topic(device_id, topics.CHUNKS_DATA, self.root)
        try:
            req = codec.chunk_request_from_proto(payload)
        except ValueError as exc:
            logger.warning("bad chunk request from %s: %s", device_id, exc)
            return
        indexes = list(dict.fromkeys(req.indexes))  # drop repeats, keep order
        try:
            if len(indexes) > topics.MAX_CHUNK_INDEXES_PER_REQUEST:
                raise ControlPlaneError(
                    f"at most {topics.MAX_CHUNK_INDEXES_PER_REQUEST} chunks per request"
                )
            with self.ctx.sessions() as session:
                if not DeploymentService(session, self.ctx).is_desired(
                    device_id, req.package_digest
                ):
                    raise NotFound(
                        f"package {req.package_digest} is not in the desired state of {device_id}"
                    )
                packages = PackageService(session, self.ctx)
                chunks = packages.read_chunks(req.package_digest, indexes)
                count = packages.get(req.package_digest).chunk_count
        except ControlPlaneError as exc:
            logger.info("chunk request from %s refused: %s", device_id, exc)
            self.client.publish(
                topic, codec.chunk_error_to_proto(req.package_digest, req.request_id, str(exc)), QOS
            )
            return
        for chunk in chunks:
            payload = codec.chunk_to_proto(req.package_digest, chunk, count, req.request_id)
            self._make_room(len(payload))
            self._unacked.append((self.client.publish(topic, payload, QOS), len(payload)))
            self._unacked_bytes += len(payload)
        logger.debug("served %d chunk(s) of %s to %s", len(chunks), req.package_digest, device_id)

    def _make_room(self, size: int) -> None:
        """Wait until ``size`` more bytes keep the unacknowledged chunks within the bound.

        Acknowledged messages are forgotten first, then the oldest is waited for. A message is
        also forgotten without its PUBACK when the connection is down (paho resends it on the
        persistent session, or the device asks again) or after ``PUBACK_TIMEOUT_S``, so a lost
        acknowledgement never wedges the worker.
        """
        while self._unacked:
            info, n = self._unacked[0]
            if not _settled(info):
                if self._unacked_bytes + size <= UNACKED_CHUNK_BYTES:
                    return
                if self.connected.is_set():
                    self._wait_acked(info)
            self._unacked.popleft()
            self._unacked_bytes -= n

    def _wait_acked(self, info: mqtt.MQTTMessageInfo) -> None:
        deadline = time.monotonic() + PUBACK_TIMEOUT_S
        while not _settled(info) and time.monotonic() < deadline:
            if self._stopping.is_set() or not self.connected.is_set():
                return
            try:
                info.wait_for_publish(timeout=0.5)
            except (RuntimeError, ValueError):
                return  # it was never queued (no connection): nothing to wait for


def _settled(info: mqtt.MQTTMessageInfo) -> bool:
    """Acknowledged, or never sent because the connection was down (paho then raises on asking).

    A message published while disconnected is never queued, so waiting for it would wedge the
    chunk worker forever; the device re-requests what it did not get.
    """
    try:
        return bool(info.is_published())
    except (RuntimeError, ValueError):
        return True
