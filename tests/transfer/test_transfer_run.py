"""`transfer`'s schedule, sampler, seed summary and command line, and a few-iteration run of each task.

The schedule is checked against hand-computed values (detectron2's WarmupMultiStepLR, mmseg's poly),
the sampler against the properties a resumed multi-process run needs, the seed summary against
`statistics`, and the end-to-end runs for the JSON layout the issue fixes.
"""

from __future__ import annotations

import json
import math
import statistics

import pytest

from discorep.cli import main
from discorep.transfer.config import SolverSettings, load_transfer_config, preset_names
from discorep.transfer.loop import ShardSampler, lr_at
from discorep.transfer.run import difference, summarise


def test_lr_warms_up_linearly_then_steps_down_at_the_fractions():
    s = SolverSettings(batch_size=8, base_lr=0.02, lr_reference_batch=16, iters=90, warmup_iters=10,
                       warmup_factor=0.001, steps=[2 / 3, 8 / 9], gamma=0.1)
    lr = 0.02 * 8 / 16  # linear scaling with the batch
    assert lr_at(0, s) == pytest.approx(lr * 0.001)
    assert lr_at(5, s) == pytest.approx(lr * (0.001 * 0.5 + 0.5))
    assert lr_at(10, s) == pytest.approx(lr)
    assert lr_at(59, s) == pytest.approx(lr) and lr_at(60, s) == pytest.approx(lr * 0.1)
    assert lr_at(79, s) == pytest.approx(lr * 0.1) and lr_at(80, s) == pytest.approx(lr * 0.01)


def test_poly_schedule_replaces_the_steps():
    s = SolverSettings(batch_size=16, base_lr=0.01, iters=100, warmup_iters=0, poly_power=0.9, steps=[0.5])
    assert lr_at(0, s) == pytest.approx(0.01)
    assert lr_at(50, s) == pytest.approx(0.01 * 0.5**0.9)
    assert lr_at(100, s) == pytest.approx(0.0)


def _take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_shard_sampler_splits_each_epoch_and_a_resumed_sampler_continues_the_same_order():
    n, world = 10, 3
    epoch0 = [_take(ShardSampler(n, r, world, seed=4), 3) for r in range(world)]
    flat = sum(epoch0, [])
    assert len(set(flat)) == 9  # disjoint, one image of 10 left out (cut to a multiple of the world)
    whole = _take(ShardSampler(n, 1, world, seed=4), 12)
    assert _take(ShardSampler(n, 1, world, seed=4, start=5), 7) == whole[5:]
    assert whole[:3] != whole[3:6] or n < 4  # the next epoch is another permutation
    assert _take(ShardSampler(n, 1, world, seed=5), 3) != whole[:3]


def test_seed_summary_is_mean_and_sample_std_with_the_per_seed_values():
    runs = [{"scores": {"bbox": {"AP": a, "APl": None}}} for a in (10.0, 12.0, 17.0)]
    s = summarise(runs)
    assert s["bbox"]["AP"]["mean"] == pytest.approx(statistics.fmean([10, 12, 17]))
    assert s["bbox"]["AP"]["std"] == pytest.approx(statistics.stdev([10, 12, 17]))
    assert s["bbox"]["AP"]["per_seed"] == [10.0, 12.0, 17.0]
    assert s["bbox"]["APl"]["mean"] is None
    base = summarise([{"scores": {"bbox": {"AP": a, "APl": None}}} for a in (4.0, 6.0, 8.0)])
    assert difference(s, base)["bbox"]["AP"] == pytest.approx(13.0 - 6.0)
    assert summarise(runs[:1]) == runs[0]["scores"]  # one seed: plain values


