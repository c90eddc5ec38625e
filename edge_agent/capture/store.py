"""The bounded on-disk store of captured records (``data_dir/captures``).

One file per record, ``<captured_at_ms>-<digest>.cap``: the time first, so a directory listing
is oldest first and a purge by time reads no file; the digest (sha256 of the record's data) so
the same input captured twice is kept once. A file holds ``MAGIC``, the meta's length (4 bytes,
big endian), the encoded ``CaptureMeta`` and the data.

Writes go to ``.tmp-*`` in the same folder, are fsynced, then renamed: a crash leaves a whole
record or a temporary file, never a half record, and temporary files (these, and the ``.*.tmp``
of an interrupted ``state.json`` write) are removed when the store opens. Quotas
(``max_records``, ``max_bytes``) are kept by dropping the oldest records first, each counted in
``dropped_total``.

Counters (``captured_total``, ``uploaded_total``, ``dropped_total``) and the last purge applied
live in ``state.json``. The purge id is written at once (a purge is applied once per id across
restarts); the counters on a change when the last save is a second old, and when the store
closes, so a crash can lose the latest increments of the totals, never a record.

Thread safety: the background writer adds records while the event loop reads, deletes and
purges; one lock guards the index and the counters, file contents are read and written outside
it.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from edge_agent.crash_points import crash_point
from edge_agent.fsutil import atomic_write_json, read_json
from protos import fleet_capture as fc

log = logging.getLogger(__name__)

MAGIC = b"EDGECAP1"
SUFFIX = ".cap"
TMP_PREFIX = ".tmp-"
STATE_NAME = "state.json"
_HEADER = struct.Struct(">I")
_SAVE_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class Entry:
    digest: str
    captured_at_ms: int
    size: int  # bytes on disk
    path: Path


@dataclass(frozen=True, slots=True)
class Counters:
    stored_records: int
    stored_bytes: int
    captured_total: int
    uploaded_total: int
    dropped_total: int
    rejected_total: int
    last_purge_id: str


def encode_file(meta: bytes, data: bytes) -> bytes:
    return MAGIC + _HEADER.pack(len(meta)) + meta + data


def decode_file(raw: bytes) -> tuple[bytes, bytes]:
    """(meta bytes, data); ``ValueError`` for anything that is not a record file."""
    head = len(MAGIC) + _HEADER.size
    if len(raw) < head or not raw.startswith(MAGIC):
        raise ValueError("not a capture record")
    (n,) = _HEADER.unpack_from(raw, len(MAGIC))
    if head + n > len(raw):
        raise ValueError("capture record shorter than its meta")
    return raw[head : head + n], raw[head + n :]


class CaptureStore:
    def __init__(
        self,
        folder: Path,
        max_records: int,
        max_bytes: int,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.folder = folder
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.on_change = on_change
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, Entry] = OrderedDict()  # oldest first
        self._bytes = 0
        self._last_save = 0.0
        self._dirty = False
        folder.mkdir(parents=True, exist_ok=True)
        doc = read_json(folder / STATE_NAME) or {}
        self._captured = int(doc.get("captured_total", 0))
        self._uploaded = int(doc.get("uploaded_total", 0))
        self._dropped = int(doc.get("dropped_total", 0))
        self._rejected = int(doc.get("rejected_total", 0))
        self._last_purge_id = str(doc.get("last_purge_id", ""))
        self._load()

    def _load(self) -> None:
        """Index the records on disk; remove what a crash left (temporary files)."""
        found = []
        for path in self.folder.iterdir():
            name = path.name
            if name.startswith(TMP_PREFIX) or (name.startswith(".") and name.endswith(".tmp")):
                path.unlink(missing_ok=True)
                log.info("removed %s, left by an interrupted capture", name)
                continue
            if not name.endswith(SUFFIX):
                continue
            stamp, _, digest = name[: -len(SUFFIX)].partition("-")
            if not stamp.isdigit() or not fc.valid_digest(digest):
                continue
            found.append(Entry(digest, int(stamp), path.stat().st_size, path))
        found.sort(key=lambda e: (e.captured_at_ms, e.digest))
        for e in found:
            if e.digest in self._entries:  # the same input kept twice: keep the older
                e.path.unlink(missing_ok=True)
                continue
            self._entries[e.digest] = e
            self._bytes += e.size

    # --- writing (the writer thread) --------------------------------------------------------

    def put(self, data: bytes, meta: fc.CaptureMeta) -> bool:
        """Keep a record; False when the store already holds this input or it cannot fit."""
        digest = fc.digest_of(data)
        with self._lock:
            if digest in self._entries:
                return False
        raw = encode_file(fc.encode_meta(meta), data)
        if len(raw) > self.max_bytes:
            with self._lock:
                self._dropped += 1
                self._dirty = True
            log.warning("a %d-byte capture exceeds capture.max_bytes; dropped", len(raw))
            self._changed()
            return False
        path = self.folder / f"{meta.captured_at_ms:013d}-{digest}{SUFFIX}"
        tmp = self._write_temp(digest, raw)
        try:
            crash_point("capture_before_rename")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dropped = []
        with self._lock:
            self._entries[digest] = Entry(digest, meta.captured_at_ms, len(raw), path)
            self._bytes += len(raw)
            self._captured += 1
            while len(self._entries) > 1 and (
                len(self._entries) > self.max_records or self._bytes > self.max_bytes
            ):
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.size
                self._dropped += 1
                dropped.append(old)
            self._dirty = True
        for old in dropped:
            old.path.unlink(missing_ok=True)
        if dropped:
            log.info("capture store full: dropped the %d oldest record(s)", len(dropped))
        self._changed()
        return True

    def _write_temp(self, digest: str, raw: bytes) -> Path:
        """``raw`` in a fsynced temporary file of this folder, for the caller to rename into
        place (removed again if writing fails)."""
        tmp = self.folder / f"{TMP_PREFIX}{digest}-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def add_shadow(self, digest: str, meta: fc.CaptureMeta) -> bool:
        """Give a record already held a shadow version's answer it lacks (it was captured first
        for another reason); False when the record is gone (uploaded, dropped) or has one.

        The file is rewritten whole (temp, fsync, rename) under the same name; an upload that
        already read it sends the old meta, and the control plane takes the answer from a later
        copy of the record instead (``captures/receiver.py``)."""
        with self._lock:
            entry = self._entries.get(digest)
        if entry is None or not meta.shadow_version:
            return False
        try:
            raw_meta, data = decode_file(entry.path.read_bytes())
            held = fc.decode_meta(raw_meta)
        except (OSError, ValueError):
            return False
        if held.shadow_version:
            return False
        merged = replace(held, shadow_version=meta.shadow_version, shadow_top_k=meta.shadow_top_k)
        raw = encode_file(fc.encode_meta(merged), data)
        tmp = self._write_temp(digest, raw)
        try:
            with self._lock:
                current = self._entries.get(digest)
                if current is None:  # uploaded or dropped meanwhile
                    tmp.unlink(missing_ok=True)
                    return False
                os.replace(tmp, entry.path)
                self._entries[digest] = Entry(digest, entry.captured_at_ms, len(raw), entry.path)
                self._bytes += len(raw) - current.size
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return True

    # --- reading and removing (the event loop) ----------------------------------------------

    def oldest(self, n: int, skip: set[str] | frozenset[str] = frozenset()) -> list[Entry]:
        out = []
        with self._lock:
            for e in self._entries.values():
                if e.digest not in skip:
                    out.append(e)
                    if len(out) >= n:
                        break
        return out

    def has(self, digest: str) -> bool:
        with self._lock:
            return digest in self._entries

    def read(self, entry: Entry) -> tuple[bytes, bytes] | None:
        """(meta bytes, data) of a record; None (and the record removed) when it is unreadable
        or its data no longer matches its digest."""
        try:
            meta, data = decode_file(entry.path.read_bytes())
            if fc.digest_of(data) != entry.digest:
                raise ValueError("data does not match its digest")
            return meta, data
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("capture %s unreadable (%s): removed", entry.digest, exc)
            self.remove(entry.digest)
            return None

    def remove(self, digest: str, uploaded: bool = False, rejected: bool = False) -> bool:
        with self._lock:
            e = self._entries.pop(digest, None)
            if e is None:
                return False
            self._bytes -= e.size
            self._uploaded += uploaded
            self._rejected += rejected
            self._dirty = True
        e.path.unlink(missing_ok=True)
        self._changed()
        return True

    def purge(self, purge_id: str, before_ms: int) -> int | None:
        """Remove every record captured before ``before_ms``, once per ``purge_id``: the number
        removed, or None when this purge was applied already."""
        with self._lock:
            if not purge_id or purge_id == self._last_purge_id:
                return None
            gone = [e for e in self._entries.values() if e.captured_at_ms < before_ms]
            for e in gone:
                del self._entries[e.digest]
                self._bytes -= e.size
            self._last_purge_id = purge_id
        for e in gone:
            e.path.unlink(missing_ok=True)
        self.save()  # the purge id at once: applied once across restarts
        self._changed()
        return len(gone)

    # --- counters ---------------------------------------------------------------------------

    def counters(self) -> Counters:
        with self._lock:
            return Counters(
                len(self._entries),
                self._bytes,
                self._captured,
                self._uploaded,
                self._dropped,
                self._rejected,
                self._last_purge_id,
            )

    def save(self) -> None:
        c = self.counters()
        atomic_write_json(
            self.folder / STATE_NAME,
            {
                "captured_total": c.captured_total,
                "uploaded_total": c.uploaded_total,
                "dropped_total": c.dropped_total,
                "rejected_total": c.rejected_total,
                "last_purge_id": c.last_purge_id,
            },
        )
        with self._lock:
            self._dirty = False
            self._last_save = time.monotonic()

    def save_if_due(self) -> None:
        if self._dirty and time.monotonic() - self._last_save >= _SAVE_EVERY_S:
            self.save()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
