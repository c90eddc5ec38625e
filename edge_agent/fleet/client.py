"""``FleetClient``: reconcile the device against its retained desired state, on the agent's loop.

Flow for each DesiredState (retained on ``<prefix>/desired``):

1. Ignore it when its generation is lower than the one acted on (``state.FleetState``), else
   persist the new generation.
2. For each DesiredModel: already committed (``name:version`` -> digest in ``state.json``)? Report
   INSTALLED. Already final for this ``deployment_id:digest``? Report it again, do nothing.
   Otherwise make what it can of the package from chunks of installed packages (delta updates,
   ``delta.py``, when the desired state pins a chunk index), then pull the rest
   (``downloads.ChunkPuller`` into a ``downloads.ChunkDownload``: a
   window of ChunkRequests in flight, each chunk checked against ``chunk_sha256`` and written
   atomically, unanswered indexes asked again after ``chunk_timeout_s``), check the assembled
   file against ``package_digest``, and hand it to ``Installer.install`` (signature, digests,
   golden self-test, atomic commit).
3. Record and report INSTALLED or FAILED with the step and the reason. The installer leaves the
   previous version serving on any failure.

Activation is explicit: the entry of a model that is not ``standby`` becomes its active version,
whether it was just installed or already held, so deploying a version the device still holds
re-activates it without a download (a rollback). Standby entries are installed without
activation and, with a weight, take that percentage of the requests that name no version (the
split in ``serving/traffic.py``). ``removals`` uninstall versions. An entry with a ``guard``
starts the local guard (``guard.py``) after its activation: on a breach the previous version is
re-activated at once, the deployment is recorded FAILED at step ``guard`` with the figures (sent
when the broker is reachable) and that deployment is never activated again. An entry with a
``warmup`` is first the active version's shadow (``warmup.py``) and is activated only if its
answers agree; else FAILED at step ``shadow``, installed but not active.

A newer DesiredState supersedes the one being worked on between chunks (what was downloaded
stays on disk); an install in progress is never interrupted. Reported state is published retained
at start, after every change and after every reconnect; telemetry goes through the outbox.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edge_agent.capture import Capturer, Override
from edge_agent.capture.uploader import CaptureUploader
from edge_agent.config import AgentSettings
from edge_agent.crash_points import crash_point
from edge_agent.errors import AgentError
from edge_agent.fleet import codec, guard, warmup
from edge_agent.fleet.batch import BatchJobs, DeviceBatchRunner
from edge_agent.fleet.delta import DeltaUpdates
from edge_agent.fleet.domain import INSTALLED, ModelReport, Reported, Result, TelemetryOut
from edge_agent.fleet.downloads import ChunkDownload, ChunkPuller, DownloadError, remove_stale
from edge_agent.fleet.held_chunks import HeldChunks
from edge_agent.fleet.link import (
    Connected,
    Disconnected,
    LinkEvent,
    Message,
    MqttLink,
    PubAck,
    new_request_id,
)
from edge_agent.fleet.outbox import Outbox
from edge_agent.fleet.state import FleetState
from edge_agent.install.installer import Installer
from edge_agent.install.store import ModelStore
from edge_agent.install.trust import Offer
from edge_agent.metrics import METRICS
from edge_agent.serving.repository import ModelRepository
from edge_agent.serving.served_model import ServedModel
from edge_agent.serving.stats import ModelStats, quantile_ms
from edge_agent.serving.traffic import TrafficSplit
from protos import fleet_topics as topics
from protos import fleet_trust
from protos.fleet_state import DesiredModel, DesiredState, ModelRemoval

log = logging.getLogger(__name__)

_ACK_TIMEOUT_S = 30.0


class _Superseded(Exception):
    """A newer DesiredState arrived; drop the current one between two chunks."""


class _StepFailed(Exception):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step, self.reason = step, reason


class FleetClient:
    def __init__(
        self,
        settings: AgentSettings,
        store: ModelStore,
        repo: ModelRepository,
        installer: Installer,
        agent_version: str,
        jobs: BatchJobs | None = None,
        capture: Capturer | None = None,
    ) -> None:
        """``jobs``: the agent's batch jobs, which batch jobs sent over the channel run as
        (``batch.py``); without it the device takes none. ``capture``: the agent's captured
        inputs, uploaded over the channel (``edge_agent/capture``); without it none are."""
        if settings.fleet is None:
            raise ValueError("FleetClient needs fleet settings")
        self.fs = settings.fleet
        self.device_id = settings.device_id
        self.store, self.repo, self.installer = store, repo, installer
        self.agent_version = agent_version
        prefix = self.fs.topic_prefix or topics.device_prefix(self.device_id)
        self.topic_prefix = prefix
        self.topic = {
            leaf: f"{prefix}/{leaf}"
            for leaf in (
                topics.DESIRED,
                topics.REPORTED,
                topics.STATUS,
                topics.CHUNKS_REQUEST,
                topics.CHUNKS_DATA,
                topics.TELEMETRY,
                topics.TRUST,
            )
        }
        root = Path(settings.data_dir) / "fleet"
        root.mkdir(parents=True, exist_ok=True)
        self.downloads_root = root / "downloads"
        # Delta updates: chunks of installed packages make most of the next version (delta.py).
        self.delta = DeltaUpdates(self.fs, HeldChunks(root / "held_chunks", store.packages))
        self.state = FleetState(root / "state.json")
        self.outbox = Outbox(root / "outbox.sqlite3", self.fs.outbox_max_records)
        self._versions = VersionTelemetry()
        self.link: MqttLink | None = None
        self._connected = asyncio.Event()
        self._desired: DesiredState | None = None
        self._desired_changed = asyncio.Event()
        self._reconciled_generation = -1
        self._puller: ChunkPuller | None = None  # the download in progress, if any
        self._shared_topic: str | None = None  # its shared package topic, while subscribed
        self._root = prefix.rsplit("/", 1)[0]
        self._acks: dict[tuple[int, int], asyncio.Future[None]] = {}
        self._outbox_wakeup = asyncio.Event()
        self._last_progress = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._guards: dict[str, asyncio.Task[None]] = {}  # model name -> its guard watch
        self._trust_lock = asyncio.Lock()
        self.batches: DeviceBatchRunner | None = None
        if jobs is not None:
            self.batches = DeviceBatchRunner(
                self.fs, root / "batch", jobs, prefix, self._publish_batch, self._connected
            )
        self.capture = capture
        self.captures: CaptureUploader | None = None
        if capture is not None:
            self.captures = CaptureUploader(
                settings.capture,
                capture.store,
                self.device_id,
                prefix,
                self._publish_capture,
                self._connected,
            )

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting in the background; returns at once (offline first)."""
        self.link = MqttLink(
            self.fs,
            client_id=self.fs.client_id or self.device_id,
            subscriptions=[
                self.topic[topics.DESIRED],
                self.topic[topics.CHUNKS_DATA],
                self.topic[topics.TRUST],
            ]
            + (self.batches.subscriptions if self.batches is not None else [])
            + (self.captures.subscriptions if self.captures is not None else []),
            status_topic=self.topic[topics.STATUS],
            online_payload=codec.status_to_proto(True, self.agent_version),
            offline_payload=codec.status_to_proto(False, self.agent_version),
            loop=asyncio.get_running_loop(),
            on_event=self._on_event,
        )
        self.link.start()
        for coro in (self._reconcile_loop(), self._outbox_loop(), self._snapshot_loop()):
            self._tasks.append(asyncio.create_task(coro))
        if self.outbox:
            self._outbox_wakeup.set()
        if self.captures is not None:
            self.captures.start()
        log.info("fleet channel: %s, topics under %s", self.fs.url, self.topic_prefix)

    async def stop(self) -> None:
        if self.batches is not None:
            await self.batches.stop()
        if self.captures is not None:
            await self.captures.stop()
        for t in [*self._tasks, *self._guards.values()]:
            t.cancel()
        await asyncio.gather(*self._tasks, *self._guards.values(), return_exceptions=True)
        if self.link is not None:
            await asyncio.to_thread(self.link.stop)
        self.outbox.close()

    # --- events from the link (event loop thread) -------------------------------------------

    def _on_event(self, event: LinkEvent) -> None:
        if isinstance(event, Connected):
            self._connected.set()
            self._publish_reported()
            self._outbox_wakeup.set()
            if self.batches is not None:
                self.batches.on_connected()
            if self.captures is not None:
                self.captures.on_connected()
        elif isinstance(event, Disconnected):
            self._connected.clear()
            for key in [k for k in self._acks if k[0] == event.epoch]:
                fut = self._acks.pop(key)
                if not fut.done():
                    fut.set_exception(ConnectionError(event.reason))
        elif isinstance(event, PubAck):
            fut = self._acks.pop((event.epoch, event.mid), None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif isinstance(event, Message):
            try:
                self._on_message(event.topic, event.payload)
            except ValueError as exc:
                log.warning("bad payload on %s: %s", event.topic, exc)

    def _on_message(self, topic: str, payload: bytes) -> None:
        if self.batches is not None and self.batches.on_message(topic, payload):
            return
        if self.captures is not None and self.captures.on_message(topic, payload):
            return
        if topic == self.topic[topics.CHUNKS_DATA] or topic == self._shared_topic:
            answer = codec.chunk_from_proto(payload)
            if self.delta.offer(answer):
                return
            if self._puller is not None:
                self._puller.offer(answer)
        elif topic == self.topic[topics.DESIRED] and payload:
            # (an empty payload is a cleared retained message: the device was deleted)
            self._offer_desired(codec.desired_from_proto(payload))
        elif topic == self.topic[topics.TRUST] and payload:
            self._tasks.append(asyncio.create_task(self._offer_trust(payload)))

    async def _offer_trust(self, payload: bytes) -> None:
        """A trust set after a key rotation: checked off the loop (the signature check runs a
        child process), one at a time; accepted or refused, the outcome is an event."""
        async with self._trust_lock:
            try:
                signed = fleet_trust.decode_signed(payload)
            except ValueError as exc:
                offer = Offer("refused", f"unreadable trust set: {exc}")
            else:
                offer = await asyncio.to_thread(
                    self.installer.trust.offer, signed, self.installer.verify_signature
                )
        if offer.outcome == "repeat":
            return
        if offer.outcome == "refused":
            log.warning("trust set ignored: %s", offer.reason)
        self.record(
            "trust_event",
            {
                "outcome": offer.outcome,
                "version": offer.version,
                "signed_by": offer.signed_by,
                "reason": offer.reason,
            },
        )

    def _offer_desired(self, desired: DesiredState) -> None:
        if desired.device_id and desired.device_id != self.device_id:
            log.warning("desired state for %s on my topic ignored", desired.device_id)
            return
        if desired.generation < self.state.acted_generation:
            log.info(
                "ignoring desired generation %d (already acted on %d)",
                desired.generation,
                self.state.acted_generation,
            )
            return
        current = self._desired
        if current is not None and desired.generation <= current.generation:
            return  # a repeat (retained message after a reconnect): already in hand
        if desired.generation == self._reconciled_generation:
            return
        self._desired = desired
        self._desired_changed.set()

    def _publish_batch(self, topic: str, payload: bytes) -> tuple[int, int] | None:
        return self.link.publish(topic, payload) if self.link is not None else None

    def _publish_capture(self, topic: str, payload: bytes, retain: bool) -> tuple[int, int] | None:
        return self.link.publish(topic, payload, retain) if self.link is not None else None

    def _publish_acked(self, topic: str, payload: bytes) -> asyncio.Future[None] | None:
        assert self.link is not None
        sent = self.link.publish(topic, payload)
        if sent is None:
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks[sent] = fut
        return fut

    # --- reported state ---------------------------------------------------------------------

    def reported(self) -> Reported:
        models = []
        state = self.store.load_state()
        for name, entry in sorted(state.models.items()):
            for version, digest in sorted(entry.versions.items()):
                variant = (
                    self.repo.get(name, version).variant if self.repo.has(name, version) else ""
                )
                models.append(ModelReport(name, version, variant, digest, entry.active == version))
        return Reported(
            self.device_id,
            self.agent_version,
            models,
            self.state.last_result,
            self.state.acted_generation,
        )

    def _publish_reported(self) -> None:
        if self.link is not None and self._connected.is_set():
            payload = codec.reported_to_proto(self.reported())
            self.link.publish(self.topic[topics.REPORTED], payload, retain=True)

    def _progress(self, key: str, result: Result, force: bool = False) -> None:
        """Record an IN_PROGRESS result; published at most every ``progress_interval_s``."""
        self.state.set_result(key, result)
        now = time.monotonic()
        if force or now - self._last_progress >= self.fs.progress_interval_s:
            self._last_progress = now
            self._publish_reported()

    def _finish(self, key: str, m: DesiredModel, result: Result) -> None:
        self.state.set_result(key, result)
        self.state.save()
        crash_point("after_result_write")
        log_fn = log.info if result.outcome == INSTALLED else log.warning
        log_fn(
            "deployment %s of %s:%s: %s at %s%s",
            m.deployment_id,
            m.name,
            m.version,
            result.outcome,
            result.step or "-",
            f": {result.reason}" if result.reason else "",
        )
        self._event(m, result)
        self._publish_reported()

    # --- telemetry --------------------------------------------------------------------------

    def record(self, kind: str, payload: dict[str, Any]) -> int:
        """Append a telemetry record to the outbox; it is sent when the broker is reachable.

        A payload too large to travel even alone in a batch is shrunk on the way in
        (``outbox.py``), so it can never block the records behind it.
        """
        budget = codec.telemetry_payload_budget(self.device_id, kind)
        seq = self.outbox.append(kind, payload, max_payload_bytes=budget)
        self._outbox_wakeup.set()
        return seq

    def _event(self, m: DesiredModel, result: Result) -> None:
        self.record(
            "deployment_event",
            {
                "deployment_id": m.deployment_id,
                "package_digest": m.package_digest,
                "name": m.name,
                "version": m.version,
                "outcome": result.outcome,
                "step": result.step,
                "reason": result.reason,
            },
        )

    async def _outbox_loop(self) -> None:
        """Send the outbox in seq order, one batch at a time, each within the protocol's limits.

        A batch takes up to ``outbox_batch_size`` records (at most
        ``MAX_TELEMETRY_BATCH_RECORDS``, by validation) and fewer when their encoding would pass
        ``MAX_TELEMETRY_BATCH_BYTES``: the control plane refuses an oversized batch whole, and
        since the PUBACK would still delete its records, they would be lost. Records are deleted
        only up to the last one the acknowledged batch carried.
        """
        while True:
            await self._outbox_wakeup.wait()
            self._outbox_wakeup.clear()
            while self._connected.is_set():
                records = self.outbox.oldest(self.fs.outbox_batch_size)
                if not records:
                    break
                payload, taken = codec.pack_telemetry(
                    TelemetryOut(self.device_id, records, self.outbox.dropped)
                )
                if taken == 0:
                    # Stored by an agent that predates the limit (or before the device id grew
                    # longer): too large to travel even alone. Shrunk in place, then sent.
                    first = records[0]
                    budget = codec.telemetry_payload_budget(self.device_id, first.kind)
                    self.outbox.shrink(first.seq, first.kind, budget)
                    continue
                ack = self._publish_acked(self.topic[topics.TELEMETRY], payload)
                if ack is None:
                    break
                try:
                    await asyncio.wait_for(ack, _ACK_TIMEOUT_S)
                except (TimeoutError, ConnectionError):
                    break  # sent again after the next Connected
                self.outbox.acknowledge(records[taken - 1].seq)

    async def _snapshot_loop(self) -> None:
        if self.fs.telemetry_interval_s <= 0:
            return
        while True:
            await asyncio.sleep(self.fs.telemetry_interval_s)
            self.record("metrics", self._metrics_snapshot())

    def _metrics_snapshot(self) -> dict[str, Any]:
        """The registry's sums, and per model version figures so versions can be compared."""
        snapshot: dict[str, Any] = dict(metrics_snapshot())
        snapshot.update(self._versions.snapshot(self.repo))
        return snapshot

    # --- reconciliation ---------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            await self._desired_changed.wait()
            self._desired_changed.clear()
            desired = self._desired
            if desired is None:
                continue
            try:
                await self._reconcile(desired)
                self._reconciled_generation = desired.generation
            except _Superseded:
                log.info("desired generation %d superseded", desired.generation)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciling generation %d failed", desired.generation)

    def _check_current(self, desired: DesiredState) -> None:
        if self._desired is not desired:
            raise _Superseded

    async def _reconcile(self, desired: DesiredState) -> None:
        if desired.generation > self.state.acted_generation:
            self.state.acted_generation = desired.generation
            self.state.save()
            crash_point("after_generation_write")
        log.info(
            "reconciling desired generation %d (%d models, %d removals)",
            desired.generation,
            len(desired.models),
            len(desired.removals),
        )
        self.state.prune({m.key for m in desired.models} | {r.key for r in desired.removals})
        if self.capture is not None:
            self.capture.set_overrides(
                (m.name, m.version, Override(m.deployment_id, m.capture)) for m in desired.models
            )
        remove_stale(self.downloads_root, {m.package_digest for m in desired.models})
        self._publish_reported()
        for r in desired.removals:
            self._check_current(desired)
            await self._remove(r)
        active = desired.active_entries()
        for m in desired.models:
            self._check_current(desired)
            await self._deploy(desired, m, activate=active.get(m.name) is m)
        await self._apply_weights(desired)
        self.state.save()
        self.delta.held.prune(self.store.load_state().digests())
        self._publish_reported()

    def _committed(self, m: DesiredModel) -> bool:
        entry = self.store.load_state().models.get(m.name)
        return entry is not None and entry.versions.get(m.version) == m.package_digest

    async def _remove(self, r: ModelRemoval) -> None:
        previous = self.state.results.get(r.key)
        if previous is not None and previous.final:
            return
        held = await self.installer.uninstall(r.name, r.version)
        result = Result.removed(r, "" if held else "was not installed")
        self.state.set_result(r.key, result)
        self.state.save()
        log.info(
            "removal %s of %s:%s: %s", r.deployment_id, r.name, r.version, result.reason or "done"
        )
        self.record(
            "deployment_event",
            {"deployment_id": r.deployment_id, "name": r.name, "version": r.version}
            | {"outcome": result.outcome, "step": result.step, "reason": result.reason},
        )
        self._publish_reported()

    async def _deploy(self, desired: DesiredState, m: DesiredModel, activate: bool) -> None:
        key = m.key
        previous = self.state.results.get(key)
        if self._committed(m):
            ChunkDownload.discard(self.downloads_root, m.package_digest)
            if previous is not None and previous.final:
                # Carried out once already (or reverted by the local guard): what changed on
                # the device since (an offline bundle, a local activation) is not fought until
                # a new deployment says otherwise.
                return
            if activate and self.repo.active_version(m.name) != m.version:
                failed = await self._warm_up(m)
                self._finish(key, m, failed or await self._activate(m))
            else:
                self._finish(key, m, Result.installed(m))
            return
        if previous is not None and previous.final:
            return  # repeated desired state: the outcome stands and is already reported
        try:
            path = await self._download(desired, m)
            attempts = self.state.attempts.get(key, 0)
            if attempts >= self.fs.max_install_attempts:
                raise _StepFailed(
                    "install", f"the agent stopped during {attempts} install attempts; giving up"
                )
            self.state.attempts[key] = attempts + 1
            self._progress(key, Result.in_progress(m, "install", m.chunk_count), force=True)
            self.state.save()
            crash_point("before_install")
            prior = self.repo.active_version(m.name)
            warm = activate and m.warmup is not None and prior not in (None, m.version)
            outcome, served = await self.installer.install(
                path, activate=activate and not warm, known_digest=m.package_digest
            )
            crash_point("after_install")
            if outcome.outcome == "COMMITTED":
                dl_dir = self.downloads_root / m.package_digest
                await asyncio.to_thread(self.delta.remember, dl_dir, m.package_digest, path)
                result = Result.installed(m)
                if warm:
                    failed = await self._warm_up(m)
                    result = failed or await self._activate(m)
                    result = Result.installed(m) if result.outcome == INSTALLED else result
                elif activate and served is not None:
                    self._start_guard(m, prior, served)
            else:
                result = Result.failed(m, outcome.failed_step, outcome.reason)
        except DownloadError as exc:
            result = Result.failed(m, "download", str(exc), chunks_done=self._done_chunks(m))
        except _StepFailed as exc:
            result = Result.failed(m, exc.step, exc.reason)
        self._finish(key, m, result)
        ChunkDownload.discard(self.downloads_root, m.package_digest)

    async def _warm_up(self, m: DesiredModel) -> Result | None:
        """The shadow warm-up before activating ``m``: None when it passed (or none is asked)."""
        if m.warmup is None or self.repo.active_version(m.name) is None:
            return None
        log.info("shadow warm-up of %s:%s", m.name, m.version)
        try:
            passed, figures = await warmup.warm_up(
                self.installer, self.repo, m.name, m.version, m.warmup
            )
        except AgentError as exc:
            return Result.failed(m, "shadow", str(exc))
        log.info("shadow warm-up of %s:%s: %s", m.name, m.version, figures)
        return None if passed else Result.failed(m, "shadow", figures)

    async def _activate(self, m: DesiredModel) -> Result:
        """Re-activate a version the device already holds: no download, no reload."""
        prior = self.repo.active_version(m.name)
        try:
            served = await self.installer.activate(m.name, m.version)
        except AgentError as exc:
            return Result.failed(m, "activate", str(exc), chunks_done=0)
        log.info("re-activated %s:%s (was %s)", m.name, m.version, prior)
        self._start_guard(m, prior, served)
        return Result.activated(m)

    async def _apply_weights(self, desired: DesiredState) -> None:
        """Standby weights -> the model's traffic split; the active version takes the rest."""
        names = {m.name for m in desired.models} | set(self.state.split_models)
        for name in sorted(names):
            active = self.repo.active_version(name)
            if active is None:
                continue
            weights = {
                m.version: m.weight
                for m in desired.models
                if m.name == name and m.standby and m.weight > 0 and self.repo.has(name, m.version)
            }
            weights.pop(active, None)
            if weights:
                weights[active] = max(0.0, 100.0 - sum(weights.values()))
                split = TrafficSplit(weights)
            elif name in self.state.split_models:
                split = TrafficSplit()
            else:
                continue
            if self.repo.traffic(name) == split:
                continue
            try:
                await self.installer.set_traffic(name, split)
            except AgentError as exc:
                log.warning("traffic split of %s from the desired state refused: %s", name, exc)
                continue
            if split.is_default:
                self.state.split_models.discard(name)
            else:
                self.state.split_models.add(name)
            log.info("traffic split of %s: %s", name, dict(split.weights) or "active only")

    # --- local guard ------------------------------------------------------------------------

    def _start_guard(self, m: DesiredModel, prior: str | None, served: ServedModel) -> None:
        if m.guard is None or m.guard.bake_s <= 0:
            return
        old = self._guards.pop(m.name, None)
        if old is not None:
            old.cancel()  # a newer activation of the model: its own watch replaces this one
        self._guards[m.name] = asyncio.create_task(self._guard(m, prior, served))

    async def _guard(self, m: DesiredModel, prior: str | None, served: ServedModel) -> None:
        assert m.guard is not None
        why, figures = await guard.watch(m.guard, served)
        if self._guards.get(m.name) is asyncio.current_task():
            del self._guards[m.name]
        if not why:
            log.info("guard of %s:%s passed: %s", m.name, m.version, figures.describe())
            return
        if self.repo.active_version(m.name) != m.version:
            return  # something else was activated meanwhile: nothing of ours to undo
        if prior is None or prior == m.version or not self.repo.has(m.name, prior):
            log.error(
                "guard of %s:%s breached (%s) with no version to revert to", m.name, m.version, why
            )
            return
        await self.installer.activate(m.name, prior)
        reason = f"{why} ({figures.describe()}); reverted to version {prior}"
        log.warning("guard of %s:%s: %s", m.name, m.version, reason)
        self.record(
            "guard_revert",
            {"name": m.name, "version": m.version, "reverted_to": prior, "reason": why}
            | {"requests": figures.requests, "errors": figures.errors, "p99_ms": figures.p99_ms},
        )
        self._finish(m.key, m, Result.failed(m, "guard", reason))

    def _done_chunks(self, m: DesiredModel) -> int:
        return ChunkDownload.chunks_on_disk(self.downloads_root, m)

    def _shared_topic_of(self, m: DesiredModel) -> str | None:
        """The package's shared topic named by the desired state, if it is one (never a filter
        or another subtree: the agent subscribes to nothing else on the control plane's word)."""
        if not m.chunk_topic:
            return None
        if topics.parse_package_topic(m.chunk_topic, self._root) != m.package_digest:
            log.warning("ignoring chunk topic %r of %s", m.chunk_topic, m.package_digest[:12])
            return None
        return m.chunk_topic

    def _publish_chunk_request(self, payload: bytes) -> bool:
        assert self.link is not None
        return self.link.publish(self.topic[topics.CHUNKS_REQUEST], payload) is not None

    async def _download(self, desired: DesiredState, m: DesiredModel) -> Path:
        """The package, assembled and checked: resumed from disk, pulled, or already there."""
        dl = ChunkDownload(self.downloads_root, m)
        key = m.key
        assembled = dl.assembled()
        if assembled is not None:
            return assembled
        self._progress(key, Result.in_progress(m, "download", dl.done), force=True)
        if self.state.results.get(key) is not None and dl.done == 0:
            self._event(m, self.state.results[key])

        def request(indexes: list[int]) -> str | None:
            assert self.link is not None
            request_id = new_request_id()
            payload = codec.chunk_request_to_proto(m.package_digest, indexes, request_id)
            sent = self.link.publish(self.topic[topics.CHUNKS_REQUEST], payload)
            return None if sent is None else request_id

        if await self.delta.seed(
            dl,
            self.store.load_state().digests(),
            send=self._publish_chunk_request,
            connected=self._connected,
            still_wanted=lambda: self._check_current(desired),
        ):
            self._progress(key, Result.in_progress(m, "download", dl.done))
        self._puller = ChunkPuller(
            dl,
            self.fs,
            send=request,
            connected=self._connected,
            still_wanted=lambda: self._check_current(desired),
            on_chunk=lambda done: self._progress(key, Result.in_progress(m, "download", done)),
        )
        shared = self._shared_topic_of(m)
        if shared is not None:
            assert self.link is not None
            self._shared_topic = shared
            self.link.subscribe(shared)  # before the first request: see MqttLink.subscribe
        try:
            await self._puller.run()
        finally:
            self._puller = None
            if shared is not None:
                self._shared_topic = None
                assert self.link is not None
                self.link.unsubscribe(shared)
        crash_point("before_assemble")
        path = await asyncio.to_thread(dl.assemble)
        crash_point("after_assemble")
        return path


#: Versions itemised in one snapshot: with their figures (~150 bytes each) the record stays far
#: below the protocol's batch limit, so the outbox never has to shrink it. Busiest first.
MAX_SNAPSHOT_VERSIONS = 200


class VersionTelemetry:
    """Per model version request figures for the periodic ``metrics`` record.

    Counts are cumulative since the version was loaded (as the statistics extension reports
    them), so a lost record loses no request; latency percentiles cover the successful requests
    since the previous snapshot, the window in which versions are compared. Read from each
    version's ``ModelStats`` (no second bookkeeping on the request path).
    """

    def __init__(self, limit: int = MAX_SNAPSHOT_VERSIONS) -> None:
        self.limit = limit
        # (model, version) -> (the stats object seen, its latency counts then): a version
        # unloaded and loaded again has a new stats object and starts a new window.
        self._last: dict[tuple[str, str], tuple[ModelStats, list[int]]] = {}

    def snapshot(self, served: Iterable[ServedModel]) -> dict[str, Any]:
        rows = []
        last: dict[tuple[str, str], tuple[ModelStats, list[int]]] = {}
        for m in served:
            st = m.stats
            counts = list(st.latency.counts)
            prev = self._last.get((m.name, m.version))
            window = counts if prev is None or prev[0] is not st else _minus(counts, prev[1])
            last[(m.name, m.version)] = (st, counts)
            rows.append((m.name, m.version, st, window))
        self._last = last
        rows.sort(key=lambda r: r[2].success.count + r[2].fail.count, reverse=True)
        versions: dict[str, dict[str, Any]] = {}
        for name, version, st, window in rows[: self.limit]:
            entry: dict[str, Any] = {"requests": st.success.count + st.fail.count}
            entry["errors"] = st.fail.count
            n = sum(window)
            entry["window"] = n
            if n:
                for label, q in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)):
                    entry[label] = round(quantile_ms(window, q), 3)
            versions.setdefault(name, {})[version] = entry
        out: dict[str, Any] = {"versions": versions}
        if len(rows) > self.limit:
            out["versions_omitted"] = len(rows) - self.limit
        return out


def _minus(a: list[int], b: list[int]) -> list[int]:
    return [x - y for x, y in zip(a, b, strict=True)]


def metrics_snapshot() -> dict[str, float]:
    """Counters and gauges of the agent's registry, summed over labels (a compact snapshot)."""
    out: dict[str, float] = {}
    for family in METRICS.registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_created") or sample.name.endswith("_bucket"):
                continue
            out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
    return out
