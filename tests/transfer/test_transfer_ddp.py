"""`discorep transfer` under two gloo processes: every rank issues the same collectives in the same order,
trains the same weights from different images, returns the same scores, and only rank 0 writes.

One spawn runs `run_transfer("detect")` then `run_transfer("segment")` on the same 8 + 4 demo scenes (a
COCO json read by both tasks), each rank recording its collectives (tests/distributed_tools.py), the
files it writes, the images of each training batch and how training changed each parameter. An
asymmetric collective (e.g. an evaluation gather on rank 0 alone) shows up here, or hangs the run, which
the timeout turns into a failure.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from discorep.apps.demodata.scenes import make_scenes
from tests.distributed_tools import record_collectives
from tests.helpers import free_port

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(300)]

ITERS = 2
# no warm-up: each step moves the weights by a measurable amount (the warm-up's first lr is 1/1000 of it)
COMMON = [f"solver.iters={ITERS}", "solver.batch_size=2", "solver.workers=0", "solver.warmup_iters=0",
          "eval_batch_size=2", "device=cpu"]
OVERRIDES = {
    # frozen: torchvision's default heads; bn: trainable BN, whose buffers DDP broadcasts from rank 0
    "detect": [*COMMON, "model.norm=frozen", "input.train_sizes=[64]", "input.test_size=64", "input.max_size=96"],
    "segment": [*COMMON, "model.norm=bn", "input.crop_size=64"],
}
# Fewer proposals and detections than torchvision's defaults (512 sampled RoIs, 100 detections an image)
# make a step ~4x cheaper on CPU; no collective depends on these counts.
SMALL_DETECTOR = dict(rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150, rpn_pre_nms_top_n_test=150,
                      rpn_post_nms_top_n_test=75, box_batch_size_per_image=64, box_detections_per_img=20)


def _params(model) -> list[torch.Tensor]:
    net = model.module if hasattr(model, "module") else model
    return [p.detach().double().clone() for p in net.parameters()]


def _instrument(task_mod, run_mod, loop_mod, ckpt_mod, seen: dict) -> list:
    """Record this rank's written files, training batches, local detections and, per parameter, what
    training changed (Σ Δ and Σ |Δ|, float64). Returns the (object, name, original) to restore."""
    patched = []

    def patch(obj, name, make):
        patched.append((obj, name, getattr(obj, name)))
        setattr(obj, name, make(getattr(obj, name)))

    def record_write(write):
        return lambda target, *a, **k: (seen["writes"].append(str(target)), write(target, *a, **k))[1]

    patch(run_mod, "atomic_write", record_write)
    patch(ckpt_mod, "atomic_write", record_write)

    def record_batches(loss_fn):
        def make(device):
            step = loss_fn(device)

            def recorded(model, batch):
                images = batch[0]
                if isinstance(images, torch.Tensor):  # segment: (B, 3, h, w) crops
                    seen["batches"].append([round(float(x.double().sum()), 3) for x in images])
                else:  # detect: lists of images and targets
                    seen["batches"].append([t["image_id"] for t in batch[1]])
                return step(model, batch)
            return recorded
        return make

    patch(task_mod, "loss_fn", record_batches)
    if hasattr(task_mod, "to_coco_results"):
        patch(task_mod, "to_coco_results", lambda convert: lambda *a, **k: (
            lambda out: (seen["local_detections"].append(len(out)), out)[1])(convert(*a, **k)))

    def record_fit(fit):
        def recorded(self, model, *args, **kwargs):
            before = _params(model)
            result = fit(self, model, *args, **kwargs)
            seen["delta"] = [[(a - b).sum().item(), (a - b).abs().sum().item()]
                             for a, b in zip(_params(model), before)]
            return result
        return recorded

    patch(loop_mod.Fitter, "fit", record_fit)
    return patched


def _worker(rank: int, world: int, ports: dict, train: str, val: str, root: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    import discorep.checkpoint as ckpt_mod
    from discorep.transfer import Inputs, detect, load_transfer_config, loop, run, run_transfer, segment

    detect.maskrcnn = functools.partial(detect.maskrcnn, **SMALL_DETECTOR)
    for task, task_mod in (("detect", detect), ("segment", segment)):
        os.environ["MASTER_PORT"] = str(ports[task])  # run_transfer ends with its process group destroyed
        seen: dict = {"writes": [], "batches": [], "collectives": [], "local_detections": []}
        patched = _instrument(task_mod, run, loop, ckpt_mod, seen)
        cfg = load_transfer_config(task, "cpu", OVERRIDES[task])
        try:
            with record_collectives(seen["collectives"]):
                result = run_transfer(task, cfg, "random:resnet18", Inputs(train, val), seeds=1,
                                      out=Path(root) / f"{task}.json", work_dir=Path(root) / "work", resume=False,
                                      baseline=False, progress=False)
        finally:
            for obj, name, original in reversed(patched):
                setattr(obj, name, original)
        seen["result"] = json.loads(run._json(result))  # NaN (an undefined AP) as null, as the file has it
        (Path(root) / f"{task}_rank{rank}.json").write_text(json.dumps(seen))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("transfer_ddp")
    train = make_scenes(root / "train", 8, seed=1, image_size=(64, 64))
    val = make_scenes(root / "val", 4, seed=2, image_size=(96, 64))
    ports = {"detect": free_port(), "segment": free_port()}
    mp.spawn(_worker, args=(2, ports, str(train), str(val), str(root)), nprocs=2, join=True)
    return root, {task: [json.loads((root / f"{task}_rank{r}.json").read_text()) for r in (0, 1)]
                  for task in ("detect", "segment")}


def _check_symmetric(root: Path, logs: list[dict], task: str, eval_collective: str) -> None:
    a, b = logs
    for i, (x, y) in enumerate(zip(a["collectives"], b["collectives"])):
        assert x == y, f"{task}: collective #{i} differs: rank 0 {x} vs rank 1 {y}"
    assert len(a["collectives"]) == len(b["collectives"]), (a["collectives"], b["collectives"])
    # One loss all-reduce per iteration (it carries the non-finite stop), then the evaluation's one.
    assert [name for name, _ in a["collectives"]] == ["all_reduce"] * ITERS + [eval_collective]

    # The ranks trained on different images, yet made the same updates (DDP averaged the gradients);
    # without the averaging each rank's Δ would follow its own images and differ at O(1), not 1e-5.
    assert len(a["batches"]) == len(b["batches"]) == ITERS
    assert all(x != y for x, y in zip(a["batches"], b["batches"])), (a["batches"], b["batches"])
    assert len(a["delta"]) == len(b["delta"]) > 0
    for i, ((sum0, abs0), (sum1, abs1)) in enumerate(zip(a["delta"], b["delta"])):
        assert abs1 == pytest.approx(abs0, rel=1e-5, abs=1e-12), f"{task}: parameter #{i}: Σ|Δ| differs"
        assert sum1 == pytest.approx(sum0, rel=1e-5, abs=1e-5 * abs0 + 1e-12), f"{task}: parameter #{i}: ΣΔ differs"
    moved = sum(abs0 > 0 for _, abs0 in a["delta"])
    assert moved > len(a["delta"]) // 2, f"{task}: only {moved} of {len(a['delta'])} parameters trained"

    # The same scores on both ranks; written once, by rank 0, and the file holds them.
    scores = [{k: v for k, v in log["result"].items() if k != "settings"} for log in logs]
    assert scores[0] == scores[1]
    written = json.loads((root / f"{task}.json").read_text())
    assert {k: v for k, v in written.items() if k != "settings"} == scores[0]
    assert written["settings"]["world_size"] == 2
    assert b["writes"] == []
    names = [Path(p).name for p in a["writes"]]
    assert names == [f"iter_{ITERS:08d}.pt", "scores.json", f"{task}.json"], a["writes"]


def test_detect_two_ranks_agree(ranks):
    root, logs = ranks
    _check_symmetric(root, logs["detect"], "detect", "all_gather_object")
    result = logs["detect"][0]["result"]
    assert set(result) >= {"bbox", "segm", "detections"}
    # Each rank scored its share of the val images (2 of 4); the gathered detections are both shares.
    local = [log["local_detections"] for log in logs["detect"]]
    assert [len(x) for x in local] == [1, 1]  # eval_batch_size 2: one batch a rank
    assert result["detections"] == sum(map(sum, local)) and min(map(sum, local)) > 0
    ids = [set(x) | set(y) for x, y in zip(logs["detect"][0]["batches"], logs["detect"][1]["batches"])]
    assert all(len(s) == 2 for s in ids)  # each iteration: two different images, one a rank


def test_segment_two_ranks_agree(ranks):
    root, logs = ranks
    _check_symmetric(root, logs["segment"], "segment", "all_reduce")
    result = logs["segment"][0]["result"]
    assert result["unreadable_val_images"] == 0
    assert result["mIoU"] is not None and 0.0 <= result["mIoU"] <= 100.0
