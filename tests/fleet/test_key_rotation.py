"""Key rotation end to end: the real control plane, a real Mosquitto and a running agent.

The agent starts trusting only the registry's first key (as a device registered before the
rotation does). ``POST /registry/keys/rotate`` makes a second key; the trust set reaches the
running agent over its retained ``trust`` topic, and the agent then installs a package signed by
the new key. A set signed by a key the device does not trust is ignored, with an event. Once the
old key's grace period is over, its packages are refused by the agent and by the registry.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from control_plane.registry.keys.service import load_signing_key, signing_key_path
from model_packager.build import ArtifactInput, BuildSpec, build_package
from model_packager.signing import generate_keypair, load_private_key, sign_manifest
from protos import fleet_topics
from protos.fleet_trust import TrustedKey, TrustSet, encode_signed, encode_trust_set
from tests.agent.agent_process import AgentProcess
from tests.control_plane.conftest import Keys, wait_for
from tests.fleet.conftest import Fleet, Packages, fleet_section
from tests.fleet.helpers import wait_serving

GRACE_S = 4.0


def _package(out: Path, version: str, model: Path, private_key: Path) -> Path:
    spec = BuildSpec(name="mlp", version=version, artifacts=[ArtifactInput(path=model)])
    return build_package(spec, out, load_private_key(private_key))


def _trust_version(agent: AgentProcess) -> int:
    doc = agent.workdir / "data" / "trust" / "trust.json"
    return int(json.loads(doc.read_text())["version"]) if doc.exists() else 0


def _trust_events(fleet: Fleet, device_id: str) -> list[dict[str, Any]]:
    records = fleet.api.get(f"/api/v1/devices/{device_id}/telemetry").json()
    return [json.loads(r["payload"]) for r in records if r["kind"] == "trust_event"]


def test_rotation_reaches_a_running_agent(
    fleet: Fleet,
    packages: Packages,
    fleet_keys: dict[str, Keys],
    v1_data_dir: Path,
    tmp_path: Path,
) -> None:
    fleet.ctx.settings.registry.key_grace_period_s = GRACE_S
    keys_dir = fleet.ctx.settings.data_dir / "keys"
    first = keys_dir / "signing.key"
    # Not dev mode: the operator installs the first key (model-packager keygen), which the
    # control plane loads as at its start.
    generate_keypair(first, first.with_suffix(".pub"))
    assert load_signing_key(fleet.ctx) == first.absolute()
    bundle = fleet.register("rot-1")
    assert first.with_suffix(".pub").read_text() in bundle["trusted_keys_pem"]
    # A package signed by the first key, stored while that key is current.
    old_pkg = _package(tmp_path / "pkgs", "3", packages.models["v2"], first)
    old_digest = fleet.upload(old_pkg)

    shutil.copytree(v1_data_dir, tmp_path / "agent" / "data")
    agent = AgentProcess(
        tmp_path / "agent",
        [first.with_suffix(".pub")],  # the first registry key only
        device_id="rot-1",
        fleet=fleet_section(bundle),
        log_level="INFO",
    ).start()
    try:
        r = fleet.api.post("/api/v1/registry/keys/rotate")
        assert r.status_code == 201, r.text
        new = r.json()
        assert new["generation"] == 2 and new["state"] == "current"
        listed = {k["key_id"]: k for k in fleet.api.get("/api/v1/registry/keys").json()}
        old_id = next(k for k, v in listed.items() if v["generation"] == 1)
        assert listed[old_id]["state"] == "retired" and listed[old_id]["not_after"]
        # New conversions are signed by the new key.
        assert signing_key_path(fleet.ctx) == (keys_dir / "signing-2.key").absolute()

        # The trust set reaches the running agent, which persists it and trusts the new key.
        wait_for(lambda: _trust_version(agent) == 2, 30, 0.2)
        new_pkg = _package(
            tmp_path / "pkgs", "2", packages.models["v2"], keys_dir / "signing-2.key"
        )
        dep = fleet.deploy(fleet.upload(new_pkg), device_id="rot-1")
        assert fleet.wait_final(dep, ["rot-1"])["rot-1"]["state"] == "installed"
        wait_serving(agent.address, packages.models, "v2", timeout=10)
        accepted = wait_for(lambda: _trust_events(fleet, "rot-1"), 30, 0.3)
        assert accepted[0]["outcome"] == "accepted" and accepted[0]["version"] == 2
        assert accepted[0]["signed_by"] == old_id  # the only key the device trusted

        # A newer set signed by a key the device does not trust is ignored, with an event.
        forged_body = encode_trust_set(
            TrustSet(
                version=99,
                keys=(TrustedKey("f" * 16, fleet_keys["unknown"].public.read_text()),),
            )
        )
        forged = encode_signed(
            forged_body,
            [sign_manifest(forged_body, load_private_key(fleet_keys["unknown"].private))],
        )
        observer = fleet.observer()
        observer.publish(
            fleet_topics.device_topic("rot-1", fleet_topics.TRUST), forged, retain=True
        )
        refused = wait_for(
            lambda: [e for e in _trust_events(fleet, "rot-1") if e["outcome"] == "refused"],
            30,
            0.3,
        )
        assert refused[0]["version"] == 99
        assert "none of which this device trusts" in refused[0]["reason"]
        assert _trust_version(agent) == 2

        # After the grace period the old key's packages are refused, by the agent and the registry.
        not_after = fleet.ctx.key_not_after[old_id]
        time.sleep(max(0.0, not_after - time.time()) + 0.5)
        with pytest.raises(grpc.RpcError) as err:
            agent.install(old_pkg)
        assert "retired and is past its grace period" in err.value.details()
        r = fleet.api.post(
            "/api/v1/deployments", json={"package_digest": old_digest, "device_id": "rot-1"}
        )
        assert r.status_code == 422 and "past its grace period" in r.text, r.text
        wait_serving(agent.address, packages.models, "v2", timeout=5)  # still serving the new
        # A device registered now is handed the current key, not the expired one.
        late = fleet.register("rot-late")
        assert first.with_suffix(".pub").read_text() not in late["trusted_keys_pem"]
        assert (keys_dir / "signing-2.pub").read_text() in late["trusted_keys_pem"]
    finally:
        agent.stop()
