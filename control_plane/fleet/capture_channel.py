"""Captured samples, the fleet channel's side: record chunks in, acknowledgements and purge
orders out (``protos/fleet_capture.py``).

The fleet service hands this extension the messages of ``captures/up`` and ``captures/stat``
from its network thread. ``captures/up`` goes through the MQTT shared subscription when the
control plane runs as replicas (``shared_leaves``), so each chunk is handled by one replica; the
handler stages chunks in the database, so the chunks of one record may reach different
replicas, or a replica restarted in the middle, and still make one record. Messages are queued
(bounded: beyond ``QUEUE_SIZE`` a chunk is dropped and counted; the device sends it again when
its acknowledgement does not come) and handled on one worker thread, which decodes them, asks the
handler (the captures domain's ``CaptureReceiver``, wired in by the app) and publishes the
``CaptureAck`` it returns on ``captures/ack``. The handler never sees MQTT or protobuf; this
module never sees a database.

A chunk that does not decode is answered REJECTED when its digest can still be read, so the
device drops the record instead of sending it forever; otherwise it is only counted.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from control_plane.fleet import codec
from control_plane.fleet.queued_channel import QueuedChannel
from control_plane.fleet.service import QOS, FleetService
from protos import fleet_capture

logger = logging.getLogger(__name__)

#: Capture messages waiting for the worker; beyond, they are dropped (and counted).
QUEUE_SIZE = 256


class CaptureHandler(Protocol):
    def on_chunk(
        self, device_id: str, chunk: fleet_capture.CaptureChunk
    ) -> fleet_capture.CaptureAck | None:
        """The answer to send for this chunk (None: nothing yet, more chunks are due)."""
        ...

    def on_refused(self, device_id: str, digest: str, reason: str) -> None:
        """A chunk that did not decode (counted on the device)."""
        ...

    def on_status(self, device_id: str, status: fleet_capture.CaptureStatus) -> None: ...

    def controls(self) -> list[fleet_capture.CaptureControl]:
        """Every device's standing purge order (republished retained after a reconnect)."""
        ...


class CaptureChannel(QueuedChannel[CaptureHandler]):
    queue_size = QUEUE_SIZE
    thread_name = "fleet-captures"
    what = "capture"
    leaves = fleet_capture.CONTROL_PLANE_SUBSCRIBES
    #: Handled by one replica each (``captures/stat`` is retained: plain subscription).
    shared_leaves = (fleet_capture.UP,)

    def __init__(self, fleet: FleetService) -> None:
        self.refused = 0  # chunks that did not decode
        super().__init__(fleet)

    def connected(self) -> None:
        """Republish every standing purge order (from a thread of its own: not the network one)."""
        threading.Thread(target=self._republish, name="fleet-capture-ctl", daemon=True).start()

    def forget_device(self, device_id: str) -> None:
        topic = self._topic(device_id, fleet_capture.CONTROL)
        self.fleet.client.publish(topic, b"", QOS, retain=True)

    # --- publishing -------------------------------------------------------------------------

    def publish_control(self, control: fleet_capture.CaptureControl) -> None:
        """A purge order, retained: a device offline now finds it when it comes back."""
        topic = self._topic(control.device_id, fleet_capture.CONTROL)
        self.fleet.client.publish(topic, fleet_capture.encode_control(control), QOS, retain=True)
        logger.info("published capture purge %s to %s", control.purge_id, control.device_id)

    def _republish(self) -> None:
        if self.handler is None:
            return
        try:
            for control in self.handler.controls():
                self.publish_control(control)
        except Exception:
            logger.exception("republishing capture purge orders failed")

    def _ack(self, device_id: str, ack: fleet_capture.CaptureAck) -> None:
        topic = self._topic(device_id, fleet_capture.ACK)
        self.fleet.client.publish(topic, fleet_capture.encode_ack(ack), QOS)

    # --- the worker -------------------------------------------------------------------------

    def _one(self, handler: CaptureHandler, device_id: str, leaf: str, payload: bytes) -> None:
        if leaf == fleet_capture.STATUS:
            if payload:  # an empty payload clears the retained status: nothing to record
                handler.on_status(device_id, fleet_capture.decode_status(payload))
            return
        if leaf != fleet_capture.UP:
            return
        try:
            chunk = fleet_capture.decode_chunk(payload)
        except ValueError as exc:
            self.refused += 1
            digest = codec.capture_chunk_digest(payload)
            logger.warning("%s: capture chunk refused: %s", device_id, exc)
            if digest:
                handler.on_refused(device_id, digest, str(exc))
                ack = fleet_capture.CaptureAck(digest, fleet_capture.REJECTED, reason=str(exc))
                self._ack(device_id, ack)
            return
        answer = handler.on_chunk(device_id, chunk)
        if answer is not None:
            self._ack(device_id, answer)
