"""The ``model-packager`` command, run as a real subprocess: exit codes, stdout, stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from model_packager.archive import open_package, sha256_file
from model_packager.build import sign_package
from model_packager.chunk_index import ChunkIndex
from model_packager.cli import build_parser
from model_packager.convert import SOURCE_KINDS
from model_packager.signing import generate_keypair, load_private_key

REPO_ROOT = Path(__file__).resolve().parents[2]

EXE = Path(sys.executable).parent / "model-packager"


def run(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [str(EXE), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
        check=False,
    )


def run_many(*commands: list[object]) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands at once: each process mostly waits on imports."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda c: run(*c), commands))


def assert_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 1, exactly one ``error:`` line (the last), no traceback, nothing on stdout."""
    assert res.returncode == 1, res
    lines = res.stderr.splitlines()
    assert lines and lines[-1].startswith("error: "), res.stderr
    assert sum(ln.startswith("error:") for ln in lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout == ""
    for n in needles:
        assert n in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def cli_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli-keys")
    res = run("keygen", "--out-dir", out, "--name", "release")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("key id ") and "release.key" in res.stdout
    return out


@pytest.fixture(scope="module")
def cli_unsigned(onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli-build")
    res = run("build", onnx_model, "--name", "mnist", "--version", "1.2.3", "--out-dir", out)
    assert res.returncode == 0, res.stderr
    path = Path(res.stdout.strip())
    assert path.parent == out and path.is_file()
    assert "loading mlp.onnx" in res.stderr and "(unsigned)" in res.stderr
    return path


def test_version_and_help() -> None:
    res = run("--version")
    assert res.returncode == 0 and res.stdout.startswith("model-packager ")
    res = run("--help")
    assert res.returncode == 0
    for cmd in ("keygen", "build", "sign", "verify", "inspect"):
        assert cmd in res.stdout


USAGE_ERRORS = [
    [],
    ["frobnicate"],
    ["build", "m.onnx", "--version", "1"],  # --name missing
    ["build", "--name", "m", "--version", "1"],  # no model
    ["verify", "x.edgepkg"],  # --trusted missing
    ["sign", "x.edgepkg"],  # --key missing
    ["build", "m.onnx", "--name", "m", "--version", "1", "--golden-count", "two"],
    ["inspect"],
    ["convert", "m.onnx", "--name", "m", "--version", "1", "--num-samples", "-3"],
    ["convert", "m.onnx", "--name", "m", "--version", "1", "--num-samples", "0"],
    ["convert", "m.onnx", "--name", "m", "--version", "1", "--num-samples", "many"],
]


def test_usage_errors_exit_2() -> None:
    for args, res in zip(USAGE_ERRORS, run_many(*USAGE_ERRORS), strict=True):
        assert res.returncode == 2, (args, res)
        assert "usage: model-packager" in res.stderr, args
        assert "Traceback" not in res.stderr, args


def test_keygen_refuses_to_overwrite(cli_keys: Path) -> None:
    kid = (cli_keys / "release.key").read_bytes()
    res = run("keygen", "--out-dir", cli_keys, "--name", "release")
    assert_error(res, "already exists")
    assert (cli_keys / "release.key").read_bytes() == kid


def test_inspect(cli_unsigned: Path) -> None:
    res = run("inspect", cli_unsigned)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.startswith(f"mnist 1.2.3  (format 1, sha256 {sha256_file(cli_unsigned)})")
    assert "signed: no" in out
    assert "input  input: FP32 [-1, 784]" in out
    assert "output logits: FP32 [-1, 10]" in out
    assert "variant onnx-fp32: onnx fp32" in out


def test_inspect_json(cli_unsigned: Path) -> None:
    res = run("inspect", "--json", cli_unsigned)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["package_sha256"] == cli_unsigned.name.removesuffix(".edgepkg")
    assert doc["signed"] is False
    assert doc["name"] == "mnist" and doc["version"] == "1.2.3"
    assert [v["name"] for v in doc["variants"]] == ["onnx-fp32"]


def test_chunks(cli_unsigned: Path, cli_keys: Path, tmp_path: Path) -> None:
    """The chunk index, and what a delta costs: nothing against itself, little against a copy
    that differs only by its signature (a member inserted near the start)."""
    signed = sign_package(cli_unsigned, load_private_key(cli_keys / "release.key"), tmp_path)
    out = tmp_path / "index.bin"
    res = run("chunks", signed, "--against", signed, "--against", cli_unsigned, "--out", out)
    assert res.returncode == 0, res.stderr
    index = ChunkIndex.decode(out.read_bytes())
    assert index.package_size == signed.stat().st_size
    first, same, unsigned = res.stdout.splitlines()
    assert first.startswith(f"{index.count} chunks, {index.package_size} bytes (FastCDC ")
    assert f"index sha256 {index.sha256().hex()}" in first
    assert same.endswith("fetch 0 chunks, 0 bytes (0.0%)")
    share = float(unsigned.rsplit("(", 1)[1].rstrip("%)"))
    assert 0 < share < 10, unsigned


def test_sign_then_verify(cli_unsigned: Path, cli_keys: Path, tmp_path: Path) -> None:
    key, pub = cli_keys / "release.key", cli_keys / "release.pub"
    res = run("verify", cli_unsigned, "--trusted", pub)
    assert_error(res, "not signed")

    res = run("sign", cli_unsigned, "--key", key, "--out-dir", tmp_path)
    assert res.returncode == 0, res.stderr
    signed = Path(res.stdout.strip())
    assert signed.parent == tmp_path and signed != cli_unsigned
    assert signed.name == f"{sha256_file(signed)}.edgepkg"

    for trusted in (pub, cli_keys):  # a key file, or a folder of keys
        res = run("verify", signed, "--trusted", trusted)
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("OK mnist 1.2.3: signed by key ")
        assert "2 files verified" in res.stdout
        assert res.stderr == ""

    res = run("inspect", signed)
    assert "signed: yes" in res.stdout

    # A renamed copy verifies but warns that its name is not its digest.
    renamed = tmp_path / ("0" * 64 + ".edgepkg")
    renamed.write_bytes(signed.read_bytes())
    res = run("verify", renamed, "--trusted", pub)
    assert res.returncode == 0 and "does not match its sha256" in res.stderr


def test_verify_failures(cli_unsigned: Path, cli_keys: Path, tmp_path: Path) -> None:
    key, pub = cli_keys / "release.key", cli_keys / "release.pub"
    signed = sign_package(cli_unsigned, load_private_key(key), tmp_path)
    generate_keypair(tmp_path / "x.key", tmp_path / "x.pub")
    art = open_package(signed).members["artifacts/onnx-fp32.onnx"]
    data = bytearray(signed.read_bytes())
    data[art.offset_data + art.size // 2] ^= 0xFF
    tampered = tmp_path / "tampered.edgepkg"
    tampered.write_bytes(bytes(data))
    junk = tmp_path / "junk.edgepkg"
    junk.write_text("hello")
    mixed = tmp_path / "mixed-keys"  # a trust folder with one key that is not Ed25519
    mixed.mkdir()
    (mixed / "release.pub").write_bytes(pub.read_bytes())
    (mixed / "legacy.pub").write_bytes(_rsa_public_pem())

    cases: list[tuple[list[object], str]] = [
        (["verify", signed, "--trusted", tmp_path / "x.pub"], "not trusted"),
        (["verify", signed, "--trusted", tmp_path / "nope.pub"], "nope.pub"),
        (["verify", tampered, "--trusted", pub], "sha256 does not match"),
        (["verify", tmp_path / "missing.edgepkg", "--trusted", pub], "missing.edgepkg"),
        (["inspect", junk], "not a readable package archive"),
        (["sign", junk, "--key", key], "not a readable"),
        (["sign", signed, "--key", pub], "cannot read private key"),
        (["verify", signed, "--trusted", mixed], "legacy.pub: public key is not Ed25519"),
        (["verify", signed, "--trusted", junk], "junk.edgepkg: not a PEM public key"),
    ]
    for (_, needle), res in zip(cases, run_many(*(c for c, _ in cases)), strict=True):
        assert_error(res, needle)


def test_build_signed_two_variants_with_labels(
    onnx_model: Path, tflite_model: Path, cli_keys: Path, tmp_path: Path
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(10)) + "\n\n")
    res = run(
        "build",
        f"reference={onnx_model}",
        f"lite={tflite_model}",
        "--name",
        "mnist",
        "--version",
        "2",
        "--labels",
        labels,
        "--key",
        cli_keys / "release.key",
        "--golden-count",
        "4",
        "--out-dir",
        tmp_path / "out",
    )
    assert res.returncode == 0, res.stderr
    pkg = Path(res.stdout.strip())
    m = open_package(pkg).manifest
    assert [v.name for v in m.variants] == ["reference", "lite"]
    assert m.labels == [f"class {i}" for i in range(10)]
    assert set(m.variant("lite").tensor_names) == {"input", "logits"}
    res = run("verify", pkg, "--trusted", cli_keys / "release.pub")
    assert res.returncode == 0, res.stderr
    assert "4 files verified" in res.stdout
    res = run("inspect", pkg)
    assert "labels: 10 (class 0, class 1, class 2, class 3, class 4, ...)" in res.stdout


def test_build_errors(onnx_model: Path, tmp_path: Path, cli_keys: Path) -> None:
    out = tmp_path / "out"
    base = ["--version", "1", "--out-dir", out]
    pb = tmp_path / "model.pb"
    pb.write_bytes(b"x")
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not a model\nwith\nlines")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9\n".encode("latin-1"))
    cases: list[tuple[list[object], str]] = [
        (["build", onnx_model, "--name", "my model", *base], "my model"),
        (["build", tmp_path / "none.onnx", "--name", "m", *base], "no such file"),
        (["build", f"x={pb}", "--name", "m", *base], "unknown model type"),
        (["build", onnx_model, "--name", "m", "--labels", labels, *base], "2 labels"),
        (["build", onnx_model, "--name", "m", "--labels", tmp_path / "nope", *base], "nope"),
        (["build", onnx_model, "--name", "m", "--labels", latin1, *base], "not UTF-8 text"),
        (["build", onnx_model, "--name", "m", "--labels", tmp_path, *base], "Is a directory"),
        (
            ["build", onnx_model, "--name", "m", "--key", cli_keys / "release.pub", *base],
            "private key",
        ),
        (["build", onnx_model, "--name", "m", "--golden-count", "0", *base], "golden"),
        (["build", fake, "--name", "m", *base], "fake.onnx"),
    ]
    for (_, needle), res in zip(cases, run_many(*(c for c, _ in cases)), strict=True):
        assert_error(res, needle)
    assert not out.exists() or not any(out.iterdir())


def _rsa_public_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_convert_rejects_bad_option_files_before_opening_the_model(
    onnx_model: Path, tmp_path: Path
) -> None:
    """A malformed --preprocessing / --postprocessing / --labels file is one error line, exit 1,
    reported before the source is opened and with no package written."""
    files = {
        "syntax.json": '{"input": "input",',
        "color.json": json.dumps({"input": "input", "color": "CMYK"}),
        "extra.json": json.dumps({"input": "input", "zoom": 2}),
        "scalar.json": "5",
        "handler.json": json.dumps({"handler": "modelarts"}),
        "topk.json": json.dumps({"output": "logits", "top_k": -1}),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('{"input": "caf\xe9"}'.encode("latin-1"))
    out = tmp_path / "out"
    base = ["convert", onnx_model, "--name", "m", "--version", "1", "--target", "onnx-fp32"]
    base += ["--out-dir", out]
    cases: list[tuple[list[object], list[str]]] = [
        (["--preprocessing", tmp_path / "syntax.json"], ["--preprocessing", "not valid JSON"]),
        (["--preprocessing", tmp_path / "color.json"], ["color: Input should be 'RGB'"]),
        (["--preprocessing", tmp_path / "extra.json"], ["zoom: Extra inputs are not permitted"]),
        (["--preprocessing", tmp_path / "scalar.json"], ["expected a JSON object, got int"]),
        (["--preprocessing", tmp_path / "handler.json"], ["module: Field required"]),
        (["--preprocessing", latin1], ["latin1.json: not UTF-8 text"]),
        (["--preprocessing", tmp_path / "none.json"], ["none.json: No such file"]),
        (["--preprocessing", tmp_path], ["Is a directory"]),
        (["--postprocessing", tmp_path / "topk.json"], ["--postprocessing", "top_k:"]),
        (["--postprocessing", tmp_path / "syntax.json"], ["--postprocessing", "not valid JSON"]),
        (["--labels", latin1], ["--labels", "not UTF-8 text"]),
    ]
    results = run_many(*([*base, *extra] for extra, _ in cases))
    for (extra, needles), res in zip(cases, results, strict=True):
        assert_error(res, *needles)
        assert "opening" not in res.stderr, (extra, res.stderr)
        assert "pydantic.dev" not in res.stderr, res.stderr
    assert not out.exists()


def test_convert_reads_a_good_postprocessing_file(onnx_model: Path, tmp_path: Path) -> None:
    post = {"output": "logits", "softmax": True, "top_k": 3}
    (tmp_path / "post.json").write_text(json.dumps(post))
    res = run(
        "convert", onnx_model, "--name", "m", "--version", "1", "--target", "onnx-fp32",
        "--postprocessing", tmp_path / "post.json", "--out-dir", tmp_path / "out",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    pkg = Path(res.stdout.strip().splitlines()[-1])
    assert open_package(pkg).manifest.postprocessing == post


def test_source_kinds_in_choices_help_and_readme(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--source-kind offers exactly the kinds the converter opens, ModelArts folders included,
    and its help and the README list them all."""
    assert "modelarts" in SOURCE_KINDS
    parser = build_parser()
    for kind in SOURCE_KINDS:
        args = parser.parse_args(
            ["convert", "src", "--name", "m", "--version", "1", "--source-kind", kind]
        )
        assert args.source_kind == kind
    monkeypatch.setenv("COLUMNS", "400")  # one help entry per line
    with pytest.raises(SystemExit):
        build_parser().parse_args(["convert", "--help"])
    out = capsys.readouterr().out
    assert "--source-kind {" + ",".join(SOURCE_KINDS) + "}" in out
    for kind, on_disk in SOURCE_KINDS.items():
        assert f"{kind} ({on_disk})" in out
    readme = (REPO_ROOT / "model_packager" / "README.md").read_text()
    assert f"[--source-kind {'|'.join(SOURCE_KINDS)}]" in readme
