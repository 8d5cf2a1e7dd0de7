"""Fuzzing the real config loader: any YAML, any override, any nesting gives a Config or a ConfigError."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discorep.engine.config import Config
from discorep.engine.configio import ConfigError, from_dict, load_config

DEMO = Path(__file__).resolve().parents[2] / "configs" / "r2o_cpu_demo.yaml"
_KEYS = ["data", "views", "model", "method", "optim", "train", "eval", "size", "K", "K0", "batch_size",
         "prior", "arch", "loss", "name", "epochs", "base_lr", "features", "x"]
_scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=8)
_values = st.recursive(_scalars, lambda kids: st.lists(kids, max_size=3) |
                       st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=4), kids, max_size=4),
                       max_leaves=16)
_dotted = st.sampled_from(["train.batch_size", "views.size", "method.K", "method.K0", "method.loss",
                           "data.prior", "model.arch", "optim.base_lr", "train.epochs", "method.name",
                           "data.prior_params", "nope.key", "train"])


def test_config_loader_only_ever_raises_config_error(outcome, tmp_path_factory):
    counts = {"valid": 0, "ConfigError": 0}

    def check(load) -> None:
        """`load()` gives a Config or raises ConfigError; anything else fails the test."""
        try:
            cfg = load()
        except ConfigError:
            counts["ConfigError"] += 1
            return
        assert isinstance(cfg, Config)
        counts["valid"] += 1

    @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.dictionaries(st.sampled_from(_KEYS), _values, max_size=5))
    def nested(data):
        check(lambda: from_dict(Config, data))

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.tuples(_dotted, st.text(max_size=12)), max_size=3))
    def overrides(pairs):
        check(lambda: load_config(Config, DEMO, [f"{k}={v}" for k, v in pairs]))

    @settings(max_examples=150, deadline=None)
    @given(st.text(max_size=80))
    def yaml_files(text):
        path = tmp_path_factory.mktemp("yaml") / "c.yaml"
        path.write_text(text, encoding="utf-8")
        check(lambda: load_config(Config, path))

    nested()
    overrides()
    yaml_files()
    outcome("config", "hypothesis fuzz of the real Config: nested dicts, dotted overrides on the demo config, "
            "arbitrary YAML text", f"{counts['valid']} valid configs, {counts['ConfigError']} ConfigError, nothing else")
