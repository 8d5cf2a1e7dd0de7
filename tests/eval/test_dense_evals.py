"""The dense evaluations: metrics against independent oracles, protocols on colour-coded sets, CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from discorep.apps.demodata.scenes import make_scenes
from discorep.data.palette import davis_palette
from discorep.data.semantic import CocoSemantic, VocLayout, open_semantic, write_voc_layout
from discorep.eval import corloc as corloc_mod
from discorep.eval.backbone import EvalModel
from discorep.eval.dense import encode_set, scores_at
from discorep.eval.dense_metrics import (box_iou, confusion, hungarian_mapping, iou_matrix, many_to_one_mapping,
                                         miou, remap)
from discorep.eval.linear_seg import evaluate_linear_seg
from discorep.eval.overcluster import evaluate_overcluster
from discorep.eval.retrieval import evaluate_retrieval

COLOURS = np.array([(0, 0, 0), (230, 20, 20), (20, 230, 20), (20, 20, 230)], np.uint8)  # class c = colour c


# ----------------------------------------------------------------------------- metric oracles
def _brute_miou(pred, target, C):
    """Per class, IoU by counting pixel sets directly; mean over classes present in either."""
    keep = target >= 0
    ious = []
    for c in range(C):
        p, t = (pred == c) & keep, (target == c) & keep
        union = (p | t).sum()
        if union:
            ious.append((p & t).sum() / union)
    return float(np.mean(ious))


def test_confusion_miou_equals_brute_force_with_ignore():
    rng = np.random.default_rng(0)
    for _ in range(5):
        pred, target = rng.integers(0, 5, (40, 30)), rng.integers(-1, 5, (40, 30))
        target[target == 4] = 2  # class 4 never in the target: only a false positive
        assert miou(confusion(pred, target, 5, 5)) == pytest.approx(_brute_miou(pred, target, 5), abs=1e-12)
    conf = confusion(np.array([0, 1, 1]), np.array([0, -1, 1]), 2, 2)
    assert conf.tolist() == [[1, 0], [0, 1]]  # the ignored pixel is not counted


def test_hungarian_equals_brute_force_over_permutations():
    rng = np.random.default_rng(1)
    for _ in range(10):
        conf = rng.integers(0, 50, (4, 4))
        iou = iou_matrix(conf)
        best = max(itertools.permutations(range(4)), key=lambda p: sum(iou[i, p[i]] for i in range(4)))
        mapping = hungarian_mapping(conf)
        assert sum(iou[i, mapping[i]] for i in range(4)) == pytest.approx(sum(iou[i, best[i]] for i in range(4)))
    wide = np.array([[9, 0], [0, 9], [1, 2]])  # 3 clusters, 2 classes: the third is unmatched → background 0
    assert hungarian_mapping(wide).tolist() == [0, 1, 0]


def test_greedy_many_to_one_by_hand():
    # clusters (rows) vs classes (cols): IoUs 0:[.6,.1/...], hand-checked below
    conf = np.array([[6, 1, 0],    # cluster 0: IoU with class 0 = 6/(7+10-6)=.545, class 1 = 1/(7+9-1)=.067
                     [4, 0, 0],    # cluster 1: class 0 = 4/(4+10-4)=.4
                     [0, 8, 1],    # cluster 2: class 1 = 8/(9+9-8)=.8
                     [0, 0, 3],    # cluster 3: class 2 = 3/(3+4-3)=.75
                     [0, 0, 0]])   # cluster 4: empty → argmax of zeros = class 0
    assert many_to_one_mapping(conf).tolist() == [0, 0, 1, 2, 0]
    merged = remap(conf, many_to_one_mapping(conf))
    assert merged.tolist() == [[10, 1, 0], [0, 8, 1], [0, 0, 3]]
    # mIoU by hand: class 0: 10/(11+10-10)=10/11, class 1: 8/(9+9-8)=.8, class 2: 3/(3+4-3)=.75
    assert miou(merged) == pytest.approx((10 / 11 + 0.8 + 0.75) / 3)


def test_box_iou_and_corloc_by_hand():
    assert box_iou([0, 0, 10, 10], [[5, 0, 15, 10], [20, 20, 30, 30]]).tolist() == [[50 / 150, 0.0]]
    labels = np.zeros((40, 60), np.int64)
    labels[10:20, 30:50] = 1  # the object: touches no border
    labels[30:32, 5:7] = 1  # a smaller piece of the same segment: not the largest component
    assert corloc_mod.foreground_box(labels) == (30, 10, 50, 20)
    assert corloc_mod.foreground_box(1 - labels) == (30, 10, 50, 20)  # whichever id it has


# ----------------------------------------------------------------------------- colour-coded sets
class _ColourNet(torch.nn.Module):
    """c4 = the mean colour of each 8x8 cell: classes are linearly separable in it."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return {"c4": F.avg_pool2d(x, 8)}


STUB = EvalModel(_ColourNet(), None, "colour", "colour", {})


