"""DAVIS J and F against the esdft-segmetric oracle; label propagation recovers ground truth from
features that encode it; the video command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage
from segmetric.metrics import db_eval_boundary, db_eval_iou

from discorep.data.demo import make_videos
from discorep.eval import video
from discorep.eval.davis_metrics import boundary_f, region_j, scored_frames


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    make_videos(root, 2, seed=5, n_frames=6, image_size=(64, 96))
    return root


def _perturbations(gt):
    yield np.roll(gt, 3, axis=1)
    yield ndimage.binary_erosion(gt, iterations=2)
    yield ndimage.binary_dilation(gt, iterations=3)
    yield np.zeros_like(gt)
    yield gt.copy()


def test_j_and_f_equal_the_official_formulas_on_generated_sequences(davis):
    for seq in video.list_sequences(davis):
        _, labels = video.read_sequence(davis, seq)
        for obj in [o for o in np.unique(labels) if o]:
            for gt in labels == obj:
                for pred in _perturbations(gt):
                    assert region_j(pred, gt) == pytest.approx(float(db_eval_iou(gt, pred)))
                    assert boundary_f(pred, gt) == pytest.approx(float(db_eval_boundary(gt, pred)))


def test_hand_cases_and_conventions():
    a = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True
    b = np.zeros((10, 10), bool)
    b[7:, 7:] = True
    assert region_j(a, a) == 1.0 and boundary_f(a, a) == 1.0
    assert region_j(a, b) == 0.0 and boundary_f(a, b) == 0.0
    empty = np.zeros((10, 10), bool)
    assert region_j(empty, empty) == 1.0 and boundary_f(empty, empty) == 1.0
    assert list(scored_frames(5)) == [1, 2, 3]  # first and last frames are not scored


def test_propagation_recovers_ground_truth_from_label_encoding_features(davis):
    seq = video.list_sequences(davis)[0]
    _, labels = video.read_sequence(davis, seq)
    ids = [int(o) for o in np.unique(labels[0]) if o]
    # Features = the one-hot ground truth at full resolution, neighbourhood wider than any motion:
    # every cell finds sources of its own object, so propagation must be exact.
    h, w = labels.shape[1:]
    feats = torch.nn.functional.normalize(
        torch.stack([torch.from_numpy(labels == o).float() for o in [0] + ids], dim=1) + 1e-3, dim=1)
    first = video.first_frame_distribution(labels[0], ids, h, w)
    probs = video.propagate(feats, first, topk=5, context=3, radius=max(h, w), temperature=0.05)
    pred = video.to_label_maps(probs, ids, *labels.shape[1:])
    assert np.array_equal(pred[1:], labels[1:])


def test_radius_zero_takes_labels_from_the_same_cell_only():
    feats = torch.nn.functional.normalize(torch.randn(2, 4, 3, 3), dim=1)
    first = torch.zeros(2, 3, 3)
    first[1, 1, 1] = 1.0  # only the centre cell is object
    first[0] = 1 - first[1]
    probs = video.propagate(feats, first, topk=5, context=1, radius=0, temperature=0.7)
    torch.testing.assert_close(probs[1], first)


def test_video_cli_end_to_end(davis, tmp_path):
    from discorep.cli import main

    out = tmp_path / "video.json"
    assert main(["eval", "video", "--checkpoint", "random:resnet18", "--davis", str(davis), "--size", "64",
                 "--features", "c4", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["n_sequences"] == 2 and 0 <= data["J"] <= 1 and 0 <= data["F"] <= 1
    assert data["J&F"] == pytest.approx((data["J"] + data["F"]) / 2)
    assert data["settings"]["topk"] == 5 and data["settings"]["context"] == 7


def test_not_a_davis_folder_is_a_clear_error(tmp_path):
    from discorep.data.images import DatasetError

    with pytest.raises(DatasetError, match="DAVIS-layout"):
        video.list_sequences(tmp_path)
