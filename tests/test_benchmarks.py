"""The step-time benchmark runs end to end at a tiny size and reports consistent ratios."""

from __future__ import annotations

import json
import math

import pytest


@pytest.mark.slow
def test_step_time_reports_finite_times_and_consistent_ratios(tmp_path):
    from benchmarks.step_time import main

    out = tmp_path / "step.json"
    returned = main(["--arch", "resnet18", "--batch", "2", "--size", "64", "--steps", "2", "--warmup", "0",
                     "--workers", "0", "--methods", "byol,r2o", "--out", str(out)])
    written = json.loads(out.read_text())
    results = written["results"]
    assert set(results) == {"byol", "r2o"}
    for r in results.values():
        assert math.isfinite(r["ms_per_step"]) and r["ms_per_step"] > 0
        assert math.isfinite(r["forward_ms"]) and math.isfinite(r["backward_optimizer_ms"])
    assert results["byol"]["ratio_to_byol"] == 1.0  # exactly, not approximately
    assert results["r2o"]["ratio_to_byol"] == pytest.approx(results["r2o"]["ms_per_step"] / results["byol"]["ms_per_step"])
    assert {"kmeans", "align", "discovery_forward", "pool_heads", "loss"} <= set(results["r2o"]["phases_ms"])
    assert written["environment"]["command"].startswith("python benchmarks/step_time.py --arch resnet18")
    assert written["targets"]["r2o"]["target"] == 1.25
    assert returned["r2o"]["ms_per_step"] == results["r2o"]["ms_per_step"]