def _voc_set(root, n, seed, size=64):
    """VOC layout: black background with 1-2 coloured rectangles whose colour is their class; 255 borders."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    for i in range(n):
        lab = np.zeros((size, size), np.uint8)
        for _ in range(rng.integers(1, 3)):
            c = rng.integers(1, 4)
            y, x = rng.integers(0, size // 2, 2)
            lab[y:y + rng.integers(16, size // 2), x:x + rng.integers(16, size // 2)] = c
        Image.fromarray(COLOURS[lab]).save(root / "JPEGImages" / f"{i:03d}.png")
        edge = np.zeros_like(lab, bool)
        edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
        png = Image.fromarray(np.where(edge, 255, lab).astype(np.uint8), mode="P")
        png.putpalette(davis_palette())
        png.save(root / "SegmentationClass" / f"{i:03d}.png")
    (root / "classes.txt").write_text("background\nred\ngreen\nblue\n")
    return root


@pytest.fixture(scope="module")
def colour_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    train, val = VocLayout(_voc_set(root / "train", 16, 0)), VocLayout(_voc_set(root / "val", 8, 1))
    enc = [encode_set(STUB, s, 64, "c4", num_workers=0, progress=False) for s in (train, val)]
    return train, val, enc


def test_voc_layout_reads_255_as_ignore_and_classes(colour_sets):
    train, _, (enc, _) = colour_sets
    assert train.num_classes == 4 and train.class_names[1] == "red"
    assert enc.labels[0].min() == -1 and set(np.unique(enc.labels[0])) <= {-1, 0, 1, 2, 3}
    assert enc.feats[0].shape == (3, 8, 8)


def test_linear_seg_learns_colour_classes(colour_sets):
    _, _, (train, val) = colour_sets
    result = evaluate_linear_seg(train, val, epochs=60, lr=1.0, seed=0, train_label_size=64)
    assert result["miou"] > 0.85, result["per_class_iou"]
    coarse = evaluate_linear_seg(train, val, epochs=60, lr=1.0, seed=0, train_label_size=64, score_size=16)
    assert coarse["miou"] != result["miou"]  # scoring resolution is a real protocol knob


def test_retrieval_labels_colour_patches(colour_sets):
    _, _, (train, val) = colour_sets
    assert evaluate_retrieval(train, val, k=5)["miou"] > 0.85
    small = evaluate_retrieval(train, val, k=5, bank_size=10)
    assert small["bank_entries"] == 10


def test_overcluster_recovers_colour_classes(colour_sets):
    _, _, (_, val) = colour_sets
    result = evaluate_overcluster(val, [4, 8], seeds=2)
    by_k = {r["k"]: r for r in result["per_k"]}
    assert by_k[4]["matching"] == "hungarian" and by_k[8]["matching"] == "greedy many-to-one"
    assert by_k[8]["miou_mean"] > 0.85 and len(by_k[8]["miou_per_seed"]) == 2


def test_scores_at_full_size_by_default():
    probs = torch.zeros(2, 2, 2)
    probs[1, :, 1] = 1.0
    labels = np.zeros((6, 9), np.int64)
    pred, target = scores_at(probs, labels, None)
    assert pred.shape == (6, 9) and target.shape == (6, 9)
    assert scores_at(probs, labels, 4)[0].shape == (4, 4)


# ----------------------------------------------------------------------------- COCO = VOC, and the CLI
def test_coco_and_its_voc_export_give_the_same_maps(tmp_path):
    ann = make_scenes(tmp_path / "coco", 3, seed=5, image_size=(48, 40))
    coco = CocoSemantic(ann, tmp_path / "coco" / "images")
    voc = open_semantic(write_voc_layout(coco, tmp_path / "voc"))
    assert voc.class_names == coco.class_names and len(voc) == len(coco)
    for i in range(len(coco)):
        assert np.array_equal(coco.load(i)[1], voc.load(i)[1])
        assert np.array_equal(np.asarray(coco.load(i)[0]), np.asarray(voc.load(i)[0]))


def test_coco_semantic_by_category_by_hand(tmp_path):
    ann = make_scenes(tmp_path, 2, seed=6, image_size=(40, 40))
    sem, raw = CocoSemantic(ann, tmp_path / "images"), json.loads(ann.read_text())
    item = sem.coco[0]
    _, labels = sem.load(0)
    ranks = {c: k + 1 for k, c in enumerate(sorted(c["id"] for c in raw["categories"]))}
    for m, c in zip(item["masks"].astype(bool), item["category_ids"]):
        assert (labels[m] == ranks[int(c)]).all()  # scenes paint instances without overlap
    assert (labels[~item["masks"].astype(bool).any(0)] == 0).all()


@pytest.mark.parametrize("task", ["linear-seg", "overcluster", "retrieval", "corloc"])
def test_dense_eval_cli_on_demo_scenes(task, tmp_path):
    from discorep.cli import main

    train = make_scenes(tmp_path / "train", 4, seed=0, image_size=(64, 64))
    val = make_scenes(tmp_path / "val", 3, seed=1, image_size=(64, 64))
    args = ["eval", task, "--checkpoint", "random:resnet18", "--size", "64", "--features", "c4", "--device", "cpu",
            "--val", str(val), "--out", str(tmp_path / "r.json")]
    extra = {"linear-seg": ["--train", str(train), "--epochs", "2"], "retrieval": ["--train", str(train)],
             "overcluster": ["--k", "classes,12", "--seeds", "2"], "corloc": ["--refine", "slic"]}[task]
    assert main(args + extra) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["task"] == task and data["settings"]["size"] == 64 and data["settings"]["checkpoint"] == "random:resnet18"
    key = {"linear-seg": "miou", "retrieval": "miou", "corloc": "corloc"}.get(task)
    if key:
        assert 0.0 <= data[key] <= 1.0
    else:
        n_classes = 1 + len(json.loads(val.read_text())["categories"])  # shape categories + background
        assert [r["k"] for r in data["per_k"]] == [n_classes, 12]


def test_dense_eval_bad_input_is_one_line(tmp_path, capsys):
    from discorep.cli import main

    rc = main(["eval", "overcluster", "--checkpoint", "random:resnet18", "--val", str(tmp_path / "missing")])
    assert rc == 2 and "--val" in capsys.readouterr().err


def _voc_boxes(root, boxes):
    """VOC detection layout: grey images and one XML per image (1-based inclusive boxes)."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for i, objs in enumerate(boxes):
        Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
        xml = "".join(f"<object><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1}</xmax>"
                      f"<ymax>{y1}</ymax></bndbox></object>" for x0, y0, x1, y1 in objs)
        (root / "Annotations" / f"{i}.xml").write_text(f"<annotation>{xml}</annotation>")
    return root


