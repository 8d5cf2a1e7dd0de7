"""The slow tier: the `cpu` detection preset on the demo data, through the command line.

The preset's full 300 iterations take ~12 min on 2 cores (docs/evaluation.md); CI runs its exact
settings cut to 60 iterations (the schedule scaled with them), which exercises every part the full run
does: warm-up, the lr steps, checkpoints, COCOeval, the JSON.
"""

from __future__ import annotations

import json
import math

import pytest

from discorep.apps.demodata.build import build_demo_data
from discorep.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_cpu_preset_on_the_demo_data_writes_checkpoints_and_every_metric(tmp_path, capsys):
    data = build_demo_data(tmp_path / "demo")
    out = tmp_path / "detect.json"
    argv = ["transfer", "detect", "--checkpoint", "random:resnet18", "--preset", "cpu",
            "--train", str(data["scenes_train"] / "annotations.json"),
            "--val", str(data["scenes_val"] / "annotations.json"), "--iters", "60", "--baseline", "none",
            "--out", str(out), "--work-dir", str(tmp_path / "work"), "solver.checkpoint_every=30"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    for kind in ("bbox", "segm"):
        assert set(result[kind]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        assert all(v is None or 0.0 <= v <= 100.0 for v in result[kind].values())
    run = result["settings"]["runs"][0]
    assert run["iters"] == 60 and math.isfinite(run["final_loss"]) and run["skipped_train_images"] == 0
    checkpoints = sorted((tmp_path / "work").glob("detect-cpu_detect-*/checkpoints/iter_*.pt"))
    assert [p.name for p in checkpoints] == ["iter_00000030.pt", "iter_00000060.pt"]
    s = result["settings"]
    assert s["preset"] == "cpu_detect" and s["config"]["solver"]["batch_size"] == 2 and s["lr"] == pytest.approx(0.0025)
    assert s["transferred"]["norm"] == "bn" and s["transferred"]["heads"] == "classic"
    assert s["train_counts"]["images"] == 256 and result["detections"] > 0
    assert "bbox AP" in printed
