"""Small helpers shared by the fleet tests and scripts/fleet-crash-drill."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from protos import fleet_topics
from protos.gen import fleet_pb2
from tests.agent.install_checks import which_model
from tests.control_plane.mqtt_probe import MqttProbe

_DOWNLOAD_LINE = re.compile(
    r"download of (?P<digest>\w+) complete: (?P<total>\d+) chunks, (?P<before>\d+) on disk before, "
    r"(?P<fetched>\d+) fetched now, (?P<duplicates>\d+) duplicate answers, "
    r"(?P<rejected>\d+) rejected, (?P<timeouts>\d+) timeouts"
)


def serving(agent_address: str, models: dict[str, Path]) -> str:
    return which_model(agent_address, models)


def wait_serving(
    agent_address: str, models: dict[str, Path], want: str, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    got = ""
    while time.monotonic() < deadline:
        got = serving(agent_address, models)
        if got == want:
            return
        time.sleep(0.2)
    raise AssertionError(f"agent serves {got}, wanted {want}")


def reported_state(
    observer: MqttProbe, device_id: str, timeout: float = 5
) -> fleet_pb2.ReportedState:
    """The device's retained ReportedState, read by subscribing afresh."""
    topic = fleet_topics.device_topic(device_id, fleet_topics.REPORTED)
    observer.subscribe(topic)
    msg = observer.expect_on(topic, timeout)
    observer.client.unsubscribe(topic)
    state = fleet_pb2.ReportedState()
    state.ParseFromString(msg.payload)
    return state


def wait_reported(
    observer: MqttProbe, device_id: str, predicate: Any, timeout: float = 30
) -> fleet_pb2.ReportedState:
    """Follow the device's reported topic until ``predicate(state)`` holds."""
    topic = fleet_topics.device_topic(device_id, fleet_topics.REPORTED)
    observer.subscribe(topic)
    deadline = time.monotonic() + timeout
    last = None
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = observer.expect_on(topic, left)
        except AssertionError:
            break
        last = fleet_pb2.ReportedState()
        last.ParseFromString(msg.payload)
        if predicate(last):
            return last
    raise AssertionError(f"reported state never matched; last: {last}")


def download_stats(log_text: str) -> list[dict[str, int]]:
    """The agent's 'download ... complete' log lines, parsed."""
    return [
        {k: int(v) for k, v in m.groupdict().items() if k != "digest"}
        for m in _DOWNLOAD_LINE.finditer(log_text)
    ]
