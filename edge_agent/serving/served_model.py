"""A loaded model version as the data plane sees it: validated inputs in, outputs out.

It decides *where* an inference runs: on the event loop for models faster than a thread hop, in
the inference thread pool otherwise, and through the dynamic batcher when the model allows it.
Every result gets the manifest's post-processing (``processing.py``), online or batch.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from edge_agent.config import ModelSettings
from edge_agent.errors import InferenceFailed
from edge_agent.metrics import METRICS
from edge_agent.serving.batching import DynamicBatcher, Executed, Tensors
from edge_agent.serving.processing import ModelProcessing
from edge_agent.serving.python_handlers import ModelArtsHooks
from edge_agent.serving.stats import ModelStats, RequestTiming
from model_packager.errors import PackageError
from model_packager.manifest import Manifest
from model_packager.runtimes import LoadedModel
from model_packager.tensors import TensorSpec


@dataclass
class ServedModel:
    name: str
    version: str
    digest: str
    manifest: Manifest
    variant: str
    runtime: str
    model: LoadedModel
    inline: bool
    executor: Executor
    settings: ModelSettings
    # The package's ModelArts hooks, when it carries them and the loader admitted them.
    hooks: ModelArtsHooks | None = None
    batcher: DynamicBatcher | None = field(default=None, init=False)
    processing: ModelProcessing = field(init=False)
    stats: ModelStats = field(default_factory=ModelStats, init=False)

    def __post_init__(self) -> None:
        self.inputs: list[TensorSpec] = self.manifest.input_specs()
        model_outputs = self.manifest.output_specs()
        self.processing = ModelProcessing.declared(self.manifest, self.inputs, model_outputs)
        # What clients see: the model's outputs and what post-processing adds (top-k).
        self.outputs: list[TensorSpec] = [*model_outputs, *self.processing.extra_outputs()]
        self.input_by_name = {s.name: s for s in self.inputs}
        self.output_names = {s.name for s in self.outputs}
        self.has_batch_dim = all(s.has_batch_dim for s in self.inputs)
        batchable = self.has_batch_dim and all(s.has_batch_dim for s in self.outputs)
        # Greedy batching (no queue delay) merges what queued while the runtime was busy. A model
        # that runs inline keeps the event loop busy while it runs, so nothing queues meanwhile:
        # the batcher would only add its hops (MLP, scripts/bench-serving: 1.05 rows per batch at
        # 8 concurrent clients, ~10% more server CPU per request). Such models run unbatched.
        greedy_inline = self.inline and self.settings.max_queue_delay_ms == 0
        if batchable and self.settings.max_batch_size > 1 and not greedy_inline:
            hist = METRICS.batch_size.labels(self.name)
            self.batcher = DynamicBatcher(
                self._run,
                self.settings.max_batch_size,
                self.settings.max_queue_delay_ms / 1000.0,
                self.settings.max_queue_size,
                on_batch=hist.observe,
            )

    @property
    def platform(self) -> str:
        return "onnxruntime_onnx" if self.runtime == "onnx" else "tensorflow_lite"

    def infer_sync(self, inputs: Tensors, outputs: list[str] | None = None) -> Tensors:
        try:
            return self.model.infer(inputs, outputs)
        except PackageError as exc:
            raise InferenceFailed(str(exc)) from exc

    def rows(self, inputs: Tensors) -> int:
        """Inferences in a request or batch: its first dimension, when the model batches."""
        if self.has_batch_dim and inputs:
            return int(next(iter(inputs.values())).shape[0])
        return 1

    def _timed_infer(self, inputs: Tensors, outputs: list[str] | None) -> Executed:
        start = time.perf_counter_ns()
        out = self.infer_sync(inputs, outputs)
        return Executed(out, start, time.perf_counter_ns())

    async def _run(self, inputs: Tensors, outputs: list[str] | None) -> Executed:
        if self.inline:
            done = self._timed_infer(inputs, outputs)
        else:
            loop = asyncio.get_running_loop()
            done = await loop.run_in_executor(self.executor, self._timed_infer, inputs, outputs)
        self.stats.executed(self.rows(inputs), done.end_ns - done.start_ns)
        return done

    async def infer(self, inputs: Tensors, outputs: list[str] | None) -> Tensors:
        """Run the model, then the manifest's post-processing (which may add outputs)."""
        return (await self.infer_timed(inputs, outputs))[0]

    async def infer_timed(
        self, inputs: Tensors, outputs: list[str] | None
    ) -> tuple[Tensors, RequestTiming]:
        """``infer``, and how long the request queued, ran and was post-processed."""
        arrived = time.perf_counter_ns()
        proc = self.processing
        if proc.post is None:  # the common case, on every request: no detour
            done = await self._infer(inputs, outputs)
            return done.outputs, RequestTiming(done.start_ns - arrived, done.end_ns - done.start_ns)
        done = await self._infer(inputs, proc.model_outputs(outputs))
        t = time.perf_counter_ns()
        results = proc.finish(done.outputs, self.manifest.labels)
        timing = RequestTiming(
            done.start_ns - arrived, done.end_ns - done.start_ns, time.perf_counter_ns() - t
        )
        return results, timing

    async def _infer(self, inputs: Tensors, outputs: list[str] | None) -> Executed:
        if self.batcher is not None:
            rows = next(iter(inputs.values())).shape[0]
            if rows < self.settings.max_batch_size:
                return await self.batcher.submit(inputs, outputs)
        return await self._run(inputs, outputs)

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        self.model.close()


def measure_latency_ms(
    model: LoadedModel, inputs: dict[str, np.ndarray], repeats: int = 5
) -> float:
    """Median single-inference time, used to decide inline versus thread-pool execution."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.infer(inputs)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return times[len(times) // 2]
