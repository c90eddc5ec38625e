"""A bounded queue of work per device, served round-robin, so a flooding device slows only itself.

The fleet channel answers chunk requests on one worker thread. With one shared FIFO, a device that
sends hundreds of requests fills it and every other device's requests are dropped behind it. Here
each device has its own FIFO with a cap (``per_key``); ``get`` takes one item from each device in
turn. When a device's FIFO is full its newest request is dropped; when the whole queue is full
(``total``), the oldest request of the device with the longest FIFO is dropped to make room. Either
way the drop is counted against that device (``dropped``), and a device simply asks again after
its timeout, as it does for any lost request.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class FairQueue(Generic[K, T]):
    def __init__(self, per_key: int, total: int) -> None:
        if per_key < 1 or total < 1:
            raise ValueError("queue bounds must be at least 1")
        self.per_key = per_key
        self.total = total
        # Keys with waiting items, in the order they are served next.
        self._queues: OrderedDict[K, deque[T]] = OrderedDict()
        self._size = 0
        self._closed = False
        self._cond = threading.Condition()
        self.dropped: dict[K, int] = {}

    def __len__(self) -> int:
        with self._cond:
            return self._size

    def put(self, key: K, item: T) -> bool:
        """Queue ``item`` for ``key``; False when it was dropped (that key's FIFO is full)."""
        with self._cond:
            q = self._queues.get(key)
            if q is not None and len(q) >= self.per_key:
                self._count_drop(key)
                return False
            if self._size >= self.total:
                self._evict_from_longest()
            if q is None:
                q = self._queues[key] = deque()
            q.append(item)
            self._size += 1
            self._cond.notify()
            return True

    def get(self, timeout: float | None = None) -> tuple[K, T] | None:
        """The next item round-robin across keys; None when closed (or on timeout)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._size > 0 or self._closed, timeout):
                return None
            if self._closed:
                return None
            key, q = next(iter(self._queues.items()))
            item = q.popleft()
            self._size -= 1
            # Served: this key goes to the back of the line (or leaves it when empty).
            del self._queues[key]
            if q:
                self._queues[key] = q
            return key, item

    def close(self) -> None:
        """Wake every waiting ``get`` with None; later ``get`` calls return None at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _evict_from_longest(self) -> None:
        key, q = max(self._queues.items(), key=lambda kv: len(kv[1]))
        q.popleft()
        self._size -= 1
        if not q:
            del self._queues[key]
        self._count_drop(key)

    def _count_drop(self, key: K) -> None:
        self.dropped[key] = self.dropped.get(key, 0) + 1
