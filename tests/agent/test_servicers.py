"""Every RPC of the agent's servicers maps agent errors to gRPC status through one decorator.

Checked in a fresh interpreter: this test process must never import ``edge_agent.grpc`` or
``protos.gen.inference_pb2`` (tritonclient registers the same protobuf package here).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(code: str) -> None:
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, check=True)


def test_every_rpc_goes_through_aborts_with_status() -> None:
    _run(
        """
        import inspect
        from edge_agent.grpc.agent_servicer import AgentServicer
        from edge_agent.grpc.inference_servicer import InferenceServicer
        from edge_agent.grpc.status import aborts_with_status
        from protos.gen import agent_pb2_grpc, inference_pb2_grpc

        async def probe(self, request, context): ...
        wrapper_code = aborts_with_status(probe).__code__
        pairs = (
            (AgentServicer, agent_pb2_grpc.AgentServiceServicer),
            (InferenceServicer, inference_pb2_grpc.GRPCInferenceServiceServicer),
        )
        bare = []
        for cls, base in pairs:
            for name, _ in inspect.getmembers(base, inspect.isfunction):
                if not name.startswith("_") and getattr(cls, name).__code__ is not wrapper_code:
                    bare.append(f"{cls.__name__}.{name}")
        assert not bare, f"not decorated with @aborts_with_status: {bare}"
        """
    )


def test_aborts_with_status_maps_agent_errors_and_passes_others() -> None:
    _run(
        """
        import asyncio
        import grpc
        from edge_agent.errors import InstallFailed, JobNotFound, Overloaded
        from edge_agent.grpc.status import aborts_with_status

        class Aborted(Exception):
            pass

        class Context:
            async def abort(self, code, details):
                self.code, self.details = code, details
                raise Aborted

        class Servicer:
            @aborts_with_status
            async def Rpc(self, request, context):
                if isinstance(request, Exception):
                    raise request
                return request

        async def call(request):
            ctx = Context()
            try:
                return await Servicer().Rpc(request, ctx)
            except Aborted:
                return ctx.code, ctx.details

        assert asyncio.run(call("reply")) == "reply"
        assert asyncio.run(call(JobNotFound("no batch job 'x'"))) == (
            grpc.StatusCode.NOT_FOUND, "no batch job 'x'"
        )
        code, details = asyncio.run(call(InstallFailed("verify", "bad signature")))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "bad signature" in details
        assert asyncio.run(call(Overloaded("full")))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        try:
            asyncio.run(call(KeyError("a bug")))
        except KeyError:
            pass  # not an agent error: gRPC reports it as UNKNOWN, as before
        else:
            raise AssertionError("a non-agent error was swallowed")
        """
    )
