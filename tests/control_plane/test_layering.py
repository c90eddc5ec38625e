"""Dependency rules of the control plane.

- It never imports the agent; only the fleet codec and service touch protobuf types; only the
  fleet package touches MQTT.
- Domains depend one way (``DOMAIN_DEPENDS``): core <- datasets <- training <- registry, core <-
  devices, registry + devices <- deployments <- fleet and services (services also read datasets,
  for batch services' inputs); the top-level modules (app, cli, tables, health, migrations)
  assemble everything.
- Inside a domain, routes -> service -> models; a domain reaches another only through that
  domain's service (or its schemas, to nest a response; or its tables, for a foreign-key
  relationship between tables); nothing but the app imports routes.
- No cycle between any two modules.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from control_plane.cli import main
from tests.import_graph import cycles, graph

PACKAGE = Path(__file__).resolve().parents[2] / "control_plane"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_control_plane_never_imports_edge_agent() -> None:
    code = (
        "import sys, control_plane.cli, control_plane.app, control_plane.fleet.service;"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'edge_agent'];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)
    for path in PACKAGE.rglob("*.py"):
        assert not any(m.startswith("edge_agent") for m in _imports(path)), path


def test_protobuf_and_mqtt_stay_in_the_fleet_package() -> None:
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        mods = _imports(path)
        if rel not in ("fleet/codec.py", "fleet/service.py"):
            assert "protos.gen" not in mods and not any("_pb2" in m for m in mods), rel
        if not rel.startswith("fleet/"):
            assert not any(m.startswith("paho") or m.startswith("amqtt") for m in mods), rel


def test_broker_config_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROL_PLANE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CONTROL_PLANE_API_TOKEN", "a-token-for-this-test")
    monkeypatch.setenv("CONTROL_PLANE_MQTT_PASSWORD", "a-password-for-this-test")
    out = tmp_path / "broker"
    # As root the files would go to the 'mosquitto' user, who cannot reach pytest's 0700 folders.
    as_root = ["--run-as-user", "root"] if os.geteuid() == 0 else []
    args = ["broker-config", "--out", str(out), "--port", "18830", "--bind", "127.0.0.1"]
    assert main(args + as_root) == 0
    conf = (out / "mosquitto.conf").read_text()
    assert "listener 18830 127.0.0.1" in conf and "allow_anonymous false" in conf
    assert (out / "passwd").read_text().startswith("control-plane:$7$")
    assert "topic readwrite edge/#" in (out / "acl").read_text()


# Which domains each domain may import. Top-level modules (app, cli, tables, health, migrations)
# may import anything.
DOMAIN_DEPENDS: dict[str, set[str]] = {
    "core": set(),
    "datasets": {"core"},
    "training": {"core", "datasets"},
    "registry": {"core", "datasets", "training"},
    "devices": {"core"},
    "deployments": {"core", "devices", "registry"},
    "fleet": {"core", "devices", "deployments", "registry"},
    # datasets: a batch service predicts over a published dataset version's samples (read
    # through datasets.versions.service).
    "services": {"core", "datasets", "devices", "deployments", "registry"},
    # notebooks: a dataset version read-only in the work folder; export stores training code.
    "notebooks": {"core", "datasets", "training"},
    # captures: the data flywheel, on top of what it feeds (datasets), retrains (training,
    # registry) and rolls out (services, deployments); its channel lives in fleet.
    "captures": {
        "core",
        "datasets",
        "training",
        "registry",
        "devices",
        "deployments",
        "fleet",
        "services",
    },
    # users: accounts, tokens and sessions; core.auth holds the roles every route is checked by.
    "users": {"core"},
    # dashboard: pages over every domain's services, so it sits on top.
    "dashboard": {
        "core",
        "datasets",
        "training",
        "registry",
        "devices",
        "deployments",
        "fleet",
        "services",
        "users",
        "notebooks",
        "captures",
    },
}
# What another domain may import of a domain: its service(s), its schemas, its typed dependencies
# (``deps``: the long-lived runtime a service needs, such as a supervisor, for the dashboard's
# pages), and (from tables only) its tables.
PUBLIC_LEAVES = {"service", "schemas", "deps"}


TOP_LEVEL = {"app", "cli", "tables", "health", "migrations"}


def _domain(module: str) -> str:
    """The domain a module belongs to; "" for the top level that assembles the domains."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] not in TOP_LEVEL else ""


