"""Load generator of ``scripts/bench-serving``, run as its own process.

``grpc`` mode drives any OIP v2 server with tritonclient's gRPC client: ``--concurrency`` threads,
each with its own client, send the same request back to back (closed loop). ``http`` mode does the
same with ``tritonclient.http`` against the KServe v2 REST API, tensors as JSON or, with
``--binary``, as binary tensor data both ways. ``http-lean`` sends the same requests with the
standard library's ``http.client`` and orjson, encoding every request and decoding every answer
itself: what a client costs without tritonclient's per-request JSON encoding (~300 us for the
MLP's 784 floats), so the server's own JSON cost shows. ``raw`` mode is the in-process reference:
``--concurrency`` threads call ``session.run`` on one onnxruntime session.

Clients (or the session) are created once. With ``--serve`` the process stays up and runs one
window per JSON line on stdin, so an orchestrator can interleave short windows of several
configurations without paying process start-up each time. A window runs ``--warmup`` seconds
unmeasured, then ``--duration`` seconds measured (or until
``--requests`` completed), and print one JSON object on stdout: count, errors, throughput
(completions per second in the measured window), latency percentiles in milliseconds (requests
started in the measured window) and ``total_completed`` (warmup included, for CPU-per-request
figures). ``--samples-out`` saves every measured latency so runs can be pooled.

This process imports tritonclient, never ``protos.gen.inference_pb2``: both register the protobuf
package ``inference`` and one process cannot hold the two.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
from script_support import ort_cpu_session

Call = Callable[[], None]


def _shape(text: str) -> list[int]:
    return [int(d) for d in text.split(",")]


def _percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    k = min(len(sorted_ms) - 1, max(0, round(q / 100.0 * (len(sorted_ms) - 1))))
    return sorted_ms[k]


def _make_calls(make_call: Callable[[int], Callable[[], None]], concurrency: int) -> list[Call]:
    """One call per worker (own client and input), each made once so connections exist."""
    calls = [make_call(i) for i in range(concurrency)]
    for call in calls:
        call()
    return calls


def _run_window(calls: list[Call], warmup: float, duration: float, max_requests: int) -> dict:
    """Run one closed-loop worker thread per call: ``warmup`` s unmeasured, then the window."""
    concurrency = len(calls)
    barrier = threading.Barrier(concurrency + 1)
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    done_in_window = [0] * concurrency
    done_total = [0] * concurrency
    errors = [0] * concurrency
    first_error: list[str] = []
    window: dict[str, float] = {}
    stop = threading.Event()

    def worker(i: int) -> None:
        call, my_lat = calls[i], lat[i]
        barrier.wait()
        t_measure, t_end = window["measure"], window["end"]
        perf = time.perf_counter
        while not stop.is_set():
            t0 = perf()
            if t0 >= t_end:
                break
            try:
                call()
            except Exception as exc:
                errors[i] += 1
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {exc}")
                continue
            t1 = perf()
            done_total[i] += 1
            if t0 >= t_measure:
                my_lat.append((t1 - t0) * 1000.0)
            if t_measure <= t1 <= t_end:
                done_in_window[i] += 1
                if max_requests and sum(done_in_window) >= max_requests:
                    window["end_early"] = t1
                    stop.set()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    now = time.perf_counter()
    window["measure"] = now + warmup
    window["end"] = now + warmup + duration
    barrier.wait()
    for t in threads:
        t.join()
    end = window.get("end_early", window["end"])
    measured = max(end - window["measure"], 1e-9)
    all_ms = sorted(x for per in lat for x in per)
    count = sum(done_in_window)
    return {
        "concurrency": concurrency,
        "count": count,
        "total_completed": sum(done_total),
        "errors": sum(errors),
        "first_error": first_error[0] if first_error else "",
        "seconds": measured,
        "throughput": count / measured,
        "p50_ms": _percentile(all_ms, 50),
        "p90_ms": _percentile(all_ms, 90),
        "p99_ms": _percentile(all_ms, 99),
        "mean_ms": sum(all_ms) / len(all_ms) if all_ms else float("nan"),
        "latencies_ms": all_ms,
    }


class ShmPlace:
    """One client's shared memory: a region for its input and one for its output, created and
    registered once (``tritonclient.utils.shared_memory``, as a camera process would)."""

    def __init__(self, client: object, tag: str, x: np.ndarray, out_bytes: int) -> None:
        import tritonclient.utils.shared_memory as shm

        self.shm = shm
        self.x = x
        self.out_bytes = out_bytes
        key = f"bench-{os.getpid()}-{tag}"
        self.in_handle = shm.create_shared_memory_region(f"{key}-in", f"/{key}-in", x.nbytes)
        self.out_handle = shm.create_shared_memory_region(f"{key}-out", f"/{key}-out", out_bytes)
        client.register_system_shared_memory(f"{key}-in", f"/{key}-in", x.nbytes)  # type: ignore[attr-defined]
        client.register_system_shared_memory(f"{key}-out", f"/{key}-out", out_bytes)  # type: ignore[attr-defined]
        self.in_name, self.out_name = f"{key}-in", f"{key}-out"
        _SHM_PLACES.append(self)

    def write_input(self) -> None:
        """Every call writes its frame, as a producer would: the client's copy is measured."""
        self.shm.set_shared_memory_region(self.in_handle, [self.x])

    def read_output(self, shape: list[int]) -> np.ndarray:
        return self.shm.get_contents_as_numpy(self.out_handle, np.float32, shape)

    def close(self) -> None:
        for h in (self.in_handle, self.out_handle):
            self.shm.destroy_shared_memory_region(h)


