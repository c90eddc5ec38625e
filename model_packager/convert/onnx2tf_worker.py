"""onnx2tf side of the ONNX -> TFLite converter; runs inside .venv-onnx2tf (scripts/setup-onnx2tf).

This file is executed by path with that environment's python, never imported by model_packager:
onnx2tf pins TensorFlow 2.19, protobuf 4 and numpy 1.26, which cannot share a process with the
main environment. It uses only onnx2tf, numpy and the standard library, and speaks JSON on stdout.

    python onnx2tf_worker.py convert MODEL.onnx OUT_DIR MODE REQUEST_JSON

MODE is ``fp32``, ``fp16``, ``int8-dynamic`` or ``int8`` (full integer with float inputs and
outputs, calibrated on the ``.npy`` files the request names). REQUEST_JSON:
``{"keep_layout": [input names], "calibration": {input name: npy path}}``. 4-D (and 3-D, 5-D)
inputs named in ``keep_layout`` keep ONNX's channels-first layout (onnx2tf adds the transpose
inside the model), so the TFLite model takes exactly the ONNX model's inputs.
"""

import contextlib
import io
import json
import os
import sys

from worker_cli import serve  # a sibling file: this script runs by path

_SUFFIX = {
    "fp32": "_float32.tflite",
    "fp16": "_float16.tflite",
    "int8-dynamic": "_dynamic_range_quant.tflite",
    "int8": "_integer_quant.tflite",
}


def convert(model_path, out_dir, mode, request_json):
    request = json.loads(request_json)
    if mode not in _SUFFIX:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(_SUFFIX)}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import onnx2tf

    options = {
        "input_onnx_file_path": model_path,
        "output_folder_path": out_dir,
        "keep_ncw_or_nchw_or_ncdhw_input_names": request.get("keep_layout") or None,
        "copy_onnx_input_output_names_to_tflite": True,
        "output_signaturedefs": True,
        "non_verbose": True,
    }
    if mode == "int8-dynamic":
        options["output_dynamic_range_quantized_tflite"] = True
    if mode == "int8":
        # [[input name, npy path, mean, std]]: the samples are already what the model takes.
        options["output_integer_quantized_tflite"] = True
        options["custom_input_op_name_np_data_path"] = [
            [name, path, 0.0, 1.0] for name, path in request.get("calibration", {}).items()
        ]
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # stdout carries the one JSON answer
        onnx2tf.convert(**options)
    stem = os.path.splitext(os.path.basename(model_path))[0]
    produced = os.path.join(out_dir, stem + _SUFFIX[mode])
    if not os.path.isfile(produced):
        tail = " ".join(log.getvalue().split()[-60:])
        raise RuntimeError(f"onnx2tf wrote no {os.path.basename(produced)}: {tail}")
    return {"tflite": produced, "onnx2tf": onnx2tf.__version__}


def main(argv):
    return serve({"convert": convert}, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