def test_presets_load_with_their_sources_and_refuse_the_other_task():
    assert set(preset_names("detect")) >= {"coco_1x_d2", "coco_1x_tpu", "cpu_detect"}
    assert set(preset_names("segment")) >= {"voc_fcn_30k", "cityscapes_fcn", "cpu_segment"}
    for task in ("detect", "segment"):
        for name in preset_names(task):
            cfg = load_transfer_config(task, name, [])
            assert cfg.source and cfg.preset == name
    d2 = load_transfer_config("detect", "coco_1x_d2", ["solver.base_lr=0.01"])
    assert (d2.model.norm, d2.model.trainable_layers, d2.solver.iters, d2.solver.base_lr) == ("syncbn", 5, 90000, 0.01)
    from discorep.errors import UsageError

    with pytest.raises(UsageError, match="segment protocol"):
        load_transfer_config("detect", "voc_fcn_30k", [])


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_bad_arguments_are_one_line(scenes_pair, tmp_path, capsys):
    train, val = scenes_pair
    base = ["transfer", "detect", "--checkpoint", "random:resnet18", "--train", str(train), "--val", str(val),
            "--work-dir", str(tmp_path / "w")]
    assert "--iters 0 trains nothing" in _error(capsys, [*base, "--iters", "0"])
    assert "no such preset" in _error(capsys, [*base, "--preset", "coco_3x"])
    assert "solver.bogus" in _error(capsys, [*base, "solver.bogus=1"])
    assert "syncbn" in _error(capsys, [*base, "--norm", "syncbn", "--device", "cpu", "--iters", "1"])
    assert "vit_s" in _error(capsys, [*base[:3], "random:vit_s", *base[4:], "--iters", "1"])
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").rglob("*.json"))


TINY = ["solver.batch_size=2", "solver.workers=0", "solver.warmup_iters=1", "eval_batch_size=2"]


def test_detect_writes_every_metric_beside_the_cached_random_baseline(scenes_pair, tmp_path, capsys):
    train, val = scenes_pair
    out = tmp_path / "d.json"
    argv = ["transfer", "detect", "--checkpoint", "random:resnet18:1", "--train", str(train), "--val", str(val),
            "--iters", "2", "--size", "64", "--out", str(out), "--work-dir", str(tmp_path / "w"), *TINY]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    for kind in ("bbox", "segm"):
        assert set(result[kind]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        assert all(v is None or 0 <= v <= 100 for v in result[kind].values())
    s = result["settings"]
    assert s["transferred"]["norm"] == "bn" and s["transferred"]["trainable_layers"] == 5
    assert s["runs"][0]["iters"] == 2 and math.isfinite(s["runs"][0]["final_loss"])
    assert result["baseline"]["checkpoint"] == "random:resnet18"
    assert set(result["difference"]["bbox"]) <= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert "bbox AP" in printed and "random:resnet18" in printed
    # the baseline is cached by its settings: a second checkpoint at the same settings reuses it
    done = {json.loads(p.read_text())["backbone"]: p for p in (tmp_path / "w").glob("detect-*/scores.json")}
    assert set(done) == {"random:resnet18:1", "random:resnet18"}
    stamp = done["random:resnet18"].stat().st_mtime_ns
    argv[3] = "random:resnet18:2"
    assert main(argv) == 0
    assert done["random:resnet18"].stat().st_mtime_ns == stamp  # read, not retrained
    assert len(list((tmp_path / "w").glob("detect-*/scores.json"))) == 3


def test_segment_scores_miou_per_class(scenes_pair, tmp_path):
    train, val = scenes_pair
    out = tmp_path / "s.json"
    argv = ["transfer", "segment", "--checkpoint", "random:resnet18", "--train", str(train), "--val", str(val),
            "--iters", "2", "--size", "64", "--out", str(out), "--work-dir", str(tmp_path / "w"), *TINY,
            "solver.batch_size=2"]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert 0 <= result["mIoU"] <= 100
    names = json.loads(train.read_text())["categories"]
    assert set(result["per_class_IoU"]) == {"background", *(c["name"] for c in names)}
    assert result["baseline"] is None  # the checkpoint is itself random init: nothing to compare with
