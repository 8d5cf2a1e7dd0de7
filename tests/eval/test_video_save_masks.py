"""`eval video --save-masks`: the saved palette PNGs, re-scored by the official DAVIS formulas
(segmetric's `db_eval_iou` / `db_eval_boundary`, from davis2017-evaluation) under the DAVIS 2017
protocol (frames 1..T-2, objects 1..max id of frame 0, per-object means, then the mean over objects),
give the J&F the command printed; `--refine` is recorded. (segmetric's own sequence loop is not used:
it fails when a prediction lacks an object in every frame, which a random network's can.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from segmetric.metrics import db_eval_boundary, db_eval_iou

from discorep.cli import main
from discorep.apps.demodata.scenes import make_videos
from discorep.eval import video


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    make_videos(root, 2, seed=5, n_frames=6, image_size=(64, 96))
    return root


def _official_scores(saved, davis, seq):
    """[(J, F)] per object of one sequence, from the saved PNGs and the official per-frame formulas."""
    frames, gt = video.read_sequence(davis, seq)
    pred = np.stack([np.asarray(Image.open(saved / seq / f"{f.stem}.png")) for f in frames])
    first = gt[0][gt[0] != 255]
    out = []
    for obj in range(1, int(first.max()) + 1):
        js = [db_eval_iou(gt[t] == obj, pred[t] == obj, gt[t] == 255) for t in range(1, len(frames) - 1)]
        fs = [db_eval_boundary(gt[t] == obj, pred[t] == obj, gt[t] == 255) for t in range(1, len(frames) - 1)]
        out.append((float(np.mean(js)), float(np.mean(fs))))
    return out


@pytest.mark.parametrize("refine", ["none", "slic"])
def test_saved_masks_rescored_officially_give_the_printed_jf(davis, tmp_path, capsys, refine):
    saved, out = tmp_path / "masks", tmp_path / "r.json"
    assert main(["eval", "video", "--checkpoint", "random:resnet18", "--davis", str(davis), "--size", "64",
                 "--features", "c4", "--save-masks", str(saved), "--refine", refine, "--superpixels", "64",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["settings"]["refine"]["method"] == refine and data["settings"]["save_masks"] == str(saved)
    seqs = video.list_sequences(davis)
    for seq in seqs:  # DAVIS layout: one palette PNG per frame, named like the frame, at its size
        frames, labels = video.read_sequence(davis, seq)
        for frame, lab in zip(frames, labels):
            png = Image.open(saved / seq / f"{frame.stem}.png")
            assert png.mode == "P" and png.size == (lab.shape[1], lab.shape[0])
        assert np.array_equal(np.asarray(Image.open(saved / seq / f"{frames[0].stem}.png")), labels[0])
    per_object = [s for seq in seqs for s in _official_scores(saved, davis, seq)]
    j, f = np.mean([s[0] for s in per_object]), np.mean([s[1] for s in per_object])
    assert data["J"] == pytest.approx(j, abs=1e-9) and data["F"] == pytest.approx(f, abs=1e-9)
    assert data["J&F"] == pytest.approx((j + f) / 2, abs=1e-9)
    if refine == "none":
        assert 0 < j < 1 and 0 < f < 1  # not a degenerate case (refined random masks can lose the small objects)
    assert f"{(j + f) / 2:.4f}" in printed  # the printed mean row
