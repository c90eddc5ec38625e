"""The fleet service: the control plane's one MQTT client, and the only module doing MQTT I/O.

It publishes each device's retained desired state, keeps the registry current from the devices'
retained reported state and Last-Will status, serves package chunks on request, and records
telemetry. It connects with its own broker identity (``mqtt_username``), which the broker ACL
allows on the whole ``edge/#`` tree.

Threads: paho's network thread runs the callbacks (status, reported state and telemetry are
handled inline, each in its own database session); chunk requests go to a bounded queue served by
one worker thread, so reading package blobs never stalls the network loop. When the queue is full
a request is dropped and logged; the device asks again after its timeout.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from control_plane.context import AppContext
from control_plane.errors import BrokerUnavailable, ControlPlaneError
from control_plane.fleet import codec
from control_plane.services.deployments import DeploymentService
from control_plane.services.devices import DeviceService
from control_plane.services.packages import PackageService
from control_plane.services.telemetry import TelemetryService
from protos import fleet_topics as topics

logger = logging.getLogger(__name__)

QOS = 1


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://host[:1883]`` or ``mqtts://host[:8883]``."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"broker URL {url!r} must start with mqtt:// or mqtts://")
    tls = parts.scheme in ("mqtts", "ssl")
    if not parts.hostname:
        raise ValueError(f"broker URL {url!r} has no host")
    return BrokerAddress(parts.hostname, parts.port or (8883 if tls else 1883), tls)


@dataclass(frozen=True)
class _ChunkJob:
    device_id: str
    payload: bytes


class FleetService:
    def __init__(self, ctx: AppContext, broker_url: str) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.root = self.settings.topic_root
        self.address = parse_broker_url(broker_url)
        self.connected = threading.Event()
        self._stopping = threading.Event()
        self._jobs: queue.Queue[_ChunkJob | None] = queue.Queue(self.settings.chunk_queue_size)
        self._worker = threading.Thread(target=self._serve_chunks, name="fleet-chunks", daemon=True)
        # A fixed client id with a persistent session: QoS 1 telemetry sent while the control
        # plane is down waits in the broker instead of being lost.
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.settings.mqtt_username,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.username_pw_set(
            self.settings.mqtt_username, self.settings.mqtt_password.get_secret_value()
        )
        if self.address.tls:
            ca = self.settings.mqtt_ca_file
            self.client.tls_set(ca_certs=str(ca) if ca else None)
        self.client.max_inflight_messages_set(64)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, wait: float = 10.0) -> None:
        """Connect (retrying in the background) and wait up to ``wait`` s for the first CONNACK."""
        self._worker.start()
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
        with contextlib.suppress(queue.Full):  # a full queue: the worker sees _stopping instead
            self._jobs.put_nowait(None)
        self.client.disconnect()
        self.client.loop_stop()
        self._worker.join(timeout=5)

    # --- FleetPublisher ---------------------------------------------------------------------

    def publish_desired(self, device_ids: list[str]) -> None:
        with self.ctx.sessions() as session:
            service = DeploymentService(session, self.ctx)
            for device_id in device_ids:
                view = service.desired_state(device_id)
                if view is None:
                    continue
                topic = topics.device_topic(device_id, topics.DESIRED, self.root)
                self.client.publish(topic, codec.desired_state_to_proto(view), qos=QOS, retain=True)
                logger.info(
                    "published desired state of %s (generation %d)", device_id, view.generation
                )

    def forget_device(self, device_id: str) -> None:
        """Clear the retained messages of a deleted device (an empty retained payload)."""
        for leaf in (topics.DESIRED, topics.REPORTED, topics.STATUS):
            self.client.publish(
                topics.device_topic(device_id, leaf, self.root), b"", qos=QOS, retain=True
            )

    # --- callbacks (paho network thread) ----------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, rc: object, _p: object
    ) -> None:
        if getattr(rc, "is_failure", False):
            logger.error("broker refused the control plane: %s", rc)
            return
        client.subscribe(
            [
                (topics.all_devices_filter(leaf, self.root), QOS)
                for leaf in topics.CONTROL_PLANE_SUBSCRIBES
            ]
        )
        self.connected.set()
        logger.info("connected to broker %s:%d", self.address.host, self.address.port)
        # Retained desired state is the contract; republish it in case the broker lost it
        # (a restarted broker without persistence, such as the embedded one).
        with self.ctx.sessions() as session:
            ids = DeploymentService(session, self.ctx).device_ids_with_desired_state()
        if ids:
            self.publish_desired(ids)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: object, _f: object, rc: object, _p: object
    ) -> None:
        self.connected.clear()
        logger.warning("disconnected from broker: %s", rc)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        parsed = topics.parse_topic(msg.topic, self.root)
        if parsed is None:
            return
        try:
            self._dispatch(parsed.device_id, parsed.leaf, msg.payload)
        except ValueError as exc:
            logger.warning("bad payload on %s: %s", msg.topic, exc)
        except Exception:
            logger.exception("handling a message on %s failed", msg.topic)

    def _dispatch(self, device_id: str, leaf: str, payload: bytes) -> None:
        if leaf == topics.CHUNKS_REQUEST:
            try:
                self._jobs.put_nowait(_ChunkJob(device_id, payload))
            except queue.Full:
                logger.warning("chunk queue full; dropped a request from %s", device_id)
            return
        with self.ctx.sessions() as session:
            if leaf == topics.STATUS:
                DeviceService(session, self.ctx).record_status(
                    device_id, codec.status_from_proto(payload)
                )
            elif leaf == topics.REPORTED:
                if payload:  # empty = retained message cleared
                    DeviceService(session, self.ctx).record_reported(
                        codec.reported_from_proto(device_id, payload)
                    )
            elif leaf == topics.TELEMETRY:
                records, dropped = codec.telemetry_from_proto(device_id, payload)
                TelemetryService(session, self.ctx).record_batch(device_id, records, dropped)

    # --- chunk serving (worker thread) ------------------------------------------------------

    def _serve_chunks(self) -> None:
        while (job := self._jobs.get()) is not None and not self._stopping.is_set():
            try:
                self._answer(job)
            except Exception:
                logger.exception("serving chunks to %s failed", job.device_id)

    def _answer(self, job: _ChunkJob) -> None:
        topic = topics.device_topic(job.device_id, topics.CHUNKS_DATA, self.root)
        try:
            req = codec.chunk_request_from_proto(job.payload)
        except ValueError as exc:
            logger.warning("bad chunk request from %s: %s", job.device_id, exc)
            return
        indexes = list(dict.fromkeys(req.indexes))  # drop repeats, keep order
        try:
            if len(indexes) > topics.MAX_CHUNK_INDEXES_PER_REQUEST:
                raise ControlPlaneError(
                    f"at most {topics.MAX_CHUNK_INDEXES_PER_REQUEST} chunks per request"
                )
            with self.ctx.sessions() as session:
                packages = PackageService(session, self.ctx)
                chunks = packages.chunks_for_device(job.device_id, req.package_digest, indexes)
                count = packages.get(req.package_digest).chunk_count
        except ControlPlaneError as exc:
            logger.info("chunk request from %s refused: %s", job.device_id, exc)
            self.client.publish(
                topic, codec.chunk_error_to_proto(req.package_digest, req.request_id, str(exc)), QOS
            )
            return
        info = None
        for chunk in chunks:
            info = self.client.publish(
                topic, codec.chunk_to_proto(req.package_digest, chunk, count, req.request_id), QOS
            )
        # Bound what sits in paho's queue: one request's chunks at a time.
        if info is not None and self.connected.is_set():
            try:
                info.wait_for_publish(timeout=30)
            except RuntimeError as exc:
                raise BrokerUnavailable(str(exc)) from exc
        logger.debug(
            "served %d chunk(s) of %s to %s", len(chunks), req.package_digest, job.device_id
        )
