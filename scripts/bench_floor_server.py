"""The benchmark's floor: the least a Python OIP v2 gRPC server can do per request.

A bare ``grpc.aio`` server implementing only ``inference.GRPCInferenceService/ModelInfer``: it
turns ``raw_input_contents`` into arrays with ``np.frombuffer``, calls ``session.run`` on the event
loop and answers with ``raw_output_contents``. No validation, metrics, batching or thread hop, so
the same tritonclient load generator that drives the agent measures what any Python server on
grpcio + onnxruntime costs at minimum.

Run as its own process (``scripts/bench_serving.py`` does): it binds ``--port`` (0 = a free
one) and writes ``{"grpc": port, "pid": pid}`` to ``--port-file`` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from script_support import ort_cpu_session

from protos.gen import inference_pb2 as pb
from protos.gen import inference_pb2_grpc as pb_grpc

# OIP datatype -> little-endian numpy dtype, for the types the benchmark models use.
_DTYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "INT32": np.dtype("<i4")}
_ORT_TO_OIP = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int32)": "INT32"}


class FloorServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.outputs = [(o.name, _ORT_TO_OIP[o.type]) for o in session.get_outputs()]
        self.output_names = [name for name, _ in self.outputs]

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        feeds = {
            t.name: np.frombuffer(raw, dtype=_DTYPES[t.datatype]).reshape(tuple(t.shape))
            for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        results = self.session.run(self.output_names, feeds)
        response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        for (name, datatype), arr in zip(self.outputs, results, strict=True):
            response.outputs.add(name=name, datatype=datatype, shape=arr.shape)
        response.raw_output_contents.extend(arr.tobytes() for arr in results)
        return response


async def serve(args: argparse.Namespace) -> None:
    session = ort_cpu_session(args.model, args.intra_op_threads, args.inter_op_threads)
    limit = 64 * 1024 * 1024
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(FloorServicer(session), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    tmp = Path(f"{args.port_file}.tmp")
    tmp.write_text(json.dumps({"grpc": port, "pid": os.getpid()}))
    os.replace(tmp, args.port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="ONNX file to serve")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", type=Path, required=True)
    p.add_argument("--intra-op-threads", type=int, default=1)
    p.add_argument("--inter-op-threads", type=int, default=1)
    asyncio.run(serve(p.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
