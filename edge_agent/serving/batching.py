"""Dynamic batching: concatenate concurrent requests along the batch dimension, run once, split.

Greedy by default: while the runtime works on one batch, new requests queue; when it is free, all
that queued (up to ``max_batch_size`` rows) run together. A lone request therefore never waits,
and under load batches grow by themselves. ``max_queue_delay`` > 0 additionally holds a batch
open for that long to gather more rows. Requests only batch with others of the same trailing
shapes and requested outputs. The queue is bounded: when full, ``submit`` raises ``Overloaded``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from edge_agent.errors import ModelNotReady, Overloaded

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]


@dataclass(slots=True)
class Executed:
    """A model run's outputs and when the runtime started and finished it (``perf_counter_ns``),
    so that every request of a batch learns its own queueing time."""

    outputs: Tensors
    start_ns: int
    end_ns: int


RunFn = Callable[[Tensors, list[str] | None], Awaitable[Executed]]


@dataclass
class _Item:
    inputs: Tensors
    outputs: list[str] | None
    rows: int
    key: tuple
    future: asyncio.Future[Executed] = field(repr=False)


class DynamicBatcher:
    def __init__(
        self,
        run: RunFn,
        max_batch_size: int,
        max_queue_delay_s: float = 0.0,
        max_queue_size: int = 1024,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_queue_size)
        self._carry: _Item | None = None
        self._task: asyncio.Task[None] | None = None
        self._on_batch = on_batch
        self._running: list[_Item] = []

    @property
    def queued(self) -> int:
        return self._queue.qsize() + (1 if self._carry else 0)

    async def submit(self, inputs: Tensors, outputs: list[str] | None) -> Executed:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())
        rows = next(iter(inputs.values())).shape[0]
        key = (
            tuple(sorted((k, v.shape[1:], v.dtype.str) for k, v in inputs.items())),
            tuple(outputs) if outputs else None,
        )
        fut: asyncio.Future[Executed] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Item(inputs, outputs, rows, key, fut))
        except asyncio.QueueFull:
            raise Overloaded(f"batch queue is full ({self._queue.maxsize} requests)") from None
        return await fut

    async def close(self) -> None:
        """Stop batching; every caller still waiting gets an error instead of waiting forever."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        waiting = [*self._running]
        if self._carry is not None:
            waiting.append(self._carry)
            self._carry = None
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for item in waiting:
            if not item.future.done():
                item.future.set_exception(ModelNotReady("model version is being unloaded"))

    async def _next(self) -> _Item:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        return await self._queue.get()

    async def _collect(self) -> list[_Item]:
        first = await self._next()
        batch, rows = [first], first.rows
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_queue_delay_s
        while rows < self.max_batch_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if item.key != first.key or rows + item.rows > self.max_batch_size:
                self._carry = item  # starts the next batch
                break
            batch.append(item)
            rows += item.rows
        return batch

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            batch = [i for i in batch if not i.future.done()]  # caller gave up
            if not batch:
                continue
            await self._execute(batch)

    async def _execute(self, batch: list[_Item]) -> None:
        self._running = batch
        try:
            await self._execute_batch(batch)
        finally:
            self._running = []

    async def _execute_batch(self, batch: list[_Item]) -> None:
        if self._on_batch is not None:
            self._on_batch(sum(i.rows for i in batch))
        if len(batch) == 1:
            inputs = batch[0].inputs
        else:
            inputs = {k: np.concatenate([i.inputs[k] for i in batch]) for k in batch[0].inputs}
        try:
            out = await self._run(inputs, batch[0].outputs)
        except Exception as exc:
            for i in batch:
                if not i.future.done():
                    i.future.set_exception(exc)
            return
        start = 0
        for i in batch:
            end = start + i.rows
            if not i.future.done():
                rows = {k: v[start:end] for k, v in out.outputs.items()}
                i.future.set_result(Executed(rows, out.start_ns, out.end_ns))
            start = end
