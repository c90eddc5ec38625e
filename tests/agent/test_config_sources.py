"""The settings loader: YAML file < ``EDGE_AGENT_*`` environment < explicit overrides.

``edge_agent/config_sources.py`` replaced pydantic-settings in the agent; these pin the
behaviour the README documents and pydantic-settings had: sections merge key by key, ``__``
nests, names match without regard to case, structured values are JSON, strangers are ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_agent.config import ConfigFileError, load_settings
from model_packager.records import SchemaError


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The process environment without any EDGE_AGENT_* the caller may have exported."""
    for name in [n for n in os.environ if n.upper().startswith("EDGE_AGENT_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_environment_merges_over_file_and_overrides_win(
    tmp_path: Path, env: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "device_id: from-file\ngrpc_port: 9100\n"
        "fleet: {url: 'mqtt://broker:1883', username: cam-1}\n"
        "models: {digits: {max_queue_size: 7}}\n"
    )
    env.setenv("EDGE_AGENT_GRPC_PORT", "9200")
    env.setenv("EDGE_AGENT_FLEET__PASSWORD", "from-env")  # completes the file's section
    env.setenv("EDGE_AGENT_MODELS__digits__MAX_BATCH_SIZE", "16")
    env.setenv("edge_agent_metrics_port", "-1")  # names match without regard to case
    env.setenv("EDGE_AGENT_NOT_A_SETTING", "x")  # ignored, the environment is shared
    env.setenv("EDGE_AGENT_TRUSTED_KEYS", '["/etc/keys"]')  # structured: JSON
    env.setenv("EDGE_AGENT_DEFAULT_MODEL", '{"max_batch_size": 4}')
    s = load_settings(path, device_id="explicit")

    assert (s.device_id, s.grpc_port, s.metrics_port) == ("explicit", 9200, -1)
    assert s.fleet is not None and s.fleet.username == "cam-1"
    assert s.fleet.password is not None and s.fleet.password.get_secret_value() == "from-env"
    assert (s.models["digits"].max_batch_size, s.models["digits"].max_queue_size) == (16, 7)
    assert s.trusted_keys == [Path("/etc/keys")]
    assert s.default_model.max_batch_size == 4


def test_bad_environment_values_are_refused_by_name(env: pytest.MonkeyPatch) -> None:
    env.setenv("EDGE_AGENT_TRUSTED_KEYS", "/etc/keys")  # not JSON
    with pytest.raises(ConfigFileError, match="EDGE_AGENT_TRUSTED_KEYS must hold JSON"):
        load_settings()
    env.delenv("EDGE_AGENT_TRUSTED_KEYS")
    env.setenv("EDGE_AGENT_CAPTURE__MAX_RECORDS", "many")
    with pytest.raises(SchemaError, match=r"capture\.max_records"):
        load_settings()


def test_no_file_no_environment_gives_the_defaults(env: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.device_id, s.grpc_port, s.fleet, s.models) == ("local", 8001, None, {})
