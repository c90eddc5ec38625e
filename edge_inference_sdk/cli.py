"""``eictl``: the control plane from the command line, on the SDK.

Tables for people, ``--json`` for scripts (the API's objects, one JSON document on stdout),
progress and waits on stderr. Exit codes (``EXIT_*``) say what happened, so scripts can branch:

- 0 done;
- 1 the operation ran and failed: a job ended failed/canceled, a conversion or a deployment
  target failed, a notebook did not start;
- 2 bad command line;
- 3 the API refused the request (404, 409, 413, 422, ...);
- 4 missing or wrong token (401);
- 5 the control plane could not be reached, or failed (5xx);
- 6 a wait ran out of time (``--timeout``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from edge_inference_sdk.client import Client
from edge_inference_sdk.config import load_profile, save_profile
from edge_inference_sdk.errors import (
    ApiError,
    ConnectionFailed,
    NotFound,
    ServerError,
    Unauthorized,
    WaitTimeout,
)
from edge_inference_sdk.progress import Bar, status_line
from edge_inference_sdk.resources.training import zip_folder

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED, EXIT_AUTH, EXIT_UNREACHABLE, EXIT_TIMEOUT = range(7)


class Failed(Exception):
    """The operation ran and did not succeed (exit 1); the result is still printed."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


# --- output ----------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[str(r.get(c, "") if r.get(c) is not None else "") for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _emit(args: argparse.Namespace, result: Any, columns: Sequence[str] | None = None) -> None:
    data = _plain(result)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    elif isinstance(data, list) and columns:
        print(_table(data, columns) if data else "(none)")
    elif isinstance(data, dict) and columns:
        print(_table([data], columns))
    elif data is not None:
        print(data if isinstance(data, str) else json.dumps(data, indent=2, sort_keys=True))


def _bar(args: argparse.Namespace, label: str) -> Callable[[int, int | None], None] | None:
    return None if args.quiet else Bar(label)


def _watch(args: argparse.Namespace, label: str) -> Callable[[Any], None] | None:
    """A wait's on_poll: one stderr line per state change."""
    if args.quiet:
        return None
    last: dict[str, str] = {}

    def show(item: Any) -> None:
        state = str(getattr(item, "state", ""))
        if last.get("state") != state:
            last["state"] = state
            status_line(label, state)

    return show


