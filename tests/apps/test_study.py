"""`discorep study`: spec loading, statistics, orderings, the SLIC baseline, and the --quick study end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from discorep.cli import main
from discorep.engine.configio import ConfigError
from discorep.apps.study.report import cell, mean_std, orderings
from discorep.apps.study.spec import dotted, load_study

STUDY = Path(__file__).resolve().parents[2] / "configs" / "study_cpu.yaml"


def test_full_and_quick_specs():
    full = load_study(STUDY)
    assert len(full.seeds) >= 3 and {r.name for r in full.runs} >= {"byol", "detcon", "odin", "r2o", "hybrid"}
    assert all(Path(r.config).is_file() for r in full.runs)  # resolved beside the study file
    ablations = {t for r in full.runs for t in r.tables} - {"main"}
    assert ablations == {"r2o_k", "r2o_prior", "r2o_loss", "odin_k", "odin_update"}
    quick = load_study(STUDY, quick=True)
    assert [r.name for r in quick.runs] == ["byol", "r2o"] and quick.seeds == [0]
    assert quick.budget["train.max_steps"] == 3 and quick.budget["views.size"] == 96  # merged, not replaced
    assert "odin_k" not in quick.tables
    gpu = load_study(STUDY.parent / "study_imagenet100.yaml")
    assert gpu.arch == "resnet50" and gpu.budget["views.size"] == 224 and gpu.data.knn_val.endswith("val")
    assert {r.name for r in gpu.runs} == {r.name for r in full.runs}  # the same comparisons at scale


def test_bad_specs_are_config_errors(tmp_path):
    text = STUDY.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("runs: [byol, r2o]", "runs: [byol, nope]"))
    with pytest.raises(ConfigError, match="nope"):
        load_study(bad, quick=True)
    bad.write_text(text.replace("tables: [r2o_k]}", "tables: [r2o_kk]}", 1))
    with pytest.raises(ConfigError, match="r2o_kk"):
        load_study(bad)


def test_dotted_overrides_keep_yaml_types():
    assert dotted({"method.K0": 16, "data.prior_params": {"n": 10}, "x": None, "y": [1, 2]}) == [
        "method.K0=16", "data.prior_params={n: 10}", "x=null", "y=[1, 2]"]


def test_mean_std_and_cells_hand_computed():
    m, s = mean_std([0.2, 0.4, 0.6])
    assert m == pytest.approx(0.4) and s == pytest.approx(0.2)  # sample std: sqrt(0.08 / 2)
    assert cell([0.2, 0.4, 0.6]) == "40.0 ± 20.0" and cell([0.5]) == "50.0" and cell([]) == "–"
    assert all(math.isnan(v) for v in mean_std([]))


def test_orderings_report_the_verdict_and_unresolved_margins():
    spec = load_study(STUDY)
    res = lambda *xs: [{"objects": {"abo_i": x}} for x in xs]
    results = {"byol": res(0.30, 0.31, 0.32), "r2o": res(0.40, 0.41, 0.42), "detcon": res(0.29, 0.33, 0.37)}
    baselines = {"random": res(0.35, 0.35, 0.35), "slic": [{"objects": {"abo_i": 0.5}, "objects_prior100": {"abo_i": 0.2}}]}
    lines = "\n".join(orderings(spec, results, baselines))
    assert "R2O (SLIC, K 128→4, BYOL loss) masks beat random:resnet18 (ABO_i, held-out scenes): holds — 41.0" in lines
    assert "BYOL masks beat random:resnet18 (ABO_i, held-out scenes): **does not hold** — 31.0" in lines
    assert "DetCon-B (SLIC) beats BYOL on ABO_i: holds (within one std" in lines
    assert "beat the SLIC prior it starts from, 100 regions (ABO_i): holds" in lines


def test_slic_baseline_recovers_four_flat_quadrants(tmp_path):
    """Four flat colours in quadrants: SLIC with 4 regions finds them exactly (ABO 1); with 1 region
    (n_segments=2 gives one on a square) every quadrant's best overlap is 1/4 (hand computed)."""
    from discorep.data.datasets import CocoDataset
    from discorep.apps.study.baselines import slic_objects

    img = np.zeros((64, 96, 3), np.uint8)
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    boxes = [(0, 0, 48, 32), (48, 0, 96, 32), (0, 32, 48, 64), (48, 32, 96, 64)]
    for (x0, y0, x1, y1), colour in zip(boxes, colours):
        img[y0:y1, x0:x1] = colour
    (tmp_path / "imgs").mkdir()
    Image.fromarray(img).save(tmp_path / "imgs" / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 96}],
            "categories": [{"id": 1, "name": "x"}],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 48 * 32,
                             "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]], "bbox": [x0, y0, 48, 32]}
                            for i, (x0, y0, x1, y1) in enumerate(boxes)]}
    (tmp_path / "a.json").write_text(json.dumps(coco))
    dataset = CocoDataset(tmp_path / "a.json", tmp_path / "imgs")
    assert slic_objects(dataset, [4])["abo_i"] == pytest.approx(1.0, abs=0.02)
    assert slic_objects(dataset, [2])["abo_i"] == pytest.approx(0.25, abs=0.02)