_SHM_PLACES: list[ShmPlace] = []


def grpc_calls(args: argparse.Namespace) -> list[Call]:
    import tritonclient.grpc as grpcclient

    shape = _shape(args.shape)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out_shape: list[tuple[int, ...]] = []
    out_dims = _shape(args.output_shape) if args.shm else []

    def make_call(i: int) -> Callable[[], None]:
        client = grpcclient.InferenceServerClient(args.url)
        inp = grpcclient.InferInput(args.input_name, shape, "FP32")
        mine = x.copy() if args.vary else x
        flat = mine.reshape(-1)
        outputs = None
        place = None
        if args.shm:
            place = ShmPlace(client, f"g{i}", x, 4 * int(np.prod(out_dims)))
            inp.set_shared_memory(place.in_name, x.nbytes)
            out = grpcclient.InferRequestedOutput(args.output_name)
            out.set_shared_memory(place.out_name, place.out_bytes)
            outputs = [out]
        else:
            inp.set_data_from_numpy(x)
        inputs = [inp]
        model = args.model

        def call() -> None:
            if args.vary:  # a different input every time (one element changes)
                flat[i % flat.size] += 1.0
                inp.set_data_from_numpy(mine)
            if place is not None:
                place.write_input()
                client.infer(model, inputs, outputs=outputs, client_timeout=args.timeout)
                out = place.read_output(out_dims)
                if not out_shape:
                    out_shape.append(out.shape)
                return
            result = client.infer(model, inputs, client_timeout=args.timeout)
            if not out_shape:  # check once that a real tensor comes back
                out = result.as_numpy(args.output_name)
                if out is None:
                    raise RuntimeError(f"response has no output {args.output_name!r}")
                out_shape.append(out.shape)

        return call

    calls = _make_calls(make_call, args.concurrency)
    print(f"output shape {list(out_shape[0])}", file=sys.stderr)
    return calls


