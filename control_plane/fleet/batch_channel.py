"""Batch jobs on devices, the fleet channel's side: topics in, retained job lists out.

The fleet service hands this extension the messages of the device batch leaves
(``protos/fleet_batch.py``) from its network thread; they are queued (bounded: beyond
``QUEUE_SIZE`` a message is dropped and counted, and the device asks or sends again after its
timeout) and handled on one worker thread, which decodes them and calls the handler: the
services domain's ``DeviceBatches``, wired in by the app. The handler never sees MQTT or
protobuf; this module never sees a database.

Publishing: ``publish_jobs(device_id)`` asks the handler for the device's current job list and
publishes it retained; after every (re)connect the lists of all devices with jobs are published
again (a broker without persistence forgets retained messages).
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from control_plane.fleet.queued_channel import QueuedChannel
from control_plane.fleet.service import QOS
from protos import fleet_batch

logger = logging.getLogger(__name__)

#: Device batch messages waiting for the worker; beyond, they are dropped (and counted).
QUEUE_SIZE = 1024


class DeviceBatchHandler(Protocol):
    def jobs_for(self, device_id: str) -> fleet_batch.BatchJobs: ...

    def devices_with_jobs(self) -> list[str]: ...

    def input_chunk(self, device_id: str, job_id: str, index: int) -> tuple[bytes, bytes]:
        """(data, sha256) of one chunk of the job's input; ``LookupError`` when it cannot be
        served (unknown job, another device's, index out of range)."""
        ...

    def on_state(self, device_id: str, state: fleet_batch.JobState) -> None: ...

    def on_rows(self, device_id: str, rows: fleet_batch.Rows) -> None: ...


class BatchChannel(QueuedChannel[DeviceBatchHandler]):
    queue_size = QUEUE_SIZE
    thread_name = "fleet-batch"
    what = "device batch"
    leaves = fleet_batch.DEVICE_PUBLISHES

    def connected(self) -> None:
        """Republish every device's job list (from a thread of its own: not the network one)."""
        threading.Thread(target=self._republish, name="fleet-batch-jobs", daemon=True).start()

    def forget_device(self, device_id: str) -> None:
        self.fleet.client.publish(self._topic(device_id, fleet_batch.JOBS), b"", QOS, retain=True)

    # --- publishing -------------------------------------------------------------------------

    def publish_jobs(self, device_id: str) -> None:
        if self.handler is None:
            return
        jobs = self.handler.jobs_for(device_id)
        topic = self._topic(device_id, fleet_batch.JOBS)
        self.fleet.client.publish(topic, fleet_batch.encode_jobs(jobs), QOS, retain=True)
        logger.info("published %d batch job(s) of %s", len(jobs.jobs), device_id)

    def _republish(self) -> None:
        if self.handler is None:
            return
        try:
            for device_id in self.handler.devices_with_jobs():
                self.publish_jobs(device_id)
        except Exception:
            logger.exception("republishing device batch jobs failed")

    # --- the worker -------------------------------------------------------------------------

    def _one(self, handler: DeviceBatchHandler, device_id: str, leaf: str, payload: bytes) -> None:
        if leaf == fleet_batch.INPUT_REQUEST:
            self._serve(handler, device_id, fleet_batch.decode_input_request(payload))
        elif leaf == fleet_batch.STATE:
            handler.on_state(device_id, fleet_batch.decode_state(payload))
        elif leaf == fleet_batch.ROWS:
            handler.on_rows(device_id, fleet_batch.decode_rows(payload))

    def _serve(
        self, handler: DeviceBatchHandler, device_id: str, req: fleet_batch.InputRequest
    ) -> None:
        topic = self._topic(device_id, fleet_batch.INPUT_DATA)

        def refuse(why: str) -> None:
            answer = fleet_batch.InputChunk(req.job_id, 0, b"", b"", req.request_id, why)
            self.fleet.client.publish(topic, fleet_batch.encode_input_chunk(answer), QOS)

        if len(req.indexes) > fleet_batch.MAX_INDEXES_PER_REQUEST:
            refuse(f"at most {fleet_batch.MAX_INDEXES_PER_REQUEST} indexes per request")
            return
        for index in req.indexes:
            try:
                data, digest = handler.input_chunk(device_id, req.job_id, index)
            except LookupError as exc:
                refuse(str(exc.args[0]) if exc.args else "not found")
                return
            answer = fleet_batch.InputChunk(req.job_id, index, digest, data, req.request_id)
            self.fleet.client.publish(topic, fleet_batch.encode_input_chunk(answer), QOS)
