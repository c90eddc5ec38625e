"""`control-plane` command line: serve, broker-config, migrate."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError


def _settings():  # type: ignore[no-untyped-def]
    from control_plane.core.settings import Settings

    try:
        return Settings()
    except (ValidationError, ValueError) as exc:  # ValueError: an unknown CONTROL_PLANE_* name
        print(f"control-plane: invalid settings:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None


# Libraries that log every internal step at INFO.
_NOISY_LOGGERS = ("transitions", "amqtt", "alembic.runtime.plugins")


def cmd_serve(_args: argparse.Namespace) -> int:
    import uvicorn

    from control_plane.app import create_app

    settings = _settings()
    problem = _unreadable_trusted_keys(settings)
    if problem:
        print(f"control-plane: CONTROL_PLANE_TRUSTED_KEYS: {problem}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)
    return 0


def _unreadable_trusted_keys(settings) -> str:  # type: ignore[no-untyped-def]
    """Why the configured trusted keys cannot be loaded, or "". Checked before the server
    starts: a missing or malformed key file is a mistake in the command, said in one line with
    exit 2, not a traceback out of the application's startup."""
    from model_packager.errors import SignatureError
    from model_packager.signing import TrustStore

    try:
        TrustStore.from_paths(settings.registry.trusted_keys)
    except SignatureError as exc:
        return str(exc)
    return ""


def cmd_emqx_config(args: argparse.Namespace) -> int:
    from control_plane.fleet.emqx import EmqxOptions, render_emqx_conf

    if not args.hook_url:
        print("control-plane broker-config: --emqx needs --hook-url", file=sys.stderr)
        return 2
    try:
        text = render_emqx_conf(_settings(), EmqxOptions(hook_url=args.hook_url))
    except ValueError as exc:
        print(f"control-plane broker-config: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "emqx.conf"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)  # it holds the hook token
    tmp.replace(path)
    print(f"wrote {path}; include it in EMQX's configuration (see docs/deployment.md)")
    return 0


def cmd_broker_config(args: argparse.Namespace) -> int:
    if args.emqx:
        return cmd_emqx_config(args)
    from control_plane.core.context import AppContext
    from control_plane.core.database import upgrade
    from control_plane.fleet.broker_config import (
        BrokerConfigError,
        ListenerOptions,
        access_problems,
        files_the_broker_reads,
        resolve_run_as_user,
        write_broker_config,
    )

    try:
        options = ListenerOptions(
            port=args.port,
            bind=args.bind,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_ca=args.tls_ca,
            require_client_cert=args.require_client_cert,
            cert_port=args.cert_port,
            persistence=not args.no_persistence,
            run_as_user=resolve_run_as_user(args.run_as_user),
        )
        ctx = AppContext.from_settings(_settings())
        upgrade(ctx.engine)
        try:
            with ctx.sessions() as session:
                conf = write_broker_config(ctx.settings, session, args.out, options)
        finally:
            ctx.close()
    except BrokerConfigError as exc:
        print(f"control-plane broker-config: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {conf} (+ passwd, acl); run: mosquitto -c {conf}")
    if options.run_as_user:
        readable, data = files_the_broker_reads(args.out, options)
        writable = [data] if options.persistence else []
        problems = access_problems(options.run_as_user, readable, writable)
        if problems:
            print(
                f"control-plane broker-config: Mosquitto opens these after dropping to user "
                f"{options.run_as_user!r}, which:\n  "
                + "\n  ".join(problems)
                + f"\nGive each to that user's group (chgrp {options.run_as_user} F; chmod 0640 F) "
                "and make every folder on the way searchable by it.",
                file=sys.stderr,
            )
            return 2
    return 0


def cmd_migrate(_args: argparse.Namespace) -> int:
    from control_plane.core.context import AppContext
    from control_plane.core.database import upgrade

    ctx = AppContext.from_settings(_settings())
    upgrade(ctx.engine)
    ctx.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="control-plane", description="Edge fleet control plane (settings: CONTROL_PLANE_*)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="run the REST API and the fleet channel").set_defaults(
        func=cmd_serve
    )

    bc = sub.add_parser(
        "broker-config",
        help="write mosquitto.conf, passwd and acl from the device registry (or emqx.conf)",
    )
    bc.add_argument("--out", type=Path, required=True, help="folder to write into")
    bc.add_argument("--port", type=int, default=1883)
    bc.add_argument("--bind", default="0.0.0.0")
    bc.add_argument("--tls-cert", type=Path, help="server certificate (PEM): enables TLS")
    bc.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    bc.add_argument(
        "--tls-ca", type=Path, help="CA that signs client certificates (needed by the next two)"
    )
    bc.add_argument(
        "--require-client-cert",
        action="store_true",
        help="the listener on --port authenticates by client certificate (CN = device id or the "
        "control plane's user name) instead of password",
    )
    bc.add_argument(
        "--cert-port",
        type=int,
        help="also open a TLS listener on this port that authenticates by client certificate; "
        "--port keeps passwords",
    )
    bc.add_argument("--no-persistence", action="store_true", help="keep retained state in memory")
    bc.add_argument(
        "--run-as-user",
        help="user Mosquitto drops to when started as root (default as root: mosquitto); the "
        "password and ACL files and the persistence folder are given to it",
    )
    bc.add_argument(
        "--emqx",
        action="store_true",
        help="write emqx.conf instead: EMQX authenticates and authorizes through the control "
        "plane's HTTP hooks (needs --hook-url and CONTROL_PLANE_BROKER_HOOK_TOKEN)",
    )
    bc.add_argument("--hook-url", help="with --emqx: the control plane's URL as EMQX reaches it")
    bc.set_defaults(func=cmd_broker_config)

    sub.add_parser("migrate", help="apply database migrations and exit").set_defaults(
        func=cmd_migrate
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        for noisy in _NOISY_LOGGERS:
            logging.getLogger(noisy).setLevel(logging.WARNING)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
