"""Typed records (``model_packager.records``): what they convert, what they refuse, and how they
say so. The manifest, its processing declarations and the agent's settings rely on these rules.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

import pytest

from model_packager.records import FilePath, Record, SchemaError, Secret, description, field


@dataclasses.dataclass(frozen=True, kw_only=True)
class Inner(Record):
    size: int = field(default=1, ge=1, le=10, description="How many.")
    ratio: float = field(default=0.5, gt=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outer(Record):
    name: str = field(min_length=1)
    mode: Literal["a", "b"] = "a"
    on: bool = False
    where: Path | None = None
    token: Secret | None = None
    pair: tuple[int, int] | None = None
    inner: Inner = field(default_factory=Inner)
    many: dict[str, Inner] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)

    def _check(self) -> None:
        if self.mode == "b" and not self.tags:
            raise ValueError("mode b needs tags")


@dataclasses.dataclass(kw_only=True)
class Loose(Record):
    unknown_keys = "ignore"
    n: int = 0


def test_plain_values_are_converted_as_their_meaning_is_plain() -> None:
    r = Outer.from_dict(
        {
            "name": "x",
            "on": "yes",
            "where": "/tmp/x",
            "token": "s3cret",
            "pair": [2, "3"],
            "inner": {"size": "4", "ratio": 2},
            "many": {"k": {"size": 2.0}},
        }
    )
    assert (r.on, r.where, r.pair) == (True, Path("/tmp/x"), (2, 3))
    assert (r.inner.size, r.inner.ratio) == (4, 2.0) and isinstance(r.inner.ratio, float)
    assert r.many["k"].size == 2 and isinstance(r.many["k"].size, int)
    assert r.token is not None and r.token.get_secret_value() == "s3cret"
    # Building directly converts and checks the same way.
    assert Outer(name="y", inner={"size": "9"}).inner.size == 9  # type: ignore[arg-type]
    assert Loose.from_dict({"n": "3", "surprise": 1}).n == 3


def test_every_problem_is_named_by_its_dotted_place_and_value() -> None:
    with pytest.raises(SchemaError) as info:
        Outer.from_dict(
            {
                "name": "",
                "mode": "c",
                "on": "maybe",
                "pair": [1],
                "inner": {"size": 11, "ratio": 0},
                "many": {"k": {"size": "lots"}},
                "tags": ["ok", 5],
            }
        )
    found = {p.where: p.msg for p in info.value.problems}
    assert found == {
        "name": "String should have at least 1 character",
        "mode": "Input should be 'a' or 'b'",
        "on": "Input should be a valid boolean",
        "pair": "Input should be a list of 2 items",
        "inner.size": "Input should be less than or equal to 10",
        "inner.ratio": "Input should be greater than 0",
        "many.k.size": "Input should be a valid integer, unable to parse string as an integer",
        "tags.1": "Input should be a valid string",
    }
    assert "many.k.size: Input should be a valid integer" in str(info.value)
    assert "(got 'lots')" in str(info.value)


def test_unknown_and_missing_keys_and_whole_record_rules() -> None:
    with pytest.raises(SchemaError, match="surprise: Extra inputs are not permitted"):
        Outer.from_dict({"name": "x", "surprise": 1})
    with pytest.raises(SchemaError, match="name: Field required"):
        Outer.from_dict({})
    with pytest.raises(SchemaError, match=r"inner\.extra: Extra inputs are not permitted"):
        Outer.from_dict({"name": "x", "inner": {"extra": 1}})
    with pytest.raises(SchemaError, match="mode b needs tags"):
        Outer.from_dict({"name": "x", "mode": "b"})
    with pytest.raises(SchemaError, match="valid dictionary or instance of Outer"):
        Outer.from_dict(["name"])
    with pytest.raises(SchemaError, match=r"inner\.size: Input should be greater"):
        dataclasses.replace(Outer(name="x"), inner={"size": 0})  # type: ignore[arg-type]


def test_dumps_mask_secrets_and_give_json_ready_values() -> None:
    r = Outer(name="x", token="s3cret-value", where="/a", pair=(1, 2))  # type: ignore[arg-type]
    doc = r.to_dict(json=True)
    assert (doc["token"], doc["where"], doc["pair"]) == ("**********", "/a", [1, 2])
    assert json.loads(json.dumps(doc))["inner"] == {"size": 1, "ratio": 0.5}
    assert "s3cret" not in repr(r) and "s3cret" not in json.dumps(doc)
    plain = r.to_dict(exclude_none=True)
    assert plain["pair"] == (1, 2) and plain["where"] == Path("/a") and "token" in plain
    assert "many" in plain and Outer.from_dict(plain) == r
    assert description(Inner, "size") == "How many."


def test_file_paths_must_name_files(tmp_path: Path) -> None:
    @dataclasses.dataclass(kw_only=True)
    class Files(Record):
        cert: FilePath

    (tmp_path / "c.pem").write_text("x")
    assert Files.from_dict({"cert": str(tmp_path / "c.pem")}).cert == tmp_path / "c.pem"
    for bad in (tmp_path / "none.pem", tmp_path):
        with pytest.raises(SchemaError, match="cert: Path does not point to a file"):
            Files.from_dict({"cert": str(bad)})
