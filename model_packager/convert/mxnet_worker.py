"""MXNet side of the MXNet converter; runs inside .venv-mxnet (see scripts/setup-mxnet).

This file is executed by path with that environment's python, never imported by model_packager:
MXNet 1.9.1 needs numpy < 1.24, onnx 1.14 and protobuf < 4, so it cannot share a process with
the rest. It therefore uses only MXNet, numpy and the standard library, and speaks JSON on stdout.

    python mxnet_worker.py info   SYMBOL PARAMS
    python mxnet_worker.py run    SYMBOL PARAMS INPUTS.npz OUTPUTS.npz
    python mxnet_worker.py export SYMBOL PARAMS SHAPES_JSON OUT.onnx   (MXNet picks the opset)
"""

import json
import sys

import numpy as np
from worker_cli import serve  # a sibling file: this script runs by path


def _load(symbol_path, params_path):
    import mxnet as mx

    sym = mx.sym.load(symbol_path)
    params = mx.nd.load(params_path)
    names = {k.split(":", 1)[-1] for k in params}
    inputs = [a for a in sym.list_arguments() if a not in names]
    return mx, sym, params, inputs


def info(symbol_path, params_path):
    _, sym, _, inputs = _load(symbol_path, params_path)
    return {"inputs": inputs, "outputs": sym.list_outputs()}


def run(symbol_path, params_path, inputs_path, outputs_path):
    mx, sym, _, inputs = _load(symbol_path, params_path)
    block = mx.gluon.SymbolBlock.imports(symbol_path, inputs, params_path, ctx=mx.cpu())
    with np.load(inputs_path) as data:
        args = [mx.nd.array(data[n], dtype=data[n].dtype) for n in inputs]
    out = block(*args)
    outs = out if isinstance(out, list | tuple) else [out]
    names = sym.list_outputs()
    np.savez(outputs_path, **{n: o.asnumpy() for n, o in zip(names, outs, strict=True)})
    return {"outputs": names}


def export(symbol_path, params_path, shapes_json, out_path):
    import mxnet as mx

    shapes = json.loads(shapes_json)
    inputs = _load(symbol_path, params_path)[3]
    in_shapes = [[1 if d == -1 else d for d in shapes[n]] for n in inputs]
    dynamic = [[None if d == -1 else d for d in shapes[n]] for n in inputs]
    mx.onnx.export_model(
        symbol_path,
        params_path,
        in_shapes=in_shapes,
        in_types=[np.float32] * len(inputs),
        onnx_file_path=out_path,
        dynamic=any(None in s for s in dynamic),
        dynamic_input_shapes=dynamic,
    )
    return {"onnx": out_path, "mxnet": mx.__version__}


def main(argv):
    return serve({"info": info, "run": run, "export": export}, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
