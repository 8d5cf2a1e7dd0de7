"""Checkpoints written before the method registry (format v1) still load in eval, discover, export and --resume.

tests/fixtures/checkpoint_v1_layout.json was recorded from checkpoints that discorep wrote at b542586 (the
last v1 commit) for the two tiny runs below: every key, shape and dtype, and the config, but no weights
(ResNet-18 weights would be ~45 MB). `to_v1` writes that layout from a current checkpoint; the first test
checks it against the recording, the others use files so written as the old checkpoints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

import pytest
import torch

from discorep.checkpoint import (CHECKPOINT_FORMAT, V1_FORMAT, checkpoint_path, latest_checkpoint, load_checkpoint,
                                 save_checkpoint, upgrade_checkpoint)
from discorep.cli import main
from discorep.apps.demodata.scenes import make_scenes
from discorep.engine.train import pretrain
from discorep.eval.backbone import load_model
from discorep.models.dense import dense_features
from discorep.eval.discover import run_discover
from tests.helpers import final_state, losses_by_step, tiny_config

RECORDED = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "checkpoint_v1_layout.json").read_text())
CASES = {"odin_discrete": {}, "r2o": {"method": {"region_network": "discovery"}}}  # as recorded (the hybrid)
V1_PARTS = ("online", "target", "predictor", "discovery")


def layout(obj):
    if isinstance(obj, torch.Tensor):
        return {"tensor": list(obj.shape), "dtype": str(obj.dtype).replace("torch.", "")}
    if isinstance(obj, dict):
        return {str(k): layout(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [layout(v) for v in obj]
    return obj


def to_v1(state: dict) -> dict:
    """A current checkpoint in the v1 layout: networks part by part, every method's keys under `method:`."""
    parts = {p: {k[len(p) + 1:]: v for k, v in state["method"].items() if k.startswith(p + ".")} for p in V1_PARTS}
    old = {k: v for k, v in state.items() if k not in ("method", "eval_branch")}
    old.update(format=V1_FORMAT, online=parts["online"], target=parts["target"],
               heads={"predictor": parts["predictor"]})
    if parts["discovery"]:
        old["discovery"] = parts["discovery"]
    if "segment_cache_version" in state["extra"]:  # v1 kept rank 0's cache in memory, in the checkpoint
        # (written here at a discrete copy, when that cache was empty, as in the recording)
        old["extra"] = {"segment_cache": {"indices": torch.zeros(0, dtype=torch.long),
                                          "labels": torch.zeros(0, dtype=torch.int16),
                                          "version": state["extra"]["segment_cache_version"]}}
    method = dict(state["config"]["method"])
    del method["module"]
    # The recording of the same method holds v1's defaults for every other method's keys; options added
    # since v1 (Odin's discovery_projector_dtype) were never in a v1 file, so a v1 file lacks them.
    same = "odin_discrete" if method["name"] == "odin" else "r2o"
    method = {k: v for k, v in method.items() if k in RECORDED[same]["config"]["method"]}
    # Likewise keys added to other sections since v1 (train.steps) were never in a v1 file.
    recorded = RECORDED[same]["config"]
    old["config"] = {section: {k: v for k, v in values.items() if k in recorded[section]}
                     if isinstance(values, dict) and section in recorded else values
                     for section, values in state["config"].items()}
    old["config"]["method"] = {**recorded["method"], **method}
    return old


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 8, seed=0, image_size=(96, 96))  # as when the layout was recorded
    return root


def _train(case: str, scenes: Path, out: Path, steps: int) -> Path:
    return pretrain(tiny_config(case, scenes / "images", out, {"train": {"max_steps": steps}, **CASES[case]}))


@pytest.mark.parametrize("case", CASES)
def test_to_v1_writes_the_recorded_v1_layout_and_upgrading_it_gives_back_the_checkpoint(case, scenes, tmp_path):
    state = final_state(_train(case, scenes, tmp_path, 2))
    assert state["format"] == CHECKPOINT_FORMAT
    old, recorded = to_v1(state), RECORDED[case]
    assert set(old) == set(recorded)
    for key in ("online", "target", "heads", "discovery"):
        assert layout(old[key]) == recorded[key], key
    assert set(old["extra"]) == set(recorded["extra"])
    assert old["config"]["method"] == recorded["config"]["method"]
    assert {k: set(v) for k, v in old["config"].items()} == {k: set(v) for k, v in recorded["config"].items()}
    up = upgrade_checkpoint(old)
    assert up["upgraded_from"] == V1_FORMAT and up["eval_branch"] == state["eval_branch"]
    assert list(up["method"]) == list(state["method"])  # the same order: the module's own state_dict()
    assert all(torch.equal(v, state["method"][k]) for k, v in up["method"].items())


