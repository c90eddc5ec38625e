"""A package being pulled over the fleet channel, kept on disk so a break never costs a chunk.

``ChunkDownload`` is the state on disk; ``ChunkPuller`` fills it over the channel, with a window
of chunk requests in flight (from the device's own ``chunks/data`` and, when the desired state
names one, the package's shared topic: both feed the same puller).

Layout, per package digest, under ``data_dir/fleet/downloads/<digest>/``::

    meta.json          the DesiredModel's geometry and chunk digests (to check a resumed folder)
    <digest>.part      the package's verified chunks 0..k-1, in order: the file being assembled
    chunks/<i>.chunk   a verified chunk that arrived ahead of the file's end, written atomically
    <digest>.edgepkg   the assembled package, renamed into place after its sha256 matched

Hash once: every chunk is checked against ``chunk_sha256[i]`` as it arrives. A chunk that extends
the in-order prefix is appended to ``.part`` and fed to the whole-file sha256 at once; one that
arrives early waits as a chunk file (and, up to ``HELD_BYTES``, in memory) until the prefix
reaches it, then is appended, hashed and its file removed. When the last chunk is in, the
whole-file digest is already known: ``assemble`` compares it, fsyncs and renames; the package is
never read back for its digest, and the installer is told the digest instead of computing it
again (``Installer.install(known_digest=...)``). Chunks arrive mostly in order (requests ask in
index order, the shared topic carries them in the order they were asked), so few wait.

Crashes: every chunk on disk was verified before it was written; what the process was writing
when it died is at most a partial chunk at the end of ``.part`` or a temp file in ``chunks/``.
Reopening a folder re-checks ``.part`` chunk by chunk (feeding the whole-file sha256 again, the
one re-read, only after a restart), cuts it after the last good chunk, and re-checks every chunk
file; what fails is fetched again. Nothing is fsynced before the assembled package (the page cache
outlives a killed process, and after a power cut the re-check drops what the disk lost; an fsync
per chunk cost 4-6 ms of waiting per chunk while 20 agents pull at once, scripts/bench-rollout).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from edge_agent.config import FleetSettings
from edge_agent.crash_points import crash_point
from edge_agent.fleet.domain import ChunkAnswer
from edge_agent.fsutil import atomic_write_json, fsync_dir, read_json, replace_bytes
from protos.fleet_state import DesiredModel

log = logging.getLogger(__name__)

#: Early chunks also kept in memory until the in-order prefix reaches them (beyond: read back from
#: their chunk file). An agent's window is 4 requests of 8 chunks: 8 MiB at 256 KiB chunks.
HELD_BYTES = 16 << 20


class DownloadError(Exception):
    """The download cannot succeed as described (reported FAILED at step ``download``)."""


def check_geometry(m: DesiredModel) -> None:
    """Refuse a DesiredModel whose sizes and digests do not describe one file consistently."""
    if len(m.package_digest) != 64:
        raise DownloadError(f"package digest {m.package_digest!r} is not a sha256")
    if m.chunk_size <= 0 or m.chunk_count != len(m.chunk_sha256):
        raise DownloadError("desired state lists a chunk count that does not match its digests")
    expected = -(-m.package_size // m.chunk_size) if m.package_size else 0
    if expected != m.chunk_count or any(len(h) != 32 for h in m.chunk_sha256):
        raise DownloadError("desired state's package size, chunk size and count disagree")


class ChunkDownload:
    def __init__(self, root: Path, model: DesiredModel) -> None:
        check_geometry(model)
        self.model = model
        self.dir = root / model.package_digest
        self.chunks_dir = self.dir / "chunks"
        self.package_path = self.dir / f"{model.package_digest}.edgepkg"
        self.part_path = self.dir / f"{model.package_digest}.part"
        self._early: set[int] = set()  # verified chunks on disk as files, beyond the prefix
        self._held: dict[int, bytes] = {}  # some of them, in memory
        self._held_bytes = 0
        self._prefix = 0  # chunks 0..prefix-1 are in .part, hashed
        self._whole = hashlib.sha256()
        self._open()

    def _meta(self) -> dict[str, object]:
        m = self.model
        return {
            "package_digest": m.package_digest,
            "package_size": m.package_size,
            "chunk_size": m.chunk_size,
            "chunk_sha256": [h.hex() for h in m.chunk_sha256],
        }

    def _open(self) -> None:
        meta = self._meta()
        if read_json(self.dir / "meta.json") != meta:
            # New, or described differently than before (another chunk size): start over.
            shutil.rmtree(self.dir, ignore_errors=True)
            self.chunks_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.dir / "meta.json", meta)
            self.part_path.touch()
            return
        self.chunks_dir.mkdir(parents=True, exist_ok=True)
        if self.package_path.exists():
            return  # assembled and checked by an earlier run
        self._reopen_part()
        for p in self.chunks_dir.iterdir():
            index = _index_of(p)
            if index is None or index >= self.model.chunk_count or index < self._prefix:
                p.unlink(missing_ok=True)  # a temp file, junk, or already in .part
                continue
            if self.verify_chunk(index, p.read_bytes()):
                self._early.add(index)
            else:
                log.warning("discarding damaged chunk %d of %s", index, self.model.package_digest)
                p.unlink(missing_ok=True)
        self._advance()
        if self.done:
            log.info(
                "resuming %s: %d of %d chunks already on disk",
                self.model.package_digest[:12],
                self.done,
                self.model.chunk_count,
            )

    def _reopen_part(self) -> None:
        """Keep the longest run of good chunks at the start of ``.part`` (hashing it again)."""
        m = self.model
        good = 0
        with contextlib.suppress(FileNotFoundError), open(self.part_path, "rb") as f:
            while good < m.chunk_count:
                data = f.read(self._length(good))
                if len(data) != self._length(good) or not self.verify_chunk(good, data):
                    break
                self._whole.update(data)
                good += 1
        with open(self.part_path, "ab") as f:
            f.truncate(self._offset(good))
        self._prefix = good

    def _offset(self, index: int) -> int:
        return index * self.model.chunk_size

    def _length(self, index: int) -> int:
        return min(self.model.chunk_size, self.model.package_size - self._offset(index))

    @property
    def done(self) -> int:
        return self._prefix + len(self._early)

    def has(self, index: int) -> bool:
        return index < self._prefix or index in self._early

    def missing(self) -> list[int]:
        return [i for i in range(self._prefix, self.model.chunk_count) if i not in self._early]

    def complete(self) -> bool:
        return self._prefix == self.model.chunk_count

    def verify_chunk(self, index: int, data: bytes) -> bool:
        return hashlib.sha256(data).digest() == self.model.chunk_sha256[index]

    def read_chunk(self, index: int) -> bytes:
        """A chunk held so far, from ``.part`` or its early chunk file (for checks and tools)."""
        if index < self._prefix:
            with open(self.part_path, "rb") as f:
                f.seek(self._offset(index))
                return f.read(self._length(index))
        if index in self._early:
            return (self.chunks_dir / f"{index:08d}.chunk").read_bytes()
        raise KeyError(f"chunk {index} is not held")

    def write_chunk(self, index: int, data: bytes) -> None:
        """Store one chunk the caller has verified: appended to ``.part`` (and hashed) when it
        is the next in order, else kept as a chunk file until the prefix reaches it."""
        if self.has(index):
            return
        if index == self._prefix:
            self._append(data)
            self._advance()
            return
        replace_bytes(self.chunks_dir / f"{index:08d}.chunk", data)
        self._early.add(index)
        if self._held_bytes + len(data) <= HELD_BYTES:
            self._held[index] = data
            self._held_bytes += len(data)

    def _append(self, data: bytes) -> None:
        with open(self.part_path, "r+b") as f:
            f.seek(self._offset(self._prefix))
            f.write(data)
        self._whole.update(data)
        self._prefix += 1

    def _advance(self) -> None:
        """Move early chunks that the prefix has reached into ``.part``."""
        while self._prefix in self._early:
            i = self._prefix
            path = self.chunks_dir / f"{i:08d}.chunk"
            data = self._held.pop(i, None)
            if data is None:
                data = path.read_bytes()
            else:
                self._held_bytes -= len(data)
            self._early.discard(i)
            self._append(data)
            path.unlink(missing_ok=True)

    def assembled(self) -> Path | None:
        """The assembled package when a previous run already produced and checked it."""
        return self.package_path if self.package_path.exists() else None

    def assemble(self) -> Path:
        """Check the whole file's sha256 (computed as the chunks came in), rename into place."""
        if not self.complete():
            raise DownloadError(f"{len(self.missing())} chunks still missing")
        digest = self._whole.hexdigest()
        if digest != self.model.package_digest:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise DownloadError(
                f"assembled package has sha256 {digest[:16]}..., expected "
                f"{self.model.package_digest[:16]}..."
            )
        with open(self.part_path, "r+b") as f:
            f.truncate(self.model.package_size)
            os.fsync(f.fileno())
        self.part_path.replace(self.package_path)
        fsync_dir(self.dir)
        return self.package_path

    @staticmethod
    def discard(root: Path, digest: str) -> None:
        """Remove a package's download folder (after its install, whatever the outcome)."""
        shutil.rmtree(root / digest, ignore_errors=True)

    @staticmethod
    def chunks_on_disk(root: Path, model: DesiredModel) -> int:
        """How many verified chunks a download folder holds (for a FAILED report)."""
        folder = root / model.package_digest
        if not (folder / "meta.json").exists():
            return 0
        with contextlib.suppress(DownloadError, OSError):
            return ChunkDownload(root, model).done
        return 0


