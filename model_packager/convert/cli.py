"""The ``model-packager convert`` subcommand (registered by ``model_packager.cli``).

Progress goes to stderr line by line, the parity table and the package path to stdout. Exit 0 with
a package, 1 with ``error: conversion failed at step '...': why`` and no package. Files named by
options (labels, pre/post-processing) are read and checked before the model is opened, so a
mistake in one costs a second and prints ``error: --option FILE: why``, not a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model_packager.cli_files import read_labels, read_processing
from model_packager.convert.base import DEFAULT_TARGETS, TARGETS
from model_packager.convert.pipeline import SOURCE_KINDS, ConvertSpec, ParityGateFailed, convert
from model_packager.signing import load_private_key


def _progress(msg: str) -> None:
    print(f"  - {msg}", file=sys.stderr, flush=True)


def _positive_int(text: str) -> int:
    """A count of at least 1: parity on no samples would pass every variant unjudged."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, _, dims = text.partition("=")
    if not name or not dims:
        raise argparse.ArgumentTypeError(f"expected NAME=D1,D2,... got {text!r}")
    try:
        return name, tuple(int(d) for d in dims.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"dimensions must be integers in {text!r}") from None


def _cmd_convert(args: argparse.Namespace) -> int:
    labels = read_labels(args.labels) if args.labels else None
    pre = read_processing(args.preprocessing, "preprocessing") if args.preprocessing else None
    post = read_processing(args.postprocessing, "postprocessing") if args.postprocessing else None
    spec = ConvertSpec(
        source=Path(args.source),
        name=args.name,
        version=args.version,
        targets=args.target or DEFAULT_TARGETS,
        source_kind=args.source_kind,
        samples=Path(args.samples) if args.samples else None,
        calibration=Path(args.calibration) if args.calibration else None,
        num_samples=args.num_samples,
        on_parity_fail=args.on_parity_fail,
        classifier=args.classifier,
        input_shapes=dict(args.input_shape or []) or None,
        labels=labels,
        description=args.description,
        preprocessing=pre,
        postprocessing=post,
        mxnet_python=Path(args.mxnet_python) if args.mxnet_python else None,
    )
    key = load_private_key(Path(args.key)) if args.key else None
    try:
        report = convert(spec, Path(args.out_dir), key, progress=_progress)
    except ParityGateFailed as exc:
        print(exc.report.table())
        raise
    print(report.table())
    print(report.package)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser(
        "convert",
        help="convert a Keras/SavedModel/MXNet/ONNX/ModelArts model into a gated multi-variant "
        "package",
    )
    c.add_argument("source", help="; ".join(SOURCE_KINDS.values()))
    c.add_argument("--name", required=True)
    c.add_argument("--version", required=True)
    c.add_argument(
        "--target",
        action="append",
        choices=list(TARGETS),
        help=f"variant to produce (repeat); default {' '.join(DEFAULT_TARGETS)}",
    )
    c.add_argument(
        "--source-kind",
        choices=list(SOURCE_KINDS),
        help="what SOURCE is (default: guessed from the files): "
        + ", ".join(f"{kind} ({on_disk})" for kind, on_disk in SOURCE_KINDS.items()),
    )
    c.add_argument("--samples", help="parity samples: .npy, .npz (by input name), or folder")
    c.add_argument("--calibration", help="int8 representative data (default: the samples)")
    c.add_argument(
        "--num-samples", type=_positive_int, default=64, help="samples generated / used (>= 1)"
    )
    c.add_argument("--on-parity-fail", choices=["drop", "fail"], default="drop")
    c.add_argument(
        "--classifier",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="judge int8 by top-1 agreement (default: guess from the output shape)",
    )
    c.add_argument(
        "--input-shape",
        action="append",
        type=_shape,
        metavar="NAME=D1,D2,...",
        help="input shape, -1 for dynamic (required for MXNet)",
    )
    c.add_argument("--labels", help="text file, one label per line")
    c.add_argument("--description", default="")
    c.add_argument("--preprocessing", help="JSON file with the manifest's preprocessing")
    c.add_argument("--postprocessing", help="JSON file with the manifest's postprocessing")
    c.add_argument("--mxnet-python", help="python of the MXNet venv (default .venv-mxnet)")
    c.add_argument("--key", help="private key to sign with (else the package is unsigned)")
    c.add_argument("--out-dir", default=".")
    c.set_defaults(func=_cmd_convert)
