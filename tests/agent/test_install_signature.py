"""Where an agent checks package signatures, and what that leaves in its memory.

By default the signature is checked without ``cryptography`` in the agent (its memory budget
right after an install): through the OpenSSL library the agent already maps, or in a short-lived
child process where that cannot check Ed25519 (both paths: ``tests/packager/
test_signature_openssl.py``). With ``signature_check_in_child: false`` the agent checks it with
``cryptography`` itself. Both must accept the trusted signature and refuse a stranger's with the
same reason; which one ran is visible in the agent's memory map (``cryptography``'s native
library).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from tests.agent.agent_process import AgentProcess


def _maps_cryptography(agent: AgentProcess) -> bool:
    assert agent.proc is not None
    maps = Path(f"/proc/{agent.proc.pid}/maps").read_text()
    return "cryptography" in maps


@pytest.mark.parametrize("in_child", [True, False], ids=["without-cryptography", "cryptography"])
def test_signature_check_where_configured(
    start_agent: Callable[..., AgentProcess],
    make_package: Callable[..., Path],
    models_dir: Path,
    in_child: bool,
) -> None:
    agent = start_agent(signature_check_in_child=in_child)
    stranger = make_package("mlp", "2", [models_dir / "mlp_v2.onnx"], key="other_private")
    with pytest.raises(grpc.RpcError) as err:
        agent.install(stranger)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "install failed at verify" in err.value.details()
    assert "which is not trusted" in err.value.details()
    ok = agent.install(make_package("mlp", "1", [models_dir / "mlp.onnx"]))
    assert ok.result.outcome == "COMMITTED", ok.result
    # Only the check through cryptography left it mapped.
    assert _maps_cryptography(agent) is (not in_child)
    assert not list((agent.workdir / "data" / "packages").glob(".*"))  # no staging leftovers