def _leaf(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def violations(edges: dict[str, set[str]]) -> list[str]:
    """Every import of the control plane that breaks one of the rules in this module's docstring."""
    bad: list[str] = []
    for mod, deps in sorted(edges.items()):
        src = _domain(mod)
        for dep in sorted(deps):
            dst = _domain(dep)
            edge = f"{mod} -> {dep}"
            if _leaf(dep) == "routes" or dep.endswith("_routes"):
                if mod != "control_plane.app":
                    bad.append(f"{edge}: only the app imports routes")
                continue
            if not src or not dst:
                if not src:
                    continue  # the top level assembles everything
                bad.append(f"{edge}: a domain imports a top-level module")
                continue
            if src != dst:
                if dst == "core":
                    continue  # core is what every domain shares
                if dst not in DOMAIN_DEPENDS[src]:
                    bad.append(f"{edge}: {src} may not depend on {dst}")
                elif _leaf(dep) == "models":
                    if _leaf(mod) != "models":
                        bad.append(f"{edge}: another domain's tables, not through its service")
                elif _leaf(dep) not in PUBLIC_LEAVES:
                    bad.append(f"{edge}: another domain's internals, not through its service")
                continue
            # Inside a domain: models import no service or schemas; schemas import no service.
            if _leaf(mod) == "models" and _leaf(dep) in {"service", "schemas"}:
                bad.append(f"{edge}: tables import only tables")
            if _leaf(mod) == "schemas" and _leaf(dep) == "service":
                bad.append(f"{edge}: schemas never import the service")
    return bad


def test_every_domain_has_a_known_place() -> None:
    domains = {_domain(m) for m in graph("control_plane")} - {""}
    assert domains == set(DOMAIN_DEPENDS), domains ^ set(DOMAIN_DEPENDS)


def test_imports_point_one_way() -> None:
    assert violations(graph("control_plane")) == []


def test_no_import_cycles() -> None:
    assert cycles(graph("control_plane")) == []


def test_the_rules_catch_what_they_should() -> None:
    """A positive control: a graph with one of each forbidden edge is reported edge by edge."""
    cp = "control_plane"
    edges = {
        f"{cp}.core.context": {f"{cp}.fleet.broker_config"},  # core reaching up
        f"{cp}.datasets.service": {f"{cp}.datasets.routes"},  # a service importing routes
        f"{cp}.training.runner": {f"{cp}.registry.service"},  # training reaching registry
        f"{cp}.deployments.service": {f"{cp}.devices.models", f"{cp}.devices.service"},
        f"{cp}.fleet.codec": {f"{cp}.deployments.service", f"{cp}.registry.worker"},
        f"{cp}.devices.models": {f"{cp}.devices.service"},
        f"{cp}.app": {f"{cp}.devices.routes"},  # allowed
        f"{cp}.a": {f"{cp}.b"},
        f"{cp}.b": {f"{cp}.a"},
    }
    bad = violations(edges)
    assert [b.split(":")[0] for b in bad] == [
        f"{cp}.core.context -> {cp}.fleet.broker_config",
        f"{cp}.datasets.service -> {cp}.datasets.routes",
        f"{cp}.deployments.service -> {cp}.devices.models",
        f"{cp}.devices.models -> {cp}.devices.service",
        f"{cp}.fleet.codec -> {cp}.registry.worker",
        f"{cp}.training.runner -> {cp}.registry.service",
    ]
    assert cycles(edges) == [[f"{cp}.a", f"{cp}.b"]]
