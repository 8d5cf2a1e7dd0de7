"""The fine-tuning loop both transfer tasks share: iterations, lr schedule, checkpoints, resume, stops.

One process or many under `torchrun` (DistributedDataParallel; SyncBN where the preset says so). Every
rank runs the same iterations and issues the same collectives in the same order: the DDP gradient
all-reduce and one all-reduce of the step's losses (which also carries the non-finite stop, so all ranks
stop at the same iteration). Checkpoints and pictures are rank 0's alone and issue no collective.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from discorep.checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from discorep.data.pool import loader_worker
from discorep.engine.configio import diff_configs, to_dict
from discorep.engine.distributed import DistInfo
from discorep.engine.logger import progress_bar
from discorep.engine.startup import interrupt_on_sigterm
from discorep.errors import CheckpointError, Interrupted, NonFiniteLossError, UsageError
from discorep.transfer.config import SolverSettings, TransferConfig

log = logging.getLogger("discorep")
FORMAT = "discorep-transfer-v1"
# Keys that may differ on --resume: they change neither the model nor the data order.
RESUME_FREE = ("solver.checkpoint_every", "solver.workers", "eval_batch_size", "device")


def lr_at(it: int, s: SolverSettings) -> float:
    """The lr of iteration `it` (0-based): linear warm-up (detectron2's WarmupMultiStepLR), then steps
    ×gamma at the given fractions of `iters`, or poly decay when `poly_power` > 0 (mmseg's PolyLR)."""
    base = s.lr()
    if s.poly_power > 0:
        base *= (1 - min(it, s.iters) / s.iters) ** s.poly_power
    else:
        base *= s.gamma ** sum(it >= round(f * s.iters) for f in s.steps)
    if it < s.warmup_iters:
        alpha = it / s.warmup_iters
        base *= s.warmup_factor * (1 - alpha) + alpha
    return base


class ShardSampler(torch.utils.data.Sampler):
    """Endless indices for one rank: epoch e is a permutation seeded by (seed, e), cut to a multiple of the
    world size, and rank r takes every W-th index from r. `start` skips the samples this rank already
    consumed, so a resumed run continues the same order."""

    def __init__(self, n: int, rank: int, world: int, seed: int, start: int = 0) -> None:
        self.n, self.rank, self.world, self.seed, self.start = n, rank, world, seed, start
        self.per_rank = n // world
        if self.per_rank < 1:
            raise UsageError(f"{n} training images cannot be split over {world} processes")

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            order = torch.randperm(self.n, generator=g)[: self.per_rank * self.world]
            mine = order[self.rank:: self.world].tolist()
            yield from mine[offset:]
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader asks only for progress estimates
        return 2**62


@dataclass
class FitResult:
    iters: int                # iterations this run ends at (== solver.iters when it finished)
    skipped_images: int       # unreadable training images dropped from batches (counted on every rank)
    last_loss: float
    seconds: float
    resumed_from: int | None


def _reduce_losses(losses: dict[str, Tensor], world: int) -> dict[str, float]:
    """Mean over ranks of each loss term: one all-reduce, the same on every rank."""
    names = sorted(losses)
    packed = torch.stack([losses[k].detach().float() for k in names])
    if world > 1:
        dist.all_reduce(packed)
        packed /= world
    return dict(zip(names, packed.tolist()))


def _latest(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "checkpoints").glob("iter_*.pt"))
    return found[-1] if found else None


def _differences(a: dict, b: dict) -> list[str]:
    """Dotted settings keys that differ, except those free to change on resume."""
    return [key for key, _, _ in diff_configs(a, b) if key not in RESUME_FREE]


def _save(run_dir: Path, it: int, model: nn.Module, opt: torch.optim.Optimizer, meta: dict, keep: int = 2) -> Path:
    path = run_dir / "checkpoints" / f"iter_{it:08d}.pt"
    state = {"format": FORMAT, "iter": it, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "rng": get_rng_state(), **meta}
    save_checkpoint(state, path)
    for old in sorted((run_dir / "checkpoints").glob("iter_*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


class Fitter:
    """Fine-tunes `model` (already on its device, DDP-wrapped when world > 1) with `loss_fn(model, batch)`
    -> (total loss, terms) on `batches` (an endless iterator of this rank's batches, or None items for a
    batch whose images were all unreadable)."""

    def __init__(self, cfg: TransferConfig, run_dir: Path, dist_info: DistInfo, meta: dict) -> None:
        self.cfg, self.run_dir, self.dist = cfg, Path(run_dir), dist_info
        self.meta = {**meta, "settings": to_dict(cfg)}

    def resume_point(self, model: nn.Module, opt: torch.optim.Optimizer, resume: bool) -> int:
        """0, or the iteration of the run folder's latest checkpoint (loaded into model and optimizer)."""
        latest = _latest(self.run_dir) if resume else None
        if latest is None:
            if not resume and _latest(self.run_dir) is not None:
                raise UsageError(f"{self.run_dir} holds checkpoints of an earlier run: pass --resume auto to continue "
                                 "it, or choose another --work-dir")
            if resume:
                self._refuse_other_settings()
            return 0
        state = load_checkpoint(latest)
        if state.get("format") != FORMAT:
            raise UsageError(f"{latest}: not a discorep transfer checkpoint")
        changed = _differences(state.get("settings", {}), self.meta["settings"])
        changed += [k for k in ("backbone", "seed") if state.get(k) != self.meta.get(k)]
        if changed:
            raise UsageError(f"--resume auto: {latest} was trained with other {', '.join(changed)}; use the same "
                             "settings, or another --work-dir")
        target = model.module if hasattr(model, "module") else model
        target.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        log.info("resumed from %s (iteration %d of %d)", latest, state["iter"], self.cfg.solver.iters)
        return int(state["iter"])

    def _refuse_other_settings(self) -> None:
        """--resume auto found no checkpoint for these settings. Run folders are keyed by the settings, data,
        seed and process count, so an unfinished run of the same backbone and seed in another folder of the
        work dir is the run the user meant to continue under changed settings: name what differs rather than
        silently start afresh."""
        others = [d for d in self.run_dir.parent.glob(f"{self.cfg.task}-*")
                  if d != self.run_dir and not (d / "scores.json").exists() and _latest(d) is not None]
        for other in sorted(others, key=lambda d: _latest(d).stat().st_mtime, reverse=True):
            try:
                state = load_checkpoint(_latest(other))
            except CheckpointError:
                continue
            if state.get("format") != FORMAT or any(state.get(k) != self.meta.get(k) for k in ("backbone", "seed")):
                continue
            changed = _differences(state.get("settings", {}), self.meta["settings"])
            changed += [f"{k} data" for k in sorted(self.meta.get("data") or {})
                        if (state.get("data") or {}).get(k) != self.meta["data"][k]]
            changed += ["process count"] if state.get("world") != self.meta.get("world") else []
            raise UsageError(f"--resume auto: {other} holds an unfinished run of {self.meta['backbone']} seed "
                             f"{self.meta['seed']} with other {', '.join(changed) or 'settings'}; rerun with its "
                             "settings to continue it, or without --resume to start a new run beside it")

    def fit(self, model: nn.Module, opt: torch.optim.Optimizer, batches: Iterator, loss_fn: Callable,
            start: int, desc: str) -> FitResult:
        s, main = self.cfg.solver, self.dist.is_main
        params = [p for p in model.parameters() if p.requires_grad]
        bar = progress_bar(main, start, s.iters, desc=desc, unit="it")
        it, skipped, last, began = start, 0, math.nan, time.time()
        try:
            with interrupt_on_sigterm():
                while it < s.iters:
                    batch, dropped = next(batches)
                    skipped += dropped
                    for group in opt.param_groups:
                        group["lr"] = lr_at(it, s)
                    total, terms = loss_fn(model, batch)
                    reduced = _reduce_losses({"loss": total, **terms}, self.dist.world_size)
                    if not math.isfinite(reduced["loss"]):
                        raise NonFiniteLossError(self._nonfinite(it, reduced))
                    opt.zero_grad(set_to_none=True)
                    total.backward()
                    if s.clip_grad > 0:
                        torch.nn.utils.clip_grad_norm_(params, s.clip_grad)
                    opt.step()
                    it, last = it + 1, reduced["loss"]
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{last:.3f}", lr=f"{lr_at(it - 1, s):.2g}")
                    if main and (it % s.checkpoint_every == 0 or it == s.iters):
                        _save(self.run_dir, it, _unwrap(model), opt, self.meta)
        except KeyboardInterrupt as err:
            raise self._interrupted(it, model, opt, start, getattr(err, "signum", 2)) from None
        finally:
            if bar is not None:
                bar.close()
        return FitResult(it, skipped, last, time.time() - began, start or None)

    def _nonfinite(self, it: int, reduced: dict[str, float]) -> str:
        bad = ", ".join(f"{k}={v}" for k, v in reduced.items() if not math.isfinite(v))
        last = _latest(self.run_dir)
        kept = f"last checkpoint {last}" if last else "no checkpoint was written"
        return (f"non-finite loss at iteration {it + 1} ({bad}) at lr {lr_at(it, self.cfg.solver):.3g}: nothing "
                f"was scored ({kept}); lower solver.base_lr, raise solver.warmup_iters or set solver.clip_grad")

    def _interrupted(self, it: int, model, opt, start: int, signum: int) -> Interrupted:
        if self.dist.is_main and it > start:
            path = _save(self.run_dir, it, _unwrap(model), opt, self.meta)
            kept = f"checkpoint {path} written"
        else:
            kept = f"latest checkpoint: {_latest(self.run_dir) or 'none'}"
        return Interrupted(f"transfer stopped at iteration {it} of {self.cfg.solver.iters}; {kept}; rerun the same "
                           "command with --resume auto to continue", signum)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def train_loader(dataset, cfg: TransferConfig, dist_info: DistInfo, seed: int, start: int, collate: Callable):
    """This rank's endless loader: its share of the global batch from `ShardSampler`, continuing after
    `start` iterations; `collate(items) -> (batch or None, images dropped)`. The workers' random numbers
    (flips, crops) come from a generator seeded by the seed, the rank and the start."""
    per_rank = cfg.solver.batch_size // dist_info.world_size
    sampler = ShardSampler(len(dataset), dist_info.rank, dist_info.world_size, seed, start * per_rank)
    g = torch.Generator().manual_seed(seed * 1009 + dist_info.rank + start)
    return torch.utils.data.DataLoader(dataset, batch_size=per_rank, sampler=sampler, collate_fn=collate,
                                       num_workers=cfg.solver.workers, generator=g, worker_init_fn=loader_worker,
                                       persistent_workers=cfg.solver.workers > 0)



def endless_batches(loader) -> Iterator[tuple[object, int]]:
    """(batch, images dropped) forever from a loader over an endless sampler; a batch whose images were
    all unreadable is skipped (and counted) on this rank alone, without a collective: the next one is
    taken, so the ranks stay in step."""
    dropped = 0
    for batch, n_bad in loader:
        dropped += n_bad
        if batch is None:
            continue
        yield batch, dropped
        dropped = 0
