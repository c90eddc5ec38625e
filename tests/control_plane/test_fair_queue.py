"""The per-device chunk request queue: round-robin service, per-device caps, fair eviction."""

from __future__ import annotations

import threading

import pytest

from control_plane.fleet.fair_queue import FairQueue


def _drain(q: FairQueue[str, int]) -> list[tuple[str, int]]:
    out = []
    while len(q):
        got = q.get(timeout=0)
        assert got is not None
        out.append(got)
    return out


def test_devices_are_served_in_turn() -> None:
    q: FairQueue[str, int] = FairQueue(per_key=10, total=100)
    for i in range(5):
        q.put("flood", i)
    q.put("a", 0)
    q.put("b", 0)
    q.put("a", 1)
    assert _drain(q) == [
        ("flood", 0),
        ("a", 0),
        ("b", 0),
        ("flood", 1),
        ("a", 1),
        ("flood", 2),
        ("flood", 3),
        ("flood", 4),
    ]


def test_a_device_over_its_cap_loses_only_its_own_requests() -> None:
    q: FairQueue[str, int] = FairQueue(per_key=3, total=100)
    accepted = [q.put("flood", i) for i in range(400)]
    assert accepted.count(True) == 3
    assert q.put("quiet", 0)
    assert q.dropped == {"flood": 397}
    assert _drain(q) == [("flood", 0), ("quiet", 0), ("flood", 1), ("flood", 2)]


def test_a_full_queue_evicts_from_the_longest_device() -> None:
    q: FairQueue[str, int] = FairQueue(per_key=8, total=8)
    for i in range(7):
        q.put("flood", i)
    q.put("a", 0)
    assert q.put("b", 0)  # full: the oldest of "flood" (the longest) makes room
    assert q.dropped == {"flood": 1}
    items = _drain(q)
    assert ("flood", 0) not in items and ("a", 0) in items and ("b", 0) in items


def test_close_wakes_a_waiting_get() -> None:
    q: FairQueue[str, int] = FairQueue(per_key=1, total=1)
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(q.get()))
    t.start()
    q.close()
    t.join(timeout=5)
    assert result == [None]
    assert q.get(timeout=0) is None


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FairQueue(per_key=0, total=1)
