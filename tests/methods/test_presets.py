"""The paper-scale configs match docs/methods.md's preset table, row by row (docs and configs move together)."""

from __future__ import annotations

from pathlib import Path

import pytest

from discorep.engine.config import Config
from discorep.engine.configio import load_config, to_dict

ROOT = Path(__file__).resolve().parents[2]


def preset_rows() -> list[tuple[str, str, str, str]]:
    text = (ROOT / "docs" / "methods.md").read_text()
    section = text.split("## Paper-scale presets", 1)[1]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in ("byol", "detcon", "odin", "r2o"):
            rows.append(tuple(cells))
    return rows


def _parse(text: str):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text, text)


def test_the_table_covers_every_method_and_the_optimiser():
    rows = preset_rows()
    keys = {(r[0], r[1]) for r in rows}
    for method in ("byol", "detcon", "odin", "r2o"):
        for key in ("optim.base_lr", "optim.weight_decay", "train.epochs", "model.norm", "train.precision"):
            assert (method, key) in keys or (method == "detcon" and key == "model.norm"), (method, key)
    assert all(r[3] for r in rows), "every preset names its source"


@pytest.mark.parametrize("method,key,value,source", preset_rows())
def test_config_matches_preset(method, key, value, source):
    cfg = to_dict(load_config(Config, ROOT / "configs" / f"{method}.yaml"))
    section, name = key.split(".")
    got = cfg[section][name]
    want = _parse(value)
    if isinstance(want, float) or isinstance(got, float):
        assert got == pytest.approx(want, rel=1e-9), f"configs/{method}.yaml {key}={got!r}, table says {value} ({source})"
    else:
        assert got == want, f"configs/{method}.yaml {key}={got!r}, table says {value} ({source})"


def test_r2o_trains_in_fp32_as_its_public_code():
    """Issue 23: R2O's preset inherited BYOL's TPU bf16; R2O's public code trains in fp32 (apex O0)."""
    assert load_config(Config, ROOT / "configs" / "r2o.yaml").train.precision == "fp32"
    assert load_config(Config, ROOT / "configs" / "byol.yaml").train.precision == "bf16"


def test_paper_scale_configs_synchronise_batch_norm():
    for method in ("byol", "detcon", "odin", "r2o"):
        assert load_config(Config, ROOT / "configs" / f"{method}.yaml").model.norm == "syncbn"
