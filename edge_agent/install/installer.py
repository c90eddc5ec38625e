"""Install packages as a state machine: verify -> stage -> load -> self_test -> activate -> commit.

Every step is idempotent and recorded in a journal before the next begins. Until ``commit``
atomically rewrites ``state.json``, the committed state still names the previous version, so a
crash anywhere (tests kill the process with SIGKILL at each named point) restarts into the old
version, and ``recover`` clears the leftovers; after ``commit`` it restarts into the new one. A
failure at any step leaves the previous version serving and records which step failed and why.
The named points where tests kill the agent are declared in ``edge_agent.crash_points``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.config import AgentSettings
from edge_agent.crash_points import crash_point
from edge_agent.errors import AgentError, InstallFailed, ModelNotFound
from edge_agent.install.journal import JournalEntry
from edge_agent.install.store import CommittedState, ModelEntry, ModelStore
from edge_agent.install.trust import DeviceTrust
from edge_agent.memory import release_free_heap
from edge_agent.metrics import METRICS
from edge_agent.serving.loader import load_served_model
from edge_agent.serving.repository import ModelRepository, close_later
from edge_agent.serving.served_model import ServedModel
from edge_agent.serving.traffic import TrafficSplit
from model_packager.archive import sha256_file
from model_packager.errors import PackageError, SignatureError
from model_packager.fsutil import fsync_dir
from model_packager.signature_check import verify_without_cryptography
from model_packager.unpack import unpack_verified

if TYPE_CHECKING:
    from model_packager.signing import TrustStore

log = logging.getLogger(__name__)


@dataclass
class InstallOutcome:
    package_digest: str
    name: str
    version: str
    outcome: str  # COMMITTED | FAILED
    failed_step: str = ""
    reason: str = ""
    finished_at: float = 0.0
    variant: str = ""

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class Installer:
    def __init__(
        self,
        settings: AgentSettings,
        store: ModelStore,
        repo: ModelRepository,
        executor: Executor,
    ) -> None:
        self.settings = settings
        self.store = store
        self.repo = repo
        self.executor = executor
        self.journal = store.journal
        self._lock = asyncio.Lock()
        self._trust: TrustStore | None = None
        self._trust_files: list[Path] = []
        missing = [str(p) for p in settings.trusted_keys if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"trusted key path(s) not found: {', '.join(missing)}")
        # The configured keys plus the trust set a key rotation sent (fleet channel).
        self.trust = DeviceTrust(settings.trusted_keys, settings.data_dir)

    def check_signature(self, manifest_bytes: bytes, signature_bytes: bytes | None) -> str:
        """The signing key id, if a trusted key signed these manifest bytes.

        By default checked without ``cryptography`` in this process (it would cost about 7 MB
        of resident memory for the rest of its life, for one check per install; the budget is
        100 MB right after one): through the OpenSSL library the process already maps, or where
        that cannot check Ed25519, in a short-lived child process
        (``model_packager.signature_check``). With ``signature_check_in_child`` off it is
        checked here with ``cryptography``, and the trusted keys are read once, at the first
        install.
        """
        if (refusal := self.trust.refusal(signature_bytes)) is not None:
            raise SignatureError(refusal)
        return self.verify_signature(manifest_bytes, signature_bytes, self.trust.key_files())

    def verify_signature(
        self, data: bytes, signature_bytes: bytes | None, key_files: Sequence[Path]
    ) -> str:
        """The key id that signed ``data``, checked against ``key_files`` (packages and trust
        sets alike), without ``cryptography`` unless ``signature_check_in_child`` is off."""
        if self.settings.signature_check_in_child:
            return verify_without_cryptography(data, signature_bytes, key_files)
        from model_packager.signing import TrustStore, verify_manifest

        if self._trust is None or self._trust_files != list(key_files):
            self._trust = TrustStore.from_paths(key_files)
            self._trust_files = list(key_files)
        return verify_manifest(data, signature_bytes, self._trust)

    def _enter(self, entry: JournalEntry, step: str) -> None:
        """Start ``step``: its crash point first, then the journal says the step began."""
        crash_point(f"before_{step}")
        self.journal.advance(entry, step)

    def _at_loader_point(self, entry: JournalEntry, point: str) -> None:
        """A point the loader passes. It self-tests right after loading: journal that as a step."""
        if point == "before_self_test":
            self.journal.advance(entry, "self_test")
        crash_point(point)

    # startup
    async def recover(self) -> None:
        """Resolve interrupted installs and load every committed version."""
        state = self.store.load_state()
        for journal in self.journal.interrupted():
            digest, name, version = journal.digest, journal.name, journal.version
            entry = state.models.get(name)
            if entry is not None and entry.versions.get(version) == digest:
                outcome = InstallOutcome(
                    digest, name, version, "COMMITTED", finished_at=time.time()
                )
            else:
                step = journal.step
                outcome = InstallOutcome(
                    digest,
                    name,
                    version,
                    "FAILED",
                    step,
                    f"interrupted during {step} (agent restarted); previous version kept",
                    time.time(),
                )
            self.store.save_last_install(outcome.to_json())
            self.journal.clear(digest)
        removed = self.store.remove_unreferenced(state.digests())
        if removed:
            log.info("removed %d unreferenced package folders", len(removed))
        for p in self.store.incoming.iterdir():
            p.unlink(missing_ok=True)
        await self._load_committed(state)
        self._restore_traffic()

    def _restore_traffic(self) -> None:
        """Apply the saved splits to what loaded; versions that did not load are left out."""
        for name, split in self.store.load_traffic().items():
            loaded = {m.version for m in self.repo.versions(name)}
            for version in split.versions() - loaded:
                log.warning("traffic split of %s names %s, which is not loaded", name, version)
                split = split.without(version)
            try:
                self.repo.set_traffic(name, split)
            except AgentError as exc:
                log.error("traffic split of %s not restored: %s", name, exc)

    async def _load_committed(self, state: CommittedState) -> None:
        for name, entry in state.models.items():
            # Active version first so the device serves as soon as possible.
            ordered = sorted(entry.versions.items(), key=lambda kv: kv[0] != entry.active)
            for version, digest in ordered:
                try:
                    served = await asyncio.to_thread(
                        load_served_model,
                        self.store.package_dir(digest),
                        digest,
                        self.settings,
                        self.executor,
                    )
                except InstallFailed as exc:
                    log.error("committed %s:%s does not load: %s", name, version, exc)
                    continue
                self.repo.add(served)
                if version == entry.active:
                    self.repo.set_active(name, version)

    # install
    async def install(
        self, archive: Path, activate: bool = True, known_digest: str | None = None
    ) -> tuple[InstallOutcome, ServedModel | None]:
        """``known_digest``: the archive's sha256 when the caller checked it while writing the
        file (a fleet download); the one pass then skips hashing the whole file again."""
        async with self._lock:
            outcome, served = await self._install(Path(archive), activate, known_digest)
            if outcome.outcome != "COMMITTED":  # a commit recorded it before its journal went
                self.store.save_last_install(outcome.to_json())
            METRICS.installs.labels(outcome.outcome).inc()
            # Reading, hashing and loading a package leave freed heap behind (a few MB for a
            # small model): hand it back now, as start-up does (memory.py).
            release_free_heap()
            return outcome, served

    async def activate(self, name: str, version: str) -> ServedModel:
        """Make a committed version the active one; persisted, so a restart keeps the choice."""
        served = self.repo.get(name, version)
        self.repo.set_active(name, version)
        state = self.store.load_state()
        entry = state.models.get(name)
        if entry is None or version not in entry.versions:
            raise ModelNotFound(f"{name}:{version} is loaded but not committed")
        entry.active = version
        self.store.save_state(state)
        return served

    async def uninstall(self, name: str, version: str) -> bool:
        """Forget a committed version: state first (atomic), then memory, then its files.

        Removing the active version hands activity to the newest version left, so a model with
        any version installed always answers. Returns False when the version was not installed
        (a repeated removal is harmless).
        """
        async with self._lock:
            state = self.store.load_state()
            entry = state.models.get(name)
            if entry is None or version not in entry.versions:
                return False
            del entry.versions[version]
            if entry.active == version:
                left = [v for v in self.repo.versions(name) if v.version in entry.versions]
                entry.active = left[-1].version if left else next(iter(entry.versions), None)
            if not entry.versions:
                del state.models[name]
            self.store.save_state(state)
            served = self.repo.remove(name, version)
            if entry.active is not None and self.repo.has(name, entry.active):
                self.repo.set_active(name, entry.active)
            self.store.save_traffic(self.repo.splits())
            self.store.remove_unreferenced(state.digests())
            if served is not None:
                asyncio.get_running_loop().create_task(close_later([served]))
            log.info("uninstalled %s:%s", name, version)
            return True

    async def set_traffic(self, name: str, split: TrafficSplit) -> TrafficSplit:
        """Check and swap in a model's split, then persist every split (``traffic.json``).

        The swap comes first so that only a split the repository accepted is written; if the
        write fails the previous split is put back, so what serves is always what a restart
        would serve.
        """
        previous = self.repo.traffic(name)
        self.repo.set_traffic(name, split)
        try:
            self.store.save_traffic(self.repo.splits())
        except BaseException:
            self.repo.set_traffic(name, previous)
            raise
        return self.repo.traffic(name)

    async def _install(
        self, archive: Path, activate: bool, known_digest: str | None = None
    ) -> tuple[InstallOutcome, ServedModel | None]:
        digest, name, version, step = "", "", "", "verify"
        staged: Path | None = None
        try:
            crash_point("before_verify")
            try:
                # One pass over the file: whole-file digest, signature, every member's digest,
                # extracted into a hidden staging folder that ``stage`` renames into place.
                unpacked = await asyncio.to_thread(
                    unpack_verified,
                    archive,
                    self.check_signature,
                    self.store.packages,
                    known_digest=known_digest,
                )
            except (PackageError, OSError) as exc:
                raise InstallFailed("verify", str(exc)) from exc
            staged = unpacked.staged
            digest = unpacked.digest
            name, version = unpacked.manifest.name, unpacked.manifest.version
            state = self.store.load_state()
            committed = state.models.get(name, ModelEntry()).versions.get(version)
            if committed is not None and committed != digest:
                raise InstallFailed(
                    "verify",
                    f"{name}:{version} is already installed from package {committed[:12]}; "
                    "versions are immutable, give the new package a new version",
                )
            journal = self.journal.begin(digest, name, version, activate)
            crash_point("after_verify")

            step = "stage"
            self._enter(journal, step)
            pkg_dir = self.store.package_dir(digest)
            try:
                if pkg_dir.exists():  # staged before by an install of the same package
                    shutil.rmtree(staged)
                else:
                    os.replace(staged, pkg_dir)
                    fsync_dir(pkg_dir.parent)
            except OSError as exc:
                raise InstallFailed("stage", str(exc)) from exc
            staged = None
            crash_point("after_stage")

            step = "load"
            self._enter(journal, step)
            if self.repo.has(name, version) and self.repo.get(name, version).digest == digest:
                served = self.repo.get(name, version)
            else:
                served = await asyncio.to_thread(
                    load_served_model,
                    pkg_dir,
                    digest,
                    self.settings,
                    self.executor,
                    functools.partial(self._at_loader_point, journal),
                )
            step = "activate"
            self._enter(journal, step)
            replaced = self.repo.add(served)
            previous = self.repo.active_version(name)
            if activate or previous is None:
                self.repo.set_active(name, version)
            crash_point("after_activate")

            step = "commit"
            self._enter(journal, step)
            state = self.store.load_state()
            entry = state.models.setdefault(name, ModelEntry())
            entry.versions[version] = digest
            # The replaced version stays loaded for a guard or a rollback, unless the cap is 1.
            keep_replaced = self.repo.max_versions > 1 and activate and previous != version
            spare = (previous,) if keep_replaced and previous is not None else ()
            # Never the version being installed: when the active version and a traffic split
            # pin the rest, a standby install would otherwise evict itself and still report
            # COMMITTED. The cap gives way instead.
            evicted = self.repo.evict_extra(name, (*spare, version))
            if replaced is not None:
                evicted.append(replaced)
            for old in evicted:
                if entry.versions.get(old.version) == old.digest and old.version != version:
                    del entry.versions[old.version]
            if activate or entry.active is None:
                entry.active = version
            self.store.save_state(state)
            crash_point("after_state_write")
            outcome = InstallOutcome(
                digest, name, version, "COMMITTED", finished_at=time.time(), variant=served.variant
            )
            # Recorded before the journal goes: once it is gone, recovery can no longer tell.
            self.store.save_last_install(outcome.to_json())
            self.journal.clear(digest)
            self.store.remove_unreferenced(state.digests())
            crash_point("after_commit")
            asyncio.get_running_loop().create_task(close_later(evicted))
            log.info("installed %s:%s (%s) from %s", name, version, served.variant, digest[:12])
            return outcome, served
        except InstallFailed as exc:
            _discard(staged)
            log.warning("install of %s failed at %s: %s", archive.name, exc.step, exc.reason)
            self._rollback(digest, name, version)
            # A package rejected before its manifest was trusted is still named in the report,
            # by the sha256 of the file that was offered, so an operator can tell which it was.
            reported = digest or await asyncio.to_thread(_file_digest, archive)
            return InstallOutcome(
                reported, name, version, "FAILED", exc.step, exc.reason, time.time()
            ), None
        except Exception as exc:  # never let an install take the agent down
            _discard(staged)
            log.exception("install of %s failed unexpectedly at %s", archive.name, step)
            self._rollback(digest, name, version)
            return InstallOutcome(
                digest, name, version, "FAILED", step, repr(exc), time.time()
            ), None

    def _rollback(self, digest: str, name: str, version: str) -> None:
        """Undo a failed install: forget what it staged unless a committed version uses it."""
        if not digest:
            return
        state = self.store.load_state()
        committed = state.models.get(name, ModelEntry()).versions.get(version) == digest
        if not committed:
            if self.repo.has(name, version) and self.repo.get(name, version).digest == digest:
                served = self.repo.remove(name, version)
                prev = [
                    v
                    for v in state.models.get(name, ModelEntry()).versions
                    if self.repo.has(name, v)
                ]
                entry = state.models.get(name)
                if entry and entry.active and self.repo.has(name, entry.active):
                    self.repo.set_active(name, entry.active)
                elif prev:
                    self.repo.set_active(name, prev[-1])
                if served is not None:
                    asyncio.get_running_loop().create_task(close_later([served]))
            self.store.remove_unreferenced(state.digests())
        self.journal.clear(digest)


def _discard(staged: Path | None) -> None:
    """A verified package that never reached ``stage`` (recovery removes one left by a crash:
    ``ModelStore.remove_unreferenced``)."""
    if staged is not None:
        shutil.rmtree(staged, ignore_errors=True)


def _file_digest(path: Path) -> str:
    try:
        return sha256_file(path)
    except OSError:
        return ""
