"""Build what a run needs from its config: data set, region-prior cache, loader, optimizer."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

from discorep.data.datasets import CocoDataset, ImageFolder
from discorep.data.pool import loader_worker
from discorep.data.pretrain import (
    PretrainDataset,
    ResumableBatchSampler,
    collate_views,
    sample_seed,
)
from discorep.data.views import ViewSampler
from discorep.engine.config import Config
from discorep.engine.distributed import DistInfo, long_barrier
from discorep.engine.optim import build_optimizer
from discorep.errors import ConfigError
from discorep.methods.registry import method_class

if TYPE_CHECKING:
    from discorep.data.shards import ShardPretrainDataset

log = logging.getLogger("discorep")


def image_paths(cfg: Config) -> tuple[list[Path], Path]:
    """The training images (paths only: pretraining needs no labels) and their root folder."""
    d = cfg.data
    if d.kind == "coco":
        coco = CocoDataset(d.ann_file, d.root)
        return [coco.path(i) for i in range(len(coco))], Path(d.root)
    folder = ImageFolder(d.root)
    return list(folder.paths), Path(d.root)


def build_prior_cache(cfg: Config, dataset: PretrainDataset, dist: DistInfo, progress: bool = True):
    """Compute the region priors once (each process builds every world_size-th image, in parallel over
    its share of the node's cores; files are written atomically, so sharing the folder is safe), wait
    for all processes without the training timeout (`long_barrier`), and load them."""
    if cfg.data.prior == "none":
        return None
    from discorep.data.prior_cache import RegionPriorCache

    params = dict(cfg.data.prior_params)
    cache = RegionPriorCache(cfg.data.prior_cache, cfg.data.prior, params)
    items = [(dataset.prior_key(i), p) for i, p in enumerate(dataset.paths)][dist.rank::dist.world_size]
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    workers = max(1, (os.cpu_count() or 1) // local_world)
    stats = cache.build(items, num_workers=workers, progress=progress and dist.is_main)
    log.info("region prior %s (this process's %d images): %s", cfg.data.prior, len(items), stats)
    long_barrier()
    return cache


_CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.")  # heads a backbone file may carry; the encoder has none


def init_backbone(cfg: Config, method: torch.nn.Module) -> None:
    """Load `model.init` into the backbone of every encoder of `method` (`method.encoders()`: online, EMA and
    discovery copies).

    `model.init` is a state-dict file (a plain dict, or one under "state_dict"/"model", torchvision or
    timm keys), `torchvision:<name>` or `timm:<name>` (downloaded by those libraries). A classifier in
    the file is dropped; any other key or shape that does not fit is one CheckpointError.
    """
    spec = cfg.model.init
    if not spec:
        return
    from discorep.checkpoint import CheckpointError, load_weights

    if spec.startswith("torchvision:"):
        from torchvision.models import get_model_weights

        weights = get_model_weights(spec.split(":", 1)[1]).DEFAULT.get_state_dict(progress=False)
    elif spec.startswith("timm:"):
        import timm

        weights = timm.create_model(spec.split(":", 1)[1], pretrained=True, num_classes=0).state_dict()
    else:
        if not Path(spec).is_file():
            raise CheckpointError(f"model.init {spec}: no such file (or use torchvision:<name> / timm:<name>)")
        weights = torch.load(spec, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):  # common wrappers around a state dict
            if isinstance(weights, dict) and isinstance(weights.get(key), dict):
                weights = weights[key]
        if not isinstance(weights, dict):
            raise CheckpointError(f"model.init {spec}: holds a {type(weights).__name__}, not a state dict of weights")
    for enc in method.encoders():
        own = enc.backbone.state_dict()
        fitted = {k: v for k, v in weights.items() if k in own or not k.startswith(_CLASSIFIER_PREFIXES)}
        load_weights(enc.backbone, fitted, what=f"{cfg.model.arch} backbone", path=f"model.init {spec}",
                     hint=f"the file must hold {cfg.model.arch} weights (model.arch)")
    log.info("model.init: backbone weights from %s", spec)


def view_sampler(cfg: Config) -> ViewSampler:
    """view1/view2 and only the extra views the configured method reads (`needs_views`)."""
    method = method_class(cfg.method.name, getattr(cfg.method, "module", None))
    return ViewSampler(cfg.views, method.needs_views(cfg))


def build_dataset(cfg: Config, dist: DistInfo) -> PretrainDataset | ShardPretrainDataset:
    if cfg.data.kind == "shards":  # priors come from the shards, checked against data.prior
        from discorep.data.shards import ShardPretrainDataset

        return ShardPretrainDataset(cfg.data.shards, view_sampler(cfg), cfg.data.prior,
                                    dict(cfg.data.prior_params), cfg.data.prior_size)
    paths, root = image_paths(cfg)
    dataset = PretrainDataset(paths, view_sampler(cfg), None, cfg.data.prior_size, root)
    dataset.prior_cache = build_prior_cache(cfg, dataset, dist, progress=cfg.train.progress)
    return dataset


def build_loader(cfg: Config, dataset: PretrainDataset, dist: DistInfo, start_step: int, total_steps: int,
                 shard_period_epochs: int | None = None) -> tuple[DataLoader, ResumableBatchSampler]:
    """`shard_period_epochs`: the method's `sampler_shard_period_epochs()` (rank-stable shards, or None)."""
    sampler = ResumableBatchSampler(len(dataset), cfg.train.batch_size, world_size=dist.world_size,
                                    rank=dist.rank, seed=cfg.train.seed, start_step=start_step,
                                    total_steps=total_steps, shard_period_epochs=shard_period_epochs)
    workers = cfg.data.num_workers
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_views,
                        pin_memory=dist.device.type == "cuda", persistent_workers=workers > 0,
                        worker_init_fn=loader_worker,  # signals are the main process's (data/pool.py)
                        prefetch_factor=4 if workers > 0 else None)
    return loader, sampler


