"""Jittered exponential backoff ("full jitter"), for reconnects and retries.

Full jitter spreads a fleet that lost its broker at the same moment over the whole delay window,
so a restarted broker is not hit by every device in the same second.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, minimum: float, maximum: float, rng: random.Random | None = None) -> None:
        self.minimum = minimum
        self.maximum = max(maximum, minimum)
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        """The delay before the next attempt: uniform in [min, min(max, min * 2^attempt)]."""
        ceiling = min(self.maximum, self.minimum * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self._rng.uniform(self.minimum, ceiling)

    def reset(self) -> None:
        self.attempt = 0
