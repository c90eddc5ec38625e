"""``model-packager``: keygen, build, convert, sign, verify, inspect.

Errors from the library and unusable input files print as one clear line on stderr with exit
status 1; usage errors exit 2. A traceback means a bug, never a mistake in the command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from model_packager import __version__
from model_packager.archive import open_package, verify_package
from model_packager.build import ArtifactInput, BuildSpec, build_package, sign_package
from model_packager.cli_files import InputFileError, read_labels
from model_packager.convert.cli import add_parser as add_convert_parser
from model_packager.errors import PackageError
from model_packager.signing import TrustStore, generate_keypair, load_private_key
from protos.fleet_capture import policy_from_dict


def _progress(msg: str) -> None:
    print(f"  - {msg}", file=sys.stderr, flush=True)


def _cmd_keygen(args: argparse.Namespace) -> int:
    out = Path(args.out_dir)
    kid = generate_keypair(out / f"{args.name}.key", out / f"{args.name}.pub")
    print(
        f"key id {kid}: private {out / (args.name + '.key')}, public {out / (args.name + '.pub')}"
    )
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    artifacts = []
    for item in args.model:
        # MODEL or VARIANT=MODEL
        name, _, file = item.rpartition("=")
        artifacts.append(ArtifactInput(path=Path(file), name=name or None))
    spec = BuildSpec(
        name=args.name,
        version=args.version,
        artifacts=artifacts,
        description=args.description,
        labels=read_labels(args.labels) if args.labels else None,
        golden_count=args.golden_count,
        capture=_capture_block(args.capture),
    )
    key = load_private_key(Path(args.key)) if args.key else None
    path = build_package(spec, Path(args.out_dir), key, progress=_progress)
    print(path)
    return 0


def _capture_block(text: str | None) -> dict[str, Any] | None:
    """``--capture`` as the manifest's capture block; a clear exit on bad JSON."""
    if not text:
        return None
    try:
        block = json.loads(text)
    except ValueError as exc:
        raise SystemExit(f"--capture is not JSON: {exc}") from None
    try:
        policy_from_dict(block)
    except ValueError as exc:
        raise SystemExit(f"--capture: {exc}") from None
    return dict(block)


def _cmd_sign(args: argparse.Namespace) -> int:
    key = load_private_key(Path(args.key))
    path = sign_package(Path(args.package), key, Path(args.out_dir) if args.out_dir else None)
    print(path)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    trust = TrustStore.from_paths(Path(p) for p in args.trusted)
    reader, kid = verify_package(Path(args.package), trust)
    expected = Path(args.package).name.split(".")[0]
    digest = reader.digest
    if len(expected) == 64 and expected != digest:
        print(f"warning: file name does not match its sha256 {digest}", file=sys.stderr)
    m = reader.manifest
    print(f"OK {m.name} {m.version}: signed by key {kid}, {len(m.files())} files verified")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    reader = open_package(Path(args.package))
    m = reader.manifest
    if args.json:
        doc = json.loads(reader.manifest_bytes)
        doc["package_sha256"] = reader.digest
        doc["signed"] = reader.signature_bytes is not None
        print(json.dumps(doc, indent=2))
        return 0
    print(f"{m.name} {m.version}  (format {m.format_version}, sha256 {reader.digest})")
    print(f"  signed: {'yes' if reader.signature_bytes else 'no'}")
    for kind, tensors in (("input", m.inputs), ("output", m.outputs)):
        for t in tensors:
            print(f"  {kind:6} {t.name}: {t.datatype} {t.shape}")
    if m.labels:
        more = ", ..." if len(m.labels) > 5 else ""
        print(f"  labels: {len(m.labels)} ({', '.join(m.labels[:5])}{more})")
    for v in m.variants:
        print(f"  variant {v.name}: {v.runtime} {v.precision}, {v.artifact.size} bytes")
    print(f"  built by {m.provenance.tool} at {m.provenance.created_at} from {m.provenance.source}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="model-packager", description=__doc__)
    p.add_argument("--version", action="version", version=f"model-packager {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    k = sub.add_parser("keygen", help="create an Ed25519 signing key pair")
    k.add_argument("--out-dir", default=".", help="folder for NAME.key and NAME.pub")
    k.add_argument("--name", default="signing", help="file name stem")
    k.set_defaults(func=_cmd_keygen)

    b = sub.add_parser("build", help="build a package from ONNX / TFLite files")
    b.add_argument("model", nargs="+", help="model file, or VARIANT=FILE to name the variant")
    b.add_argument("--name", required=True)
    b.add_argument("--version", required=True)
    b.add_argument("--description", default="")
    b.add_argument("--labels", help="text file, one label per line")
    b.add_argument("--key", help="private key to sign with (else the package is unsigned)")
    b.add_argument("--golden-count", type=int, default=2, help="rows of golden test vectors")
    b.add_argument("--out-dir", default=".")
    b.add_argument(
        "--capture",
        help="the manifest's capture block for agents, JSON, e.g. "
        '\'{"below_confidence": 0.6, "on_request": true}\'',
    )
    b.set_defaults(func=_cmd_build)

    s = sub.add_parser("sign", help="sign a package (writes a new file)")
    s.add_argument("package")
    s.add_argument("--key", required=True)
    s.add_argument("--out-dir")
    s.set_defaults(func=_cmd_sign)

    v = sub.add_parser("verify", help="check signature and every digest")
    v.add_argument("package")
    v.add_argument("--trusted", action="append", required=True, help="public key file or folder")
    v.set_defaults(func=_cmd_verify)

    i = sub.add_parser("inspect", help="show a package's manifest")
    i.add_argument("package")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_cmd_inspect)

    # Lives in model_packager.convert; it imports no framework until a conversion runs.
    add_convert_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (PackageError, InputFileError, OSError) as exc:
        # One line, whatever the message: runtimes' own errors can span several.
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
