"""The fleet service: the control plane's one MQTT client, and the only module doing MQTT I/O.

It publishes each device's retained desired state, keeps the registry current from the devices'
retained reported state and Last-Will status, serves package chunks on request, and records
telemetry. It connects with its own broker identity (``mqtt_username``), which the broker ACL
allows on the whole ``edge/#`` tree.

Threads: paho's network thread runs the callbacks and is the only one that moves bytes to and
from the broker, so it decodes nothing and stores nothing:

- Telemetry goes to a "telemetry" thread that decodes and stores the batches waiting, up to
  ``STORE_BATCH``, in one database transaction. Acknowledgements are manual: the broker's PUBACK
  (and with it the persistent session's copy) goes only after the batch is stored, so a record
  is never lost between the broker and the database. A batch over ``MAX_TELEMETRY_BATCH_BYTES``
  or ``MAX_TELEMETRY_BATCH_RECORDS`` (both in ``protos/fleet_topics.py``) is refused unread,
  acknowledged and counted against its device.
- Status and reported state go, in arrival order, to a FIFO served by a "records" thread: they
  are retained, so one not yet stored when the control plane stops is delivered again at its next
  subscribe, and their commits never hold up the chunks in flight. The thread stores what is
  waiting, up to ``STORE_BATCH`` records, in one transaction: a commit per record could not keep
  up with a thousand devices reporting at once, and the full queue then held up the network
  thread, chunk requests included.
- Chunk requests go to a ``FairQueue``: one bounded FIFO per device, served round-robin by one
  worker thread, so reading package blobs never stalls the network loop and a device that floods
  requests fills only its own FIFO. What is dropped is counted per device (``counters``); the
  device asks again after its timeout.

Shared package topics (``package_topics.py``): when the control plane decides who may read them
(the embedded broker, a Mosquitto whose ACL it rewrites and reloads, or EMQX through its
authorization hook), each DesiredModel names
its package's shared topic, every device with the package in its desired state may read it, and
the chunk worker answers a request on it when other devices are pulling the same package,
publishing each chunk once per short window however many ask (``ChunkFanout``); a lone device, or
one asking again for a chunk it lost, gets it on its own ``chunks/data``. The grants are
re-read before every publication of desired states (``refresh_grants``) and the ACL is rewritten
and reloaded only when they changed.

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
from sqlalchemy.orm import Session

from control_plane.core.context import AppContext
from control_plane.core.errors import ControlPlaneError, NotFound
from control_plane.deployments.service import DeploymentService, package_grants
from control_plane.devices.service import DeviceService
from control_plane.devices.telemetry.service import TelemetryService
from control_plane.fleet import broker_config, codec, delta
from control_plane.fleet.broker_sync import BrokerFilesSync
from control_plane.fleet.fair_queue import FairQueue
from control_plane.fleet.package_topics import ChunkFanout, PackageGrants
from control_plane.registry.keys.service import signed_trust_set
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
#: Most queued records (or telemetry batches) stored in one transaction.
STORE_BATCH = 256


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
    def __init__(
        self, ctx: AppContext, broker_url: str, grants: PackageGrants | None = None
    ) -> None:
        """``grants``: the shared package topics each device may read; the embedded broker holds
        the same object (it enforces it), a Mosquitto gets it through the generated ACL."""
        self.ctx = ctx
        self.settings = ctx.settings
        self.root = self.settings.mqtt.topic_root
        self.address = topics.parse_broker_url(broker_url)
        self.connected = threading.Event()
        self._stopping = threading.Event()
        self.grants = grants if grants is not None else PackageGrants()
        self._grants_lock = threading.Lock()
        self.fanout = ChunkFanout()
        m = self.settings.mqtt
        # Shared package topics only where the control plane decides who reads them: the
        # embedded broker (it reads ``grants``), a Mosquitto whose ACL it rewrites and reloads,
        # or EMQX asking its authorization hook (``hook_token`` set; ``fleet/emqx.py``).
        self.package_topics = m.package_topics and (
            m.url is None
            or (m.broker_config_dir is not None and bool(m.broker_reload_command))
            or m.hook_token is not None
        )
        self._jobs: FairQueue[str, tuple[bytes, float]] = FairQueue(
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
        # Devices whose trust topic holds the current trust set (its version), so registering a
        # device after a key rotation sends the set to that device alone.
        self._trust_lock = threading.Lock()
        self._trust_version = 0
        self._trust_sent: set[str] = set()
        # Channels of their own on the same connection (device batch jobs: batch_channel.py).
        self.extensions: list[FleetExtension] = []
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        # passwd/acl rewrites, coalesced: one per burst of registrations (broker_sync.py).
        self._broker_files = BrokerFilesSync(self._sync_broker_files)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, wait: float = 10.0) -> None:
        """Connect (retrying in the background) and wait up to ``wait`` s for the first CONNACK."""
        self.refresh_grants()
        self._worker.start()
        self._recorder.start()
        self._telemetry_thread.start()
        self._broker_files.sync_pending()  # the start-up rewrite, before connecting
        self._broker_files.start()
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
        self._broker_files.stop()

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
        self.refresh_grants()  # grants first: the devices ask for chunks once they read these
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
            views = DeploymentService(session, self.ctx).desired_states(device_ids)
            for device_id in device_ids:
                view = views.get(device_id)
                if view is None:
                    continue
                topic = topics.device_topic(device_id, topics.DESIRED, self.root)
                payload = codec.desired_state_to_proto(
                    view, self.root if self.package_topics else None
                )
                infos.append(self.client.publish(topic, payload, qos=QOS, retain=True))
                logger.info(
                    "published desired state of %s (generation %d)", device_id, view.generation
                )
        return infos

    def publish_trust(self) -> None:
        """After a key rotation: the new signed trust set, retained, to every device."""
        self._publish_trust(everyone=True)

    def _publish_trust(self, everyone: bool) -> None:
        """Publish the trust set to every device (``everyone``) or to those not holding it yet.

        Nothing before the first rotation: the bundle's keys are then the whole truth. Not
        waiting for PUBACKs: paho resends on the persistent session, and the set is republished
        on every (re)connect, like desired state.
        """
        signed = signed_trust_set(self.ctx)
        if signed is None:
            return
        version, payload = signed
        with self.ctx.sessions() as session:
            ids = [d.id for d in DeviceService(session, self.ctx).list()]
        with self._trust_lock:
            if everyone or version != self._trust_version:
                self._trust_sent.clear()
                self._trust_version = version
            todo = [d for d in ids if d not in self._trust_sent]
            self._trust_sent.update(todo)
        for device_id in todo:
            topic = topics.device_topic(device_id, topics.TRUST, self.root)
            self.client.publish(topic, payload, qos=QOS, retain=True)
        if todo:
            logger.info("published trust set version %d to %d device(s)", version, len(todo))

    def forget_device(self, device_id: str) -> None:
        """Clear the retained messages of a deleted device (an empty retained payload)."""
        with self._trust_lock:
            self._trust_sent.discard(device_id)
        for leaf in (topics.DESIRED, topics.REPORTED, topics.STATUS, topics.TRUST):
            self.client.publish(
                topics.device_topic(device_id, leaf, self.root), b"", qos=QOS, retain=True
            )
        for ext in self.extensions:
            ext.forget_device(device_id)

    def devices_changed(self) -> None:
        """Rewrite the broker's files soon; a burst of changes is written once."""
        self._broker_files.request()

    def wait_broker_files(self, timeout: float = 10.0) -> bool:
        """Wait until the broker's files (and its reload) include every registry change made so
        far; False on timeout. For callers that must know a device's access is in place."""
        return self._broker_files.flush(timeout)

    def _sync_broker_files(self) -> None:
        """The coalesced rewrite (``broker_sync.py``): package grants re-read (a deleted device
        loses its own), ``passwd``/``acl`` written and reloaded, then the trust set sent to the
        devices registered since (after a rotation)."""
        with self._grants_lock:
            self._load_grants()
            broker_config.sync_registry_files(self.ctx)
        self._publish_trust(everyone=False)

    def refresh_grants(self) -> None:
        """Re-read which package topics each device may read (the packages in its current
        desired state); when that changed, rewrite the broker's ACL and have it reread it now.

        Called before every publication of desired states, so a device is granted a package's
        topic before it can ask for the package, and loses it with the deployment (superseded,
        removed, device deleted). One query for the whole fleet; the files are rewritten only
        when a grant changed, in the caller's thread (not coalesced: the desired states wait).
        """
        with self._grants_lock:
            changed = self._load_grants()
        if changed:
            self._broker_files.sync_now()
            self.fanout.forget()

    def _load_grants(self) -> bool:
        with self.ctx.sessions() as session:
            return self.grants.replace(package_grants(session))

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
        self._publish_trust(everyone=True)

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
            if not self._jobs.put(device_id, (payload, time.monotonic())):
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
            batch, last = _drain(self._telemetry, item, STORE_BATCH)
            for stored in self._store_telemetry_batch(batch):
                if stored.epoch == self._epoch:
                    self.client.ack(stored.mid, stored.qos)
            if last:
                return

    def _store_telemetry_batch(self, batch: list[_Telemetry]) -> list[_Telemetry]:
        """Store the batches in one transaction; returns those to acknowledge.

        One commit for every batch waiting, rather than one each: with a thousand devices
        reporting at once the commits, not the rows, were the cost. If that transaction fails,
        each batch is stored on its own, so one bad batch costs only itself.
        """
        decoded: list[tuple[_Telemetry, Any]] = []
        done: list[_Telemetry] = []
        for item in batch:
            try:
                why = codec.telemetry_refusal(item.payload)
                if why is not None:
                    self._refuse_telemetry(item.device_id, why)
                else:
                    decoded.append((item, codec.telemetry_from_proto(item.device_id, item.payload)))
                    continue
            except ValueError as exc:
                logger.warning("bad telemetry from %s: %s", item.device_id, exc)
            done.append(item)  # refused or undecodable: acknowledged, never stored
        try:
            with self.ctx.sessions() as session:
                ids = sorted({item.device_id for item, _ in decoded})
                rows = DeviceService(session, self.ctx).load(ids)  # one query, held while used
                service = TelemetryService(session, self.ctx)
                for item, (records, dropped) in decoded:
                    service.record_batch(item.device_id, records, dropped, commit=False)
                del rows
                session.commit()
            return done + [item for item, _ in decoded]
        except Exception:
            if len(decoded) == 1:
                # Not stored and not acknowledged: the broker redelivers it after a reconnect.
                logger.exception("storing telemetry of %s failed", decoded[0][0].device_id)
                return done
        for item, (records, dropped) in decoded:  # one at a time after a failed transaction
            try:
                with self.ctx.sessions() as session:
                    TelemetryService(session, self.ctx).record_batch(
                        item.device_id, records, dropped
                    )
                done.append(item)
            except Exception:
                logger.exception("storing telemetry of %s failed", item.device_id)
        return done

    # --- status and reported state (records thread) -----------------------------------------

    def _store_records(self) -> None:
        while (rec := self._records.get()) is not None and not self._stopping.is_set():
            batch, last = _drain(self._records, rec, STORE_BATCH)
            self._store_record_batch(batch)
            if last:
                return

    def _store_record_batch(self, batch: list[_Record]) -> None:
        """Store the records in arrival order in one transaction (one commit for all waiting);
        if it fails, each on its own, so one bad record costs only itself."""
        try:
            with self.ctx.sessions() as session:
                # Every lookup here is by primary key (the identity map has what this batch
                # changed), so the updates can wait for the commit and go out together.
                with session.no_autoflush:
                    ids = sorted({rec.device_id for rec in batch})
                    # One query each, not one per record; held here while the records use them.
                    rows = DeviceService(session, self.ctx).load(ids)
                    targets = DeploymentService(session, self.ctx).load_targets(ids)
                    for rec in batch:
                        self._store(session, rec)
                    del rows, targets
                session.commit()
            return
        except Exception:
            if len(batch) == 1:
                logger.exception("storing %s of %s failed", batch[0].leaf, batch[0].device_id)
                return
        for rec in batch:
            try:
                with self.ctx.sessions() as session:
                    self._store(session, rec)
                    session.commit()
            except Exception:
                logger.exception("storing %s of %s failed", rec.leaf, rec.device_id)

    def _store(self, session: Session, rec: _Record) -> None:
        """One record, uncommitted; a payload that does not decode is logged and skipped."""
        devices = DeviceService(session, self.ctx)
        try:
            if rec.leaf == topics.STATUS:
                devices.record_status(
                    rec.device_id, codec.status_from_proto(rec.payload), commit=False
                )
                return
            if not rec.payload:  # reported state cleared (the retained message was deleted)
                return
            report, result = codec.reported_from_proto(rec.device_id, rec.payload)
        except ValueError as exc:
            logger.warning("bad payload on %s/%s: %s", rec.device_id, rec.leaf, exc)
            return
        devices.record_reported(report, commit=False)
        if result is not None and devices.find(rec.device_id) is not None:
            DeploymentService(session, self.ctx).record_result(rec.device_id, result, commit=False)

    # --- chunk serving (worker thread) ------------------------------------------------------

    def _serve_chunks(self) -> None:
        while (job := self._jobs.get()) is not None and not self._stopping.is_set():
            device_id, (payload, arrived) = job
            try:
                self._answer(device_id, payload, arrived)
            except Exception:
                logger.exception("serving chunks to %s failed", device_id)

    def _answer(self, device_id: str, payload: bytes, arrived: float) -> None:
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
                shared: list[int] = []
                if req.cdc_index or req.cdc_sha256:  # delta updates: chunks by digest, own topic
                    payloads = delta.delta_answers(
                        packages,
                        req.package_digest,
                        req.request_id,
                        want_index=req.cdc_index,
                        digests=[bytes(d) for d in req.cdc_sha256],
                    )
                    sends = [(topic, p) for p in payloads]
                else:
                    count = packages.get(req.package_digest).chunk_count
                    if self.package_topics and all(0 <= i < count for i in indexes):
                        plan = self.fanout.plan(
                            device_id, req.package_digest, count, indexes, arrived, time.monotonic()
                        )
                        shared, indexes = plan.shared, plan.direct
                    chunks = packages.read_chunks(req.package_digest, shared + indexes)
                    shared_topic = topics.package_topic(req.package_digest, self.root)
                    rid = req.request_id  # answers on the shared topic carry none
                    sends = [
                        (shared_topic, codec.chunk_to_proto(req.package_digest, c, count, ""))
                        if n < len(shared)
                        else (topic, codec.chunk_to_proto(req.package_digest, c, count, rid))
                        for n, c in enumerate(chunks)
                    ]
        except ControlPlaneError as exc:
            logger.info("chunk request from %s refused: %s", device_id, exc)
            self.client.publish(
                topic, codec.chunk_error_to_proto(req.package_digest, req.request_id, str(exc)), QOS
            )
            return
        for dest, payload in sends:
            self._make_room(len(payload))
            info = self.client.publish(dest, payload, QOS)
            self._unacked.append((info, len(payload)))
            self._unacked_bytes += len(payload)
        logger.debug(
            "served %d chunk(s) of %s for %s (%d on the package topic)",
            len(sends),
            req.package_digest,
            device_id,
            len(shared),
        )

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


def _drain(q: queue.Queue[Any], first: Any, limit: int) -> tuple[list[Any], bool]:
    """``first`` and whatever else is waiting in ``q`` now, up to ``limit`` items in all; and
    whether the stop marker (None) was among them (then it is the last thing taken)."""
    items = [first]
    while len(items) < limit:
        try:
            item = q.get_nowait()
        except queue.Empty:
            break
        if item is None:
            return items, True
        items.append(item)
    return items, False
