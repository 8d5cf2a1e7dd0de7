"""Shared builders for engine/method tests: tiny configs on tiny generated scenes."""

from __future__ import annotations

import socket
from pathlib import Path

from discorep.engine.config import Config
from discorep.engine.configio import deep_merge, from_dict

METHOD_OVERRIDES = {
    "byol": {"method": {"name": "byol", "loss": "byol", "features": "c5"}},
    "detcon": {"method": {"name": "detcon", "loss": "contrastive", "features": "c4", "num_masks": 4},
               "data": {"prior": "slic", "prior_params": {"n_segments": 16}, "prior_size": 32}},
    "odin": {"method": {"name": "odin", "loss": "contrastive", "features": "fpn", "num_masks": 4, "K": 4,
                        "discovery_features": "fpn", "kmeans_iters": 5},
             "model": {"fpn": True, "fpn_dim": 32}},
    "odin_discrete": {"method": {"name": "odin", "loss": "contrastive", "features": "fpn", "num_masks": 4,
                                 "K": 4, "discovery_features": "fpn", "kmeans_iters": 5,
                                 "discovery_update": "discrete", "discrete_every_epochs": 1},
                      "model": {"fpn": True, "fpn_dim": 32}},
    "r2o": {"method": {"name": "r2o", "loss": "byol", "features": "c4", "num_masks": 4, "K0": 8, "K_f": 2,
                       "t_alpha": 1, "region_features": "c4", "kmeans_iters": 5},
            "data": {"prior": "slic", "prior_params": {"n_segments": 16}, "prior_size": 32}},
}


def tiny_config(method: str, data_root: Path, out_dir: Path, extra: dict | None = None) -> Config:
    base = {
        "data": {"root": str(data_root), "num_workers": 0, "prior_cache": str(out_dir / "prior_cache")},
        "views": {"size": 64, "spanning_size": 64, "raw_size": 64},
        "model": {"arch": "resnet18", "proj_hidden": 32, "proj_dim": 16, "pred_hidden": 32},
        "optim": {"name": "lars", "base_lr": 2.0, "warmup_epochs": 0.0, "weight_decay": 1e-6},
        "train": {"name": method, "out_dir": str(out_dir), "batch_size": 4, "epochs": 4, "seed": 0,
                  "device": "cpu", "checkpoint_every": 5, "log_every": 1, "picture_images": 2,
                  "progress": False},
    }
    merged = deep_merge(deep_merge(base, METHOD_OVERRIDES[method]), extra or {})
    return from_dict(Config, merged)


def fixed_batch(cfg: Config, n: int) -> dict:
    """The first `n` training images of `cfg`'s data set, as one collated batch (step 0, epoch 0 views)."""
    import torch

    from discorep.data.pretrain import collate_views, sample_seed
    from discorep.engine import builders
    from discorep.engine.distributed import DistInfo

    dataset = builders.build_dataset(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    return collate_views([dataset[(i, sample_seed(0, 0, i))] for i in range(n)])


def losses_by_step(run_dir: Path) -> dict:
    """{step: loss} from a run's metrics.jsonl."""
    import json

    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def final_state(run_dir: Path) -> dict:
    from discorep.checkpoint import latest_checkpoint, load_checkpoint

    return load_checkpoint(latest_checkpoint(run_dir))


def part(state: dict, name: str) -> dict:
    """A checkpoint's weights of the method's submodule `name` (e.g. "online", "target", "predictor")."""
    prefix = name + "."
    return {k[len(prefix):]: v for k, v in state["method"].items() if k.startswith(prefix)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0
