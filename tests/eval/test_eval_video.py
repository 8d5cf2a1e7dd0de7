"""DAVIS J and F against the esdft-segmetric oracle; label propagation (window, top-k, indexing, up- and
down-sampling) checked against a brute-force reference and against features that encode the ground truth;
the `eval video` command end to end and its data errors.

segmetric (a VOST fork of the official davis2017-evaluation) keeps the official metric API:
`db_eval_iou(annotation, segmentation, void_pixels=None)` and
`db_eval_boundary(annotation, segmentation, void_pixels=None, bound_th=0.008)` (ground truth FIRST).
Its dataset reader differs from the official one: it wants `ImageSets/<subset>.txt` and
`JPEGImages/<seq>` (no `2017/` and no `480p/`), its sequence evaluation ignores void (255) pixels instead of
passing them to J and F, and it adds J_last/F_last (last quarter of the frames). The per-frame functions
and the protocol (frames 1..T-2, objects 1..max id of frame 0, per-object means) are the official ones.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from segmetric.evaluation import _evaluate_sequence
from segmetric.metrics import db_eval_boundary, db_eval_iou

from discorep.apps.demodata.scenes import make_videos
from discorep.data.palette import davis_palette
from discorep.data.images import DatasetError
from discorep.eval import video
from discorep.eval.davis_metrics import (
    boundary_f,
    object_ids,
    region_j,
    scored_frames,
    sequence_scores,
    summarize,
)


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    make_videos(root, 2, seed=5, n_frames=6, image_size=(64, 96))
    return root


def _perturbations(gt, other):
    yield np.roll(gt, 3, axis=1)
    yield np.roll(gt, (-2, 5), axis=(0, 1))
    yield ndimage.binary_erosion(gt, iterations=2)
    yield ndimage.binary_dilation(gt, iterations=3)
    yield np.zeros_like(gt)
    yield gt.copy()
    yield other


# ----------------------------------------------------------------------------- metrics
def test_j_and_f_equal_the_oracle_on_generated_masks(davis):
    void = np.zeros((64, 96), bool)
    void[20:30, 40:60] = True
    n = 0
    for seq in video.list_sequences(davis):
        _, labels = video.read_sequence(davis, seq)
        for gt, other in zip(labels == 1, labels == 2):
            for pred in _perturbations(gt, other):
                for th in (0.008, 0.05, 2):
                    assert boundary_f(pred, gt, th) == pytest.approx(float(db_eval_boundary(gt, pred, None, th)))
                assert boundary_f(pred, gt, void=void) == pytest.approx(float(db_eval_boundary(gt, pred, void)))
                assert region_j(pred, gt) == pytest.approx(float(db_eval_iou(gt, pred)))
                assert region_j(pred, gt, void) == pytest.approx(float(db_eval_iou(gt, pred, void)))
                n += 1
    assert n >= 2 * 6 * 7


def _segmetric_layout(davis, tmp_path, predictions):
    """Symlink the DAVIS folders into segmetric's layout and write predictions as palette PNGs."""
    root, results = tmp_path / "segmetric", tmp_path / "results"
    (root / "ImageSets").mkdir(parents=True)
    shutil.copy(davis / "ImageSets/2017/val.txt", root / "ImageSets/val.txt")
    for kind in ("JPEGImages", "Annotations"):
        (root / kind).mkdir()
        for seq in predictions:
            (root / kind / seq).symlink_to(davis / kind / "480p" / seq)
    for seq, pred in predictions.items():
        (results / seq).mkdir(parents=True)
        for t, lab in enumerate(pred):
            png = Image.fromarray(lab)
            png.putpalette(davis_palette())
            png.save(results / seq / f"{t:05d}.png")
    return root, results


def test_sequence_protocol_equals_the_oracle_evaluation(davis, tmp_path):
    predictions, labels = {}, {}
    for k, seq in enumerate(video.list_sequences(davis)):
        _, labels[seq] = video.read_sequence(davis, seq)
        pred = np.roll(labels[seq], 2 + k, axis=2)
        pred[2] = np.where(pred[2] == 1, 0, pred[2])  # object 1 lost in one frame
        predictions[seq] = pred
    root, results = _segmetric_layout(davis, tmp_path, predictions)
    ours = {seq: sequence_scores(predictions[seq], labels[seq]) for seq in predictions}
    for seq, scores in ours.items():
        oracle = _evaluate_sequence(seq, root, "val", results)
        assert list(scores) == object_ids(labels[seq][0])
        np.testing.assert_allclose([s["J"] for s in scores.values()], oracle["J"]["M"], rtol=1e-9)
        np.testing.assert_allclose([s["F"] for s in scores.values()], oracle["F"]["M"], rtol=1e-9)
    everything = [s for scores in ours.values() for s in scores.values()]
    total = summarize(ours)
    assert total["J"] == pytest.approx(np.mean([s["J"] for s in everything]))
    assert total["J&F"] == pytest.approx((total["J"] + total["F"]) / 2)