def test_corloc_by_hand_on_voc_boxes(tmp_path, monkeypatch):
    """Three images; the fake segmentation's foreground is the object (hit), a box of IoU 1/3 (miss),
    and the second of two objects (hit): CorLoc = 2/3."""
    gts = [[(30, 10, 50, 20)], [(10, 10, 30, 30)], [(2, 2, 12, 12), (40, 20, 55, 35)]]
    fgs = [(30, 10, 50, 20), (20, 10, 40, 30), (40, 20, 55, 35)]  # (x0, y0, x1, y1) of segment 1
    data = corloc_mod.open_boxes(_voc_boxes(tmp_path, gts))
    assert data.boxes(2).tolist() == [[2, 2, 12, 12], [40, 20, 55, 35]]

    def fake(model, images, ks, features="c5", *, seed=0, image_ids=None, **_):
        maps = []
        for i in image_ids:
            x0, y0, x1, y1 = fgs[int(i)]
            m = torch.zeros(40, 60, dtype=torch.int64)
            m[y0:y1, x0:x1] = 1
            maps.append(m)
        return {k: torch.stack(maps) for k in ks}

    monkeypatch.setattr(corloc_mod, "segment_batch", fake)
    result = corloc_mod.evaluate_corloc(STUB, data, 64, "c4", progress=False)
    assert [r["hit"] for r in result["per_image"]] == [True, False, True]
    assert result["corloc"] == pytest.approx(2 / 3)
    assert result["per_image"][1]["best_iou"] == pytest.approx(200 / 600)


def test_study_runs_the_dense_tasks_and_shows_their_columns(tmp_path):
    from pathlib import Path

    from discorep.eval.backbone import load_model
    from discorep.apps.study.report import table
    from discorep.apps.study.runner import dense_tasks
    from discorep.apps.study.spec import load_study

    spec = load_study(Path(__file__).resolve().parents[2] / "configs" / "study_cpu.yaml", quick=True)
    spec.eval.dense_size, spec.eval.linear_seg_epochs, spec.eval.overcluster_k = 64, 2, "classes,12"
    data = {"seg_train": make_scenes(tmp_path / "train", 4, seed=0, image_size=(64, 64)),
            "seg_val": make_scenes(tmp_path / "val", 3, seed=1, image_size=(64, 64))}
    tasks = ["linear_seg", "overcluster", "retrieval", "corloc"]
    out = dense_tasks(load_model("random:resnet18"), spec, data, 0, tasks)
    assert set(out) == set(tasks) and out["overcluster"]["miou"] == out["overcluster"]["miou_k12"]
    assert all(0.0 <= out[t][k] <= 1.0 for t, k in (("linear_seg", "miou"), ("retrieval", "miou"),
                                                     ("corloc", "corloc")))
    with_dense = table("t", [("random", [out | {"objects": {"abo_i": 0.5}}])])
    assert "lin-seg mIoU" in with_dense and "CorLoc" in with_dense
    assert f"{out['corloc']['corloc'] * 100:.1f}" in with_dense.splitlines()[-1]
    assert "CorLoc" not in table("t", [("random", [{"objects": {"abo_i": 0.5}}])])  # opt-in: absent → no column
