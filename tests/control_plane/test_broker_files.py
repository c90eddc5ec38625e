"""The files broker-config writes: operator-managed local identities, and ownership that lets
Mosquitto read them after it drops root (docs/fleet.md's production example, run as written)."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.cli import main
from control_plane.core.context import AppContext
from control_plane.core.credentials import hash_password
from control_plane.core.database import upgrade
from control_plane.core.settings import Settings
from control_plane.devices.service import DeviceService
from control_plane.fleet.broker_config import (
    ACL_NAME,
    CONF_NAME,
    DATA_NAME,
    LOCAL_ACL_NAME,
    LOCAL_PASSWD_NAME,
    PASSWD_NAME,
    BrokerConfigError,
    sync_registry_files,
    write_registry_files,
)
from tests.control_plane.conftest import MQTT_PASSWORD, free_port, start_mosquitto
from tests.control_plane.mqtt_probe import MqttProbe
from tests.pki import TestCA


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[AppContext]:
    """A device registry (SQLite) holding one device, cam-a; broker files go to tmp/broker."""
    settings = Settings(
        dev_mode=True,
        mqtt_password=MQTT_PASSWORD,
        data_dir=tmp_path / "data",
        broker_config_dir=tmp_path / "broker",
    )
    ctx = AppContext.from_settings(settings)
    upgrade(ctx.engine)
    with ctx.sessions() as session:
        DeviceService(session, ctx).register("a", {}, "cam-a")
    try:
        yield ctx
    finally:
        ctx.close()


def _write(ctx: AppContext) -> tuple[str, str]:
    folder = ctx.settings.mqtt.broker_config_dir
    assert folder is not None
    with ctx.sessions() as session:
        write_registry_files(ctx.settings, session, folder)
    return (folder / PASSWD_NAME).read_text(), (folder / ACL_NAME).read_text()


def _local(ctx: AppContext, passwd: str, acl: str) -> None:
    folder = ctx.settings.mqtt.broker_config_dir
    assert folder is not None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCAL_PASSWD_NAME).write_text(passwd)
    (folder / LOCAL_ACL_NAME).write_text(acl)


def test_local_identities_are_appended(registry: AppContext) -> None:
    line = f"monitor:{hash_password('m')}"
    _local(registry, f"# monitoring\n{line}\n", "user monitor\ntopic read edge/+/status\n")
    passwd, acl = _write(registry)
    assert passwd.splitlines()[-1] == line
    assert passwd.splitlines()[1].startswith("cam-a:$7$")  # the registry's lines stay
    assert acl.rstrip().endswith("user monitor\ntopic read edge/+/status")
    assert "user cam-a\ntopic read edge/cam-a/desired" in acl


@pytest.mark.parametrize(
    ("passwd", "acl", "error"),
    [
        (f"cam-a:{hash_password('x')}\n", "", "identity of the device registry"),
        (f"control-plane:{hash_password('x')}\n", "", "identity of the device registry"),
        ("", "user cam-a\ntopic readwrite edge/#\n", "identity of the device registry"),
        ("monitor:plaintext\n", "", "mosquitto_passwd"),
        ("", "pattern read edge/%u/#\n", "only 'user NAME'"),
        ("", "topic read edge/#\n", "must follow a 'user' line"),
        ("", "user monitor\ntopic sometimes edge/#\n", "read|write"),
    ],
)
def test_local_files_that_would_widen_rights_are_refused(
    registry: AppContext, passwd: str, acl: str, error: str
) -> None:
    _local(registry, passwd, acl)
    with pytest.raises(BrokerConfigError, match=error):
        _write(registry)


def test_sync_writes_registry_files_without_broken_local_ones(
    registry: AppContext, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken local file must not keep stale files (and a deleted device's access) in place."""
    _local(registry, "", "pattern readwrite #\n")
    with caplog.at_level(logging.ERROR):
        sync_registry_files(registry)
    folder = registry.settings.mqtt.broker_config_dir
    assert folder is not None
    acl = (folder / ACL_NAME).read_text()
    assert "user cam-a" in acl and "pattern readwrite" not in acl
    assert "without local identities" in caplog.text


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        (["--require-client-cert"], "TLS needs both"),
        (["--tls-cert", "s.pem", "--tls-key", "s.key", "--cert-port", "8884"], "--tls-ca"),
        (
            ["--tls-cert", "s.pem", "--tls-key", "s.key", "--tls-ca", "ca", "--cert-port", "1883"],
            "must differ",
        ),
        (["--run-as-user", "no-such-user-here"], "no such user"),
    ],
)
def test_broker_config_refuses_options_that_cannot_work(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    error: str,
) -> None:
    monkeypatch.setenv("CONTROL_PLANE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CONTROL_PLANE_DEV_MODE", "true")
    assert main(["broker-config", "--out", str(tmp_path / "broker"), *extra]) == 2
    assert error in capsys.readouterr().err
    assert not (tmp_path / "broker" / CONF_NAME).exists()


