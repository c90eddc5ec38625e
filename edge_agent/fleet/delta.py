"""Delta updates: fill a package download from chunks the device already holds.

Before the fixed chunks of a package are pulled (``downloads.ChunkPuller``), ``DeltaUpdates.seed``
tries to produce them locally:

1. The desired state pins the package's chunk index by sha256 (``cdc_index_sha256``; absent when
   the control plane has none, and then nothing here happens). The index is fetched once
   (``ChunkRequest.cdc_index``), checked against that digest and kept in the download folder;
   after the install it is remembered with the package (``held_chunks.py``), so the package can
   serve later deltas. A device that holds no package with an index asks for it beside the
   full pull instead of waiting for it (no round trip on its first install): one small message
   now makes the next version a delta.
2. For the fixed chunks still missing, the content-defined chunks covering them are either held
   in an installed package (read back and checked against their digest) or fetched by digest
   (``ChunkRequest.cdc_sha256``, a window of requests, each answer checked before it is written
   to ``<download>/cdc/<sha256>``). Nothing held, or less than ``MIN_REUSED_SHARE`` (5%) of the
   bytes needed: nothing fetched here, the pull is a full download.
3. Each missing fixed chunk is composed from them and checked against ``chunk_sha256[i]`` before
   ``ChunkDownload.write_chunk``, exactly as a pulled chunk is; then the usual path runs
   (``ChunkPuller`` for any chunk still missing, the whole-file sha256, the signature and every
   member digest at install).

Any failure (the index unobtainable or wrong, a refusal, a local chunk no longer matching its
digest, a composed chunk not matching) ends the delta with a warning; the chunks already written
were verified, and the ChunkPuller fetches the rest whole. A held package whose chunk failed its
digest is forgotten as a source.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import logging
import tarfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.config import FleetSettings
from edge_agent.fleet import codec
from edge_agent.fleet.domain import ChunkAnswer
from edge_agent.fleet.downloads import ChunkDownload
from edge_agent.fleet.held_chunks import ChunkSource, HeldChunks, LocalChunkMismatch
from edge_agent.fleet.link import new_request_id
from edge_agent.fsutil import replace_bytes
from edge_agent.metrics import METRICS
from model_packager.chunk_index import ChunkIndex
from model_packager.errors import InvalidPackage
from protos import fleet_topics as topics
from protos.fleet_state import DesiredModel

log = logging.getLogger(__name__)

INDEX_FILE = "cdc.index"
#: A delta that would reuse less than this share of the bytes it needs is not worth its costs
#: (the index's round trip, about 1% more bytes in per-chunk message overhead, smaller
#: requests): the package is pulled whole. E.g. a model trained further, where every weight moved
#: (scripts/bench-delta: ~2% of the digits CNN's package still matched).
MIN_REUSED_SHARE = 0.05
_MAX_SENT_IDS = 4096


class DeltaUnavailable(Exception):
    """The delta cannot go on; the rest of the package is pulled whole."""


@dataclass
class DeltaStats:
    """What one delta did: chunks and bytes reused from held packages, fetched by digest."""

    reused_chunks: int = 0
    reused_bytes: int = 0
    fetched_chunks: int = 0
    fetched_bytes: int = 0
    fixed_chunks_written: int = 0
    counters: Counter[str] = field(default_factory=Counter)


#: ``send(payload) -> True`` when the request was handed to the broker connection.
Send = Callable[[bytes], bool]


class DeltaUpdates:
    """The device's side of delta updates (one per FleetClient)."""

    def __init__(self, settings: FleetSettings, held: HeldChunks) -> None:
        self.settings = settings
        self.held = held
        self._answers: asyncio.Queue[ChunkAnswer] | None = None
        self._sent: set[str] = set()  # request ids of delta requests, to route their refusals
        # The index asked for on the side (nothing held): request id, where it goes, its sha256.
        self._side: tuple[str, Path, bytes] | None = None
        self.last: DeltaStats | None = None

    # --- answers from the channel (event loop) -----------------------------------------------

    def offer(self, answer: ChunkAnswer) -> bool:
        """Take a ChunkData meant for delta updates; False: not ours (a fixed chunk)."""
        if not (answer.cdc or answer.cdc_index or answer.request_id in self._sent):
            return False
        if self._answers is not None:
            self._answers.put_nowait(answer)
        elif self._side is not None and answer.request_id == self._side[0]:
            self._keep_side_index(answer)
        return True

    # --- the delta ---------------------------------------------------------------------------

    async def seed(
        self,
        dl: ChunkDownload,
        committed: set[str],
        *,
        send: Send,
        connected: asyncio.Event,
        still_wanted: Callable[[], None],
    ) -> DeltaStats | None:
        """Write whatever fixed chunks of ``dl`` the held packages and fetched chunks make.

        Returns what it did, or None when no delta applied. Never raises for a delta that
        cannot be done (the caller's pull takes over); ``still_wanted``'s exception passes.
        """
        m = dl.model
        if not self.settings.delta_updates or not m.cdc_index_sha256 or dl.complete():
            return None
        self._sent.clear()
        self._side = None
        held_any = await asyncio.to_thread(self.held.load, committed - {m.package_digest})
        if not held_any and not (dl.dir / INDEX_FILE).exists():
            # A device holding nothing: no delta now, so the index is not waited for; it is
            # asked for beside the pull, to make the package a source for the next version.
            if connected.is_set():
                request_id, payload = codec_request(m.package_digest, index=True)
                if self._send(send, request_id, payload):
                    self._side = (request_id, dl.dir, m.cdc_index_sha256)
            return None
        self._answers = asyncio.Queue()
        stats = DeltaStats()
        try:
            index = await self._index(dl, send, connected, still_wanted)
            held = ChunkSource(held_any)
            plan = _plan(dl, index, held)
            if plan.reused_bytes < MIN_REUSED_SHARE * (plan.reused_bytes + plan.remote_bytes):
                log.info(
                    "delta of %s: %d of the bytes needed held, too few; pulling it whole",
                    m.package_digest[:12],
                    plan.reused_bytes,
                )
                METRICS.delta_fallbacks.inc()
                return None
            stats.reused_chunks, stats.reused_bytes = len(plan.local), plan.reused_bytes
            await self._fetch(dl, plan.remote, send, connected, still_wanted, stats)
            written = await asyncio.to_thread(_compose, dl, index, held)
            stats.fixed_chunks_written = written
        except DeltaUnavailable as exc:
            log.warning(
                "delta of %s abandoned (%s); pulling the rest whole", m.package_digest[:12], exc
            )
            METRICS.delta_fallbacks.inc()
            return None
        except LocalChunkMismatch as exc:
            log.warning(
                "delta of %s abandoned: %s; pulling the rest whole", m.package_digest[:12], exc
            )
            self._forget_damaged(exc)
            METRICS.delta_fallbacks.inc()
            return None
        finally:
            self._answers = None
            METRICS.delta_fetched_bytes.inc(stats.fetched_bytes)  # transferred, used or not
        log.info(
            "delta of %s: %d fixed chunks of %d made locally; %d chunks (%d bytes) reused, "
            "%d chunks (%d bytes) fetched by digest",
            m.package_digest[:12],
            stats.fixed_chunks_written,
            m.chunk_count,
            stats.reused_chunks,
            stats.reused_bytes,
            stats.fetched_chunks,
            stats.fetched_bytes,
        )
        METRICS.delta_updates.inc()
        METRICS.delta_reused_bytes.inc(stats.reused_bytes)
        self.last = stats
        return stats

    def remember(self, dl_dir: Path, digest: str, package: Path) -> None:
        """After an install: keep the package's chunk index and layout, if its index came."""
        index_path = dl_dir / INDEX_FILE
        if not index_path.exists():
            return
        try:
            self.held.remember(digest, package, index_path.read_bytes())
        except (OSError, tarfile.TarError, InvalidPackage, ValueError) as exc:
            # Only a source for later deltas is lost, never the install.
            log.warning("chunk index of %s not kept: %s", digest[:12], exc)

    def _keep_side_index(self, answer: ChunkAnswer) -> None:
        """The index asked for beside a full pull: kept if it matches and the download is on."""
        assert self._side is not None
        _, folder, sha256 = self._side
        self._side = None
        data = answer.cdc_index
        if answer.error or hashlib.sha256(data).digest() != sha256 or not folder.is_dir():
            log.info("chunk index not kept (%s)", answer.error or "no match or download gone")
            return
        try:
            replace_bytes(folder / INDEX_FILE, data)
        except OSError as exc:
            log.warning("chunk index not kept: %s", exc)

    def _forget_damaged(self, exc: LocalChunkMismatch) -> None:
        self.held.forget(exc.package)

    # --- the index ---------------------------------------------------------------------------

    async def _index(
        self,
        dl: ChunkDownload,
        send: Send,
        connected: asyncio.Event,
        still_wanted: Callable[[], None],
    ) -> ChunkIndex:
        m = dl.model
        path = dl.dir / INDEX_FILE
        if path.exists():
            data = path.read_bytes()
            if hashlib.sha256(data).digest() == m.cdc_index_sha256:
                return _decode(data, m)
            path.unlink(missing_ok=True)
        for _attempt in range(self.settings.max_chunk_rejects):
            answer = await self._ask(
                codec_request(m.package_digest, index=True), send, connected, still_wanted
            )
            if answer is None:
                continue
            if answer.error:
                raise DeltaUnavailable(f"control plane refused the chunk index: {answer.error}")
            if hashlib.sha256(answer.cdc_index).digest() != m.cdc_index_sha256:
                log.warning("chunk index of %s failed its sha256 check", m.package_digest[:12])
                continue
            index = _decode(answer.cdc_index, m)
            replace_bytes(path, answer.cdc_index)
            return index
        raise DeltaUnavailable("no valid chunk index came")

    async def _ask(
        self,
        request: tuple[str, bytes],
        send: Send,
        connected: asyncio.Event,
        still_wanted: Callable[[], None],
    ) -> ChunkAnswer | None:
        """Send one request and wait for its first answer (None: timed out)."""
        request_id, payload = request
        loop = asyncio.get_running_loop()
        while True:
            still_wanted()
            if connected.is_set() and self._send(send, request_id, payload):
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(connected.wait(), 0.5)
        due = loop.time() + self.settings.chunk_timeout_s
        assert self._answers is not None
        while (left := due - loop.time()) > 0:
            try:
                answer = await asyncio.wait_for(self._answers.get(), left)
            except TimeoutError:
                break
            if answer.request_id == request_id:
                return answer
        return None

    def _send(self, send: Send, request_id: str, payload: bytes) -> bool:
        if len(self._sent) >= _MAX_SENT_IDS:
            self._sent.clear()
        self._sent.add(request_id)
        return send(payload)

    # --- chunks by digest --------------------------------------------------------------------

    async def _fetch(
        self,
        dl: ChunkDownload,
        wanted: list[bytes],
        send: Send,
        connected: asyncio.Event,
        still_wanted: Callable[[], None],
        stats: DeltaStats,
    ) -> None:
        """Fetch ``wanted`` chunks into ``<download>/cdc/``, a window of requests in flight."""
        fs = self.settings
        folder = dl.dir / "cdc"
        folder.mkdir(exist_ok=True)
        todo = [d for d in wanted if not _fetched_ok(folder, d)]
        pending = set(todo)
        outstanding: dict[str, tuple[set[bytes], float]] = {}
        rejects: Counter[bytes] = Counter()
        refusals = 0
        loop = asyncio.get_running_loop()
        assert self._answers is not None
        per_request = min(fs.chunks_per_request * 4, topics.MAX_CHUNK_INDEXES_PER_REQUEST)
        while pending:
            still_wanted()
            if not connected.is_set():
                outstanding.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(connected.wait(), 0.5)
                continue
            asked = set().union(*(s for s, _ in outstanding.values()))
            queue = [d for d in todo if d in pending and d not in asked]
            while len(outstanding) < fs.chunk_window and queue:
                batch, queue = queue[:per_request], queue[per_request:]
                request_id, payload = codec_request(dl.model.package_digest, digests=batch)
                if not self._send(send, request_id, payload):
                    break
                outstanding[request_id] = (set(batch), loop.time() + fs.chunk_timeout_s)
            wake = min((d for _, d in outstanding.values()), default=loop.time() + 0.5)
            try:
                answer = await asyncio.wait_for(self._answers.get(), max(0.01, wake - loop.time()))
            except TimeoutError:
                now = loop.time()
                for rid, (_, due) in list(outstanding.items()):
                    if due <= now:
                        del outstanding[rid]
                        stats.counters["timeouts"] += 1
                continue
            if answer.error:
                outstanding.pop(answer.request_id, None)
                refusals += 1
                if refusals >= fs.max_chunk_rejects:
                    raise DeltaUnavailable(f"control plane refused chunks: {answer.error}")
                continue
            digest = answer.sha256
            if not answer.cdc or digest not in pending:
                stats.counters["duplicates"] += 1
                continue
            if hashlib.sha256(answer.data).digest() != digest:
                rejects[digest] += 1
                for ids, _ in outstanding.values():
                    ids.discard(digest)  # ask again
                if rejects[digest] >= fs.max_chunk_rejects:
                    raise DeltaUnavailable(f"chunk {digest.hex()[:16]} failed its check")
                continue
            await asyncio.to_thread(replace_bytes, folder / digest.hex(), answer.data)
            pending.discard(digest)
            stats.fetched_chunks += 1
            stats.fetched_bytes += len(answer.data)
            for rid, (ids, _) in list(outstanding.items()):
                ids.discard(digest)
                if not ids:
                    del outstanding[rid]