def _kv(pairs: list[str] | None, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise SystemExit(_usage(f"{what} {pair!r} is not key=value"))
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _usage(message: str) -> int:
    print(f"eictl: {message}", file=sys.stderr)
    return EXIT_USAGE


# --- verbs -----------------------------------------------------------------------------------


def _dataset_id(client: Client, ref: str) -> str:
    """A dataset by id or by name."""
    try:
        return client.datasets.get(ref).id
    except NotFound:
        found = client.datasets.find(ref)
        if found is None:
            raise
        return found.id


def cmd_login(client: Client, args: argparse.Namespace) -> Any:
    client.training.algorithms()  # proves the URL and the token
    path = save_profile(client.url, args.token_value, args.profile or "default")
    return {"url": client.url, "profile": args.profile or "default", "config": str(path)}


def cmd_datasets_list(client: Client, args: argparse.Namespace) -> Any:
    return client.datasets.list()


def cmd_datasets_create(client: Client, args: argparse.Namespace) -> Any:
    return client.datasets.create(
        args.name, type=args.type, labels=args.label or [], multi_label=args.multi_label
    )


def cmd_datasets_import(client: Client, args: argparse.Namespace) -> Any:
    dataset_id = _dataset_id(client, args.dataset)
    source = Path(args.path)
    if source.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            archive = zip_folder(source, Path(tmp) / f"{source.name}.zip")
            report = client.datasets.upload_archive(
                dataset_id, archive, args.format, progress=_bar(args, "upload")
            )
    elif source.is_file():
        report = client.datasets.upload_archive(
            dataset_id, source, args.format, progress=_bar(args, "upload")
        )
    else:
        raise SystemExit(_usage(f"{source} is neither a folder nor a zip file"))
    if report.errors and args.strict:
        raise Failed(f"{len(report.errors)} items were refused", report)
    return report


def cmd_datasets_publish(client: Client, args: argparse.Namespace) -> Any:
    dataset_id = _dataset_id(client, args.dataset)
    return client.datasets.publish(dataset_id, train_ratio=args.train_ratio, seed=args.seed)


def cmd_datasets_versions(client: Client, args: argparse.Namespace) -> Any:
    return client.datasets.versions(_dataset_id(client, args.dataset))


def cmd_jobs_list(client: Client, args: argparse.Namespace) -> Any:
    return client.training.jobs(name=args.name, state=args.state)


def cmd_jobs_get(client: Client, args: argparse.Namespace) -> Any:
    return client.training.job(args.job_id)


def _finish_job(client: Client, args: argparse.Namespace, job_id: str) -> Any:
    if args.follow:
        for line in client.training.logs(job_id, follow=True):
            print(line, file=sys.stderr if args.json else sys.stdout, flush=True)
    job = client.training.wait(
        job_id, timeout=args.timeout, poll_s=args.poll, on_poll=_watch(args, f"job {job_id}")
    )
    if job.state != "succeeded":
        raise Failed(f"job {job_id} {job.state}: {job.failure_reason}", job)
    return job


def cmd_jobs_run(client: Client, args: argparse.Namespace) -> Any:
    spec: dict[str, Any] = {"hyperparameters": _kv(args.hp, "--hp"), "framework": args.framework}
    if args.dataset:
        spec["dataset_id"] = _dataset_id(client, args.dataset)
        spec["dataset_version"] = args.version
    if args.data_path:
        spec["data_path"] = args.data_path
    algorithm = args.algorithm
    if args.code:
        spec["code_id"] = client.training.upload_code(
            Path(args.code), progress=_bar(args, "code")
        ).code_id
        algorithm = algorithm or "script"
    elif args.code_id:
        spec["code_id"] = args.code_id
        algorithm = algorithm or "script"
    if args.boot_file:
        spec["boot_file"] = args.boot_file
    if not algorithm:
        raise SystemExit(_usage("give --algorithm, or --code/--code-id for a script"))
    job = client.training.create_job(args.name, algorithm, **spec)
    if not (args.follow or args.wait):
        return job
    return _finish_job(client, args, job.id)


def cmd_jobs_logs(client: Client, args: argparse.Namespace) -> Any:
    for line in client.training.logs(args.job_id, follow=args.follow):
        print(line, flush=True)
    return None


def cmd_jobs_wait(client: Client, args: argparse.Namespace) -> Any:
    args.follow = False
    return _finish_job(client, args, args.job_id)


def cmd_jobs_cancel(client: Client, args: argparse.Namespace) -> Any:
    return client.training.cancel(args.job_id)


def cmd_models_list(client: Client, args: argparse.Namespace) -> Any:
    if args.name:
        return client.models.versions(args.name)
    return client.models.list()


def _model_done(client: Client, args: argparse.Namespace, name: str, version: str) -> Any:
    mv = client.models.wait(
        name, version, timeout=args.timeout, poll_s=args.poll,
        on_poll=_watch(args, f"model {name} {version}"), raise_on_failure=False,
    )  # fmt: skip
    if mv.state != "ready":
        raise Failed(f"model {name} {version} {mv.state}: {mv.error}", mv)
    return mv


def cmd_models_register(client: Client, args: argparse.Namespace) -> Any:
    options: dict[str, Any] = {}
    if args.target:
        options["targets"] = args.target
    if args.model_version:
        options["version"] = args.model_version
    mv = client.models.register(args.name, args.job, **options)
    return _model_done(client, args, mv.name, mv.version) if args.wait else mv


def cmd_models_import(client: Client, args: argparse.Namespace) -> Any:
    fields: dict[str, Any] = {"version": args.model_version, "kind": args.kind}
    if args.labels:
        fields["labels"] = args.labels
    mv = client.models.import_file(
        args.name, Path(args.path), progress=_bar(args, "upload"), **fields
    )
    return _model_done(client, args, mv.name, mv.version) if args.wait else mv


def cmd_models_wait(client: Client, args: argparse.Namespace) -> Any:
    return _model_done(client, args, args.name, args.model_version)


def cmd_models_download(client: Client, args: argparse.Namespace) -> Any:
    dest = Path(args.output) if args.output else Path.cwd()
    if args.output and args.output.endswith(("/", os.sep)):
        dest.mkdir(parents=True, exist_ok=True)  # `-o ./packages/`: a folder, made if missing
    path = client.models.download(
        args.name, args.model_version, dest, progress=_bar(args, "download")
    )
    return {"path": str(path), "size": path.stat().st_size}


def cmd_packages_list(client: Client, args: argparse.Namespace) -> Any:
    return client.packages.list()


def cmd_packages_get(client: Client, args: argparse.Namespace) -> Any:
    return client.packages.get(args.digest)


def cmd_packages_upload(client: Client, args: argparse.Namespace) -> Any:
    """A package signed outside the registry (``model-packager build --key``), so that
    ``eictl deploy --package`` can send it to devices."""
    path = Path(args.path)
    if not path.is_file():
        raise SystemExit(_usage(f"{args.path}: no such file"))
    return client.packages.upload(path, progress=_bar(args, "upload"))


def cmd_keys_list(client: Client, args: argparse.Namespace) -> Any:
    return client.keys.list()


def cmd_keys_rotate(client: Client, args: argparse.Namespace) -> Any:
    return client.keys.rotate()


def cmd_devices_list(client: Client, args: argparse.Namespace) -> Any:
    return client.devices.list(_kv(args.label, "--label"))


def cmd_devices_register(client: Client, args: argparse.Namespace) -> Any:
    reg = client.devices.register(args.name or "", args.device_id, _kv(args.label, "--label"))
    if args.bundle:
        fd = os.open(args.bundle, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(reg.bundle, f, indent=2)
    return reg if args.json else reg.device


def cmd_deploy(client: Client, args: argparse.Namespace) -> Any:
    if args.weight is not None and not args.standby:
        raise SystemExit(_usage("--weight is a standby version's share: give it with --standby"))
    target: dict[str, Any] = {}
    if args.package:
        target["package_digest"] = args.package
    elif args.model:
        if not args.model_version:
            raise SystemExit(_usage("--model needs --version"))
        mv = client.models.get(args.model, args.model_version)
        if not mv.package_digest:
            raise Failed(f"model {args.model} {args.model_version} has no package ({mv.state})")
        target["package_digest"] = mv.package_digest
    else:
        raise SystemExit(_usage("give --package or --model/--version"))
    if args.device:
        target["device_id"] = args.device
    elif args.selector:
        target["selector"] = {k: str(v) for k, v in _kv(args.selector, "--selector").items()}
    else:
        raise SystemExit(_usage("give --device or --selector"))
    if args.action != "install":
        target["action"] = args.action
    if args.standby:
        target["standby"] = True
    if args.weight is not None:
        target["weight"] = args.weight
    if args.guard is not None:
        try:
            target["guard"] = json.loads(args.guard)
        except ValueError as exc:
            raise SystemExit(_usage(f"--guard is JSON: {exc}")) from None
    deployment = client.deployments.create(**target)
    if not args.wait:
        return deployment
    done = client.deployments.wait(
        deployment.id, timeout=args.timeout, poll_s=args.poll,
        on_poll=_watch_summary(args, f"deployment {deployment.id}"),
    )  # fmt: skip
    failed = [t.device_id for t in done.targets if t.state == "failed"]
    if failed:
        raise Failed(f"deployment failed on {', '.join(failed)}", done)
    return done


def _watch_summary(args: argparse.Namespace, label: str) -> Callable[[Any], None] | None:
    if args.quiet:
        return None
    last: dict[str, str] = {}

    def show(item: Any) -> None:
        text = ", ".join(f"{k} {v}" for k, v in sorted(item.summary.items()))
        if last.get("text") != text:
            last["text"] = text
            status_line(label, text)

    return show


def cmd_deployments_list(client: Client, args: argparse.Namespace) -> Any:
    return client.deployments.list()


def cmd_notebooks_list(client: Client, args: argparse.Namespace) -> Any:
    return client.notebooks.list()


def cmd_notebooks_create(client: Client, args: argparse.Namespace) -> Any:
    dataset_id = _dataset_id(client, args.dataset) if args.dataset else None
    nb = client.notebooks.create(
        args.name, dataset_id, args.version if dataset_id else None, args.idle_s, args.example
    )
    if args.wait:
        try:
            nb = client.notebooks.wait_running(
                nb.id, timeout=args.timeout, poll_s=args.poll, on_poll=_watch(args, "notebook")
            )
        except ApiError as exc:
            raise Failed(str(exc), client.notebooks.get(nb.id)) from None
    return nb


def cmd_notebooks_stop(client: Client, args: argparse.Namespace) -> Any:
    return client.notebooks.stop(args.notebook_id)


def cmd_notebooks_start(client: Client, args: argparse.Namespace) -> Any:
    nb = client.notebooks.start(args.notebook_id)
    if args.wait:
        nb = client.notebooks.wait_running(nb.id, timeout=args.timeout, poll_s=args.poll)
    return nb


def cmd_notebooks_delete(client: Client, args: argparse.Namespace) -> Any:
    client.notebooks.delete(args.notebook_id)
    return {"deleted": args.notebook_id}


def cmd_notebooks_export(client: Client, args: argparse.Namespace) -> Any:
    export = client.notebooks.export(args.notebook_id, args.path, args.boot_file)
    if not args.json and not args.quiet:
        for change in export.changes:
            print(
                f"cell {change.cell} line {change.line}: {change.reason}: {change.original}",
                file=sys.stderr,
            )
    return export if args.json else {"code_id": export.code_id, "boot_file": export.boot_file}


def cmd_notebooks_open(client: Client, args: argparse.Namespace) -> Any:
    nb = client.notebooks.get(args.notebook_id)
    token = load_profile(args.url, args.token, args.profile).token or "<api token>"
    return {"url": client.notebooks.browser_url(nb, token), "state": nb.state}


def cmd_services_list(client: Client, args: argparse.Namespace) -> Any:
    return client.services.list()


def cmd_services_get(client: Client, args: argparse.Namespace) -> Any:
    return client.services.get(args.name)


def rollout_table(service: dict[str, Any]) -> str:
    """An edge service's latest rollout for people: its version and state, then one row per
    stage (devices, state, gates), so a canary can be watched without ``--json``; "" when the
    service has no rollout (online and batch services)."""
    r = service.get("rollout")
    if not r:
        return ""
    head = f"rollout {r['number']}: {r['model']} {r['version']} {r['state']}"
    if r.get("reason"):
        head += f" ({r['reason']})"
    rows = [
        {
            "stage": s["name"],
            "state": s["state"],
            "devices": ",".join(s["devices"]),
            "gates": " ".join(
                f"{g['gate']}:{'ok' if g['passed'] else 'failed'}" for g in s.get("gates", [])
            ),
        }
        for s in r.get("stages", [])
    ]
    return head + "\n" + _table(rows, ("stage", "state", "devices", "gates"))


def cmd_captures_list(client: Client, args: argparse.Namespace) -> Any:
    return client.captures.list(
        device_id=args.device, service=args.service, state=args.state, dataset=args.dataset
    )


def cmd_captures_queue(client: Client, args: argparse.Namespace) -> Any:
    return client.captures.review_queue(args.dataset, args.order, args.limit).items


def cmd_captures_review(client: Client, args: argparse.Namespace) -> Any:
    # Said here, before any request: the API's own answer (422) names a body field the
    # command line does not have.
    if args.action == "correct" and not args.label:
        raise SystemExit(_usage("captures review ID correct needs the LABEL to set"))
    if args.action != "correct" and args.label:
        raise SystemExit(_usage(f"captures review ID {args.action} takes no LABEL"))
    return client.captures.review(args.capture_id, args.action, args.label)


def cmd_captures_purge(client: Client, args: argparse.Namespace) -> Any:
    return client.captures.purge(args.device_id)


def cmd_captures_improve(client: Client, args: argparse.Namespace) -> Any:
    imp = client.captures.improve(args.service)
    if not args.wait:
        return imp
    done = client.captures.wait_improvement(
        imp.id, args.timeout, args.poll, _watch(args, "improvement")
    )
    if done.state != "succeeded":
        raise Failed(f"improvement {done.id} {done.state}: {done.error}", done)
    return done


# --- parser ----------------------------------------------------------------------------------

_COLUMNS: dict[Callable[..., Any], tuple[str, ...]] = {
    cmd_datasets_list: ("id", "name", "type", "sample_count"),
    cmd_datasets_create: ("id", "name", "type", "labels"),
    cmd_datasets_import: ("imported", "labels_added"),
    cmd_datasets_publish: ("name", "sample_count", "train_count", "validation_count", "digest"),
    cmd_datasets_versions: ("name", "sample_count", "train_count", "validation_count"),
    cmd_jobs_list: ("id", "name", "version", "algorithm", "state"),
    cmd_jobs_get: ("id", "name", "state", "exit_code", "failure_reason"),
    cmd_jobs_run: ("id", "name", "state", "failure_reason"),
    cmd_jobs_wait: ("id", "name", "state", "failure_reason"),
    cmd_jobs_cancel: ("id", "name", "state"),
    cmd_models_register: ("name", "version", "state", "package_digest"),
    cmd_models_import: ("name", "version", "state", "package_digest"),
    cmd_models_wait: ("name", "version", "state", "package_digest"),
    cmd_models_download: ("path", "size"),
    cmd_models_list: ("name", "latest", "versions"),
    cmd_packages_list: ("digest", "name", "version", "size", "key_id"),
    cmd_packages_get: ("digest", "name", "version", "size", "key_id", "chunk_count"),
    cmd_packages_upload: ("digest", "name", "version", "size", "key_id"),
    cmd_keys_list: ("key_id", "generation", "state", "not_after"),
    cmd_keys_rotate: ("key_id", "generation", "state"),
    cmd_devices_list: ("id", "name", "status", "labels"),
    cmd_devices_register: ("id", "name", "labels"),
    cmd_deploy: ("id", "package_name", "package_version", "summary"),
    cmd_deployments_list: ("id", "package_name", "package_version", "summary"),
    cmd_notebooks_list: ("id", "name", "state", "dataset_version", "url"),
    cmd_notebooks_create: ("id", "name", "state", "url"),
    cmd_notebooks_stop: ("id", "name", "state", "reason"),
    cmd_notebooks_start: ("id", "name", "state"),
    cmd_notebooks_export: ("code_id", "boot_file"),
    cmd_notebooks_open: ("url", "state"),
    cmd_notebooks_delete: ("deleted",),
    cmd_services_list: ("name", "type", "state"),
    cmd_services_get: ("name", "type", "state", "reason"),
    cmd_captures_list: ("id", "device_id", "reason", "predicted", "confidence", "state", "label"),
    cmd_captures_queue: ("id", "device_id", "predicted", "confidence", "disagreement"),
    cmd_captures_review: ("id", "state", "label", "reviewed_by"),
    cmd_captures_purge: ("device_id", "purge_id", "stored_records", "last_purge_id"),
    cmd_captures_improve: ("id", "service_name", "state", "step", "error"),
    cmd_login: ("url", "profile", "config"),
}


def _columns(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The table's columns; `models list NAME` lists versions, `models list` the models."""
    if args.func is cmd_models_list and args.name:
        return ("name", "version", "state", "package_digest")
    return _COLUMNS.get(args.func)


def _wait_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=None, help="give up waiting after N s")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between polls (1)")


def _global_options(p: argparse.ArgumentParser, default: Any) -> None:
    flag_default = default if default is argparse.SUPPRESS else False
    p.add_argument(
        "--url", default=default, help="control plane URL (env EDGE_INFERENCE_URL, config file)"
    )
    p.add_argument(
        "--token", default=default, help="API token (env EDGE_INFERENCE_TOKEN, config file)"
    )
    p.add_argument("--profile", default=default, help="config file profile (default: default)")
    p.add_argument("--json", action="store_true", default=flag_default, help="print JSON")
    p.add_argument(
        "-q", "--quiet", action="store_true", default=flag_default, help="no progress on stderr"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eictl", description="The edge inference control plane from the command line."
    )
    _global_options(parser, None)
    # The same options after the verb (eictl login --token T): SUPPRESS keeps the values given
    # before the verb when they are not repeated after it.
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS)
    top = parser.add_subparsers(dest="group", required=True)

    p = top.add_parser(
        "login", parents=[common], help="check a URL and token and save them in the config file"
    )
    p.set_defaults(func=cmd_login)

    ds = top.add_parser("datasets", parents=[common], help="datasets and versions").add_subparsers(
        required=True
    )
    p = ds.add_parser("list", parents=[common])
    p.set_defaults(func=cmd_datasets_list)
    p = ds.add_parser("create", parents=[common])
    p.add_argument("name")
    p.add_argument("--type", default="image_classification")
    p.add_argument("--label", action="append", help="a label (repeat)")
    p.add_argument("--multi-label", action="store_true")
    p.set_defaults(func=cmd_datasets_create)
    p = ds.add_parser(
        "import", parents=[common], help="upload a folder (zipped on the fly) or a zip"
    )
    p.add_argument("dataset", help="dataset id or name")
    p.add_argument("path")
    p.add_argument("--format", default="imagefolder", help="imagefolder|manifest|coco|voc|yolo")
    p.add_argument("--strict", action="store_true", help="exit 1 when any item was refused")
    p.set_defaults(func=cmd_datasets_import)
    p = ds.add_parser(
        "publish", parents=[common], help="publish the labeled samples as the next version"
    )
    p.add_argument("dataset")
    p.add_argument("--train-ratio", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_datasets_publish)
    p = ds.add_parser("versions", parents=[common])
    p.add_argument("dataset")
    p.set_defaults(func=cmd_datasets_versions)

    jobs = top.add_parser("jobs", parents=[common], help="training jobs").add_subparsers(
        required=True
    )
    p = jobs.add_parser("list", parents=[common])
    p.add_argument("--name")
    p.add_argument("--state")
    p.set_defaults(func=cmd_jobs_list)
    p = jobs.add_parser("get", parents=[common])
    p.add_argument("job_id")
    p.set_defaults(func=cmd_jobs_get)
    p = jobs.add_parser("run", parents=[common], help="create a job (and --wait / --follow it)")
    p.add_argument("name")
    p.add_argument("--algorithm", help="a built-in, or script (implied by --code)")
    p.add_argument("--dataset", help="dataset id or name")
    p.add_argument("--version", default="V001", help="dataset version (V001)")
    p.add_argument("--data-path", help="server-side CSV for tabular algorithms")
    p.add_argument("--code", help="a code folder or zip to upload")
    p.add_argument("--code-id", help="uploaded code (e.g. from notebooks export)")
    p.add_argument("--boot-file", help="the script to run, e.g. train.py")
    p.add_argument("--framework", default="tensorflow")
    p.add_argument("--hp", action="append", help="hyperparameter key=value (repeat)")
    p.add_argument(
        "--wait", action="store_true", help="wait for the end; exit 1 unless it succeeded"
    )
    p.add_argument("--follow", action="store_true", help="stream the log, then as --wait")
    _wait_options(p)
    p.set_defaults(func=cmd_jobs_run)
    p = jobs.add_parser("logs", parents=[common])
    p.add_argument("job_id")
    p.add_argument("--follow", action="store_true")
    p.set_defaults(func=cmd_jobs_logs)
    p = jobs.add_parser("wait", parents=[common])
    p.add_argument("job_id")
    _wait_options(p)
    p.set_defaults(func=cmd_jobs_wait)
    p = jobs.add_parser("cancel", parents=[common])
    p.add_argument("job_id")
    p.set_defaults(func=cmd_jobs_cancel)

    models = top.add_parser("models", parents=[common], help="the model registry").add_subparsers(
        required=True
    )
    p = models.add_parser("list", parents=[common])
    p.add_argument("name", nargs="?", help="list this model's versions")
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser(
        "register", parents=[common], help="a succeeded job's model as the next version"
    )
    p.add_argument("name")
    p.add_argument("--job", required=True)
    p.add_argument("--version", dest="model_version")
    p.add_argument("--target", action="append", help="conversion target (repeat)")
    p.add_argument("--wait", action="store_true", help="wait until ready; exit 1 if it failed")
    _wait_options(p)
    p.set_defaults(func=cmd_models_register)
    p = models.add_parser("import", parents=[common], help="import a model file or zip")
    p.add_argument("name")
    p.add_argument("path")
    p.add_argument("--version", dest="model_version")
    p.add_argument("--kind")
    p.add_argument("--labels", nargs="+")
    p.add_argument("--wait", action="store_true")
    _wait_options(p)
    p.set_defaults(func=cmd_models_import)
    p = models.add_parser("wait", parents=[common], help="wait until a version is ready")
    p.add_argument("name")
    p.add_argument("model_version", metavar="version")
    _wait_options(p)
    p.set_defaults(func=cmd_models_wait)
    p = models.add_parser("download", parents=[common], help="download a version's signed package")
    p.add_argument("name")
    p.add_argument("model_version", metavar="version")
    p.add_argument(
        "-o", "--output", help="file or folder (ending in /: made if missing); default: here"
    )
    p.set_defaults(func=cmd_models_download)

    pkgs = top.add_parser(
        "packages", parents=[common], help="signed packages the control plane holds"
    ).add_subparsers(required=True)
    p = pkgs.add_parser("list", parents=[common])
    p.set_defaults(func=cmd_packages_list)
    p = pkgs.add_parser("get", parents=[common])
    p.add_argument("digest")
    p.set_defaults(func=cmd_packages_get)
    p = pkgs.add_parser(
        "upload", parents=[common], help="upload a signed .edgepkg (then: eictl deploy --package)"
    )
    p.add_argument("path")
    p.set_defaults(func=cmd_packages_upload)

    keys = top.add_parser(
        "keys", parents=[common], help="the registry's signing keys"
    ).add_subparsers(required=True)
    p = keys.add_parser("list", parents=[common])
    p.set_defaults(func=cmd_keys_list)
    p = keys.add_parser(
        "rotate", parents=[common], help="a new signing key; devices receive it (admin)"
    )
    p.set_defaults(func=cmd_keys_rotate)

    devices = top.add_parser(
        "devices", parents=[common], help="the device registry"
    ).add_subparsers(required=True)
    p = devices.add_parser("list", parents=[common])
    p.add_argument("--label", action="append", help="key=value selector (repeat)")
    p.set_defaults(func=cmd_devices_list)
    p = devices.add_parser("register", parents=[common])
    p.add_argument("--name")
    p.add_argument("--id", dest="device_id")
    p.add_argument("--label", action="append", help="key=value (repeat)")
    p.add_argument("--bundle", help="write the config bundle (with the password) here, 0600")
    p.set_defaults(func=cmd_devices_register)

    p = top.add_parser(
        "deploy", parents=[common], help="deploy a package (or a model version) to devices"
    )
    p.add_argument("--package", help="package digest")
    p.add_argument("--model")
    p.add_argument("--version", dest="model_version")
    p.add_argument("--device")
    p.add_argument("--selector", action="append", help="key=value (repeat)")
    p.add_argument(
        "--action", choices=("install", "remove"), default="install",
        help="remove: uninstall that version from the devices",
    )  # fmt: skip
    p.add_argument("--standby", action="store_true", help="install without activating")
    p.add_argument("--weight", type=float, help="percent of requests for a standby version")
    p.add_argument("--guard", help='the local guard, JSON (e.g. {"bake_s": 60})')
    p.add_argument("--wait", action="store_true", help="wait until no target is pending")
    _wait_options(p)
    p.set_defaults(func=cmd_deploy)
    deps = top.add_parser("deployments", parents=[common], help="deployments").add_subparsers(
        required=True
    )
    p = deps.add_parser("list", parents=[common])
    p.set_defaults(func=cmd_deployments_list)

    nbs = top.add_parser("notebooks", parents=[common], help="managed notebooks").add_subparsers(
        required=True
    )
    p = nbs.add_parser("list", parents=[common])
    p.set_defaults(func=cmd_notebooks_list)
    p = nbs.add_parser("create", parents=[common])
    p.add_argument("name")
    p.add_argument("--dataset", help="dataset id or name, mounted read-only")
    p.add_argument("--version", default="V001")
    p.add_argument("--example", help="start from a shipped example")
    p.add_argument("--idle-s", type=float)
    p.add_argument("--wait", action="store_true", help="wait until JupyterLab answers")
    _wait_options(p)
    p.set_defaults(func=cmd_notebooks_create)
    for verb, func in (("stop", cmd_notebooks_stop), ("delete", cmd_notebooks_delete),
                       ("open", cmd_notebooks_open)):  # fmt: skip
        p = nbs.add_parser(verb, parents=[common])
        p.add_argument("notebook_id")
        p.set_defaults(func=func)
    p = nbs.add_parser("start", parents=[common])
    p.add_argument("notebook_id")
    p.add_argument("--wait", action="store_true")
    _wait_options(p)
    p.set_defaults(func=cmd_notebooks_start)
    p = nbs.add_parser(
        "export", parents=[common], help="a notebook as training code (code_id, boot file)"
    )
    p.add_argument("notebook_id")
    p.add_argument("path", help="the .ipynb, relative to the work folder")
    p.add_argument("--boot-file")
    p.set_defaults(func=cmd_notebooks_export)

    svcs = top.add_parser(
        "services", parents=[common], help="online and batch services"
    ).add_subparsers(required=True)
    p = svcs.add_parser("list", parents=[common])
    p.set_defaults(func=cmd_services_list)
    p = svcs.add_parser("get", parents=[common])
    p.add_argument("name")
    p.set_defaults(func=cmd_services_get)

    caps = top.add_parser(
        "captures", parents=[common], help="captured samples, their review, improvements"
    ).add_subparsers(required=True)
    p = caps.add_parser("list", parents=[common])
    p.add_argument("--device")
    p.add_argument("--service")
    p.add_argument("--state", choices=("pending", "accepted", "corrected", "dropped"))
    p.add_argument("--dataset")
    p.set_defaults(func=cmd_captures_list)
    p = caps.add_parser("queue", parents=[common], help="a dataset's review queue")
    p.add_argument("dataset")
    p.add_argument("--order", choices=("confidence", "disagreement"), default="confidence")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_captures_queue)
    p = caps.add_parser("review", parents=[common], help="accept, correct or drop a capture")
    p.add_argument("capture_id")
    p.add_argument("action", choices=("accept", "correct", "drop"))
    p.add_argument("label", nargs="?", help="the label, for correct")
    p.set_defaults(func=cmd_captures_review)
    p = caps.add_parser("purge", parents=[common], help="purge a device's capture store")
    p.add_argument("device_id")
    p.set_defaults(func=cmd_captures_purge)
    p = caps.add_parser(
        "improve", parents=[common], help="publish, retrain, register, canary in one action"
    )
    p.add_argument("service")
    p.add_argument("--wait", action="store_true", help="wait until the canary rollout opens")
    _wait_options(p)
    p.set_defaults(func=cmd_captures_improve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 for errors, 0 for --help
        return int(exc.code or 0)
    args.token_value = args.token
    try:
        with Client(args.url, args.token, profile=args.profile) as client:
            if args.func is cmd_login:
                args.token_value = load_profile(args.url, args.token, args.profile).token
                if not args.token_value:
                    return _usage("login needs --token (or EDGE_INFERENCE_TOKEN)")
            result = args.func(client, args)
            _emit(args, result, _columns(args))
            if args.func is cmd_services_get and not args.json:
                extra = rollout_table(_plain(result))
                if extra:
                    print(extra)
            return EXIT_OK
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    except Failed as exc:
        if exc.result is not None:
            _emit(args, exc.result, _columns(args))
        print(f"eictl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except WaitTimeout as exc:
        print(f"eictl: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except Unauthorized as exc:
        print(f"eictl: {exc} (set --token, EDGE_INFERENCE_TOKEN or eictl login)", file=sys.stderr)
        return EXIT_AUTH
    except ServerError as exc:
        print(f"eictl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ApiError as exc:
        if args.json:
            print(json.dumps({"error": exc.error, "status": exc.status, "detail": exc.detail}))
        print(f"eictl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE if exc.status >= 500 else EXIT_REFUSED
    except ConnectionFailed as exc:
        print(f"eictl: cannot reach the control plane: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
