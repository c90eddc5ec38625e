"""Where the SDK and the CLI find the control plane: arguments, environment, config file.

In order, the first that gives a value wins:

1. ``Client(url=..., token=...)`` (the CLI's ``--url`` / ``--token``);
2. ``EDGE_INFERENCE_URL`` / ``EDGE_INFERENCE_TOKEN`` (set inside managed notebooks);
3. the config file: ``$EDGE_INFERENCE_CONFIG``, else ``~/.config/edge-inference/config.toml``,
   a TOML table per profile (``[default]``, or ``EDGE_INFERENCE_PROFILE`` / ``--profile``) with
   ``url`` and ``token`` (``eictl login`` writes it, mode 0600);
4. ``http://127.0.0.1:8080`` for the URL; no token.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8080"


def config_path() -> Path:
    given = os.environ.get("EDGE_INFERENCE_CONFIG")
    if given:
        return Path(given)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edge-inference" / "config.toml"


@dataclass(frozen=True)
class Profile:
    url: str
    token: str | None


def load_profile(
    url: str | None = None, token: str | None = None, profile: str | None = None
) -> Profile:
    name = profile or os.environ.get("EDGE_INFERENCE_PROFILE") or "default"
    file_values: dict[str, str] = {}
    path = config_path()
    if path.is_file():
        with open(path, "rb") as f:
            section = tomllib.load(f).get(name, {})
        if isinstance(section, dict):
            file_values = {k: str(v) for k, v in section.items()}
    return Profile(
        url=(url or os.environ.get("EDGE_INFERENCE_URL") or file_values.get("url") or DEFAULT_URL),
        token=token or os.environ.get("EDGE_INFERENCE_TOKEN") or file_values.get("token"),
    )


def save_profile(url: str, token: str, profile: str = "default") -> Path:
    """Write (or replace) one profile in the config file, readable by its owner only."""
    path = config_path()
    existing: dict[str, dict[str, str]] = {}
    if path.is_file():
        with open(path, "rb") as f:
            existing = {k: dict(v) for k, v in tomllib.load(f).items() if isinstance(v, dict)}
    existing[profile] = {"url": url, "token": token}
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, values in existing.items():
        lines.append(f"[{_key(name)}]")
        lines.extend(f"{_key(k)} = {_string(v)}" for k, v in values.items())
        lines.append("")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines))
    os.chmod(path, 0o600)
    return path


def _key(name: str) -> str:
    return name if name.replace("-", "").replace("_", "").isalnum() else _string(name)


def _string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
