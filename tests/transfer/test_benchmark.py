"""benchmarks/transfer.py: discorep's loop is timed over exactly the given batches (no checkpoint inside the
timing), the blocks split the timed iterations, and the reported ratio is the one measured."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks.transfer import (TARGET, blocks, build, main, make_train_set, preload, time_discorep,
                                 transfer_config)
from discorep.engine.distributed import DistInfo
from discorep.transfer import segment
from discorep.transfer.loop import Fitter, lr_at


def test_blocks_split_the_iterations_evenly_and_in_order():
    assert blocks(10, 5) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert blocks(3, 5) == [(0, 1), (1, 2), (2, 3)]  # never an empty block
    parts = blocks(7, 3)
    assert parts[0][0] == 0 and parts[-1][1] == 7 and all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert sorted(b - a for a, b in parts) == [2, 2, 3]


def test_fitter_runs_each_given_batch_once_and_saves_nothing(tmp_path):
    device = torch.device("cpu")
    cfg = transfer_config("segment", "cpu", 64, 2, 10, "cpu")
    train_set = make_train_set("segment", cfg, tmp_path / "scenes", 6, 64)
    batches = preload("segment", cfg, train_set, device, 3)
    model, opt = build("segment", cfg, "resnet18", train_set.num_classes, device)
    seen = []
    task_loss = segment.loss_fn(device)

    def loss_fn(net, batch):
        seen.append(batch)
        return task_loss(net, batch)

    fitter = Fitter(cfg, tmp_path / "run", DistInfo(0, 1, 0, device), {"backbone": "random:resnet18"})
    s = time_discorep(fitter, model, opt, loss_fn, batches[1:3], device, start=1)
    assert math.isfinite(s) and s > 0
    assert len(seen) == 2 and all(a is b for a, b in zip(seen, batches[1:3]))
    # the last iteration run is number 2 (start 1 counted), whose lr differs from iteration 1's
    assert opt.param_groups[0]["lr"] == lr_at(2, cfg.solver) != lr_at(1, cfg.solver)
    assert not list((tmp_path / "run").rglob("*.pt"))  # fit ended by the iterator, before its final save


def test_main_reports_the_ratio_it_measured(tmp_path, capsys):
    out = tmp_path / "t.json"
    returned = main(["--tasks", "segment", "--size", "64", "--iters", "2", "--repeats", "2", "--warmup", "0",
                     "--threads", "1", "--out", str(out)])
    written = json.loads(out.read_text())
    r = written["results"]["segment"]
    assert set(written["results"]) == {"segment"} and written["target"] == TARGET
    assert len(r["blocks_s_per_iter"]["discorep"]) == len(r["blocks_s_per_iter"]["bare"]) == 2
    assert r["discorep_s_per_iter"] == pytest.approx(sum(r["blocks_s_per_iter"]["discorep"]) / 2)  # median of 2
    assert r["bare_s_per_iter"] == pytest.approx(sum(r["blocks_s_per_iter"]["bare"]) / 2)
    assert r["ratio"] == r["bare_s_per_iter"] / r["discorep_s_per_iter"]
    assert r["meets_target"] == (r["ratio"] >= TARGET) and r["norm"] == "bn"
    assert returned["segment"]["ratio"] == r["ratio"]
    assert "met" in capsys.readouterr().out
