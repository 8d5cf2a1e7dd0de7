"""Odin (Hénaff et al. 2022): object discovery network + object representation networks.

The discovery network τ (an EMA or periodic copy of the online network, eq. 7) encodes the
spanning view v0; per-image k-means (K = 16) over its L2-normalised FPN projections z gives the
segments, which are mapped into both augmented views and trained with the contrastive loss on
mask-pooled FPN features (eq. 1–4). With discrete updates the segments are cached between copies
and the discovery network is not evaluated in between; they are then computed on the raw
(whole-image) view, since the spanning view changes with every pair of crops. Each rank keeps the
segments of its own images on disk (`discovery.cache`), and asks the sampler for rank-stable shards
so that those are n // world_size images per copy, not every image.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from torch import Tensor

from discorep.data.pretrain import rank_shard
from discorep.discovery.cache import SegmentCache
from discorep.discovery.random import image_seeds
from discorep.discovery.sources import feature_kmeans_labels
from discorep.errors import ConfigError
from discorep.methods.base import PretrainMethod, RunConfig, StepInfo
from discorep.methods.discovery_net import DiscoveryNet, DiscoveryNetOptions
from discorep.methods.options import FeatureMap, MethodOptions, at_least_one
from discorep.methods.registry import register_method
from discorep.models.dense import dense_features


@dataclass
class OdinOptions(DiscoveryNetOptions, MethodOptions):
    K: int = 16  # clusters per image
    kmeans_iters: int = 30
    discovery_features: FeatureMap = "fpn"
    discovery_use_projection: bool = True  # cluster z = g_τ(h) (Odin A.3) instead of h
    # the per-vector projector under bf16 autocast in fp32 runs (its cost: docs/performance.md); bf16 runs
    # (train.precision) already cast it
    discovery_projector_dtype: Literal["fp32", "bf16"] = "fp32"
    # discrete: where each rank's segment store lives (None: <run folder>/segment_cache); e.g. node-local
    # scratch. A run resumed where its files are not recomputes them (with a warning).
    segment_cache_dir: Optional[str] = None

    def validate(self) -> None:
        MethodOptions.validate(self)
        DiscoveryNetOptions.validate(self)
        at_least_one(self, "K", "kmeans_iters")
        if self.K > 32767:  # the segment cache stores int16 label maps
            raise ConfigError(f"method.K={self.K} exceeds 32767 (Odin's segment cache stores int16 ids)")

    def validate_config(self, cfg: Any) -> None:
        if self.discovery_features == "fpn" and not cfg.model.fpn:
            raise ConfigError("method.features/discovery_features 'fpn' needs model.fpn: true")
        super().validate_config(cfg)
        n_points = (cfg.views.spanning_size // cfg.model.strides()[self.discovery_features]) ** 2
        if self.K > n_points:
            raise ConfigError(f"method.K={self.K} exceeds the {n_points} feature-grid points of the spanning view")


@register_method("odin")
class Odin(PretrainMethod):
    Options = OdinOptions

    @classmethod
    def needs_views(cls, cfg: RunConfig) -> frozenset[str]:
        # continuous updates segment the spanning view v0 every step; cached segments use the raw view
        return frozenset({"span"} if cfg.method.discovery_update == "continuous" else {"raw"})

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        self.discovery = DiscoveryNet(self.online, cfg.method)
        self.cache = SegmentCache() if cfg.method.discovery_update == "discrete" else None

    def segment(self, images: Tensor, seed: int | Tensor) -> Tensor:
        m = self.cfg.method
        cast = torch.bfloat16 if m.discovery_projector_dtype == "bf16" else None
        z = dense_features(self.discovery.net, images, m.discovery_features, m.discovery_use_projection, cast)
        return feature_kmeans_labels(z, m.K, seed=seed, iters=m.kmeans_iters)

    def segments(self, batch: dict[str, Tensor], info: StepInfo) -> tuple[Tensor, Tensor]:
        """Label maps and the frame they cover: the spanning view, or the raw view when cached."""
        if self.cache is None:
            return self.segment(batch["span"], info.image_seeds(batch["index"])), batch["span_box"]
        store = self.cache.current()
        indices = batch.get("index_host", batch["index"]).tolist()  # host copy: no device read-back
        todo = store.missing(indices)
        if todo:
            # Seeded by (train.seed, discovery copy, image): another train.seed gives other segments,
            # a resumed run the same ones.
            seeds = image_seeds(info.cache_seed(self.cache.version), batch["index"][todo])
            fresh = self.segment(batch["raw"][todo], seed=seeds)
            store.store([indices[i] for i in todo], fresh)
            if len(todo) == len(indices):
                return fresh, batch["raw_box"]
        labels = torch.from_numpy(store.read(indices, skip=todo)).to(batch["raw"].device, torch.long)
        if todo:
            labels[todo] = fresh
        return labels, batch["raw_box"]

    def forward(self, batch: dict[str, Tensor], info: StepInfo) -> tuple[Tensor, dict[str, Tensor]]:
        labels, frame = self.segments(batch, info)
        masks = self.align_to_views(labels, frame, self.cfg.method.K, batch)
        online, target = self.encode_views(batch)
        return self.object_loss(online, target, masks, batch["index"], info)

    def picture_k(self, info: StepInfo) -> int | None:
        return self.cfg.method.K

    def schedule_note(self, info: StepInfo) -> str | None:
        if self.cache is None:  # continuous: λτ is a per-step rate, no schedule to cut
            return None
        every = self.cfg.method.discrete_every_epochs
        used, planned = math.floor(info.epoch / every + 1e-9), math.floor(info.total_epochs / every + 1e-9)
        return None if used == planned else f"trains with {used} of the schedule's {planned} discovery copies"

    def after_step(self, info: StepInfo, tau: float, steps_per_epoch: float) -> None:
        super().after_step(info, tau, steps_per_epoch)
        if self.discovery.update(self.online, info.step + 1, steps_per_epoch) and self.cache is not None:
            self.cache.clear()

    def discover(self, batch: dict[str, Tensor], info: StepInfo) -> tuple[Tensor, Tensor]:
        return self.segment(batch["raw"], seed=0), batch["raw_box"]

    # ----- the segment cache's place in the run (discrete updates) -----
    def sampler_shard_period_epochs(self) -> int | None:
        # One shard per version: a rank's cache then holds n // world_size images.
        return self.cfg.method.discrete_every_epochs if self.cache is not None else None

    def attach_run(self, run_dir: Path, rank: int, world_size: int, num_images: int) -> None:
        if self.cache is None:
            return
        folder = Path(run_dir) / "segment_cache"
        if self.cfg.method.segment_cache_dir:  # shared by runs: one sub-folder per run folder
            tag = hashlib.blake2b(str(Path(run_dir).resolve()).encode(), digest_size=4).hexdigest()
            folder = Path(self.cfg.method.segment_cache_dir) / f"{Path(run_dir).name}-{tag}"
        seed = self.cfg.train.seed
        self.cache.attach(folder, rank, world_size,
                          lambda version: rank_shard(num_images, seed, version, world_size, rank))

    def extra_state_dict(self) -> dict:
        # The version only (it seeds the segments); each rank saves its own maps' state (rank_state_dict).
        return {"segment_cache_version": self.cache.version} if self.cache is not None else {}

    def load_extra_state_dict(self, state: dict) -> None:
        if self.cache is None:
            return
        if "segment_cache" in state:  # written before the per-rank stores: an in-memory cache of rank 0
            self.cache.load_legacy(state["segment_cache"])
        elif "segment_cache_version" in state:
            self.cache.close()
            self.cache.version = int(state["segment_cache_version"])

    def rank_state_dict(self) -> dict:
        return self.cache.rank_state_dict() if self.cache is not None else {}

    def load_rank_state_dict(self, state: dict | None, where: str) -> None:
        if self.cache is not None:
            self.cache.load_rank_state_dict(state, where)
