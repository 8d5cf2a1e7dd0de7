"""k-NN and ABO probes during pretraining are logged and never change what is trained."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from PIL import Image

from discorep.checkpoint import latest_checkpoint, load_checkpoint
from discorep.apps.demodata.scenes import make_scenes
from discorep.engine.train import pretrain
from tests.helpers import tiny_config


def _colour_folders(root):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(4):
                img = np.clip(np.array(colour) + rng.integers(-20, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.png")
    return root / "train", root / "val"


def test_probes_are_logged_every_epoch_and_leave_training_unchanged(tmp_path):
    ann = make_scenes(tmp_path / "scenes", 16, seed=6, image_size=(96, 96))
    images = tmp_path / "scenes" / "images"
    knn_train, knn_val = _colour_folders(tmp_path / "colours")
    probes = {"eval": {"every_epochs": 1, "knn_train": str(knn_train), "knn_val": str(knn_val), "knn_k": 3,
                       "objects_coco": str(ann), "objects_images": str(images), "objects_ks": [1, 2, 4],
                       "size": 64, "features": "c4"},
              "train": {"epochs": 2}}
    with_eval = pretrain(tiny_config("byol", images, tmp_path / "a", probes))
    without = pretrain(tiny_config("byol", images, tmp_path / "b", {"train": {"epochs": 2}}))
    records = [json.loads(line) for line in (with_eval / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/knn_top1" in r]
    assert [r["epoch"] for r in evals] == [1, 2]
    for r in evals:
        for key in ("eval/knn_top1", "eval/abo_i", "eval/abo_c", "eval/or"):
            assert 0.0 <= r[key] <= 1.0 and math.isfinite(r[key])
    a, b = load_checkpoint(latest_checkpoint(with_eval)), load_checkpoint(latest_checkpoint(without))
    for key, value in a["method"].items():
        assert torch.equal(value, b["method"][key]), key  # incl. BN running statistics
