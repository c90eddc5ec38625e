"""``edge-agent``: run the daemon, check its config, and talk to a running agent.

``install``, ``status``, ``traffic`` and ``batch`` speak to a running agent over its gRPC
AgentService; ``install --offline`` installs straight into the data folder when no agent runs (the
next start serves it). Errors print one line on stderr and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import __version__
from edge_agent.config import AgentSettings, ClientTlsSettings, ConfigFileError, load_settings
from model_packager.records import SchemaError

if TYPE_CHECKING:
    from edge_agent.grpc.client import AgentClient


def _settings(args: argparse.Namespace) -> AgentSettings:
    return load_settings(Path(args.config) if args.config else None)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from edge_agent.app import Agent

    settings = _settings(args)
    _setup_logging(settings.log_level)
    asyncio.run(Agent(settings).run_until_signal())
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings.tls is not None:
        from edge_agent.tls import load_server_tls

        load_server_tls(settings.tls)  # what `run` checks before binding
    print(json.dumps(settings.to_dict(json=True), indent=2))
    if not settings.trusted_keys:
        print("warning: no trusted_keys: the agent will refuse every package", file=sys.stderr)
    return 0


def _address(args: argparse.Namespace) -> str:
    if args.address:
        return str(args.address)
    s = _settings(args)
    host = "127.0.0.1" if s.grpc_host in ("0.0.0.0", "::") else s.grpc_host
    return f"{host}:{s.grpc_port}"


_TLS_FLAGS = ("ca_file", "cert_file", "key_file", "server_name")


def _client_tls(args: argparse.Namespace) -> ClientTlsSettings | None:
    """``cli_tls`` with the command's flags over it; TLS whenever the agent's config has
    ``tls`` (this config is the agent's), ``cli_tls`` is set, or a TLS flag is given."""
    s = _settings(args)
    flags = {k: v for k in _TLS_FLAGS if (v := getattr(args, k, None)) is not None}
    if s.cli_tls is None and s.tls is None and not flags:
        return None
    base = s.cli_tls.to_dict(exclude_none=True) if s.cli_tls is not None else {}
    return ClientTlsSettings(**{**base, **flags})


def _client(args: argparse.Namespace) -> AgentClient:
    # gRPC's core logs a failed TLS handshake on stderr itself; the command already reports
    # it as its one error line. GRPC_VERBOSITY set by the caller (to debug) still wins.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from edge_agent.grpc.client import AgentClient

    # The token of the agent's own settings (auth_token / auth_token_file, or their
    # EDGE_AGENT_ variables): the command line runs on the device next to it.
    return AgentClient(_address(args), _client_tls(args), _settings(args).bearer_token())


def _print(doc: dict[str, Any]) -> None:
    print(json.dumps(doc, indent=2))


def _cmd_install(args: argparse.Namespace) -> int:
    pkg = Path(args.package).resolve()
    if args.offline:
        return _install_offline(args, pkg)
    _print(_client(args).install(pkg, not args.no_activate, args.upload, args.timeout))
    return 0


def _install_offline(args: argparse.Namespace, pkg: Path) -> int:
    from edge_agent.app import Agent

    settings = _settings(args)
    _setup_logging(settings.log_level)

    async def go() -> int:
        agent = Agent(settings)
        await agent.installer.recover()
        outcome, _ = await agent.installer.install(pkg, not args.no_activate)
        print(json.dumps(outcome.to_json(), indent=2))
        return 0 if outcome.outcome == "COMMITTED" else 1

    return asyncio.run(go())


def _cmd_join(args: argparse.Namespace) -> int:
    import yaml

    from edge_agent.fleet.bundle import config_from_bundle
    from model_packager.errors import SignatureError

    out = Path(args.out)
    doc = json.loads(Path(args.bundle).read_text())
    doc = doc.get("bundle", doc)  # the whole registration response works too
    extra = {"data_dir": args.data_dir} if args.data_dir else {}
    try:
        config = config_from_bundle(doc, out.parent / "trusted-keys", **extra)
    except SignatureError as exc:
        print(f"error: {args.bundle}: a trusted key of the bundle: {exc}", file=sys.stderr)
        return 1
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    out.chmod(0o600)  # it holds the broker password
    print(f"wrote {out}; run: edge-agent run --config {out}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    _print(_client(args).status())
    return 0


def _weight(text: str) -> tuple[str, float]:
    """``VERSION=WEIGHT`` from the command line."""
    version, sep, weight = text.partition("=")
    try:
        if not sep or not version:
            raise ValueError
        return version, float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected VERSION=WEIGHT, got {text!r}") from None


def _cmd_traffic(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.traffic_command == "get":
        _print(client.get_traffic(args.model))
        return 0
    if args.traffic_command == "clear":
        _print(client.set_traffic(args.model, {}, "", 0.0))
        return 0
    weights = dict(args.weight or [])
    fraction = args.shadow_fraction if args.shadow else 0.0
    _print(client.set_traffic(args.model, weights, args.shadow or "", fraction))
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.batch_command == "submit":
        job = client.submit_batch(
            args.model,
            args.model_version,
            args.output or "",
            manifest_path=str(Path(args.manifest).resolve()) if args.manifest else "",
            input_dir="" if args.manifest else str(Path(args.input_dir).resolve()),
        )
    else:
        job = client.get_batch(args.job_id)
    _print(job)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    p.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, address: bool = False) -> None:
        sp.add_argument("--config", help="YAML settings file (env EDGE_AGENT_* overrides it)")
        if address:
            sp.add_argument("--address", help="host:port of the agent (default: from config)")
            tls = sp.add_argument_group("TLS (over cli_tls from the config)")
            tls.add_argument("--ca-file", help="CA certificates (PEM) to trust for the agent")
            tls.add_argument("--cert-file", help="client certificate (PEM), for mutual TLS")
            tls.add_argument("--key-file", help="the client certificate's private key (PEM)")
            tls.add_argument("--server-name", help="name to check the agent's certificate for")

    r = sub.add_parser("run", help="run the agent")
    common(r)
    r.set_defaults(func=_cmd_run)

    v = sub.add_parser("validate-config", help="print the effective settings or the error")
    common(v)
    v.set_defaults(func=_cmd_validate)

    i = sub.add_parser("install", help="install a signed package")
    common(i, address=True)
    i.add_argument("package")
    i.add_argument("--no-activate", action="store_true", help="install but keep the active version")
    i.add_argument("--offline", action="store_true", help="install into the data folder directly")
    i.add_argument("--upload", action="store_true", help="send the bytes instead of the path")
    i.add_argument("--timeout", type=float, default=300.0)
    i.set_defaults(func=_cmd_install)

    j = sub.add_parser("join", help="write an agent config from a control plane device bundle")
    j.add_argument("bundle", help="the JSON bundle returned when the device was registered")
    j.add_argument("--out", required=True, help="YAML config file to write")
    j.add_argument("--data-dir", help="data_dir to put in the config")
    j.set_defaults(func=_cmd_join)

    s = sub.add_parser("status", help="show a running agent's status")
    common(s, address=True)
    s.set_defaults(func=_cmd_status)

    t = sub.add_parser("traffic", help="split requests over versions; shadow a candidate")
    common(t, address=True)
    tsub = t.add_subparsers(dest="traffic_command", required=True)
    ts = tsub.add_parser("set", help="replace the model's split (and shadow) at once")
    ts.add_argument("--model", required=True)
    ts.add_argument(
        "--weight",
        action="append",
        type=_weight,
        metavar="VERSION=WEIGHT",
        help="relative weight of a loaded version (repeat: --weight 1=90 --weight 2=10)",
    )
    ts.add_argument("--shadow", metavar="VERSION", help="mirror requests to this version too")
    ts.add_argument(
        "--shadow-fraction", type=float, default=0.1, help="share mirrored (default 0.1)"
    )
    tg = tsub.add_parser("get", help="the split, per version counts, shadow agreement")
    tg.add_argument("--model", required=True)
    tc = tsub.add_parser("clear", help="back to the active version answering everything")
    tc.add_argument("--model", required=True)
    t.set_defaults(func=_cmd_traffic)

    b = sub.add_parser("batch", help="batch prediction jobs")
    common(b, address=True)
    bsub = b.add_subparsers(dest="batch_command", required=True)
    bs = bsub.add_parser("submit")
    bs.add_argument("--model", required=True)
    bs.add_argument("--model-version", default="")
    src = bs.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help='JSONL of {"source": file} or {"inputs": {...}} lines')
    src.add_argument("--input-dir", help="folder of .npy, image and .jsonl tensor files")
    bs.add_argument("--output", help="results JSONL path")
    bg = bsub.add_parser("get")
    bg.add_argument("job_id")
    b.set_defaults(func=_cmd_batch)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SchemaError as exc:
        # Without the input values: they may hold the token or the broker password.
        lines = [f"  {p.where or 'settings'}: {p.msg}" for p in exc.problems]
        print("error: invalid settings:\n" + "\n".join(lines), file=sys.stderr)
        return 1
    except (FileNotFoundError, ConfigFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        import grpc

        from edge_agent.tls import TlsError

        if isinstance(exc, TlsError):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, grpc.RpcError):
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
