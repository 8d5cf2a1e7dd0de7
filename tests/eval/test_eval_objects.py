"""`eval objects` / `eval foreground` end to end: ground-truth label maps must score exactly 1."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from discorep.cli import main
from discorep.data.datasets import CocoDataset
from discorep.apps.demodata.scenes import make_scenes
from discorep.data.images import DatasetError
from discorep.eval import foreground as foreground_mod
from discorep.eval import objects as objects_mod

OBJECT_OPTS = {"checkpoint": "random:resnet18", "size": 64, "features": "c4", "device": "cpu", "batch_size": 4,
               "seed": 0, "filter_small": False}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    return make_scenes(root, 6, seed=4, image_size=(96, 96)), root / "images"


def _truth_maps(ann, images):
    """Per dataset index: instance-id map (0 = background) and category-id map."""
    ds = CocoDataset(ann, images)
    inst, cat = {}, {}
    for i in range(len(ds)):
        item = ds[i]
        inst[i] = np.zeros(item["masks"].shape[1:], np.int64)
        cat[i] = np.zeros(item["masks"].shape[1:], np.int64)
        for t, (m, c) in enumerate(zip(item["masks"].astype(bool), item["category_ids"])):
            inst[i][m], cat[i][m] = t + 1, c
    return inst, cat


def _fake_segment(inst, cat):
    """A segment_batch that returns the ground truth: instances for the first K, categories for the rest."""
    def segment(model, images, ks, features="c5", *, seed=0, image_ids=None, iters=50, **_refine_options):
        pick = lambda k, i: torch.from_numpy((inst if k == ks[0] else cat)[int(i)])
        return {k: torch.stack([pick(k, i) for i in image_ids]) for k in ks}
    return segment


def _check_report(data, n_images):
    for key in ("abo_i", "abo_c", "or"):
        assert math.isfinite(data[key]) and 0.0 <= data[key] <= 1.0
        per = [r[key] for r in data["per_image"]]
        assert all(0.0 <= v <= 1.0 for v in per)
        assert data[key] == pytest.approx(np.mean(per))  # mean over images (Odin §3.2)
    assert data["n_images"] == len(data["per_image"]) == n_images


def test_objects_cli_end_to_end_with_random_resnet18(scenes, tmp_path):
    ann, images = scenes
    out = tmp_path / "sub" / "objects.json"
    assert main(["eval", "objects", "--checkpoint", "random:resnet18", "--coco", str(ann), "--images", str(images),
                 "--k", "1,2,4", "--size", "64", "--features", "c4", "--batch-size", "4", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    _check_report(data, 6)
    assert data["n_proposals_max"] == 7 and data["settings"]["ks"] == [1, 2, 4]
    assert data["settings"]["crowd"] == "excluded" and data["n_skipped_unreadable"] == 0
    # K=1 is the whole image, so every instance has BO ≥ its area fraction: ABO_i > 0.
    assert data["abo_i"] > 0


def test_objects_with_ground_truth_label_maps_scores_exactly_one(scenes, tmp_path, monkeypatch):
    ann, images = scenes
    monkeypatch.setattr(objects_mod, "segment_batch", _fake_segment(*_truth_maps(ann, images)))
    out = tmp_path / "perfect.json"
    objects_mod.run(coco=ann, images=images, k="1,2,4", out=out, **OBJECT_OPTS)
    data = json.loads(out.read_text())
    _check_report(data, 6)
    assert (data["abo_i"], data["abo_c"], data["or"]) == (1.0, 1.0, 1.0)


def _blocky_coco(root, H=96, W=64, grid=16):
    """A non-square image whose instances are unions of the grid's cells (each (H/grid)×(W/grid) px),
    so a grid-resolution label map upsampled (nearest) to H×W reproduces them exactly."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "images" / "a.png")
    cells = np.zeros((grid, grid), np.int64)
    cells[2:7, 3:12], cells[9:15, 1:5], cells[10:13, 8:15] = 1, 2, 3
    anns = []
    for t in (1, 2, 3):
        full = np.kron(cells == t, np.ones((H // grid, W // grid), bool))
        rle = mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))
        anns.append({"id": t, "image_id": 1, "category_id": 1 + (t > 1), "iscrowd": 0,
                     "segmentation": {"size": [H, W], "counts": rle["counts"].decode()}})
    ann = root / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
                               "annotations": anns, "categories": [{"id": 1}, {"id": 2}]}))
    return ann, cells


