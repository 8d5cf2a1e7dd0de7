"""The pretraining data stream: (image, views, prior) samples, a resumable sampler, and batching.

Determinism is by construction: sample `i` of epoch `e` is augmented with a generator seeded from
(seed, e, i), and the sampler's order is a function of (seed, e). So a run resumed at step s sees
exactly the batches an uninterrupted run sees, whatever the number of data-loader workers, and a
2-process run with batch b sees the same images as a 1-process run with batch 2b.

A method that caches per image between events every N epochs (Odin's discrete discovery updates) asks
for rank-stable shards instead (`shard_period_epochs`): each rank then sees a fixed n // world_size of
the images for a whole period, so it caches those only; the order is then a function of (seed, epoch,
rank, world size) and no longer matches a run with another number of processes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from discorep.data.images import BadImageError, DatasetError, load_rgb
from discorep.data.labelmaps import resize_nearest
from discorep.data.views import ViewSampler


def stable_seed(*parts: object) -> int:
    """A stable 63-bit seed from `parts` (their str forms joined by ':'), the same in every process."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A stable 63-bit seed for one sample's augmentations."""
    return stable_seed(seed, epoch, index)


def rank_shard(n: int, seed: int, period: int, world_size: int, rank: int) -> np.ndarray:
    """The dataset indices rank `rank` sees during shard period `period`: its slice (n // world_size, the
    same size on every rank) of one permutation of all n indices seeded by (seed, period). numpy, not
    torch: the method draws it inside a training step, where a tensor's host copy would count as a
    read-back (tests/engine/test_host_syncs.py)."""
    size = n // world_size
    return np.random.default_rng(stable_seed(seed, "shard", period)).permutation(n)[rank * size:(rank + 1) * size]


class PretrainDataset(Dataset):
    """Items are `(index, seed)` pairs from `ResumableBatchSampler`; returns one view dict or a skip."""

    MAX_REPLACEMENTS = 16  # consecutive unreadable files tried before a sample is given up

    def __init__(self, paths: Sequence[Path], views: ViewSampler, prior_cache=None,
                 prior_size: int = 224, root: Path | None = None):
        self.paths = [Path(p) for p in paths]
        self.views = views
        self.prior_cache = prior_cache
        self.prior_size = prior_size
        self.root = Path(root) if root is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def prior_key(self, index: int) -> str:
        path = self.paths[index]
        return str(path.relative_to(self.root)) if self.root and path.is_relative_to(self.root) else str(path)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        """Views of image `index`; an unreadable image is replaced by the next readable one.

        Replacing (rather than dropping) keeps every batch, and so every process of a DDP run, at
        the same size; each unreadable file is still reported in `skipped` and never silently lost.
        """
        index, seed = item
        skipped = []
        for attempt in range(self.MAX_REPLACEMENTS + 1):
            j = (index + attempt) % len(self.paths)
            try:
                image = load_rgb(self.paths[j])
                # A precomputed prior's missing mask is a BadImageError too: that image is replaced the same way.
                labels = None if self.prior_cache is None else self.prior_cache.get(self.prior_key(j), self.paths[j])
            except BadImageError as err:
                skipped.append((str(self.paths[j]), err.reason))
                continue
            out = self.views(image, seed=seed)
            out["index"] = torch.tensor(j)
            if labels is not None:
                out["prior"] = resize_nearest(torch.from_numpy(np.asarray(labels, dtype=np.int64)), self.prior_size,
                                              self.prior_size)
            return {**out, "skipped": skipped}
        return {"skip": skipped}


def collate_views(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack view dicts; unreadable images are reported in `batch["skipped"]` (never silent)."""
    skipped = [record for s in samples for record in s.get("skipped", s.get("skip", []))]
    good = [s for s in samples if "skip" not in s]
    batch: dict[str, Any] = {"skipped": skipped, "size": len(good)}
    if not good:
        return batch
    for key in good[0]:
        if key != "skipped":
            batch[key] = torch.stack([s[key] for s in good])
    if "prior" in batch:
        # Largest region id in the batch + 1: the number of one-hot masks alignment needs.
        batch["prior_num"] = int(batch["prior"].max()) + 1
    return batch


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's share of each global batch, from `start_step` to `total_steps`.

    Epoch e's order is randperm(n) seeded by (seed, e); global batch s of the epoch is
    perm[s·G:(s+1)·G] with G = batch_size × world_size, and rank r takes its r-th slice. The last
    partial global batch of an epoch is dropped so every step has the same global batch size.

    With `shard_period_epochs` = N, rank r instead draws from `rank_shard(.., e // N, ..)`, fixed for N
    epochs, in an order seeded by (seed, e, r); steps per epoch stay n // G (G·steps ≤ n, so each
    rank's steps fit in its n // world_size images).
    """

    def __init__(self, n: int, batch_size: int, *, world_size: int = 1, rank: int = 0, seed: int = 0,
                 start_step: int = 0, total_steps: int, shard_period_epochs: int | None = None):
        self.n, self.batch_size, self.world_size, self.rank = n, batch_size, world_size, rank
        self.seed, self.start_step, self.total_steps = seed, start_step, total_steps
        self.shard_period = shard_period_epochs
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = n // self.global_batch
        if self.steps_per_epoch < 1:
            raise DatasetError(f"the data set has {n} images, fewer than one global batch of {self.global_batch} "
                             f"(batch_size {batch_size} × {world_size} processes); lower train.batch_size")

    def epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, -1))
        return torch.randperm(self.n, generator=g)

    def rank_order(self, epoch: int) -> torch.Tensor:
        """This rank's images of `epoch` in order (rank-stable shards): its shard of the period, permuted."""
        shard = rank_shard(self.n, self.seed, epoch // self.shard_period, self.world_size, self.rank)
        g = torch.Generator().manual_seed(stable_seed(self.seed, epoch, "rank", self.rank))
        return torch.from_numpy(shard)[torch.randperm(len(shard), generator=g)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while step < self.total_steps:
            epoch, in_epoch = divmod(step, self.steps_per_epoch)
            sharded = self.shard_period is not None
            order = self.rank_order(epoch) if sharded else self.epoch_order(epoch)
            for s in range(in_epoch, self.steps_per_epoch):
                if step >= self.total_steps:
                    return
                lo = s * self.batch_size if sharded else s * self.global_batch + self.rank * self.batch_size
                ids = order[lo: lo + self.batch_size].tolist()
                yield [(i, sample_seed(self.seed, epoch, i)) for i in ids]
                step += 1

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

