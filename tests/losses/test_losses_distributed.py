"""Two gloo processes, each with part of a batch, must reproduce the single-process loss and gradients."""

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from discorep.losses.byol import object_byol_loss
from discorep.losses.contrastive import contrastive_loss
from discorep.losses.distributed import all_reduce_sum, world_info
from tests.oracles import all_gather_with_grad

WORLD = 2
SPLIT = (2, 3)  # uneven on purpose: rank 0 holds 2 images, rank 1 holds 3
B, M, D_IN, D = sum(SPLIT), 4, 5, 6


def _batch():
    """Full batch (same on every process): features, a shared 'projector' P, targets, validity, ids."""
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(B, M, D_IN, generator=g), torch.randn(B, M, D_IN, generator=g)
    proj = torch.randn(D_IN, D, generator=g)
    t1, t2 = torch.randn(B, M, D, generator=g), torch.randn(B, M, D, generator=g)
    valid = torch.rand(B, M, generator=g) > 0.25
    ids = torch.randint(0, 3, (B, M), generator=g)
    coef = torch.randn(WORLD, B, 3, generator=g)  # per-rank weights for the all_gather_with_grad check
    x = torch.randn(B, 3, generator=g)
    return f1, f2, proj, t1, t2, valid, ids, coef, x


def _loss_and_grad(sl: slice, gather: bool = True, kind: str = "contrastive", rows: int | None = None):
    """Loss on the images in `sl` with predictions f @ P; returns (loss, dL/dP).

    kind: "contrastive" (Odin eq. 2–4) or "byol" (the object-level BYOL loss of R2O); `rows`: the
    contrastive gather pads every rank to that many images instead of exchanging sizes."""
    f1, f2, proj, t1, t2, valid, ids, _, _ = _batch()
    proj = proj.clone().requires_grad_(True)
    if kind == "byol":
        loss = object_byol_loss(f1[sl] @ proj, t2[sl], f2[sl] @ proj, t1[sl], valid[sl], gather=gather)
    else:
        loss = contrastive_loss(f1[sl] @ proj, t2[sl], f2[sl] @ proj, t1[sl], valid[sl],
                                temperature=0.2, ids=ids[sl], gather=gather, rows=rows)
    loss.backward()
    return loss.detach(), proj.grad


def _worker(rank: int, store: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        start = sum(SPLIT[:rank])
        sl = slice(start, start + SPLIT[rank])
        loss, grad = _loss_and_grad(sl)
        byol, byol_grad = _loss_and_grad(sl, kind="byol")
        padded, padded_grad = _loss_and_grad(sl, rows=max(SPLIT) + 1)  # rank 0 pads 2 rows, rank 1 one
        *_, coef, x = _batch()
        xr = x[sl].clone().requires_grad_(True)
        y = all_gather_with_grad(xr)
        (y * coef[rank]).sum().backward()
        total = all_reduce_sum(torch.tensor([rank + 1.0]))
        torch.save({"loss": loss, "grad": grad, "byol": byol, "byol_grad": byol_grad,
                    "padded": padded, "padded_grad": padded_grad, "gathered": y.detach(), "xgrad": xr.grad,
                    "world": tuple(world_info()), "sum": total}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


pytestmark = [pytest.mark.distributed, pytest.mark.timeout(180)]


def test_world_info_and_all_reduce(results):
    assert [r["world"] for r in results] == [(0, 2), (1, 2)]
    assert all(r["sum"].item() == 3.0 for r in results)


def test_rank_losses_average_to_single_process_loss(results):
    single, _ = _loss_and_grad(slice(0, B))
    mean = torch.stack([r["loss"] for r in results]).mean()
    assert torch.isclose(mean, single, rtol=1e-5, atol=1e-6)
    # Not trivially equal: local-only losses (no gather) average to something else.
    local = torch.stack([_loss_and_grad(slice(0, 2), gather=False)[0],
                         _loss_and_grad(slice(2, B), gather=False)[0]]).mean()
    assert not torch.isclose(local, single, rtol=1e-3)


def test_ddp_averaged_gradient_equals_single_process_gradient(results):
    _, single = _loss_and_grad(slice(0, B))
    ddp = torch.stack([r["grad"] for r in results]).mean(0)  # DDP averages parameter grads over ranks
    assert torch.allclose(ddp, single, rtol=1e-4, atol=1e-6)


def test_all_gather_with_grad(results):
    *_, coef, x = _batch()
    for rank, r in enumerate(results):
        assert torch.equal(r["gathered"], x)
        start = sum(SPLIT[:rank])
        # d(Σ_r Σ y·c_r)/dx_rank = Σ_r c_r[rank slice]
        assert torch.allclose(r["xgrad"], coef.sum(0)[start:start + SPLIT[rank]], atol=1e-6)


def test_object_byol_loss_is_normalised_globally(results):
    """Like the contrastive loss: mean over ranks = single-process loss; DDP's gradient = single gradient.
    A per-rank weighted mean (the old normalisation) gives another loss when valid counts differ."""
    single, single_grad = _loss_and_grad(slice(0, B), kind="byol")
    assert torch.isclose(torch.stack([r["byol"] for r in results]).mean(), single, rtol=1e-5, atol=1e-6)
    ddp = torch.stack([r["byol_grad"] for r in results]).mean(0)
    assert torch.allclose(ddp, single_grad, rtol=1e-4, atol=1e-6)
    per_rank = torch.stack([_loss_and_grad(slice(0, 2), gather=False, kind="byol")[0],
                            _loss_and_grad(slice(2, B), gather=False, kind="byol")[0]]).mean()
    assert not torch.isclose(per_rank, single, rtol=1e-3)


def test_padded_gather_equals_the_size_exchange(results):
    """The training step's gather (every rank padded to `rows`, padding gathered as invalid keys, no
    size read back) gives the single-process loss and gradient, with uneven ranks (2 and 3 images)."""
    single, single_grad = _loss_and_grad(slice(0, B))
    assert torch.isclose(torch.stack([r["padded"] for r in results]).mean(), single, rtol=1e-5, atol=1e-6)
    ddp = torch.stack([r["padded_grad"] for r in results]).mean(0)
    assert torch.allclose(ddp, single_grad, rtol=1e-4, atol=1e-6)
    for r in results:  # and each rank's own loss is the one the size exchange gives
        assert torch.isclose(r["padded"], r["loss"], rtol=1e-6, atol=1e-7)