# --- docs/fleet.md, "Production: Mosquitto", as root ------------------------------------------


def _device_gets_in(port: int, password: str, tls: dict[str, str]) -> bool:
    """Whether cam-a is accepted within 5 s (Mosquitto rereads its files after the SIGHUP)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        probe = MqttProbe(port, "cam-a", password, tls=tls)
        accepted = probe.connect()
        probe.close()
        if accepted:
            return True
        time.sleep(0.1)
    return False


def _owner(path: Path) -> tuple[str, str, int]:
    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, str(st.st_gid), st.st_mode & 0o777


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("install") is None,
    reason="Mosquitto drops privileges only when started as root",
)
def test_production_example_works_as_written_as_root(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        mosquitto = pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.fail("the mosquitto package creates a 'mosquitto' user; it is missing")
    # A root Mosquitto can reach: pytest's own folders are 0700.
    root = Path(tempfile.mkdtemp(prefix="edge-broker-docs-", dir="/tmp"))
    root.chmod(0o755)
    processes = []
    try:
        src = root / "src"  # where an operator's certificates come from: root's, 0600 keys
        ca = TestCA(src)
        server = ca.issue("127.0.0.1", server=True, file_name="server")
        monkeypatch.setenv("CONTROL_PLANE_DATA_DIR", str(root / "cp"))
        monkeypatch.setenv("CONTROL_PLANE_API_TOKEN", "a-token-for-this-test")
        monkeypatch.setenv("CONTROL_PLANE_MQTT_PASSWORD", MQTT_PASSWORD)
        port = free_port()
        etc = root / "etc" / "mosquitto"
        out = etc / "edge"
        certs = etc / "certs"
        args = ["broker-config", "--out", str(out), "--port", str(port), "--bind", "127.0.0.1"]

        # Negative control: a key only root can read is named, and the command fails (without
        # --run-as-user: as root it defaults to mosquitto).
        bad = ["--tls-cert", str(server.cert), "--tls-key", str(server.key)]
        assert main(args + bad) == 2
        assert f"cannot read {server.key}" in capsys.readouterr().err

        # The example, as written in docs/fleet.md (with this test's paths and port).
        subprocess.run(["install", "-d", "-m", "0750", "-g", "mosquitto", str(certs)], check=True)
        files = [str(server.cert), str(server.key), str(certs)]
        subprocess.run(["install", "-m", "0640", "-g", "mosquitto", *files], check=True)
        tls = ["--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key")]
        assert main([*args, "--run-as-user", "mosquitto", *tls]) == 0, capsys.readouterr().err
        assert "user mosquitto" in (out / CONF_NAME).read_text().splitlines()
        group = str(mosquitto.pw_gid)
        for name in (PASSWD_NAME, ACL_NAME):
            assert _owner(out / name) == ("mosquitto", group, 0o640), name
        assert _owner(out / DATA_NAME) == ("mosquitto", group, 0o700)

        broker = start_mosquitto(out / CONF_NAME, port, root / "mosquitto.log")
        processes.append(broker)
        status = Path(f"/proc/{broker.process.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1] == str(mosquitto.pw_uid), "Mosquitto kept root"
        tls_probe = {"ca_certs": str(ca.cert)}
        cp = MqttProbe(port, "control-plane", MQTT_PASSWORD, tls=tls_probe)
        assert cp.connect()
        cp.close()

        # The control plane rewrites the files on a registration: they stay Mosquitto's, and
        # Mosquitto rereads them (the new device gets in).
        settings = Settings(
            broker_config_dir=out, broker_reload_command=f"kill -HUP {broker.process.pid}"
        )
        ctx = AppContext.from_settings(settings)
        try:
            with ctx.sessions() as session:
                reg = DeviceService(session, ctx).register("a", {}, "cam-a")
            sync_registry_files(ctx)
        finally:
            ctx.close()
        assert _owner(out / PASSWD_NAME) == ("mosquitto", group, 0o640)
        assert _device_gets_in(port, reg.password, tls_probe), "the rewrite did not take"
        broker.stop()
        assert (out / DATA_NAME / "mosquitto.db").exists(), "Mosquitto could not save its state"

        # Positive control for the ownership: the same files owned by root, as before, and
        # Mosquitto (as the mosquitto user) cannot start.
        os.chown(out / PASSWD_NAME, 0, 0)
        proc = subprocess.run(
            ["/usr/sbin/mosquitto", "-c", str(out / CONF_NAME)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert proc.returncode != 0, proc.stdout
        assert "Unable to open pwfile" in proc.stdout + proc.stderr
    finally:
        for p in processes:
            p.stop()
        shutil.rmtree(root, ignore_errors=True)
