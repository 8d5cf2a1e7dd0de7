"""Invariants of the paper-scale step that a careless change would break silently (issue 12):

* a skipped non-finite step leaves every parameter *and buffer* of every network as it was, except what
  the method's per-step update does with the unchanged online weights (EMA ξ, τ; Odin's copy on time:
  issue 23.3, docs/training.md), and the optimizer state as it was;
* pictures and probes are looks: a run with them is bit-identical to one without;
* k-means labels and loss values do not depend on bf16 autocast.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from discorep.checkpoint import latest_checkpoint, load_checkpoint
from discorep.apps.demodata.scenes import make_scenes
from discorep.discovery.kmeans import batched_kmeans
from discorep.engine.distributed import DistInfo
from discorep.engine.schedules import ema_tau_at
from discorep.engine.train import Trainer, pretrain
from discorep.losses.byol import object_byol_loss
from discorep.losses.contrastive import contrastive_loss
from tests.helpers import fixed_batch, tiny_config
from tests.engine.test_periodic_eval import _colour_folders


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    ann = make_scenes(root, 16, seed=4, image_size=(96, 96))
    return root / "images", ann


def _state(method: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


@pytest.mark.parametrize("method", ["byol", "detcon", "odin", "r2o"])
def test_skipped_nonfinite_step_leaves_every_parameter_and_buffer(method, scenes, tmp_path):
    images, _ = scenes
    cfg = tiny_config(method, images, tmp_path, {"train": {"nonfinite": "skip"}})
    trainer = Trainer(cfg, DistInfo(0, 1, 0, torch.device("cpu")), tmp_path / "run")
    batch = fixed_batch(cfg, 4)
    trainer.train_step(batch)  # one real step first: buffers and optimizer state are non-trivial
    before = _state(trainer.method)
    optim_before = {i: {k: v.clone() for k, v in s.items()} for i, s in trainer.optimizer.state.items()}
    # The expected state: the method's after_step alone, on a copy, with the same step and EMA rate.
    expected_method = copy.deepcopy(trainer.method)
    tau = ema_tau_at(trainer.step, trainer.total_steps, cfg.optim.tau_base)
    expected_method.after_step(trainer.info(), tau, trainer.steps_per_epoch)
    expected = _state(expected_method)
    # An inf activation mid-forward (after the stem BN has seen the batch): the loss becomes non-finite.
    hook = trainer.method.online.encoder.backbone.layer2.register_forward_hook(lambda m, i, out: out * math.inf)
    try:
        loss, _, _ = trainer.train_step(batch)
    finally:
        hook.remove()
    assert math.isnan(loss)
    after = _state(trainer.method)
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(expected[k], after[k])]
    assert changed == [], f"a skipped step changed {changed[:5]}"
    moved = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert moved <= {"target", "discovery"}, moved  # online, predictor and every buffer as they were
    for i, s in trainer.optimizer.state.items():
        for k, v in s.items():
            assert torch.equal(v, optim_before[i][k])


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, tree


def _assert_same_checkpoint(a: dict, b: dict) -> None:
    flat_a, flat_b = dict(_flatten({k: v for k, v in a.items() if k != "config"})), dict(
        _flatten({k: v for k, v in b.items() if k != "config"}))
    assert flat_a.keys() == flat_b.keys()
    for key, value in flat_a.items():
        other = flat_b[key]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), key
        else:
            assert value == other, key


@pytest.mark.parametrize("method", ["byol", "odin", "r2o"])
def test_pictures_and_probes_leave_the_run_bit_identical(method, scenes, tmp_path):
    images, ann = scenes
    knn_train, knn_val = _colour_folders(tmp_path / "colours")
    looks = {"train": {"epochs": 2, "picture_images": 3, "picture_every_epochs": 1},
             "eval": {"every_epochs": 1, "knn_train": str(knn_train), "knn_val": str(knn_val), "knn_k": 3,
                      "objects_coco": str(ann), "objects_images": str(images), "objects_ks": [1, 2],
                      "size": 64, "features": "c4"}}
    with_looks = pretrain(tiny_config(method, images, tmp_path / "a", looks))
    without = pretrain(tiny_config(method, images, tmp_path / "b", {"train": {"epochs": 2, "picture_images": 0}}))
    assert len(list((with_looks / "masks").glob("*.png"))) == 3 and not (without / "masks").exists()
    a, b = load_checkpoint(latest_checkpoint(with_looks)), load_checkpoint(latest_checkpoint(without))
    assert a["step"] == b["step"] == 8
    _assert_same_checkpoint(a, b)  # every network's parameters and buffers, optimizer, RNG, caches


def test_kmeans_labels_do_not_depend_on_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 196, 64, generator=g)
    fp32 = batched_kmeans(x, 8, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = batched_kmeans(x, 8, seed=3)
    assert torch.equal(fp32.labels, bf16.labels)
    assert fp32.centroids.dtype == bf16.centroids.dtype == torch.float32


@pytest.mark.parametrize("negatives", ["cross_and_same_view", "cross_view"])
def test_losses_do_not_depend_on_bf16_autocast(negatives):
    g = torch.Generator().manual_seed(1)
    p1, t2, p2, t1 = (torch.randn(4, 8, 32, generator=g) for _ in range(4))
    valid = torch.rand(4, 8, generator=g) > 0.2
    ids = torch.arange(8).expand(4, 8)
    want_c = contrastive_loss(p1, t2, p2, t1, valid, ids=ids, negatives=negatives)
    want_b = object_byol_loss(p1, t2, p2, t1, valid)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_c = contrastive_loss(p1, t2, p2, t1, valid, ids=ids, negatives=negatives)
        got_b = object_byol_loss(p1, t2, p2, t1, valid)
    assert got_c.dtype == got_b.dtype == torch.float32
    torch.testing.assert_close(got_c, want_c, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_b, want_b, rtol=1e-6, atol=1e-6)
