"""Byte-compatibility with the code before backbones became timm config strings (issue 14): the same
export key layouts, the same encoder state-dict layouts (old checkpoints load) and the same
`random:<arch>` draws, compared with `legacy_layouts.json` (written by `legacy_layouts.py` on the old code)."""

from __future__ import annotations

import json
import math

import pytest

from tests.models import legacy_layouts as legacy

RECORDED = json.loads(legacy.FIXTURE.read_text())


@pytest.fixture(scope="module")
def exports():
    return legacy.export_layouts()


def test_export_key_layouts_are_unchanged(exports):
    assert set(exports) == set(RECORDED["exports"])
    for name, full in RECORDED["exports_in_full"].items():
        assert exports[name] == full, name  # a readable diff for the common case
    for name, rows in exports.items():
        assert legacy.summary(rows) == RECORDED["exports"][name], name


def test_encoder_state_dict_layouts_are_unchanged():
    current = legacy.encoder_layouts()
    assert set(current) == set(RECORDED["encoders"])
    for name, rows in current.items():
        assert legacy.summary(rows) == RECORDED["encoders"][name], name


def test_random_baselines_are_the_same_draw():
    current = legacy.random_baselines()
    for arch, old in RECORDED["random_baselines"].items():
        new = current[arch]
        assert math.isclose(new["sum"], old["sum"], rel_tol=1e-6, abs_tol=1e-6), arch
        assert math.isclose(new["sumsq"], old["sumsq"], rel_tol=1e-6), arch
        assert new["first"] == pytest.approx(old["first"], rel=1e-6, abs=1e-7), arch
