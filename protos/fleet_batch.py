"""Batch jobs on devices: topic leaves, plain dataclasses and ``fleet_batch_pb2`` bytes.

The control plane and the agent both import this module (as they do ``fleet_state.py``), so a
field means the same on both sides. Every leaf sits under the device's own prefix
``<root>/<D>/`` like the rest of the fleet channel, so the broker ACL still confines a device to
its subtree (``control_plane/fleet/broker_config.py`` grants these leaves).

| leaf              | direction    | retained | payload               |
| ----------------- | ------------ | -------- | --------------------- |
| ``batch/jobs``    | cloud -> dev | yes      | ``BatchJobs``         |
| ``batch/req``     | dev -> cloud | no       | ``BatchInputRequest`` |
| ``batch/data``    | cloud -> dev | no       | ``BatchInputChunk``   |
| ``batch/state``   | dev -> cloud | no       | ``BatchJobState``     |
| ``batch/rows``    | dev -> cloud | no       | ``BatchRows``         |

Leaves are no longer than ``chunks/data``: the broker's packet limit is the largest message on
the longest topic (``broker_config.max_packet_bytes``), and a batch message never needs more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from protos.fleet_state import DesiredModel
from protos.gen import fleet_batch_pb2 as pb

JOBS = "batch/jobs"
INPUT_REQUEST = "batch/req"
INPUT_DATA = "batch/data"
STATE = "batch/state"
ROWS = "batch/rows"

DEVICE_PUBLISHES = (INPUT_REQUEST, STATE, ROWS)
DEVICE_SUBSCRIBES = (JOBS, INPUT_DATA)

#: Chunk indexes one request may ask for (more: refused).
MAX_INDEXES_PER_REQUEST = 64
#: The largest ``BatchRows`` a device sends (the control plane refuses bigger ones unread); a
#: single result line beyond it is sent alone, cut to an error row, so a row is never lost.
MAX_ROWS_BYTES = 256 * 1024

STATES = ("PULLING", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED")
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELED")


@dataclass(frozen=True)
class BatchJob:
    job_id: str
    model: str
    version: str
    input_digest: str
    input_size: int
    chunk_size: int
    chunk_sha256: tuple[bytes, ...]
    rows_received: int = 0

    def as_download(self) -> DesiredModel:
        """The input archive as the agent's chunk downloader knows a package."""
        return DesiredModel.of_chunks(
            deployment_id=self.job_id,
            name="batch-input",
            version=self.job_id,
            package_digest=self.input_digest,
            package_size=self.input_size,
            chunk_size=self.chunk_size,
            chunk_sha256=self.chunk_sha256,
        )


@dataclass(frozen=True)
class BatchJobs:
    device_id: str
    jobs: tuple[BatchJob, ...]
    issued_at_ms: int = 0


@dataclass(frozen=True)
class InputRequest:
    job_id: str
    indexes: tuple[int, ...]
    request_id: str


@dataclass(frozen=True)
class InputChunk:
    job_id: str
    index: int
    sha256: bytes
    data: bytes
    request_id: str
    error: str = ""


@dataclass(frozen=True)
class JobState:
    job_id: str
    state: str
    total: int = 0
    done: int = 0
    failed: int = 0
    error: str = ""


@dataclass(frozen=True)
class Rows:
    job_id: str
    first_index: int
    rows_json: tuple[str, ...]


def _parse(cls: type, payload: bytes):  # type: ignore[no-untyped-def]
    msg = cls()
    try:
        msg.ParseFromString(payload)
    except DecodeError as exc:
        raise ValueError(f"not a {cls.__name__}: {exc}") from None
    return msg


def encode_jobs(jobs: BatchJobs) -> bytes:
    return pb.BatchJobs(
        device_id=jobs.device_id,
        issued_at_ms=jobs.issued_at_ms,
        jobs=[
            pb.BatchJob(
                job_id=j.job_id,
                model=j.model,
                version=j.version,
                input_digest=j.input_digest,
                input_size=j.input_size,
                chunk_size=j.chunk_size,
                chunk_sha256=list(j.chunk_sha256),
                rows_received=j.rows_received,
            )
            for j in jobs.jobs
        ],
    ).SerializeToString()


