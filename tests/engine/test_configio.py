"""engine.configio: typed construction, errors naming dotted keys, base files, overrides, diffs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discorep.engine.configio import (
    MISSING,
    ConfigError,
    apply_overrides,
    diff_configs,
    from_dict,
    load_config,
    load_yaml,
    save_config,
    to_dict,
)

VALIDATE_CALLS: list[str] = []


@dataclass
class Inner:
    lr: float = 0.1
    steps: int = 10
    enabled: bool = True
    name: str = "x"
    mode: Literal["a", "b"] = "a"
    cap: Optional[float] = None

    def validate(self) -> None:
        VALIDATE_CALLS.append("inner")
        if self.steps < 0:
            raise ConfigError("inner.steps must be >= 0")


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    scale: tuple[float, ...] = (0.5, 1.0)
    pair: tuple[int, str] = (1, "a")
    params: dict[str, float] = field(default_factory=dict)
    seed: int = 0

    def validate(self) -> None:
        VALIDATE_CALLS.append("outer")
        if self.seed == 13:
            raise ValueError("unlucky seed")


@dataclass
class Required:
    must: int


def _err(data: dict, cls: type = Outer) -> str:
    with pytest.raises(ConfigError) as info:
        from_dict(cls, data)
    return str(info.value)


def test_nested_construction_and_defaults():
    cfg = from_dict(Outer, {"inner": {"lr": 3, "mode": "b"}, "scale": [1, 2, 3], "pair": [4, "z"],
                            "params": {"k": 2}})
    assert cfg.inner == Inner(lr=3.0, mode="b")
    assert isinstance(cfg.inner.lr, float)  # int accepted and converted for float fields
    assert cfg.scale == (1.0, 2.0, 3.0) and isinstance(cfg.scale, tuple)
    assert cfg.pair == (4, "z") and cfg.params == {"k": 2.0}
    assert cfg.sizes == [1, 2] and cfg.seed == 0  # defaults for missing keys


@pytest.mark.parametrize("data, key, expected, given_text", [
    ({"inner": {"steps": 1.5}}, "inner.steps", "integer", "float 1.5"),
    ({"inner": {"steps": True}}, "inner.steps", "integer", "bool True"),
    ({"inner": {"enabled": 1}}, "inner.enabled", "true or false", "int 1"),
    ({"inner": {"lr": "fast"}}, "inner.lr", "number", "str 'fast'"),
    ({"inner": {"lr": False}}, "inner.lr", "number", "bool False"),
    ({"inner": {"name": 5}}, "inner.name", "string", "int 5"),
    ({"inner": {"mode": "c"}}, "inner.mode", "one of 'a', 'b'", "'c'"),
    ({"inner": {"cap": "none"}}, "inner.cap", "number", "str 'none'"),
    ({"sizes": [1, "2"]}, "sizes[1]", "integer", "str '2'"),
    ({"sizes": 3}, "sizes", "list", "int 3"),
    ({"scale": ["a"]}, "scale[0]", "number", "str 'a'"),
    ({"pair": [1, 2]}, "pair[1]", "string", "int 2"),
    ({"pair": [1, "a", 3]}, "pair", "2 items", "[1, 'a', 3]"),
    ({"params": {"k": "v"}}, "params.k", "number", "str 'v'"),
    ({"params": [1]}, "params", "mapping", "list [1]"),
    ({"inner": 5}, "inner", "mapping", "int 5"),
])
def test_wrong_type_names_dotted_key_expected_and_given(data, key, expected, given_text):
    msg = _err(data)
    assert f"'{key}'" in msg and expected in msg and given_text in msg


def test_optional_accepts_null_and_value():
    assert from_dict(Inner, {"cap": None}).cap is None
    assert from_dict(Inner, {"cap": 2}).cap == 2.0


def test_unknown_key_suggests_closest():
    msg = _err({"inner": {"lrr": 0.1}})
    assert "'inner.lrr'" in msg and "did you mean 'inner.lr'" in msg
    msg = _err({"zzzzzz": 1})
    assert "'zzzzzz'" in msg and "valid keys" in msg and "sizes" in msg


def test_missing_required_key_and_non_mapping_top_level():
    assert "'must'" in _err({}, Required)
    assert "mapping" in _err([1, 2])  # type: ignore[arg-type]


def test_validate_hooks_called_bottom_up_and_errors_wrapped():
    VALIDATE_CALLS.clear()
    from_dict(Outer, {})
    assert VALIDATE_CALLS == ["inner", "outer"]
    assert "inner.steps must be >= 0" in _err({"inner": {"steps": -1}})
    msg = _err({"seed": 13})  # plain ValueError from validate() becomes a ConfigError
    assert "unlucky seed" in msg


def test_base_file_merge_child_wins(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text("inner: {lr: 0.5, steps: 7}\nsizes: [9]\nseed: 1\n")
    (tmp_path / "sub" / "mid.yaml").write_text("base: ../root.yaml\ninner: {steps: 8}\n")
    (tmp_path / "sub" / "leaf.yaml").write_text("base: mid.yaml\ninner: {name: leaf}\nseed: 2\n")
    data = load_yaml(tmp_path / "sub" / "leaf.yaml")
    assert data == {"inner": {"lr": 0.5, "steps": 8, "name": "leaf"}, "sizes": [9], "seed": 2}
    cfg = load_config(Outer, tmp_path / "sub" / "leaf.yaml", ["inner.lr=1e-3"])
    assert cfg.inner.lr == pytest.approx(1e-3) and cfg.inner.steps == 8


def test_yaml_errors_name_file_and_line(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found.*nope.yaml"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml, line \d+"):
        load_yaml(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("a: 1\nb: 2\na: 3\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml, line 3.*duplicate key 'a'"):
        load_yaml(dup)
    (tmp_path / "x.yaml").write_text("base: y.yaml\n")
    (tmp_path / "y.yaml").write_text("base: x.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_yaml(tmp_path / "x.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(tmp_path / "list.yaml")


def test_overrides_are_typed_and_do_not_mutate_input():
    data = {"inner": {"lr": 0.1}}
    out = apply_overrides(data, ["inner.steps=3", "inner.lr=0.25", "sizes=[1,2]", "inner.enabled=false",
                                 "inner.cap=null", "inner.name=hello world", "a.b.c=1e-4"])
    assert out["inner"] == {"lr": 0.25, "steps": 3, "enabled": False, "cap": None, "name": "hello world"}
    assert type(out["inner"]["steps"]) is int and type(out["inner"]["lr"]) is float
    assert out["sizes"] == [1, 2] and out["a"] == {"b": {"c": 1e-4}}
    assert data == {"inner": {"lr": 0.1}}


@pytest.mark.parametrize("bad", ["noequals", "=3", "a..b=1", "inner.lr.x=1", "a=[1,"])
def test_malformed_overrides(bad):
    with pytest.raises(ConfigError, match="override"):
        apply_overrides({"inner": {"lr": 0.1}}, [bad])


def test_to_dict_save_round_trip_and_diff(tmp_path: Path):
    cfg = from_dict(Outer, {"inner": {"cap": 1.5}, "params": {"a": 1.0}})
    plain = to_dict(cfg)
    assert plain["scale"] == [0.5, 1.0] and plain["pair"] == [1, "a"]  # tuples -> lists
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert yaml.safe_load(path.read_text()) == plain
    assert load_config(Outer, path) == cfg
    other = from_dict(Outer, {"inner": {"lr": 0.2, "cap": 1.5}, "params": {"b": 2.0}})
    assert diff_configs(cfg, other) == [
        ("inner.lr", 0.1, 0.2), ("params.a", 1.0, MISSING), ("params.b", MISSING, 2.0),
    ]
    assert diff_configs(plain, to_dict(cfg)) == []
    assert diff_configs({"x": 1}, {"x": 1.0}) == [] and diff_configs({"x": 1}, {"x": True}) == [("x", 1, True)]


# ----------------------------------------------------------------------------------------------- fuzz

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_keys = st.sampled_from(["inner", "lr", "steps", "enabled", "name", "mode", "cap", "sizes", "scale",
                         "pair", "params", "seed", "x"]) | st.text(max_size=5)
_values = st.recursive(_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_keys, kids, max_size=4),
                       max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _values, max_size=6) | _values)
def test_fuzz_from_dict_only_raises_config_error(data):
    try:
        cfg = from_dict(Outer, data)
    except ConfigError:
        return
    assert isinstance(cfg, Outer) and isinstance(cfg.inner, Inner)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=15), max_size=4))
def test_fuzz_overrides_only_raise_config_error(overrides):
    try:
        out = apply_overrides({"inner": {"lr": 0.1}}, overrides)
    except ConfigError:
        return
    assert isinstance(out, dict)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=60))
def test_fuzz_yaml_files_only_raise_config_error(tmp_path: Path, text: str):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(Outer, path)
    except ConfigError:
        pass


def test_errors_name_the_file_and_line_or_the_override(tmp_path: Path):
    (tmp_path / "root.yaml").write_text("inner:\n  lr: 0.5\nparams: {a: 1}\n")
    (tmp_path / "leaf.yaml").write_text("base: root.yaml\nseed: 1\ninner:\n  steps: many\n")
    with pytest.raises(ConfigError, match=r"'inner.steps' must be an integer, got str 'many' "
                                          r"\(in .*leaf\.yaml, line 4\)"):
        load_config(Outer, tmp_path / "leaf.yaml")
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.lrr'.*did you mean 'inner.lr'.*"
                                          r"\(in override 'inner.lrr=1'\)"):
        load_config(Outer, tmp_path / "root.yaml", ["inner.lrr=1"])
    (tmp_path / "dup.yaml").write_text("base: root.yaml\ninner: {lr: 1}\ninner: {lr: 2}\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml, line 3.*duplicate key 'inner'"):
        load_config(Outer, tmp_path / "dup.yaml")


def test_files_merge_mappings_and_an_override_replaces_its_value(tmp_path: Path):
    (tmp_path / "root.yaml").write_text("inner: {lr: 0.5, steps: 3}\nparams: {a: 1}\n")
    (tmp_path / "leaf.yaml").write_text("base: root.yaml\nparams: {c: 3}\n")
    assert load_config(Outer, tmp_path / "leaf.yaml").params == {"a": 1.0, "c": 3.0}
    cfg = load_config(Outer, tmp_path / "leaf.yaml", ["params={b: 2}", "inner={name: y}"])
    assert cfg.params == {"b": 2.0}  # as apply_overrides: the value at the key is replaced
    assert cfg.inner == Inner(name="y")  # a section given whole starts from its defaults