def test_hand_cases_and_conventions():
    a = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True
    far = np.zeros((10, 10), bool)
    far[8:, 8:] = True
    empty = np.zeros((10, 10), bool)
    assert region_j(a, a) == 1.0 and boundary_f(a, a) == 1.0
    assert region_j(far, a) == 0.0 and boundary_f(far, a, bound_th=1) == 0.0
    assert region_j(empty, empty) == 1.0 and boundary_f(empty, empty) == 1.0
    assert region_j(empty, a) == 0.0 and boundary_f(empty, a) == 0.0  # P = 1, R = 0
    assert region_j(a, empty) == 0.0 and boundary_f(a, empty) == 0.0  # P = 0, R = 1
    shifted = np.roll(a, 1, axis=1)
    assert region_j(shifted, a) == pytest.approx(12 / 20)
    assert boundary_f(shifted, a, bound_th=1) == 1.0 and boundary_f(np.roll(a, 3, axis=1), a, bound_th=1) < 0.8
    assert list(scored_frames(5)) == [1, 2, 3] and list(scored_frames(2)) == []
    assert object_ids(np.array([[0, 1], [3, 255]])) == [1, 2, 3]  # ids up to the max; void is no object


def test_first_and_last_frames_are_not_scored_and_objects_weigh_equally():
    gt = np.zeros((4, 8, 8), np.uint8)
    gt[:, 2:5, 2:5] = 1
    pred = gt.copy()
    pred[0], pred[3] = 0, 0  # wrong only where DAVIS does not look
    assert sequence_scores(pred, gt) == {1: {"J": 1.0, "F": 1.0}}
    two = np.zeros((3, 8, 8), np.uint8)
    two[:, :2, :2], two[:, 5:, 5:] = 1, 2
    total = summarize({"good": {1: {"J": 1.0, "F": 1.0}}, "bad": sequence_scores(np.zeros_like(two), two)})
    assert total["J"] == pytest.approx(1 / 3) and total["per_sequence"]["bad"]["J"] == 0.0
    assert summarize({"short": sequence_scores(gt[:2], gt[:2])})["n_objects"] == 0


# ----------------------------------------------------------------------------- propagation
def _reference(feats, first, topk, context, radius, temperature):
    """Brute force, one target cell at a time, straight from the protocol's definition."""
    T, _, h, w = feats.shape
    probs = [first]
    for t in range(1, T):
        ctx = [0] + list(range(max(1, t - context), t))
        out = torch.zeros_like(first)
        for y in range(h):
            for x in range(w):
                cand = [(float(feats[t, :, y, x] @ feats[s, :, yy, xx]), probs[s][:, yy, xx]) for s in ctx
                        for yy in range(h) for xx in range(w) if abs(yy - y) <= radius and abs(xx - x) <= radius]
                cand.sort(key=lambda c: -c[0])
                sims = torch.tensor([c[0] for c in cand[:topk]])
                weights = torch.softmax(sims / temperature, 0)
                out[:, y, x] = sum(wt * lab for wt, lab in zip(weights, (c[1] for c in cand[:topk])))
        probs.append(out)
    return torch.stack(probs)


def test_propagation_equals_brute_force_reference():
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(5, 6, 5, 7, generator=g, dtype=torch.float64), dim=1)
    first = torch.softmax(torch.randn(3, 5, 7, generator=g, dtype=torch.float64), 0)
    got = video.propagate(feats, first, topk=4, context=2, radius=1, temperature=0.3)
    torch.testing.assert_close(got, _reference(feats, first, 4, 2, 1, 0.3))
    # Tiles of one cell give the same answer as one tile for the whole frame.
    src = feats[:3]
    labels = torch.softmax(torch.randn(3, 3, 5, 7, generator=g, dtype=torch.float64), 1)
    one = video.propagate_frame(feats[3], src, labels, topk=5, radius=2, temperature=0.7, tile=1)
    torch.testing.assert_close(one, video.propagate_frame(feats[3], src, labels, topk=5, radius=2,
                                                          temperature=0.7, tile=100))


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_labels_come_only_from_the_window(radius):
    h, w = 6, 7
    feats = F.normalize(torch.randn(2, 4, h, w, generator=torch.Generator().manual_seed(radius)), dim=1)
    first = torch.eye(h * w).reshape(h * w, h, w)  # channel c = "came from cell c"
    probs = video.propagate(feats, first, topk=h * w, context=1, radius=radius, temperature=0.7)
    support = probs[1].reshape(h * w, h * w) > 0  # (source channel, target cell)
    yy, xx = np.divmod(np.arange(h * w), w)
    window = (np.abs(yy[:, None] - yy[None]) <= radius) & (np.abs(xx[:, None] - xx[None]) <= radius)
    np.testing.assert_array_equal(support.numpy(), window)