def decode_jobs(payload: bytes) -> BatchJobs:
    msg = _parse(pb.BatchJobs, payload)
    jobs = []
    for j in msg.jobs:
        if not j.job_id or len(j.input_digest) != 64 or j.chunk_size <= 0:
            raise ValueError(f"batch job {j.job_id!r}: incomplete")
        if any(len(d) != 32 for d in j.chunk_sha256):
            raise ValueError(f"batch job {j.job_id!r}: a chunk digest is not 32 bytes")
        expected = -(-j.input_size // j.chunk_size)
        if expected != len(j.chunk_sha256):
            raise ValueError(
                f"batch job {j.job_id!r}: {len(j.chunk_sha256)} chunk digests for "
                f"{j.input_size} bytes in chunks of {j.chunk_size}"
            )
        jobs.append(
            BatchJob(
                j.job_id,
                j.model,
                j.version,
                j.input_digest,
                j.input_size,
                j.chunk_size,
                tuple(j.chunk_sha256),
                j.rows_received,
            )
        )
    return BatchJobs(msg.device_id, tuple(jobs), msg.issued_at_ms)


def encode_input_request(req: InputRequest) -> bytes:
    return pb.BatchInputRequest(
        job_id=req.job_id, indexes=list(req.indexes), request_id=req.request_id
    ).SerializeToString()


def decode_input_request(payload: bytes) -> InputRequest:
    msg = _parse(pb.BatchInputRequest, payload)
    return InputRequest(msg.job_id, tuple(msg.indexes), msg.request_id)


def encode_input_chunk(chunk: InputChunk) -> bytes:
    return pb.BatchInputChunk(
        job_id=chunk.job_id,
        index=chunk.index,
        sha256=chunk.sha256,
        data=chunk.data,
        request_id=chunk.request_id,
        error=chunk.error,
    ).SerializeToString()


def decode_input_chunk(payload: bytes) -> InputChunk:
    msg = _parse(pb.BatchInputChunk, payload)
    return InputChunk(msg.job_id, msg.index, msg.sha256, msg.data, msg.request_id, msg.error)


def encode_state(state: JobState) -> bytes:
    return pb.BatchJobState(
        job_id=state.job_id,
        state=state.state,
        total=state.total,
        done=state.done,
        failed=state.failed,
        error=state.error,
    ).SerializeToString()


def decode_state(payload: bytes) -> JobState:
    msg = _parse(pb.BatchJobState, payload)
    if msg.state not in STATES:
        raise ValueError(f"batch job state {msg.state!r} is not one of {STATES}")
    return JobState(msg.job_id, msg.state, msg.total, msg.done, msg.failed, msg.error)


def encode_rows(rows: Rows) -> bytes:
    return pb.BatchRows(
        job_id=rows.job_id, first_index=rows.first_index, rows_json=list(rows.rows_json)
    ).SerializeToString()


def decode_rows(payload: bytes) -> Rows:
    if len(payload) > MAX_ROWS_BYTES + 1024:
        raise ValueError(f"batch rows of {len(payload)} bytes exceed {MAX_ROWS_BYTES}")
    msg = _parse(pb.BatchRows, payload)
    return Rows(msg.job_id, msg.first_index, tuple(msg.rows_json))


def pages(job_id: str, first_index: int, lines: Sequence[str]) -> list[Rows]:
    """Consecutive lines in pages of at most ``MAX_ROWS_BYTES`` (a longer line goes alone)."""
    out: list[Rows] = []
    page: list[str] = []
    size = 0
    start = first_index
    for line in lines:
        n = len(line.encode()) + 8
        if page and size + n > MAX_ROWS_BYTES:
            out.append(Rows(job_id, start, tuple(page)))
            start += len(page)
            page, size = [], 0
        page.append(line)
        size += n
    if page:
        out.append(Rows(job_id, start, tuple(page)))
    return out
