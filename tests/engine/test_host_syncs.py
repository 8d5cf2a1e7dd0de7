"""No host read-back (host-device sync on a GPU) inside a training step, checked on CPU.

A CUDA run could use `torch.cuda.set_sync_debug_mode("error")`; CI has no GPU, so the step runs on CPU
with `hostsync.reads_are_free` patched to answer "no" (as on a GPU) while every Tensor method that
reads a value back to the host (or needs a data-dependent shape) is patched to record where it was
called. The only read-backs allowed are the documented ones: k-means' "converged?" every
`sync_every` iterations (`_lloyd`).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import pytest
import torch

from discorep import hostsync
from discorep.apps.demodata.scenes import make_scenes
from discorep.engine import builders
from discorep.engine.distributed import DistInfo
from discorep.methods import build_method
from discorep.methods.base import StepInfo
from tests.helpers import fixed_batch, tiny_config

READBACKS = ["item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__", "nonzero",
             "unique", "masked_select"]
ALLOWED = {"_lloyd"}  # k-means convergence read every `sync_every` iterations (kmeans.py docstring)


def _caller() -> str:
    """'file.py:function' of the innermost discorep frame that asked for the read-back."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if "/discorep/" in name and "hostsync" not in name:
            return f"{name.rsplit('/discorep/', 1)[1]}:{frame.f_code.co_name}"
        frame = frame.f_back
    return "outside discorep"


@contextmanager
def record_readbacks(host_tensors: tuple[torch.Tensor, ...] = ()):
    """Record the call sites of every value read-back from a tensor not in `host_tensors`."""
    sites: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in READBACKS}
    original_getitem = torch.Tensor.__getitem__
    host_ids = {id(t) for t in host_tensors}

    def wrap(name, fn):
        def recorded(self, *args, **kwargs):
            if id(self) not in host_ids:
                sites.append(f"{_caller()} ({name})")
            return fn(self, *args, **kwargs)
        return recorded

    def getitem(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
            sites.append(f"{_caller()} (boolean-mask indexing)")  # data-dependent shape: a sync on GPU
        return original_getitem(self, index)

    patched_free = hostsync.reads_are_free
    hostsync.reads_are_free = lambda x: False
    for name, fn in originals.items():
        setattr(torch.Tensor, name, wrap(name, fn))
    torch.Tensor.__getitem__ = getitem
    try:
        yield sites
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
        torch.Tensor.__getitem__ = original_getitem
        hostsync.reads_are_free = patched_free


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, 8, seed=3, image_size=(96, 96))
    return root / "images"


def _batch(cfg):
    return builders.to_device(fixed_batch(cfg, 4), torch.device("cpu"))  # as the engine hands it over


def _step(model, batch, step: int) -> None:
    info = StepInfo(step=step, epoch=step / 2, total_epochs=4.0, seed=0)
    loss, _ = model(batch, info)
    loss.backward()
    model.after_step(info, tau=0.99, steps_per_epoch=2)


@pytest.mark.parametrize("method,extra", [
    ("byol", {}), ("detcon", {}), ("odin", {}), ("r2o", {}),
    ("r2o", {"method": {"loss": "contrastive"}}), ("r2o", {"method": {"region_network": "discovery"}}),
    ("odin_discrete", {}),
])
def test_training_step_reads_nothing_back_on_an_accelerator(method, extra, scenes, tmp_path):
    cfg = tiny_config(method, scenes, tmp_path, extra)
    torch.manual_seed(0)
    model = build_method(cfg)
    batch = _batch(cfg)
    if method == "odin_discrete":
        _step(model, batch, 0)  # fills the segment cache: only the steps after a copy read segments back
    with record_readbacks(host_tensors=(batch["index_host"],)) as sites:
        _step(model, batch, 1)
    unexpected = [s for s in sites if s.split(":")[1].split(" ")[0] not in ALLOWED]
    assert unexpected == [], unexpected


def test_the_detector_catches_a_readback():
    x = torch.ones(3)
    with record_readbacks() as sites:
        float(x.sum())
        _ = x[x > 0]
    assert [s.split(" (")[1] for s in sites] == ["__float__)", "boolean-mask indexing)"]
    assert hostsync.reads_are_free(x)  # restored


@pytest.mark.parametrize("method", ["r2o", "odin"])
def test_an_engine_step_reads_back_once(method, scenes, tmp_path):
    """The engine's whole step (forward, flags, backward, LARS, EMA) reads back only the loss and flags."""
    from discorep.engine.train import Trainer

    cfg = tiny_config(method, scenes, tmp_path)
    trainer = Trainer(cfg, DistInfo(0, 1, 0, torch.device("cpu")), tmp_path / "run")
    batch = _batch(cfg)
    with record_readbacks(host_tensors=(batch["index_host"],)) as sites:
        loss, _, _ = trainer.train_step(batch)
    assert sites == ["engine/agreement.py:exchange_flags (tolist)"]  # the step's flags, loss value included
    assert isinstance(loss, float) and loss == loss


def _ddp_pair_loss_worker(rank: int, store: str, out_dir: str) -> None:
    """One rank of a 2-process DetCon (contrastive) run: the loss of a step, with read-backs recorded."""
    from datetime import timedelta
    from pathlib import Path

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    try:
        cfg = tiny_config("detcon", Path(out_dir), Path(out_dir))  # train.batch_size 4
        model = build_method(cfg)
        g = torch.Generator().manual_seed(rank)
        b = (4, 3)[rank]  # rank 1 has a short batch (an image given up)
        q1, z2, q2, z1 = (torch.randn(b, 4, 16, generator=g, requires_grad=True) for _ in range(4))
        valid, ids = torch.rand(b, 4, generator=g) > 0.3, torch.randint(0, 4, (b, 4), generator=g)
        with record_readbacks() as sites:
            loss = model.pair_loss(q1, z2, q2, z1, valid, ids)
            loss.backward()
        torch.save({"sites": sites, "loss": loss.detach()}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_the_ddp_contrastive_loss_reads_no_batch_size_back(tmp_path):
    """Issue 23 item 8: the negatives' all_gather used to exchange every rank's batch size and read it
    back (`.tolist()`: one host-device sync per DDP contrastive step). Now each rank pads to
    train.batch_size, known everywhere, so nothing is read back — short batches included."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_pair_loss_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["sites"] for r in results] == [[], []]
    assert all(torch.isfinite(r["loss"]) and r["loss"] > 0 for r in results)
