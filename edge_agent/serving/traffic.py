"""Traffic split between a model's loaded versions, and the optional shadow candidate.

A ``TrafficSplit`` says, per model, what share of the requests that name no version each loaded
version answers (e.g. ``{"1": 90, "2": 10}``), and which version, if any, also receives a
fraction of them in the shadow, its answers only compared with the live one. No split (empty
weights) keeps the plain behaviour: the active version answers.

Routing is a smooth weighted round-robin (nginx's), not a weighted random draw: the shares are
exact over every window of ``sum(weights)`` requests instead of only on average, so a 1% canary
gets its first request within the first hundred rather than "probably", a 90/10 split measured over
a short window reads 90/10, and no random number is drawn per request. The picks are interleaved
(``1 1 1 1 2 1 1 1 1 1 ...``, never ten 2s in a row), which keeps load on the candidate smooth. The
shadow fraction uses the same idea: a credit accumulator, so 0.1 mirrors exactly every tenth
request.

A ``Route`` (the split plus its round-robin state) is replaced whole when the split changes: one
dict assignment on the event loop, as the repository swaps the active version, so a request sees
the old table or the new one and never a half-written one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_agent.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class TrafficSplit:
    """One model's split: version -> weight (relative, any scale), and the shadow."""

    weights: Mapping[str, float] = field(default_factory=dict)
    shadow_version: str = ""
    shadow_fraction: float = 0.0

    @property
    def is_default(self) -> bool:
        return not self.weights and not self.shadow_version

    def versions(self) -> set[str]:
        """Every version the split refers to (weighted, even at 0, or shadow)."""
        return {*self.weights, *([self.shadow_version] if self.shadow_version else [])}

    def check(self, model: str, loaded: Iterable[str]) -> None:
        """Refuse a split the agent could not serve, with the reason (``InvalidInput``)."""
        have = set(loaded)
        names = ", ".join(sorted(have)) or "none"
        for version, weight in self.weights.items():
            if version not in have:
                raise InvalidInput(
                    f"model {model!r} has no loaded version {version!r} (loaded: {names})"
                )
            if not math.isfinite(weight) or weight < 0:
                raise InvalidInput(f"weight of {model}:{version} must be >= 0, got {weight}")
        if self.weights and sum(self.weights.values()) <= 0:
            raise InvalidInput(f"the weights of model {model!r} must sum to more than 0")
        if self.shadow_version:
            if self.shadow_version not in have:
                raise InvalidInput(
                    f"shadow version {self.shadow_version!r} of model {model!r} is not loaded "
                    f"(loaded: {names})"
                )
            if not 0.0 < self.shadow_fraction <= 1.0:
                raise InvalidInput(
                    f"shadow_fraction must be in (0, 1] with a shadow version, "
                    f"got {self.shadow_fraction}"
                )
        elif self.shadow_fraction:
            raise InvalidInput("shadow_fraction given without a shadow_version")

    def without(self, version: str) -> TrafficSplit:
        """The split once ``version`` is unloaded; default when no weight is left."""
        weights = {v: w for v, w in self.weights.items() if v != version}
        if weights and sum(weights.values()) <= 0:
            weights = {}
        shadow = "" if self.shadow_version == version else self.shadow_version
        return TrafficSplit(weights, shadow, self.shadow_fraction if shadow else 0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "weights": dict(self.weights),
            "shadow_version": self.shadow_version,
            "shadow_fraction": self.shadow_fraction,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TrafficSplit:
        return cls(
            {str(v): float(w) for v, w in dict(doc.get("weights") or {}).items()},
            str(doc.get("shadow_version") or ""),
            float(doc.get("shadow_fraction") or 0.0),
        )


class Route:
    """A split and its round-robin state. Used on the event loop only, so no lock."""

    __slots__ = ("_current", "_shadow_credit", "_total", "_versions", "_weights", "split")

    def __init__(self, split: TrafficSplit) -> None:
        self.split = split
        # Versions at weight 0 are kept out of the rotation (they only stay loaded).
        live = [(v, float(w)) for v, w in sorted(split.weights.items()) if w > 0]
        self._versions = [v for v, _ in live]
        self._weights = [w for _, w in live]
        self._current = [0.0] * len(live)
        self._total = sum(self._weights)
        self._shadow_credit = 0.0

    def pick(self) -> str:
        """The version that answers the next request without a version ("" when no weights)."""
        if not self._versions:
            return ""
        cur, best = self._current, 0
        for i, w in enumerate(self._weights):
            cur[i] += w
            if cur[i] > cur[best]:
                best = i
        cur[best] -= self._total
        return self._versions[best]

    def take_shadow(self) -> bool:
        """Whether this request is also mirrored to the shadow version (exactly the fraction)."""
        if not self.split.shadow_version:
            return False
        self._shadow_credit += self.split.shadow_fraction
        if self._shadow_credit >= 1.0 - 1e-9:
            self._shadow_credit -= 1.0
            return True
        return False


@dataclass(frozen=True, slots=True)
class Comparison:
    """A shadow answer against the live one: top-1 agreement over rows, largest difference."""

    rows: int
    agreed: int
    max_abs_diff: float


def compare(live: Mapping[str, Any], shadow: Mapping[str, Any]) -> Comparison:
    """Compare every numeric output both answers have; ``ValueError`` when shapes differ.

    An output with a last dimension over 1 is read as class scores: its rows agree when their
    arg-max agrees. Every output contributes its largest absolute element difference. Runs in
    the inference thread pool (it is numpy work on whole outputs), never on the event loop.
    """
    import numpy as np

    rows = agreed = 0
    max_diff = 0.0
    common = [n for n in live if n in shadow]
    if not common:
        raise ValueError("no output in common")
    for name in common:
        a, b = np.asarray(live[name]), np.asarray(shadow[name])
        if a.dtype.kind not in "fiub" or b.dtype.kind not in "fiub":
            continue
        if a.shape != b.shape:
            raise ValueError(f"output {name!r}: shape {b.shape} against live {a.shape}")
        if a.size:
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            max_diff = max(max_diff, float(diff.max()))
        if a.ndim >= 1 and a.shape[-1] > 1 and a.dtype.kind == "f":
            top_a = a.reshape(-1, a.shape[-1]).argmax(axis=1)
            top_b = b.reshape(-1, b.shape[-1]).argmax(axis=1)
            rows += int(top_a.size)
            agreed += int((top_a == top_b).sum())
    return Comparison(rows, agreed, max_diff)
