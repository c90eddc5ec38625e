"""``CaptureUploader``: the store's records to the control plane over the fleet channel.

Protocol (``protos/fleet_capture.py``): a record goes out as ``CaptureChunk``s on
``captures/up``, and stays in the store until the control plane answers on ``captures/ack``:

* ``STORED`` (held whole and verified, now or before) or ``REJECTED`` (refused for good): the
  record is deleted;
* ``PARTIAL``: its chunks from ``next_index`` on are sent again.

At most ``upload_window`` records are in flight, oldest first. A record without an answer after
``ack_timeout_s`` is sent again whole, and every record in flight is sent again after a
reconnect: the control plane stores a record once per digest, so a resend costs bandwidth only.

``captures/ctl`` (retained) asks for a purge: applied once per ``purge_id`` (the store remembers
the last one). ``captures/stat`` (retained) is published after changes, at most every
``status_interval_s``, and after every reconnect.

Everything here runs on the agent's event loop; file reads go to a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.capture.store import CaptureStore, Entry
from edge_agent.config import CaptureSettings
from protos import fleet_capture as fc

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bool], "tuple[int, int] | None"]


@dataclass
class _InFlight:
    entry: Entry
    meta: fc.CaptureMeta
    data: bytes
    sent_at: float


class CaptureUploader:
    def __init__(
        self,
        settings: CaptureSettings,
        store: CaptureStore,
        device_id: str,
        prefix: str,
        publish: Publish,
        connected: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.store = store
        self.device_id = device_id
        self.topic = {leaf: f"{prefix}/{leaf}" for leaf in (fc.UP, fc.ACK, fc.CONTROL, fc.STATUS)}
        self._publish = publish
        self._connected = connected
        self._inflight: dict[str, _InFlight] = {}
        self._wakeup = asyncio.Event()
        self._status_due = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.resent = 0

    @property
    def subscriptions(self) -> list[str]:
        return [self.topic[fc.ACK], self.topic[fc.CONTROL]]

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.store.on_change = self._changed_threadsafe
        self._tasks = [
            asyncio.create_task(self._upload_loop()),
            asyncio.create_task(self._status_loop()),
        ]
        self._wakeup.set()
        self._status_due.set()

    async def stop(self) -> None:
        self.store.on_change = None
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- events (event loop) ----------------------------------------------------------------

    def _changed_threadsafe(self) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: the agent is stopping
            loop.call_soon_threadsafe(self._changed)

    def _changed(self) -> None:
        self._wakeup.set()
        self._status_due.set()

    def on_connected(self) -> None:
        """A new session: whatever was in flight is sent again, and the status republished."""
        self._inflight.clear()
        self._wakeup.set()
        self._status_due.set()

    def on_message(self, topic: str, payload: bytes) -> bool:
        """Handle ``captures/ack`` and ``captures/ctl``; False for any other topic."""
        if topic == self.topic[fc.ACK]:
            self._on_ack(fc.decode_ack(payload))
        elif topic == self.topic[fc.CONTROL]:
            if payload:  # empty: a cleared retained message
                self._on_control(fc.decode_control(payload))
        else:
            return False
        return True

    def _on_ack(self, ack: fc.CaptureAck) -> None:
        if ack.state == fc.PARTIAL:
            item = self._inflight.get(ack.digest)
            if item is None:
                return  # not (or no longer) in flight: sent again from scratch in its turn
            count = fc.chunk_count(len(item.data))
            first = min(ack.next_index, count - 1)
            log.info("capture %s: control plane lacks chunks from %d", ack.digest[:12], first)
            self._send(item, first)
            return
        self._inflight.pop(ack.digest, None)
        if ack.state == fc.REJECTED:
            log.warning("capture %s rejected by the control plane: %s", ack.digest, ack.reason)
        self.store.remove(
            ack.digest, uploaded=ack.state == fc.STORED, rejected=ack.state != fc.STORED
        )
        self.store.save_if_due()
        self._wakeup.set()

    def _on_control(self, ctl: fc.CaptureControl) -> None:
        if ctl.device_id and ctl.device_id != self.device_id:
            log.warning("capture control for %s on my topic ignored", ctl.device_id)
            return
        removed = self.store.purge(ctl.purge_id, ctl.purge_before_ms)
        if removed is None:
            return
        for digest in [d for d in self._inflight if not self.store.has(d)]:
            del self._inflight[digest]
        log.info("capture purge %s: %d record(s) removed", ctl.purge_id, removed)

    # --- sending ----------------------------------------------------------------------------

    def _send(self, item: _InFlight, first: int = 0) -> bool:
        item.sent_at = time.monotonic()
        for chunk in fc.chunks_of(
            self.device_id, item.data, item.meta, first=first, digest=item.entry.digest
        ):
            if self._publish(self.topic[fc.UP], fc.encode_chunk(chunk), False) is None:
                return False  # not connected: everything in flight goes again on reconnect
        return True

    async def _upload_loop(self) -> None:
        timeout = self.settings.ack_timeout_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), min(timeout, 5.0))
            self._wakeup.clear()
            if not self._connected.is_set():
                continue
            now = time.monotonic()
            for item in list(self._inflight.values()):
                if now - item.sent_at >= timeout and self.store.has(item.entry.digest):
                    self.resent += 1
                    self._send(item)
            free = self.settings.upload_window - len(self._inflight)
            if free <= 0:
                continue
            entries = self.store.oldest(free, skip=set(self._inflight))
            if not entries:
                continue
            records = await asyncio.to_thread(self._read_all, entries)  # one hop for all
            for entry, record in records:
                if record is None or not self._connected.is_set():
                    continue
                try:
                    meta = fc.decode_meta(record[0])
                except ValueError as exc:
                    log.warning(
                        "capture %s has an unreadable meta (%s): removed", entry.digest, exc
                    )
                    self.store.remove(entry.digest)
                    continue
                item = _InFlight(entry, meta, record[1], 0.0)
                self._inflight[entry.digest] = item
                if not self._send(item):
                    break

    def _read_all(self, entries: list[Entry]) -> list[tuple[Entry, tuple[bytes, bytes] | None]]:
        return [(e, self.store.read(e)) for e in entries]

    async def _status_loop(self) -> None:
        while True:
            await self._status_due.wait()
            self._status_due.clear()
            if self._connected.is_set():
                self._publish(self.topic[fc.STATUS], fc.encode_status(self.status()), True)
            await asyncio.sleep(self.settings.status_interval_s)

    def status(self) -> fc.CaptureStatus:
        c = self.store.counters()
        return fc.CaptureStatus(
            self.device_id,
            c.stored_records,
            c.stored_bytes,
            c.captured_total,
            c.uploaded_total,
            c.dropped_total,
            c.last_purge_id,
            time.time_ns() // 1_000_000,
        )