class ChunkPuller:
    """Fetches the missing chunks of one ``ChunkDownload`` over the fleet channel.

    Up to ``chunk_window`` ChunkRequests of ``chunks_per_request`` indexes each are in flight at
    once, so the control plane and the broker stay busy without the device asking for the whole
    package in one burst. Every answer is checked against its ``chunk_sha256`` before it is
    written; indexes still unanswered after ``chunk_timeout_s`` are asked again. A chunk that
    fails its check ``max_chunk_rejects`` times, or that many refusals from the control plane,
    end the download with ``DownloadError``. While the link is down nothing is asked: answers to
    the requests of a lost session never come, so they are asked again after the reconnect.
    """

    def __init__(
        self,
        download: ChunkDownload,
        settings: FleetSettings,
        *,
        send: Callable[[list[int]], str | None],
        connected: asyncio.Event,
        still_wanted: Callable[[], None],
        on_chunk: Callable[[int], None],
    ) -> None:
        """``send`` publishes a ChunkRequest and returns its request id (None: not sent);
        ``still_wanted`` raises to abandon the pull between two chunks; ``on_chunk`` gets the
        number of chunks on disk after each one written."""
        self.download = download
        self.settings = settings
        self._send = send
        self._connected = connected
        self._still_wanted = still_wanted
        self._on_chunk = on_chunk
        self._answers: asyncio.Queue[ChunkAnswer] = asyncio.Queue()
        self._outstanding: dict[str, tuple[set[int], float]] = {}  # request id -> indexes, due
        self._rejects: Counter[int] = Counter()
        self._refusals = 0
        self.stats: Counter[str] = Counter()

    def offer(self, answer: ChunkAnswer) -> None:
        """Hand over a ChunkData from the channel; answers for other packages are dropped."""
        if answer.package_digest == self.download.model.package_digest:
            self._answers.put_nowait(answer)

    async def run(self) -> None:
        """Return once every chunk is on disk (not yet assembled)."""
        dl = self.download
        loop = asyncio.get_running_loop()
        resumed_with = dl.done
        while not dl.complete():
            self._still_wanted()
            if not self._connected.is_set():
                self._outstanding.clear()  # those answers are lost with the session
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._connected.wait(), 0.5)
                continue
            self._ask(loop.time())
            try:
                # Answers come in bursts: take what is queued without a timer and a task each.
                answer = self._answers.get_nowait()
            except asyncio.QueueEmpty:
                wake = min((d for _, d in self._outstanding.values()), default=loop.time() + 0.5)
                try:
                    answer = await asyncio.wait_for(
                        self._answers.get(), max(0.01, wake - loop.time())
                    )
                except TimeoutError:
                    self._expire(loop.time())
                    continue
            if answer.error:
                await self._refused(answer)
                continue
            await self._take(answer)
        log.info(
            "download of %s complete: %d chunks, %d on disk before, %d fetched now, "
            "%d duplicate answers, %d rejected, %d timeouts",
            dl.model.package_digest[:12],
            dl.model.chunk_count,
            resumed_with,
            self.stats["fetched"],
            self.stats["duplicates"],
            self.stats["rejected"],
            self.stats["timeouts"],
        )

    def _ask(self, now: float) -> None:
        """Fill the window with requests for chunks neither on disk nor already asked for."""
        fs = self.settings
        if len(self._outstanding) >= fs.chunk_window:
            return  # the window is full (the usual case, once per chunk: skip the scan)
        asked = set().union(*(s for s, _ in self._outstanding.values()))
        todo = [i for i in self.download.missing() if i not in asked]
        while len(self._outstanding) < fs.chunk_window and todo:
            batch, todo = todo[: fs.chunks_per_request], todo[fs.chunks_per_request :]
            request_id = self._send(batch)
            if request_id is None:
                break
            self._outstanding[request_id] = (set(batch), now + fs.chunk_timeout_s)
            self.stats["requested"] += len(batch)

    def _expire(self, now: float) -> None:
        """Forget overdue requests, so their indexes are asked again."""
        for request_id, (indexes, due) in list(self._outstanding.items()):
            if due <= now:
                del self._outstanding[request_id]
                self.stats["timeouts"] += 1
                log.info(
                    "%d chunk(s) of %s unanswered; asking again",
                    len(indexes),
                    self.download.model.package_digest[:12],
                )

    async def _refused(self, answer: ChunkAnswer) -> None:
        self._outstanding.pop(answer.request_id, None)
        self._refusals += 1
        log.warning("control plane refused a chunk request: %s", answer.error)
        if self._refusals >= self.settings.max_chunk_rejects:
            raise DownloadError(f"the control plane refused the chunk requests: {answer.error}")
        await asyncio.sleep(min(self.settings.chunk_timeout_s, 1.0) * self._refusals)

    async def _take(self, answer: ChunkAnswer) -> None:
        dl, i = self.download, answer.index
        if i >= dl.model.chunk_count:
            return
        if dl.has(i):
            self.stats["duplicates"] += 1
            return
        if not dl.verify_chunk(i, answer.data):
            self._rejects[i] += 1
            self.stats["rejected"] += 1
            for indexes, _ in self._outstanding.values():
                indexes.discard(i)  # ask for it again
            log.warning(
                "chunk %d of %s failed its sha256 check (%d of %d allowed)",
                i,
                dl.model.package_digest[:12],
                self._rejects[i],
                self.settings.max_chunk_rejects,
            )
            if self._rejects[i] >= self.settings.max_chunk_rejects:
                raise DownloadError(
                    f"chunk {i} failed its sha256 check {self._rejects[i]} times "
                    "(tampered or corrupted in transit)"
                )
            return
        await asyncio.to_thread(dl.write_chunk, i, answer.data)
        self.stats["fetched"] += 1
        crash_point("after_chunk_write")
        for request_id, (indexes, _) in list(self._outstanding.items()):
            indexes.discard(i)
            if not indexes:
                del self._outstanding[request_id]
        self._on_chunk(dl.done)


def _index_of(path: Path) -> int | None:
    if path.suffix != ".chunk" or not path.stem.isdigit():
        return None
    return int(path.stem)


def remove_stale(root: Path, keep: set[str]) -> None:
    """Delete download folders of packages no longer desired."""
    if not root.exists():
        return
    for p in root.iterdir():
        if p.name not in keep:
            log.info("removing stale download %s", p.name[:12])
            shutil.rmtree(p, ignore_errors=True)
