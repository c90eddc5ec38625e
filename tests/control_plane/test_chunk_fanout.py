"""``ChunkFanout``: which requested chunks go on a package's shared topic, which on the
requester's own topic, and which are already on their way (fleet/package_topics.py)."""

from __future__ import annotations

from control_plane.fleet.package_topics import ChunkFanout, PackageGrants

P = "ab" * 32


def test_a_lone_device_gets_its_chunks_on_its_own_topic() -> None:
    fan = ChunkFanout()
    plan = fan.plan("a", P, 10, [0, 1, 2], arrived=0.0, now=0.0)
    assert (plan.shared, plan.direct, plan.coalesced) == ([], [0, 1, 2], 0)


def test_devices_pulling_together_get_each_chunk_once_on_the_shared_topic() -> None:
    fan = ChunkFanout()
    fan.plan("a", P, 10, [0, 1], arrived=0.0, now=0.0)  # alone so far: direct
    b = fan.plan("b", P, 10, [0, 1], arrived=0.0, now=0.1)
    assert b.shared == [0, 1] and b.direct == []
    # c's request arrived before that publish (it was already subscribed): nothing to send.
    c = fan.plan("c", P, 10, [0, 1, 2], arrived=0.05, now=0.2)
    assert (c.shared, c.direct, c.coalesced) == ([2], [], 2)
    # a asks for 2 (its first ask of it) right after c's publish: coalesced as well.
    a = fan.plan("a", P, 10, [2], arrived=0.2, now=0.3)
    assert (a.shared, a.direct, a.coalesced) == ([], [], 1)
    assert fan.counts == {"shared": 3, "direct": 2, "coalesced": 3}


def test_a_repeated_ask_is_a_lost_chunk_and_is_sent_to_the_device() -> None:
    fan = ChunkFanout()
    fan.plan("a", P, 10, [0], arrived=0.0, now=0.0)
    fan.plan("b", P, 10, [0], arrived=0.0, now=0.1)  # shared
    again = fan.plan("b", P, 10, [0], arrived=0.5, now=0.5)  # within the window, but a repeat
    assert again.direct == [0] and again.coalesced == 0


def test_a_device_that_joined_after_a_publish_is_not_assumed_to_have_it() -> None:
    fan = ChunkFanout(window_s=2.0)
    fan.plan("a", P, 10, [0], arrived=0.0, now=0.0)
    fan.plan("b", P, 10, [0], arrived=0.0, now=0.1)  # shared at 0.1
    late = fan.plan("c", P, 10, [0], arrived=0.5, now=0.6)  # subscribed after that publish
    assert late.coalesced == 0 and late.shared == [0]  # a and b are still active: shared
    alone = ChunkFanout(window_s=2.0, active_s=3.0)
    alone.plan("a", P, 10, [0], arrived=0.0, now=0.0)
    alone.plan("b", P, 10, [0], arrived=0.0, now=0.1)
    lone = alone.plan("z", P, 10, [0, 1], arrived=60.0, now=60.0)  # long after: alone
    assert lone.direct == [0, 1] and lone.shared == []


def test_after_the_window_a_chunk_is_published_again() -> None:
    fan = ChunkFanout(window_s=2.0, active_s=10.0)
    fan.plan("a", P, 10, [0], arrived=0.0, now=0.0)
    fan.plan("b", P, 10, [0], arrived=0.0, now=0.1)
    c = fan.plan("c", P, 10, [0], arrived=5.0, now=5.0)  # asked long after: publish again
    assert c.shared == [0]


def test_a_request_that_waited_in_the_queue_is_still_answered_by_the_publish() -> None:
    fan = ChunkFanout(window_s=2.0, active_s=10.0)
    fan.plan("a", P, 10, [0], arrived=0.0, now=0.0)
    fan.plan("b", P, 10, [0], arrived=0.0, now=0.1)  # shared at 0.1
    # c asked at 0.05, before that publish, but is served only at 4.0 (a busy control plane):
    # the publish reached it, so publishing again would only send everyone a duplicate.
    c = fan.plan("c", P, 10, [0], arrived=0.05, now=4.0)
    assert (c.shared, c.direct, c.coalesced) == ([], [], 1)


def test_grants_report_changes_and_answer_per_device() -> None:
    grants = PackageGrants()
    assert grants.replace({"a": {P}, "b": set()})
    assert not grants.replace({"a": [P]})  # same grants: no rewrite needed
    assert grants.may_read("a", P) and not grants.may_read("b", P)
    assert grants.replace({})
    assert not grants.may_read("a", P)
