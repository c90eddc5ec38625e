"""Delta benchmark: what a new version of a real model costs a device that holds the previous one.

The real case: the built-in digits CNN (``control_plane/training/algorithms/image_classification
.build_model``, 32x32 grey input) trained on drawn digits (``tests/datasets/digits.py``), then
converted by ``model-packager convert`` into one signed package (ONNX fp32, TFLite fp32, fp16 and
int8, each parity gated, calibrated on the same real images). Two new versions of it:

- **epochs**: version 1 trained 2 more epochs from its own weights (every weight moves);
- **head**: version 1 with every layer but the last frozen, its last layer retrained 2 epochs.

Figures, in one run:

1. From the packages alone: bytes a device holding version 1 must fetch by digest (FastCDC
   chunk index, ``model_packager/cdc.py``) as a share of the full package. Target: <= 25% for
   the head-only retrain.
2. Through the real stack (Mosquitto, ``control-plane serve``, ``edge-agent run`` processes,
   ``fleet_stack``): per round two fresh agents install version 1, then each new version is
   deployed to one agent with delta updates on and to one with them off (``delta_updates:
   false``, the whole package as before), one deployment at a time, the order alternating
   between rounds. Measured: the package bytes the device received on its ``chunks/data``
   (an observer subscribed there), the time from the deployment call to the device holding the
   checked package (its ``IN_PROGRESS`` report at step ``install``) and to ``INSTALLED``.
   Printed as ratios delta / full, medians over the rounds, with the machine's load.

The agents reach the broker through ``LinkProxy``, a TCP relay in this process that gives each
connection a link of ``--link-mbit`` megabits a second each way and ``--link-rtt-ms`` of round
trip (defaults 8 Mbit/s, 40 ms: a camera on a modest uplink), since on loopback a 1.5 MB
package moves in a tenth of a second and the install's fixed costs (loading four variants,
golden self-tests) hide what the transfer costs. ``--link-mbit 0`` connects them directly.

Always exits 0 (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import random
import statistics
import sys
import threading
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "scripts"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from fleet_stack import (  # noqa: E402
    ReportedWatcher,
    Stack,
    log,
    mqtt_client,
    observer_rules,
    register,
    start_agents,
    start_broker,
    start_control_plane,
    stop_agents,
    upload,
    wait_credentials,
)
from script_support import (  # noqa: E402
    free_port,
    interrupt_on_sigterm,
    run_in_work_folder,
    wait_until,
)

from protos import fleet_topics  # noqa: E402
from protos.gen import fleet_pb2  # noqa: E402

CHUNKS_USER = "bench-chunks"
CASES = ("head", "epochs")
CASE_TEXT = {"head": "last layer retrained", "epochs": "2 more epochs"}


# --- the real case -----------------------------------------------------------------------------


def digits(count: int, size: int = 32) -> tuple[Any, Any]:
    import numpy as np
    from PIL import Image

    from tests.datasets.digits import digit_png

    rng = random.Random(0)
    labels = np.array([i % 10 for i in range(count)])
    images = np.stack(
        [
            np.asarray(Image.open(io.BytesIO(digit_png(int(k), rng))).resize((size, size)))
            for k in labels
        ]
    )
    return (images.astype("float32") / 255.0)[..., None], labels


def train(work: Path, epochs: int, extra: int) -> dict[str, Path]:
    """Keras files of version 1, the 2-more-epochs and the head-only retrain."""
    import numpy as np

    from control_plane.training.algorithms.common import setup
    from control_plane.training.algorithms.image_classification import build_model

    keras = setup(0)
    logging.getLogger().setLevel(logging.WARNING)  # setup() logs INFO for a job's own log
    x, y = digits(1500)
    np.save(work / "samples.npy", x[:64])

    def compiled(model: Any) -> Any:
        model.compile(
            optimizer=keras.optimizers.Adam(0.002),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model

    out = {v: work / f"{v}.keras" for v in ("v1", "epochs", "head")}
    model = compiled(build_model(keras, 32, 1, 10))
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    model.save(out["v1"])
    model.fit(x, y, epochs=extra, batch_size=32, verbose=0)
    model.save(out["epochs"])
    model = keras.models.load_model(out["v1"])
    for layer in model.layers[:-1]:
        layer.trainable = False
    compiled(model).fit(x, y, epochs=extra, batch_size=32, verbose=0)
    model.save(out["head"])
    return out


def package(work: Path, models: dict[str, Path], key: Path) -> dict[str, Path]:
    from model_packager.convert.pipeline import ConvertSpec, convert
    from model_packager.signing import load_private_key

    signing = load_private_key(key)
    out = {}
    for n, (v, model) in enumerate(models.items(), start=1):
        spec = ConvertSpec(
            source=model, name="digits-cnn", version=str(n), samples=work / "samples.npy"
        )
        report = convert(spec, work / "packages" / v, signing)
        assert report.package is not None
        out[v] = report.package
        kept = [r.name for r in report.variants if r.status == "kept"]
        log(f"{v}: {report.package.stat().st_size} bytes, variants {', '.join(kept)}")
    return out


# --- the devices' link -------------------------------------------------------------------------


class LinkProxy:
    """A TCP relay to the broker: per connection, ``mbit`` Mbit/s each way and ``rtt_ms``.

    Each direction is a queue: bytes read at ``t`` are written no earlier than ``t + rtt/2`` and
    no faster than the rate allows (a serialisation schedule, as a link's would be).
    """

    def __init__(self, target_port: int, mbit: float, rtt_ms: float) -> None:
        self.target_port = target_port
        self.rate = mbit * 1e6 / 8  # bytes per second
        self.delay = rtt_ms / 2000
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="link-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("link proxy did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", self.port)
        )
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, up_w), self._pipe(up_r, writer), return_exceptions=True
        )

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def send() -> None:
            free_at = 0.0
            while (item := await queue.get()) is not None:
                arrived, data = item
                free_at = max(free_at, arrived) + len(data) / self.rate
                wait = max(arrived + self.delay, free_at) - self.loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(data)
                await dst.drain()
            dst.close()

        sender = asyncio.ensure_future(send())
        try:
            while data := await src.read(16 * 1024):
                queue.put_nowait((self.loop.time(), data))
        except OSError:
            pass
        finally:
            queue.put_nowait(None)
            await asyncio.gather(sender, return_exceptions=True)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


# --- what each device received -------------------------------------------------------------------


@dataclass
class Received:
    package_bytes: int = 0  # chunk data (fixed or content-defined)
    payload_bytes: int = 0  # whole ChunkData messages, index included
    fixed: int = 0
    cdc: int = 0


class ChunkCounter:
    """Everything on ``edge/+/chunks/data``, per device (an identity allowed to read only that)."""

    def __init__(self, stack: Stack) -> None:
        self._lock = threading.Lock()
        self.by_device: dict[str, Received] = defaultdict(Received)
        self.client = mqtt_client(stack.broker_port, CHUNKS_USER, stack.local_password, CHUNKS_USER)
        self.client.on_message = self._on_message
        self.client.subscribe(fleet_topics.all_devices_filter(fleet_topics.CHUNKS_DATA), 1)

    def _on_message(self, _c: Any, _u: object, msg: Any) -> None:
        parsed = fleet_topics.parse_topic(msg.topic)
        if parsed is None:
            return
        data = fleet_pb2.ChunkData.FromString(msg.payload)
        with self._lock:
            r = self.by_device[parsed.device_id]
            r.payload_bytes += len(msg.payload)
            r.package_bytes += len(data.data)
            if data.cdc:
                r.cdc += 1
            elif data.data:
                r.fixed += 1

    def snapshot(self, device_id: str) -> Received:
        with self._lock:
            r = self.by_device[device_id]
            return Received(r.package_bytes, r.payload_bytes, r.fixed, r.cdc)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Install:
    case: str
    mode: str  # delta | full
    round: int
    download_s: float
    install_s: float
    received: Received
    outcome: str
    load_1m: float = field(default_factory=lambda: os.getloadavg()[0])


def deploy_one(
    stack: Stack,
    watcher: ReportedWatcher,
    counter: ChunkCounter,
    digest: str,
    device_id: str,
    timeout: float,
) -> tuple[float, float, Received, str]:
    before = counter.snapshot(device_id)
    t0 = time.time()
    dep = stack.call(
        "POST", "/deployments", json={"package_digest": digest, "device_id": device_id}
    )["id"]
    wait_until(f"{device_id} final", lambda: device_id in watcher.final(dep), timeout, 0.02)
    final = watcher.final(dep)[device_id]
    downloaded = watcher.downloaded(dep).get(device_id, float("nan"))
    time.sleep(0.3)  # the last chunk messages reach the counter
    after = counter.snapshot(device_id)
    got = Received(
        after.package_bytes - before.package_bytes,
        after.payload_bytes - before.payload_bytes,
        after.fixed - before.fixed,
        after.cdc - before.cdc,
    )
    return downloaded - t0, final.at - t0, got, final.outcome


# --- the run -----------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from model_packager import cdc
    from model_packager.signing import generate_keypair

    log(f"work folder {work}")
    keys = work / "keys"
    generate_keypair(keys / "release.key", keys / "release.pub")
    t = time.monotonic()
    models = train(work, args.epochs, args.extra_epochs)
    log(
        f"trained version 1 ({args.epochs} epochs) and both retrains "
        f"in {time.monotonic() - t:.0f} s"
    )
    pkgs = package(work, models, keys / "release.key")

    held = set(cdc.chunk_file(pkgs["v1"]).digests)
    static: dict[str, dict[str, float]] = {}
    for case in CASES:
        index = cdc.chunk_file(pkgs[case])
        count, size = cdc.missing_bytes(index, held)
        static[case] = {
            "package_bytes": index.package_size,
            "chunks": index.count,
            "fetch_chunks": count,
            "fetch_bytes": size,
            "share": size / index.package_size,
        }

    stack = Stack.on_free_ports(
        work,
        keys / "release.pub",
        local_identities={
            **observer_rules(),
            CHUNKS_USER: [f"read {fleet_topics.all_devices_filter(fleet_topics.CHUNKS_DATA)}"],
        },
    )
    installs: list[Install] = []
    with ExitStack() as cleanup:
        cleanup.callback(stack.close)
        start_broker(stack)
        start_control_plane(stack)
        digests = {v: str(upload(stack, p)["digest"]) for v, p in pkgs.items()}
        watcher = ReportedWatcher(stack)
        cleanup.callback(watcher.close)
        counter = ChunkCounter(stack)
        cleanup.callback(counter.close)
        link: dict[str, Any] = {}
        if args.link_mbit > 0:
            proxy = LinkProxy(stack.broker_port, args.link_mbit, args.link_rtt_ms)
            cleanup.callback(proxy.close)
            link = {"url": f"mqtt://127.0.0.1:{proxy.port}"}
            log(
                f"agents reach the broker over {args.link_mbit:g} Mbit/s, "
                f"{args.link_rtt_ms:g} ms RTT"
            )
        for r in range(args.rounds):
            ids = {"delta": f"delta-{r}", "full": f"full-{r}"}
            bundles = {mode: register(stack, d, {"bench": f"delta-{r}"}) for mode, d in ids.items()}
            for b in bundles.values():
                wait_credentials(stack, b)
            agents = start_agents(stack, [bundles["delta"]], link)
            agents += start_agents(stack, [bundles["full"]], {**link, "delta_updates": False})
            try:
                for device in ids.values():
                    _, _, _, outcome = deploy_one(
                        stack, watcher, counter, digests["v1"], device, args.timeout
                    )
                    if outcome != "INSTALLED":
                        raise RuntimeError(f"version 1 on {device}: {outcome}")
                time.sleep(1)  # start-up and the first install settle
                order = ("delta", "full") if r % 2 == 0 else ("full", "delta")
                for case in CASES:
                    for mode in order:
                        down, inst, got, outcome = deploy_one(
                            stack, watcher, counter, digests[case], ids[mode], args.timeout
                        )
                        installs.append(Install(case, mode, r, down, inst, got, outcome))
                        log(
                            f"round {r + 1} {case:6} {mode:5}: {outcome} download {down:.2f} s, "
                            f"installed {inst:.2f} s, {got.package_bytes} package bytes "
                            f"({got.fixed} fixed, {got.cdc} by digest), load "
                            f"{installs[-1].load_1m:.1f}"
                        )
            finally:
                stop_agents(agents, stack.ledger)

    return report(static, installs)


def report(static: dict[str, dict[str, float]], installs: list[Install]) -> dict[str, Any]:
    print("\nBytes to fetch holding version 1 (FastCDC chunk index, 8 KiB average chunks):")
    for case in CASES:
        s = static[case]
        verdict = ("PASS" if s["share"] <= 0.25 else "FAIL") if case == "head" else ""
        print(
            f"  {CASE_TEXT[case]:22} {int(s['fetch_bytes']):>9} of {int(s['package_bytes'])} "
            f"bytes = {s['share']:6.1%}  ({int(s['fetch_chunks'])} of {int(s['chunks'])} chunks)"
            f"  {verdict}{'  (target <= 25%)' if case == 'head' else ''}"
        )
    print("\nThrough the fleet (medians over rounds; ratios delta / full in the same run):")
    print(f"  {'case':22} {'mode':5} {'received':>10} {'download':>9} {'installed':>10}  load")
    figures: dict[str, Any] = {"static": static, "installs": [], "ratios": {}}
    for case in CASES:
        med: dict[str, dict[str, float]] = {}
        for mode in ("delta", "full"):
            rows = [i for i in installs if i.case == case and i.mode == mode]
            if not rows:
                continue
            med[mode] = {
                "received": statistics.median(i.received.package_bytes for i in rows),
                "download_s": statistics.median(i.download_s for i in rows),
                "install_s": statistics.median(i.install_s for i in rows),
                "load": statistics.median(i.load_1m for i in rows),
            }
            m = med[mode]
            bad = [i.outcome for i in rows if i.outcome != "INSTALLED"]
            print(
                f"  {CASE_TEXT[case]:22} {mode:5} {int(m['received']):>10} {m['download_s']:>8.2f}s"
                f" {m['install_s']:>9.2f}s  {m['load']:.1f}{'  FAILED: ' + str(bad) if bad else ''}"
            )
        if "delta" in med and "full" in med:
            d, f = med["delta"], med["full"]
            ratios = {
                "bytes": d["received"] / f["received"] if f["received"] else float("nan"),
                "download": d["download_s"] / f["download_s"],
                "installed": d["install_s"] / f["install_s"],
            }
            figures["ratios"][case] = ratios
            print(
                f"  {'':22} ratio delta/full: bytes {ratios['bytes']:.3f}, download "
                f"{ratios['download']:.2f}x, call->installed {ratios['installed']:.2f}x"
            )
    figures["installs"] = [
        {
            "case": i.case,
            "mode": i.mode,
            "round": i.round,
            "download_s": i.download_s,
            "install_s": i.install_s,
            "package_bytes": i.received.package_bytes,
            "payload_bytes": i.received.payload_bytes,
            "fixed_chunks": i.received.fixed,
            "cdc_chunks": i.received.cdc,
            "outcome": i.outcome,
            "load_1m": i.load_1m,
        }
        for i in installs
    ]
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench-delta", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument("--rounds", type=int, default=3, help="agent pairs, one after the other")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of version 1")
    parser.add_argument("--extra-epochs", type=int, default=2, help="epochs of each retrain")
    parser.add_argument("--timeout", type=float, default=120, help="per deployment, seconds")
    parser.add_argument(
        "--link-mbit", type=float, default=8.0, help="agents' link, Mbit/s each way (0: direct)"
    )
    parser.add_argument("--link-rtt-ms", type=float, default=40.0, help="agents' link round trip")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args(argv)
    print(
        f"bench-delta: the digits CNN, version 1 then a head-only retrain and 2 more epochs; "
        f"{args.rounds} rounds of one agent with delta updates and one without, "
        + (
            f"over {args.link_mbit:g} Mbit/s and {args.link_rtt_ms:g} ms RTT; "
            if args.link_mbit > 0
            else "directly over loopback; "
        )
        + f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    interrupt_on_sigterm()
    return run_in_work_folder("bench-delta", run, args)


if __name__ == "__main__":
    sys.exit(main())