def picture_batch(dataset: PretrainDataset, n: int) -> dict:
    """A fixed set of images (the first n readable ones, fixed seeds) for the mask pictures, with the
    raw view added to the training views: the pictures show it and `discover` may read it."""
    dataset = copy.copy(dataset)  # the training data set keeps its own views
    dataset.views = dataset.views.adding("raw")
    samples = []
    for i in range(len(dataset)):
        if len(samples) == n:
            break
        sample = dataset[(i, sample_seed(0, 0, i))]
        if "skip" not in sample and int(sample["index"]) == i:  # not a replacement of a bad file
            samples.append(sample)
    return collate_views(samples)


def build_optimizer_for(cfg: Config, modules: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    kwargs = {"momentum": o.momentum, "eta": o.eta} if o.name == "lars" else {}
    if o.name == "sgd":
        kwargs = {"momentum": o.momentum}
    return build_optimizer(o.name, modules, lr=o.base_lr, weight_decay=o.weight_decay, **kwargs)


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors to `device`; the dataset indices also stay on the host as "index_host", for host-side
    lookups (Odin's segment cache) that would otherwise read them back from the device every step."""
    non_blocking = device.type == "cuda"
    out = {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
           for k, v in batch.items()}
    if isinstance(batch.get("index"), torch.Tensor):
        out["index_host"] = batch["index"].cpu()
    return out


def compile_encoders(method: torch.nn.Module, mode: str, device: torch.device) -> int:
    """`torch.compile` every backbone (`method.encoders()`) in place; returns how many.

    Only the encoders: they hold nearly all the FLOPs and have static shapes, whereas k-means and mask
    sampling are data-dependent loops that would break the graph. `Module.compile` keeps parameter
    names, so checkpoints and exports are the same with and without compilation.
    """
    if mode == "none":
        return 0
    problem = compile_unavailable(device)
    if problem:
        raise ConfigError(f"model.compile={mode!r}: {problem}; or set model.compile: none (eager)")
    encoders = method.encoders()
    for encoder in encoders:
        encoder.compile(mode=mode)
    log.info("model.compile=%s: %d encoders compiled (the first steps include compilation)", mode, len(encoders))
    return len(encoders)


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile's default backend cannot run on `device` here, or None if it can."""
    import importlib.util
    import shutil

    if device.type == "cpu":
        compilers = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
        if not any(c and shutil.which(c) for c in compilers):
            return "compiling on CPU needs a C++ compiler (g++ or clang++; or set CXX)"
    elif device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "compiling on CUDA needs the triton package (pip install triton)"
    return None