def test_dominant_category_folders_follow_the_annotations(tmp_path):
    from discorep.apps.demodata.scenes import make_scenes
    from discorep.apps.study.data import dominant_category_folders

    make_scenes(tmp_path / "s", 12, seed=4, image_size=(48, 48))
    out = dominant_category_folders(tmp_path / "s" / "annotations.json", tmp_path / "s" / "images", tmp_path / "knn")
    data = json.loads((tmp_path / "s" / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    for entry in data["images"]:
        assert (out / names[entry["dominant_category"]] / entry["file_name"]).is_file()
    assert sum(1 for _ in out.rglob("*.png")) == 12


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["study", "--config", str(STUDY), "--quick"]) == 0
    report = (tmp_path / "runs/study_quick/results.md").read_text()
    for heading in ("## Tables", "### Methods", "### R2O K curriculum", "## The papers' orderings, measured",
                    "## How each number was produced"):
        assert heading in report
    rows = [line for line in report.splitlines() if line.startswith("| ") and "method" not in line]
    assert any(line.startswith("| BYOL | 1 |") for line in rows) and any("random:resnet18" in line for line in rows)
    per_run = sorted(p.name for p in (tmp_path / "runs/study_quick/per_run").glob("*.json"))
    assert per_run == ["byol_seed0.json", "r2o_seed0.json", "random_seed0.json", "slic.json"]
    for name in per_run:
        result = json.loads((tmp_path / "runs/study_quick/per_run" / name).read_text())
        numbers = [v for section in ("objects", "photos", "foreground", "video", "knn") if section in result
                   for v in result[section].values() if isinstance(v, float)]
        assert numbers and all(math.isfinite(v) for v in numbers), name
        if name != "slic.json":
            assert {"objects", "photos", "foreground", "video", "knn"} <= set(result)
    r2o = json.loads((tmp_path / "runs/study_quick/per_run/r2o_seed0.json").read_text())
    assert r2o["probe"] and all(0 <= p["abo_i"] <= 1 for p in r2o["probe"])  # ABO over training recorded
    assert (tmp_path / "runs/study_quick/results/abo_over_training.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "runs/study_quick/results/summary.json").read_text())
    assert set(summary["results"]) == {"byol", "r2o"} and set(summary["baselines"]) == {"random", "slic"}
    # A second call finds every result and only rewrites the report; --report-only lists what is missing.
    before = (tmp_path / "runs/study_quick/per_run/r2o_seed0.json").stat().st_mtime_ns
    assert main(["study", "--config", str(STUDY), "--quick"]) == 0
    assert (tmp_path / "runs/study_quick/per_run/r2o_seed0.json").stat().st_mtime_ns == before
    (tmp_path / "runs/study_quick/per_run/byol_seed0.json").unlink()
    assert main(["study", "--config", str(STUDY), "--quick", "--report-only"]) == 0
    assert not (tmp_path / "runs/study_quick/per_run/byol_seed0.json").exists()  # nothing was trained
    assert "**Incomplete:** 1 (run, seed) pairs" in (tmp_path / "runs/study_quick/results.md").read_text()


def test_grid_oracle_hand_computed(tmp_path):
    """32x32 image, 2x2 grid (16-px cells): a mask that is one cell is kept exactly (BO 1); a mask over
    the left 8 columns fills half of each left cell, rounds to the left 16 columns (BO 8/16)."""
    from discorep.data.datasets import CocoDataset
    from discorep.apps.study.baselines import grid_oracle_objects

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "imgs" / "a.png")
    polygons = [[0, 0, 16, 0, 16, 16, 0, 16], [0, 0, 8, 0, 8, 32, 0, 32]]
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 32, "width": 32}],
            "categories": [{"id": 1, "name": "x"}],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": [p], "iscrowd": 0,
                             "area": 256, "bbox": [0, 0, 16, 16]} for i, p in enumerate(polygons)]}
    (tmp_path / "a.json").write_text(json.dumps(coco))
    result = grid_oracle_objects(CocoDataset(tmp_path / "a.json", tmp_path / "imgs"), 2)
    assert result["n_masks"] == 2 and result["abo_i"] == pytest.approx((1.0 + 0.5) / 2)
