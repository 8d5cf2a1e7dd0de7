"""`make demo`'s flow: data, pretraining, and the never-seen-images table it prints and saves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from discorep.data.datasets import ImageFolder
from discorep.apps.demo import run_demo
from discorep.engine.train import ResumeConfigError

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "r2o_contrastive_cpu_demo.yaml"  # make demo's


@pytest.mark.slow
def test_demo_pretrains_and_measures_masks_against_random(tmp_path, capsys):
    overrides = [f"train.out_dir={tmp_path / 'runs'}", "train.max_steps=2", "train.batch_size=4",
                 "data.num_workers=0", "train.progress=false", f"data.prior_cache={tmp_path / 'priors'}"]
    run_dir = run_demo(str(CONFIG), tmp_path / "data", overrides)
    out = capsys.readouterr().out
    assert "held-out scenes" in out and "real-photo composites" in out and str(run_dir) in out
    report = json.loads((run_dir / "demo_eval.json").read_text())
    assert [r["set"] for r in report["rows"]] == ["held-out scenes", "real-photo composites"]
    for row in report["rows"]:
        trained, random = row["ABO_i trained (%)"], row["ABO_i random (%)"]  # percent everywhere
        assert 0 < trained < 100 and 0 < random < 100 and math.isclose(row["gain (points)"], trained - random)
        shown = f"{trained:.1f}  {random:.1f}"  # the printed table: one decimal, the gain signed
        assert any(line.split()[-3:] == [f"{trained:.1f}", f"{random:.1f}", f"{trained - random:+.1f}"]
                   for line in out.splitlines()), (shown, out)
    assert report["checkpoint"].endswith("step_00000002.pt")
    # The config's data/demo/pretrain_mix is moved under the demo data folder actually used.
    used = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["root"]
    assert Path(used) == tmp_path / "data" / "pretrain_mix"
    assert len(ImageFolder(used).paths) == 512  # generated scenes + photo scenes, as training reads them
    # Run again with another config (as after an upgrade of the demo config): a clear way out, not a
    # pointer to a --allow-config-change flag the demo command does not have.
    with pytest.raises(ResumeConfigError, match=r"(?s)views.jitter_p.*delete that folder"):
        run_demo(str(CONFIG), tmp_path / "data", [*overrides, "views.jitter_p=0.5"])