def test_radius_zero_keeps_every_label_in_its_cell():
    feats = F.normalize(torch.randn(4, 5, 3, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    first = torch.eye(12).reshape(12, 3, 4)
    probs = video.propagate(feats, first, topk=5, context=2, radius=0, temperature=0.7)
    torch.testing.assert_close(probs, first.expand(4, -1, -1, -1))


def test_propagation_recovers_ground_truth_from_label_encoding_features(tmp_path, monkeypatch):
    """Features = the ground truth's one-hot ids area-averaged on the network's grid: through the real
    command (resize, seeding, propagation, upsampling, scoring) the prediction must match the ground truth."""
    make_videos(tmp_path, 1, seed=3, n_frames=8, image_size=(128, 192))
    seq = video.list_sequences(tmp_path)[0]
    _, labels = video.read_sequence(tmp_path, seq)
    onehot = torch.stack([torch.from_numpy(labels == i) for i in range(labels.max() + 1)], 1).float()
    frames, inputs = iter(onehot), []

    def label_features(model, images, kind, project=False):
        inputs.append(tuple(images.shape[-2:]))
        grid = (images.shape[-2] // 16, images.shape[-1] // 16)  # c4 stride
        return torch.stack([F.adaptive_avg_pool2d(next(frames), grid) for _ in images])

    monkeypatch.setattr(video, "dense_features", label_features)
    result = video.run(checkpoint="random:resnet18", size=384, features="c4", device="cpu", batch_size=3,
                       seed=0, out=None, davis=tmp_path, topk=5, context=7, radius=12, temperature=0.7)
    assert inputs == [(384, 576)] * 3  # short side 384, aspect 3:2 kept; 8 frames in batches of 3
    assert result["J"] >= 0.9 and result["F"] >= 0.9
    assert result["n_objects"] == len(object_ids(labels[0]))


# ----------------------------------------------------------------------------- command and errors
def test_video_cli_end_to_end(davis, tmp_path, capsys):
    from discorep.cli import main

    out = tmp_path / "video.json"
    assert main(["eval", "video", "--checkpoint", "random:resnet18", "--davis", str(davis), "--size", "64",
                 "--features", "c4", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["n_sequences"] == 2 and set(data["per_sequence"]) == {"demo-000", "demo-001"}
    for s in [data, *data["per_sequence"].values()]:
        assert 0 <= s["J"] <= 1 and 0 <= s["F"] <= 1 and s["J&F"] == pytest.approx((s["J"] + s["F"]) / 2)
    assert [data["settings"][k] for k in ("topk", "context", "radius", "temperature")] == [5, 7, 12, 0.7]
    assert "demo-001" in capsys.readouterr().out


def _copy(davis, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(davis, root)
    return root, root / "Annotations/480p/demo-000"


def test_not_a_davis_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="DAVIS-layout"):
        video.list_sequences(tmp_path)


def test_missing_first_annotation_and_count_mismatch_are_clear_errors(davis, tmp_path):
    root, ann = _copy(davis, tmp_path)
    (ann / "00005.png").unlink()
    with pytest.raises(DatasetError, match="6 frames but 5 annotations"):
        video.read_sequence(root, "demo-000")
    (ann / "00000.png").unlink()
    with pytest.raises(DatasetError, match="first frame 00000.jpg has no annotation"):
        video.read_sequence(root, "demo-000")


def test_rgb_annotation_is_a_clear_error(davis, tmp_path):
    from discorep.cli import main

    root, ann = _copy(davis, tmp_path)
    Image.open(ann / "00003.png").convert("RGB").save(ann / "00003.png")
    with pytest.raises(DatasetError, match="palette"):
        video.read_sequence(root, "demo-000")
    assert main(["eval", "video", "--checkpoint", "random:resnet18", "--davis", str(root), "--size", "64"]) == 2