def test_grid_labels_are_upsampled_to_the_original_non_square_resolution(tmp_path, monkeypatch):
    ann, cells = _blocky_coco(tmp_path)
    category_cells = np.where(cells > 1, 2, cells)
    for shift, expect_perfect in ((0, True), (1, False)):
        inst = {0: np.roll(cells, shift, axis=0)}
        monkeypatch.setattr(objects_mod, "segment_batch", _fake_segment(inst, {0: np.roll(category_cells, shift, 0)}))
        result = objects_mod.run(coco=ann, images=tmp_path / "images", k="1,2", out=None, **OBJECT_OPTS)
        assert (result["abo_i"] == 1.0 and result["abo_c"] == 1.0) is expect_perfect


def test_objects_skips_unreadable_and_unannotated_images(scenes, tmp_path):
    ann, images = scenes
    shutil.copytree(images, tmp_path / "images")
    (tmp_path / "images" / "scene_000002.png").write_bytes(b"not a png")
    data = json.loads(ann.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 4]  # image 4 → index 3
    (tmp_path / "ann.json").write_text(json.dumps(data))
    result = objects_mod.run(coco=tmp_path / "ann.json", images=tmp_path / "images", k="1,2", out=None,
                             **OBJECT_OPTS)
    assert result["n_images"] == 4
    assert (result["n_skipped_unreadable"], result["n_skipped_no_annotations"]) == (1, 1)
    assert sorted(s["path"].rsplit("/", 1)[1] for s in result["skipped"]) == ["scene_000002.png", "scene_000003.png"]
    for p in (tmp_path / "images").glob("*.png"):
        p.write_bytes(b"broken")
    with pytest.raises(DatasetError, match="no usable"):
        objects_mod.run(coco=tmp_path / "ann.json", images=tmp_path / "images", k="1", out=None, **OBJECT_OPTS)


def test_foreground_coco_ground_truth_with_oracle(scenes, tmp_path):
    ann, images = scenes
    out = tmp_path / "fg.json"
    assert main(["eval", "foreground", "--checkpoint", "random:resnet18", "--coco", str(ann), "--images",
                 str(images), "--size", "64", "--features", "c4", "--batch-size", "4", "--oracle",
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["settings"]["k"] == 5 and data["n_images"] == 6
    assert 0 < data["miou"] <= data["oracle_upper_bound_miou"] <= 1
    assert all(r["iou"] <= r["oracle_iou"] + 1e-12 for r in data["per_image"])
    assert data["miou"] == pytest.approx(np.mean([r["iou"] for r in data["per_image"]]))


def test_foreground_mask_folder_with_split_background_scores_exactly_one(scenes, tmp_path, monkeypatch):
    ann, images = scenes
    inst, _ = _truth_maps(ann, images)
    (tmp_path / "masks").mkdir()
    labels = {}
    for i, lab in inst.items():
        fg = lab > 0
        Image.fromarray(fg.astype(np.uint8) * 255).save(tmp_path / "masks" / f"scene_{i:06d}.png")
        cols = np.broadcast_to(np.arange(fg.shape[1]) * 3 // fg.shape[1], fg.shape)
        labels[i] = np.where(fg, 3, cols)  # the background split into three vertical bands, object = 3
    (tmp_path / "masks" / "scene_000005.png").unlink()  # one image without a mask: skipped, named
    monkeypatch.setattr(foreground_mod, "segment_batch", _fake_segment(labels, labels))
    result = foreground_mod.run(checkpoint="random:resnet18", coco=None, masks=tmp_path / "masks", images=images,
                                k=5, size=64, features="c4", device="cpu", batch_size=4, seed=0,
                                out=tmp_path / "fg.json", oracle=True)
    assert (result["miou"], result["miou_fg_bg"], result["oracle_upper_bound_miou"]) == (1.0, 1.0, 1.0)
    assert result["n_images"] == 5 and result["skipped"][0]["path"].endswith("scene_000005.png")


def test_random_baseline_seed_is_part_of_the_spec():
    import torch

    from discorep.checkpoint import CheckpointError
    from discorep.eval.backbone import load_model

    first = lambda spec: next(load_model(spec).encoder.parameters())
    assert torch.equal(first("random:resnet18"), first("random:resnet18:0"))
    assert not torch.equal(first("random:resnet18"), first("random:resnet18:1"))
    assert torch.equal(first("random:resnet18:1"), first("random:resnet18:1"))
    with pytest.raises(CheckpointError, match="random:<arch>:<seed>"):
        load_model("random:resnet18:one")
