"""The command-line side shared by the converter workers (mxnet_worker.py, onnx2tf_worker.py).

The workers run by path on their own venvs' python (3.10 or newer), so this module uses only the
standard library and is imported by them as a sibling (the script's folder is first on
``sys.path``). It is the other half of :mod:`model_packager.convert.venv_worker`: one command and
its arguments in, exactly one JSON line out, ``{"error": ...}`` with exit status 1 on failure.
"""

import json


def serve(commands, argv):
    """Run ``commands[argv[1]](*argv[2:])`` and print its answer (or its error) as one JSON line."""
    try:
        result = commands[argv[1]](*argv[2:])
    except Exception as exc:  # reported to the parent as one JSON line
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result))
    return 0
