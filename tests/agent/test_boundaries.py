"""Module boundaries: the agent stays light, and the packages import in one direction only.

    protos  <-  model_packager  <-  edge_agent
    protos, model_packager      <-  control_plane      (edge_agent and control_plane never meet)

Checked three ways: what importing the agent actually loads (in a fresh interpreter of this venv,
where TensorFlow and FastAPI *are* installed, so a stray import would succeed and show), what every
source file imports (static, so lazy imports inside functions count too), and, marked slow, a
fresh virtual environment with only ``pip install -e .[agent]`` in which the agent works.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: Never loaded by the agent (design card, "Fixed" 3 and 7; onnx et al. are not in [agent]).
HEAVY = ("tensorflow", "keras", "fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic")
NOT_IN_AGENT_EXTRA = ("onnx", "tf2onnx", "amqtt", "pyfastcdc")

#: package -> top-level packages of this repo it must not import.
FORBIDDEN = {
    "edge_agent": {"control_plane"},
    "control_plane": {"edge_agent"},
    "model_packager": {"edge_agent", "control_plane"},
    "protos": {"edge_agent", "control_plane", "model_packager"},
}


def test_importing_the_agent_loads_nothing_heavy() -> None:
    code = textwrap.dedent(
        """
        import importlib, json, pkgutil, sys
        import edge_agent.app, edge_agent.cli, edge_agent.install.installer
        direct = sorted(m for m in sys.modules)
        import edge_agent
        for info in pkgutil.walk_packages(edge_agent.__path__, "edge_agent."):
            importlib.import_module(info.name)
        print(json.dumps({"direct": direct, "all": sorted(sys.modules)}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    top = {m.split(".")[0] for m in loaded["all"]}
    assert {"edge_agent", "grpc", "model_packager", "protos"} <= top
    bad = sorted(top & {*HEAVY, *NOT_IN_AGENT_EXTRA, "control_plane"})
    assert not bad, f"importing edge_agent loads {bad}"
    direct = {m.split(".")[0] for m in loaded["direct"]}
    assert "control_plane" not in direct and "tensorflow" not in direct


#: Modules the agent's memory budget keeps out of a serving process until something needs them:
#: pydantic and pydantic_core, never (settings and manifests are model_packager.records
#: dataclasses, 12-15 MB less RSS), pydantic-settings and dotenv (edge_agent/config_sources.py
#: reads the settings instead, 1.3 MB less RSS), prometheus_client and the http.server /
#: wsgiref / urllib.request chain it imports (edge_agent/metrics.py, 2.3 MB less), cryptography
#: (signatures are checked in a child process), the fleet client and MQTT (only with a
#: ``fleet`` section), the runtimes (loaded with the first model), Pillow (first image input).
LAZY = (
    "pydantic",
    "pydantic_core",
    "pydantic_settings",
    "dotenv",
    "prometheus_client",
    "wsgiref",
    "http.server",
    "urllib.request",
    "cryptography",
    "edge_agent.fleet",
    "paho",
    "onnxruntime",
    "ai_edge_litert",
    "PIL",
)


def test_serving_process_leaves_lazy_wings_unloaded(tmp_path: Path) -> None:
    """What `edge-agent run` imports, and reading its settings, loads none of ``LAZY``.

    The positive control: the same interpreter does load them when asked, so the check cannot
    pass because a name is misspelt or missing from this venv.
    """
    config = tmp_path / "agent.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nmodels: {{mlp: {{max_batch_size: 4}}}}\n")
    code = textwrap.dedent(
        f"""
        import importlib, json, sys
        from pathlib import Path
        import edge_agent.app, edge_agent.cli, edge_agent.install.installer
        from edge_agent.config import load_settings
        settings = load_settings(Path({str(config)!r}))
        assert settings.for_model("mlp").max_batch_size == 4
        lazy = {LAZY!r}
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in lazy or m in lazy)
        for name in lazy:
            importlib.import_module(name)
        print(json.dumps({{"loaded": loaded, "after": [n for n in lazy if n in sys.modules]}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loaded"] == [], f"the agent loads {result['loaded']} before it needs them"
    assert result["after"] == list(LAZY)


def imported_top_levels(source: str, filename: str = "<src>") -> set[str]:
    """Top-level names of every absolute import in the file, at any depth (lazy ones too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value.split(".")[0])
    return names


def python_files(package: str) -> list[Path]:
    root = REPO / package
    return sorted(p for p in root.rglob("*.py") if "gen" not in p.relative_to(root).parts[:1])


def boundary_violations(
    packages: dict[str, set[str]], files: Callable[[str], list[Path]]
) -> list[str]:
    out = []
    for package, forbidden in packages.items():
        for path in files(package):
            hits = imported_top_levels(path.read_text(), str(path)) & forbidden
            out.extend(f"{path.relative_to(REPO)} imports {h}" for h in sorted(hits))
    return out


def test_checker_sees_every_kind_of_import() -> None:
    src = textwrap.dedent(
        """
        import os
        from . import sibling
        from control_plane.db import models
        def later():
            import tensorflow as tf
            from edge_agent import app
            importlib.import_module("fastapi.routing")
        """
    )
    assert imported_top_levels(src) == {
        "os",
        "control_plane",
        "tensorflow",
        "edge_agent",
        "fastapi",
    }


def test_packages_import_in_one_direction() -> None:
    for package in FORBIDDEN:
        assert python_files(package), f"no sources found for {package}"
    assert all("gen" not in p.parts for p in python_files("protos"))
    violations = boundary_violations(FORBIDDEN, python_files)
    assert not violations, "\n".join(violations)


def test_agent_never_imports_control_plane() -> None:
    """Neither statically (any file, lazy imports too) nor at run time (every module loaded).

    The two sides meet only through ``protos`` (messages, topics, the shared desired state), so
    a device never needs the control plane's code or dependencies.
    """
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import edge_agent, edge_agent.app, edge_agent.cli, edge_agent.fleet.client
        for info in pkgutil.walk_packages(edge_agent.__path__, "edge_agent."):
            importlib.import_module(info.name)
        bad = sorted(m for m in sys.modules if m.split(".")[0] == "control_plane")
        assert not bad, bad
        """
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    violations = boundary_violations({"edge_agent": {"control_plane"}}, python_files)
    assert not violations, "\n".join(violations)


#: Wing -> agent modules it must not import. The wings depend one way: serving is the base,
#: install, jobs and capture use it, the fleet drives the installer and uploads captures, gRPC
#: exposes all but the fleet, HTTP exposes the data plane only, and only ``app``/``cli`` assemble
#: everything. The transports never import each other. Top-level helpers import no wing at all.
_ALL = {"serving", "install", "jobs", "capture", "fleet", "grpc", "http", "app", "cli"}
WING_RULES = {
    "serving": _ALL - {"serving"},
    "install": {"jobs", "capture", "fleet", "grpc", "http", "app", "cli"},
    "jobs": {"install", "capture", "fleet", "grpc", "http", "app", "cli"},
    # Captured inputs: the data plane calls it (through a protocol), the fleet uploads them.
    "capture": {"install", "jobs", "fleet", "grpc", "http", "app", "cli"},
    "fleet": {"jobs", "grpc", "http", "app", "cli"},
    "grpc": {"capture", "fleet", "http", "app", "cli"},
    "http": {"install", "jobs", "capture", "fleet", "grpc", "app", "cli"},
    "config.py": _ALL,
    "config_sources.py": _ALL,
    "errors.py": _ALL,
    "metrics.py": _ALL,
    "fsutil.py": _ALL,
    "crash_points.py": _ALL,
    "auth.py": _ALL,
    "memory.py": _ALL,
    "tls.py": _ALL,
}


def _agent_imports(path: Path) -> set[str]:
    """``edge_agent.<part>`` names a file imports (``serving``, ``app``, ...), lazy ones too."""
    parts: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            bits = name.split(".")
            if bits[0] == "edge_agent" and len(bits) > 1:
                parts.add(bits[1])
    return parts


def test_agent_wings_import_in_one_direction() -> None:
    root = REPO / "edge_agent"
    for wing in WING_RULES:
        assert (root / wing).exists(), f"edge_agent/{wing} is gone: update WING_RULES"
    out = []
    for wing, forbidden in WING_RULES.items():
        files = sorted((root / wing).rglob("*.py")) if (root / wing).is_dir() else [root / wing]
        for path in files:
            hits = _agent_imports(path) & {f.removesuffix(".py") for f in forbidden}
            out.extend(f"{path.relative_to(REPO)} imports edge_agent.{h}" for h in sorted(hits))
    assert not out, "\n".join(out)


def test_protobuf_types_stay_in_the_codecs() -> None:
    """Only the fleet codec and the gRPC transport touch generated messages or protobuf itself;
    the rest of the agent works on plain types (``protos.fleet_state`` and ``fleet_topics`` are
    plain Python over the wire contract, so anyone may use them)."""
    root = REPO / "edge_agent"
    allowed = {"fleet/codec.py"}
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in allowed or rel.startswith("grpc/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for m in mods:
                if m.startswith(("protos.gen", "google.protobuf")) or "_pb2" in m:
                    out.append(f"edge_agent/{rel} imports {m}")
    assert not out, "\n".join(out)


def test_agent_sources_never_import_heavy_frameworks() -> None:
    violations = boundary_violations({"edge_agent": {*HEAVY, *NOT_IN_AGENT_EXTRA}}, python_files)
    assert not violations, "\n".join(violations)


@pytest.mark.slow
def test_light_install_in_a_fresh_venv(
    tmp_path: Path, make_package: Callable[..., Path], models_dir: Path, keys: dict[str, Path]
) -> None:
    """``pip install -e .[agent]`` alone is enough to run the agent (~40 s, mostly pip)."""
    venv = tmp_path / "venv"
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "-e", f"{REPO}[agent]"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert pip.returncode == 0, pip.stderr[-4000:]
    install_s = time.monotonic() - t0

    py = str(venv / "bin" / "python")
    probe = textwrap.dedent(
        f"""
        import importlib.util, json, sys
        heavy = [m for m in {list(HEAVY)!r} if importlib.util.find_spec(m) is not None]
        runtimes = [m for m in ("onnxruntime", "ai_edge_litert") if importlib.util.find_spec(m)]
        pydantic = importlib.util.find_spec("pydantic") is not None
        import edge_agent.app, edge_agent.cli, edge_agent.install.installer
        print(json.dumps({{"importable": heavy, "prefix": sys.prefix, "runtimes": runtimes,
                           "pydantic": pydantic}}))
        """
    )
    done = subprocess.run(
        [py, "-c", probe], cwd=tmp_path, capture_output=True, text=True, env=env, check=True
    )
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(info["prefix"]).resolve() == venv.resolve()
    assert info["importable"] == [], f"the light install pulled in {info['importable']}"
    assert info["runtimes"] == ["onnxruntime", "ai_edge_litert"]
    assert not info["pydantic"], "the agent's install needs no pydantic (model_packager.records)"

    version = subprocess.run(
        [str(venv / "bin" / "edge-agent"), "--version"], capture_output=True, text=True, env=env
    )
    assert version.returncode == 0 and version.stdout.startswith("edge-agent ")

    # And it really installs and self-tests a package there (onnxruntime, no TensorFlow).
    config = tmp_path / "agent.yaml"
    config.write_text(
        json.dumps({"data_dir": str(tmp_path / "data"), "trusted_keys": [str(keys["public"])]})
    )
    pkg = make_package("mlp", "1", [models_dir / "mlp.onnx"])
    done = subprocess.run(
        [
            str(venv / "bin" / "edge-agent"),
            "install",
            "--offline",
            "--config",
            str(config),
            str(pkg),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout)["outcome"] == "COMMITTED"
    print(f"fresh venv + pip install -e .[agent]: {install_s:.1f} s")