def codec_request(
    digest: str, *, index: bool = False, digests: list[bytes] | None = None
) -> tuple[str, bytes]:
    request_id = new_request_id()
    return request_id, codec.cdc_request_to_proto(digest, request_id, index=index, digests=digests)


def _decode(data: bytes, m: DesiredModel) -> ChunkIndex:
    try:
        index = ChunkIndex.decode(data)
    except InvalidPackage as exc:
        raise DeltaUnavailable(str(exc)) from exc
    if index.package_size != m.package_size:
        raise DeltaUnavailable(
            f"chunk index covers {index.package_size} bytes, the package is {m.package_size}"
        )
    return index


@dataclass
class _Plan:
    local: set[bytes]
    remote: list[bytes]  # distinct digests to fetch, in file order
    reused_bytes: int
    remote_bytes: int


def _plan(dl: ChunkDownload, index: ChunkIndex, held: ChunkSource) -> _Plan:
    needed = sorted({j for i in dl.missing() for j in _covering(dl, index, i)})
    local: set[bytes] = set()
    remote: dict[bytes, None] = {}
    reused = fetched = 0
    for j in needed:
        digest = index.digests[j]
        if digest in held:
            if digest not in local:
                reused += index.sizes[j]
            local.add(digest)
        elif digest not in remote:
            remote[digest] = None
            fetched += index.sizes[j]
    return _Plan(local, list(remote), reused, fetched)