def http_calls(args: argparse.Namespace) -> list[Call]:
    import tritonclient.http as httpclient

    shape = _shape(args.shape)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out_shape: list[tuple[int, ...]] = []
    binary = args.binary

    def make_call(i: int) -> Callable[[], None]:
        # tritonclient.http runs on gevent, whose sockets belong to the thread that made them,
        # and every window runs in new threads: one client per thread, made on its first call.
        local = threading.local()
        inp = httpclient.InferInput(args.input_name, shape, "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        inputs = [inp]
        outputs = [httpclient.InferRequestedOutput(args.output_name, binary_data=binary)]
        model = args.model

        def call() -> None:
            client = getattr(local, "client", None)
            if client is None:
                client = local.client = httpclient.InferenceServerClient(
                    args.url, connection_timeout=args.timeout, network_timeout=args.timeout
                )
            result = client.infer(model, inputs, outputs=outputs)
            if not out_shape:  # check once that a real tensor comes back, in the asked form
                out = result.as_numpy(args.output_name)
                if out is None:
                    raise RuntimeError(f"response has no output {args.output_name!r}")
                (meta,) = result.get_response()["outputs"]
                if ("data" in meta) == binary:
                    raise RuntimeError(f"asked binary={binary}, got {list(meta)}")
                out_shape.append(out.shape)

        return call

    calls = _make_calls(make_call, args.concurrency)
    print(f"output shape {list(out_shape[0])}", file=sys.stderr)
    return calls


def lean_http_calls(args: argparse.Namespace) -> list[Call]:
    import http.client
    from urllib.parse import quote

    import orjson

    shape = _shape(args.shape)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    path = f"/v2/models/{quote(args.model)}/infer"
    host, _, port = args.url.rpartition(":")
    binary = args.binary
    out_shape: list[tuple[int, ...]] = []
    length_header = "Inference-Header-Content-Length"

    def request() -> tuple[bytes, dict[str, str]]:
        tensor: dict = {"name": args.input_name, "shape": shape, "datatype": "FP32"}
        out = {"name": args.output_name, "parameters": {"binary_data": binary}}
        if not binary:
            tensor["data"] = x.reshape(-1)
            body = orjson.dumps(
                {"inputs": [tensor], "outputs": [out]}, option=orjson.OPT_SERIALIZE_NUMPY
            )
            return body, {"Content-Type": "application/json"}
        tensor["parameters"] = {"binary_data_size": x.nbytes}
        header = orjson.dumps({"inputs": [tensor], "outputs": [out]})
        headers = {"Content-Type": "application/octet-stream", length_header: str(len(header))}
        return header + x.tobytes(), headers

    def make_call(i: int) -> Callable[[], None]:
        local = threading.local()

        def call() -> None:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection(host, int(port), args.timeout)
            body, headers = request()
            conn.request("POST", path, body, headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
            n = resp.getheader(length_header)
            doc = orjson.loads(data[: int(n)] if n else data)
            (meta,) = doc["outputs"]
            if n:
                arr = np.frombuffer(data, np.float32, offset=int(n)).reshape(meta["shape"])
            else:
                arr = np.asarray(meta["data"], np.float32).reshape(meta["shape"])
            if not out_shape:
                out_shape.append(arr.shape)

        return call

    calls = _make_calls(make_call, args.concurrency)
    print(f"output shape {list(out_shape[0])}", file=sys.stderr)
    return calls


def raw_calls(args: argparse.Namespace) -> list[Call]:
    session = ort_cpu_session(args.model_path, args.intra_op_threads, args.inter_op_threads)
    x = np.random.default_rng(0).standard_normal(_shape(args.shape)).astype(np.float32)
    feeds = {args.input_name: x}

    def make_call(i: int) -> Callable[[], None]:
        def call() -> None:
            session.run(None, feeds)

        return call

    return _make_calls(make_call, args.concurrency)


def main() -> int:
    p = argparse.ArgumentParser(description="bench-serving load generator")
    p.add_argument("mode", choices=["grpc", "http", "http-lean", "raw"])
    p.add_argument("--url", help="host:port (grpc and http modes)")
    p.add_argument("--model", help="model name (grpc and http modes)")
    p.add_argument(
        "--binary", action="store_true", help="http modes: binary tensor data instead of JSON"
    )
    p.add_argument("--model-path", help="ONNX file (raw mode)")
    p.add_argument("--input-name", default="input")
    p.add_argument("--output-name", default="logits")
    p.add_argument("--shape", required=True, help="input shape, e.g. 1,784")
    p.add_argument(
        "--shm",
        action="store_true",
        help="grpc mode: input and output through system shared memory (needs --output-shape)",
    )
    p.add_argument("--output-shape", default="", help="output shape, e.g. 1,1000 (--shm)")
    p.add_argument(
        "--vary",
        action="store_true",
        help="grpc mode: change one element of the input before every request, so no two "
        "requests send the same bytes (scripts/bench-capture: captures are kept once per input)",
    )
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--requests", type=int, default=0, help="stop after this many (0 = duration)")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--intra-op-threads", type=int, default=1)
    p.add_argument("--inter-op-threads", type=int, default=1)
    p.add_argument("--samples-out", help="write every measured latency (ms, float64) here as .npy")
    p.add_argument(
        "--serve",
        action="store_true",
        help="keep clients connected and run one window per stdin line "
        '{"warmup": s, "duration": s, "samples_out": path}; one JSON result line each',
    )
    args = p.parse_args()
    modes = {"grpc": grpc_calls, "http": http_calls, "http-lean": lean_http_calls, "raw": raw_calls}
    calls = modes[args.mode](args)

    def window(warmup: float, duration: float, samples_out: str | None) -> None:
        res = _run_window(calls, warmup, duration, args.requests)
        samples = res.pop("latencies_ms")
        if samples_out:
            np.save(samples_out, np.asarray(samples, dtype=np.float64))
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()

    if not args.serve:
        window(args.warmup, args.duration, args.samples_out)
        for place in _SHM_PLACES:
            place.close()
        return 0
    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        if line.strip():
            cmd = json.loads(line)
            window(cmd["warmup"], cmd["duration"], cmd.get("samples_out"))
    for place in _SHM_PLACES:
        place.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