@pytest.fixture(scope="module")
def old_and_new(scenes, tmp_path_factory):
    """The same trained Odin network as a v1 file and as a v2 file."""
    out = tmp_path_factory.mktemp("odin")
    state = final_state(_train("odin_discrete", scenes, out, 2))
    new = save_checkpoint(state, out / "new.pt")
    old = save_checkpoint(to_v1(state), out / "old.pt")
    yield old, new, state
    shutil.rmtree(out, ignore_errors=True)  # ~500 MB of checkpoints: the suite must fit a small CI disk


def test_eval_reads_the_same_network_from_a_v1_checkpoint(old_and_new, scenes, tmp_path, capsys):
    old, new, state = old_and_new
    a, b = load_model(old), load_model(new)
    for x, y in ((a.encoder, b.encoder), (a.projector, b.projector)):
        assert all(torch.equal(v, y.state_dict()[k]) for k, v in x.state_dict().items())
    online = {k[len("online.encoder."):]: v for k, v in state["method"].items() if k.startswith("online.encoder.")}
    assert all(torch.equal(v, online[k]) for k, v in a.encoder.state_dict().items())
    images = torch.rand(2, 3, 64, 64)
    assert torch.equal(dense_features(a, images, "fpn", project="fpn"), dense_features(b, images, "fpn", project="fpn"))  # projections z
    results = []
    for ckpt in (old, new):
        out = tmp_path / f"{ckpt.stem}.json"
        assert main(["eval", "objects", "--checkpoint", str(ckpt), "--coco", str(scenes / "annotations.json"),
                     "--images", str(scenes / "images"), "--size", "64", "--features", "c4", "--k", "2",
                     "--out", str(out)]) == 0
        payload = json.loads(out.read_text())
        payload.pop("settings", None)
        results.append(payload)
    assert results[0] == results[1] and results[0]
    capsys.readouterr()


def test_discover_and_export_read_a_v1_checkpoint(old_and_new, scenes, tmp_path, capsys):
    old, new, state = old_and_new
    images = scenes / "images"
    labels = []
    for ckpt in (old, new):
        out = tmp_path / ckpt.stem
        run_discover(checkpoint=str(ckpt), images=images, out=out, ks="2,4", size=64, features="c4",
                     device="cpu", refine="none", padding="zeros")
        labels.append({p.name: dict(np.load(p)) for p in sorted(out.rglob("*.npz"))})
    assert labels[0] and labels[0].keys() == labels[1].keys()
    for name, arrays in labels[0].items():
        assert all(np.array_equal(v, labels[1][name][k]) for k, v in arrays.items()), name
    for ckpt in (old, new):
        out = tmp_path / f"{ckpt.stem}.pth"
        assert main(["export", "--checkpoint", str(ckpt), "--to", "timm", "--out", str(out)]) == 0
        exported = torch.load(out, weights_only=True)
        assert torch.equal(exported["conv1.weight"], state["method"]["online.encoder.backbone.conv1.weight"])
    capsys.readouterr()


def test_resume_from_a_v1_checkpoint_reproduces_the_uninterrupted_run(scenes, tmp_path):
    full = _train("odin_discrete", scenes, tmp_path / "a", 4)
    half = _train("odin_discrete", scenes, tmp_path / "b", 2)
    path = checkpoint_path(half, 2)
    save_checkpoint(to_v1(load_checkpoint(path)), path)  # as the old version left it (its config too)
    assert load_checkpoint(path)["format"] == V1_FORMAT
    resumed = pretrain(tiny_config("odin_discrete", scenes / "images", tmp_path / "b", {"train": {"max_steps": 4}}),
                       resume="auto")
    a, b = losses_by_step(full), losses_by_step(resumed)
    assert [a[s] for s in (3, 4)] == [b[s] for s in (3, 4)]
    sa, sb = final_state(full), load_checkpoint(latest_checkpoint(resumed))
    assert sb["format"] == CHECKPOINT_FORMAT and list(sa["method"]) == list(sb["method"])
    assert all(torch.equal(v, sb["method"][k]) for k, v in sa["method"].items())