def _covering(dl: ChunkDownload, index: ChunkIndex, i: int) -> range:
    """Positions in the chunk index of the content-defined chunks overlapping fixed chunk i."""
    cs, size = dl.model.chunk_size, dl.model.package_size
    start, end = i * cs, min((i + 1) * cs, size)
    first = bisect.bisect_right(index.offsets, start) - 1
    last = bisect.bisect_left(index.offsets, end) - 1
    return range(max(first, 0), last + 1)


def _compose(dl: ChunkDownload, index: ChunkIndex, held: ChunkSource) -> int:
    """Write every missing fixed chunk that the held and fetched chunks cover; returns how many.

    Runs in a worker thread. Raises ``LocalChunkMismatch`` for a held chunk that no longer
    matches its digest, ``DeltaUnavailable`` for a composed fixed chunk that does not match.
    """
    folder = dl.dir / "cdc"
    cache: dict[int, bytes] = {}
    cs, size = dl.model.chunk_size, dl.model.package_size

    def chunk(j: int) -> bytes:
        if j not in cache:
            if len(cache) > 4:
                cache.pop(min(cache))
            digest = index.digests[j]
            fetched = folder / digest.hex()
            if fetched.exists():
                data = fetched.read_bytes()
                if hashlib.sha256(data).digest() != digest:
                    fetched.unlink(missing_ok=True)
                    raise DeltaUnavailable(f"fetched chunk {digest.hex()[:16]} damaged on disk")
            else:
                data = held.read(digest)
            cache[j] = data
        return cache[j]

    written = 0
    for i in dl.missing():
        start, end = i * cs, min((i + 1) * cs, size)
        buf = bytearray()
        for j in _covering(dl, index, i):
            off = index.offsets[j]
            data = chunk(j)
            buf += data[max(start, off) - off : min(end, off + len(data)) - off]
        if not dl.verify_chunk(i, bytes(buf)):
            raise DeltaUnavailable(f"fixed chunk {i} composed from chunks does not match")
        dl.write_chunk(i, bytes(buf))
        written += 1
    return written


def _fetched_ok(folder: Path, digest: bytes) -> bool:
    path = folder / digest.hex()
    if not path.exists():
        return False
    if hashlib.sha256(path.read_bytes()).digest() == digest:
        return True
    path.unlink(missing_ok=True)
    return False
