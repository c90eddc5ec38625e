"""Settings in sections: flat names (keywords and environment) land in their section, unknown
names are refused, and every flat name points at a real section field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from control_plane.cli import main
from control_plane.core.settings import FLAT_NAMES, SECTIONS, Settings


def test_flat_keywords_fill_sections(tmp_path: Path) -> None:
    s = Settings(
        dev_mode=True,
        data_dir=tmp_path,
        mqtt_url="mqtt://broker:1884",
        dataset_max_file_bytes=1234,
        training_code_max_archive_bytes=99,
        trusted_keys=[tmp_path / "a.pub"],
    )
    assert s.mqtt.url == "mqtt://broker:1884"
    assert s.datasets.max_file_bytes == 1234
    assert s.training.code_max_archive_bytes == 99
    assert s.registry.trusted_keys == [tmp_path / "a.pub"]
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'control-plane.db'}"


def test_flat_environment_fills_sections(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONTROL_PLANE_DEV_MODE", "true")
    monkeypatch.setenv("CONTROL_PLANE_MQTT_URL", "mqtts://b:8883")
    monkeypatch.setenv("CONTROL_PLANE_DATASET_IMPORT_ROOTS", f'["{tmp_path}"]')
    monkeypatch.setenv("CONTROL_PLANE_CHUNK_QUEUE_SIZE", "17")
    s = Settings()
    assert (s.mqtt.url, s.datasets.import_roots, s.mqtt.chunk_queue_size) == (
        "mqtts://b:8883",
        [tmp_path],
        17,
    )
    # An explicit keyword wins over the environment.
    assert Settings(mqtt_url="mqtt://x:1").mqtt.url == "mqtt://x:1"


def test_unknown_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError):
        Settings(dev_mode=True, mqtt_urll="mqtt://x:1")
    with pytest.raises(ValidationError):
        Settings(dev_mode=True, mqtt={"url": "mqtt://x:1", "nonsense": 1})
    monkeypatch.setenv("CONTROL_PLANE_MQTT_URLL", "mqtt://x:1")
    with pytest.raises(ValueError, match="did you mean CONTROL_PLANE_MQTT_URL"):
        Settings(dev_mode=True)


def test_cli_reports_an_unknown_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONTROL_PLANE_DATASET_MAX_FILE_BYTE", "1")
    with pytest.raises(SystemExit) as exc:
        main(["migrate"])
    assert exc.value.code == 2
    assert "CONTROL_PLANE_DATASET_MAX_FILE_BYTES" in capsys.readouterr().err


def test_serve_refuses_a_missing_trusted_key_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The documented ``CONTROL_PLANE_TRUSTED_KEYS='["keys/release.pub"]'`` without that file:
    exit 2 naming it, before anything starts (no server, no data folder)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONTROL_PLANE_DEV_MODE", "true")
    monkeypatch.setenv("CONTROL_PLANE_TRUSTED_KEYS", '["keys/release.pub"]')
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "CONTROL_PLANE_TRUSTED_KEYS" in err and "keys/release.pub" in err
    assert "Traceback" not in err
    assert not (tmp_path / "var").exists()


def test_every_flat_name_names_a_section_field() -> None:
    for flat, (section, name) in FLAT_NAMES.items():
        assert name in SECTIONS[section].model_fields, flat
    covered = {(s, n) for s, n in FLAT_NAMES.values()}
    for section, cls in SECTIONS.items():
        for name in cls.model_fields:
            assert (section, name) in covered, f"{section}.{name} has no environment name"


def test_relative_data_dir_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers (training, conversion, notebooks) run in their own folders: every path derived
    from the default, relative data_dir must still point at the server's."""
    monkeypatch.chdir(tmp_path)
    settings = Settings(dev_mode=True)
    assert settings.data_dir == tmp_path / "var/control-plane"
    assert settings.resolved_training_dir == tmp_path / "var/control-plane/training"
    assert settings.resolved_dataset_dir.is_absolute()
    explicit = Settings(dev_mode=True, training_dir="jobs-here", notebooks_dir="nb")
    assert explicit.resolved_training_dir == tmp_path / "jobs-here"  # a relative folder too
    assert explicit.resolved_notebooks_dir == tmp_path / "nb"
