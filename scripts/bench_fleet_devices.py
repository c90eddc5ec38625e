"""Simulated devices for ``scripts/bench-rollout --simulated N``: the agent's own fleet code, many
devices to a process, with a stand-in where the agent would load and run a model.

Each device is a real ``edge_agent.fleet.FleetClient`` (the code ``edge-agent run`` starts), with
its own data folder, its own ``MqttLink`` (one MQTT session with the device's registered
credentials, client id and Last Will), its own ``FleetState``, telemetry outbox and
``ModelStore``: reconciliation, generations, chunk pulls through ``ChunkPuller`` (each chunk
checked against ``chunk_sha256`` and written atomically, the assembled file checked against
``package_digest``), progress and final reports, deployment events in the outbox, all as shipped.
Only ``Installer`` is replaced, by ``StandInInstaller``: it reads the package's manifest (name,
version) and commits it to the device's ``state.json`` as the installer's commit step does,
without checking the signature, staging, loading onnxruntime or running the golden self-test. So
these devices load the control plane and the broker as real agents do, and themselves far less.

Why a few processes of many devices rather than one process per device: a thousand Python
processes would take ~40 GB and would measure the machine, not the control plane. The benchmark
spreads the devices over ``--sim-procs`` processes (one asyncio loop each; each device's MQTT
network thread is its own, as in the agent).

Line protocol on stdout: ``ready <count>`` once every device is connected, then
``installed <device id> <unix time>`` whenever a device reports INSTALLED for a deployment (read
from the outbox event, as the control plane would see it) and ``error <text>``. The benchmark
closes stdin to stop the process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edge_agent.config import AgentSettings  # noqa: E402
from edge_agent.fleet import FleetClient  # noqa: E402
from edge_agent.fleet.bundle import config_from_bundle  # noqa: E402
from edge_agent.install.installer import InstallOutcome  # noqa: E402
from edge_agent.install.store import ModelEntry, ModelStore  # noqa: E402
from edge_agent.serving.repository import ModelRepository  # noqa: E402
from edge_agent.serving.served_model import ServedModel  # noqa: E402
from edge_agent.serving.traffic import TrafficSplit  # noqa: E402
from model_packager.archive import open_package, sha256_file  # noqa: E402

AGENT_VERSION = "sim-fleet-0.1"


def say(line: str) -> None:
    """One protocol line to the benchmark (stdout is a pipe: flush every line)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class StandInInstaller:
    """What ``FleetClient`` asks of ``Installer``, with no model behind it.

    ``install`` commits the package's name and version to the store's ``state.json`` (the same
    file the real installer's commit step writes, so ``FleetClient`` sees it as committed and
    reports it) and tells the benchmark. Nothing is served, so ``served`` is always None, which
    ``FleetClient`` reads as "no local guard to start".
    """

    def __init__(self, device_id: str, store: ModelStore) -> None:
        self.device_id = device_id
        self.store = store

    async def install(
        self, archive: Path, activate: bool = True, known_digest: str | None = None
    ) -> tuple[InstallOutcome, ServedModel | None]:
        manifest = open_package(Path(archive)).manifest
        digest = known_digest or sha256_file(Path(archive))
        state = self.store.load_state()
        entry = state.models.setdefault(manifest.name, ModelEntry())
        entry.versions[manifest.version] = digest
        if activate:
            entry.active = manifest.version
        self.store.save_state(state)
        say(f"installed {self.device_id} {time.time():.6f}")
        return InstallOutcome(digest, manifest.name, manifest.version, "COMMITTED"), None

    async def activate(self, name: str, version: str) -> ServedModel:
        raise RuntimeError("the stand-in installer serves nothing to activate")

    async def uninstall(self, name: str, version: str) -> bool:
        state = self.store.load_state()
        entry = state.models.get(name)
        if entry is None or version not in entry.versions:
            return False
        del entry.versions[version]
        self.store.save_state(state)
        return True

    async def set_traffic(self, name: str, split: TrafficSplit) -> TrafficSplit:
        return split


def device_settings(bundle: dict[str, Any], folder: Path, host: str) -> AgentSettings:
    """The agent's settings as ``edge-agent join`` writes them from the bundle."""
    folder.mkdir(parents=True, exist_ok=True)
    config = config_from_bundle(bundle, folder, data_dir=str(folder / "data"))
    # Periodic metric snapshots are off: they carry no model figures here, and would only add
    # telemetry unrelated to the rollout being measured.
    config["fleet"]["telemetry_interval_s"] = 0
    if host:
        config["fleet"]["url"] = f"mqtt://{host}:{bundle['mqtt']['url'].rsplit(':', 1)[-1]}"
    return AgentSettings(**config)


async def run_devices(args: argparse.Namespace) -> int:
    bundles = json.loads(Path(args.bundles).read_text())
    clients: list[FleetClient] = []
    for bundle in bundles:
        settings = device_settings(bundle, Path(args.root) / bundle["device_id"], args.host)
        store = ModelStore(settings.data_dir)
        installer = StandInInstaller(settings.device_id, store)
        client = FleetClient(
            settings,
            store,
            ModelRepository(),
            installer,  # type: ignore[arg-type]  # the stand-in has the methods FleetClient calls
            AGENT_VERSION,
        )
        await client.start()
        clients.append(client)
        await asyncio.sleep(args.connect_spacing)  # a fleet does not reconnect in one instant

    deadline = time.monotonic() + 120
    while not all(c._connected.is_set() for c in clients):
        if time.monotonic() > deadline:
            missing = [c.device_id for c in clients if not c._connected.is_set()]
            say(f"error {len(missing)} devices not connected within 120 s: {missing[:5]}")
            return 1
        await asyncio.sleep(0.1)
    say(f"ready {len(clients)}")

    await asyncio.to_thread(sys.stdin.read)  # the benchmark closes our stdin to stop us
    await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", required=True, help="JSON list of config bundles")
    parser.add_argument("--root", required=True, help="folder for the devices' data folders")
    parser.add_argument("--host", default="", help="broker host instead of the bundle's")
    parser.add_argument("--connect-spacing", type=float, default=0.005)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    return asyncio.run(run_devices(args))


if __name__ == "__main__":
    sys.exit(main())
