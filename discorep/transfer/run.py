"""`discorep transfer detect|segment`: fine-tune, score, repeat over seeds, and beside it the `random:<arch>`
baseline at the same settings (run, or read from the work folder's cache keyed by the settings), so no
number stands alone. Writes one JSON (layout in docs/evaluation.md, "Transfer") from rank 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from discorep.engine.configio import to_dict
from discorep.engine.distributed import DistInfo, init_distributed, shutdown
from discorep.engine.startup import seed_rngs
from discorep.errors import UsageError
from discorep.eval.report import json_safe
from discorep.fileio import atomic_write
from discorep.transfer import detect, segment
from discorep.transfer.config import TransferConfig
from discorep.transfer.loop import RESUME_FREE, Fitter, endless_batches
from discorep.transfer.models import load_backbone

log = logging.getLogger("discorep")
TASKS = {"detect": detect, "segment": segment}


@dataclass
class Inputs:
    train: str
    val: str
    train_images: str | None = None
    val_images: str | None = None


def _optimizer(model: nn.Module, cfg: TransferConfig) -> torch.optim.Optimizer:
    """SGD with momentum; no weight decay on norm layers (detectron2's WEIGHT_DECAY_NORM 0)."""
    decay, no_decay = [], []
    for module in model.modules():
        is_norm = isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                (no_decay if is_norm else decay).append(p)
    s = cfg.solver
    return torch.optim.SGD([{"params": decay, "weight_decay": s.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}], lr=s.lr(), momentum=s.momentum)


def _run_key(cfg: TransferConfig, backbone_source: str, inputs: Inputs, seed: int, world: int) -> str:
    settings = to_dict(cfg)
    for dotted in RESUME_FREE:
        section, _, key = dotted.rpartition(".")
        (settings.get(section, {}) if section else settings).pop(key, None)
    files = {k: _file_id(v) for k, v in vars(inputs).items()}
    blob = json.dumps({"settings": settings, "backbone": backbone_source, "data": files, "seed": seed,
                       "world": world}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _json(data) -> bytes:
    """Strict JSON: a score COCOeval cannot define (NaN, e.g. APl without large objects) is null."""
    return json.dumps(json_safe(data), indent=1, allow_nan=False).encode()


def _file_id(path: str | None):
    if path is None:
        return None
    p = Path(path)
    st = p.stat() if p.exists() else None
    return [str(p.resolve()), st.st_size if st else None, int(st.st_mtime) if st else None]


def fine_tune(task: str, cfg: TransferConfig, backbone_spec: str, inputs: Inputs, sets, seed: int,
              work_dir: Path, dist_info: DistInfo, resume: bool, progress: bool = True) -> dict:
    """One fine-tuning run of `backbone_spec` with `seed`: its scores plus what it trained (a dict)."""
    mod = TASKS[task]
    train_set, val_set = sets
    backbone = load_backbone(backbone_spec, weights=cfg.model.weights if not backbone_spec.startswith("random:")
                             else "online")
    key = _run_key(cfg, backbone.source, inputs, seed, dist_info.world_size)
    run_dir = work_dir / f"{task}-{cfg.preset}-{key}"
    done = run_dir / "scores.json"
    if done.is_file():  # the same backbone, settings, data and seed: a finished run is read, not redone
        log.info("%s: read from %s (same settings, data and seed)", backbone.source, done)
        return json.loads(done.read_text())
    seed_rngs(seed)
    model = mod.build_model(cfg, backbone, train_set.num_classes).to(dist_info.device)
    info = dict(getattr(model, "discorep_transfer", {}))
    if dist_info.world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[dist_info.device.index]
                                                    if dist_info.device.type == "cuda" else None)
    opt = _optimizer(model, cfg)
    # data and world are in the run key too: recorded so a resume under other ones can name them
    fitter = Fitter(cfg, run_dir, dist_info, {"backbone": backbone.source, "seed": seed, "world": dist_info.world_size,
                                              "data": {k: _file_id(v) for k, v in vars(inputs).items()}})
    start = fitter.resume_point(model, opt, resume)
    loader = mod.train_loader(train_set, cfg, dist_info, seed, start)
    what = "random init" if backbone.source.startswith("random:") else "pretrained"
    result = fitter.fit(model, opt, endless_batches(loader), mod.loss_fn(dist_info.device), start,
                        desc=f"{task} {what} seed {seed}")
    scores = mod.evaluate(model, val_set, cfg, dist_info, progress)
    record = {"scores": scores, "backbone": backbone.source, "seed": seed, "transferred": info,
              "iters": result.iters, "final_loss": result.last_loss, "train_seconds": round(result.seconds, 1),
              "skipped_train_images": result.skipped_images, "resumed_from": result.resumed_from,
              "run_dir": str(run_dir)}
    if dist_info.is_main:
        atomic_write(done, _json(record))
    return json_safe(record)  # as a cached run reads back


def summarise(records: list[dict]) -> dict:
    """Scores of one backbone over seeds: the values for one seed; for several, each metric as
    {"mean", "std", "per_seed"} (std: sample std over seeds)."""
    scores = [r["scores"] for r in records]
    if len(scores) == 1:
        return scores[0]
    return _combine(scores)


def _combine(values: list):
    first = values[0]
    if isinstance(first, dict):
        return {k: _combine([v[k] for v in values]) for k in first}
    if isinstance(first, (int, float)) or first is None:
        nums = [math.nan if v is None else float(v) for v in values]
        finite = [v for v in nums if not math.isnan(v)]
        mean = statistics.fmean(finite) if finite else None
        std = statistics.stdev(finite) if len(finite) > 1 else 0.0 if finite else None
        return {"mean": mean, "std": std, "per_seed": [None if math.isnan(v) else v for v in nums]}
    return values


def difference(ours: dict, base: dict) -> dict:
    """ours − baseline for each headline metric (means when over seeds)."""
    out = {}
    for k, v in ours.items():
        if k not in base or k == "per_class_IoU":
            continue
        if isinstance(v, dict) and "mean" not in v:
            sub = difference(v, base[k])
            if sub:
                out[k] = sub
        else:
            a, b = _value(v), _value(base[k])
            if a is not None and b is not None:
                out[k] = a - b
    return out


def _value(v):
    if isinstance(v, dict):
        return v.get("mean")
    return float(v) if isinstance(v, (int, float)) else None


def run_transfer(task: str, cfg: TransferConfig, checkpoint: str, inputs: Inputs, *, seeds: int, out: Path,
                 work_dir: Path, resume: bool, baseline: bool = True, progress: bool = True) -> dict:
    """Fine-tune `checkpoint` (and the random baseline) over `seeds` seeds; write and return the result."""
    dist_info = init_distributed(cfg.device)
    try:
        if cfg.solver.batch_size % dist_info.world_size:
            raise UsageError(f"solver.batch_size {cfg.solver.batch_size} must be a multiple of the {dist_info.world_size} "
                             "processes (each takes an equal share)")
        from discorep.transfer.models import check_norm_device

        check_norm_device(cfg.model.norm, dist_info.device)
        mod = TASKS[task]
        sets = mod.open_sets(inputs.train, inputs.val, inputs.train_images, inputs.val_images, cfg)
        ours = [fine_tune(task, cfg, checkpoint, inputs, sets, s, work_dir, dist_info, resume, progress)
                for s in range(seeds)]
        baseline_spec = f"random:{ours[0]['transferred']['arch']}"
        # the baseline itself needs no baseline; another random draw (random:<arch>:<seed>) gets one
        base = ([fine_tune(task, cfg, baseline_spec, inputs, sets, s, work_dir, dist_info, resume, progress)
                 for s in range(seeds)] if baseline and checkpoint != baseline_spec else [])
        result = {**summarise(ours), "settings": _settings(cfg, checkpoint, inputs, seeds, dist_info, ours, sets)}
        if base:
            result["baseline"] = {"checkpoint": baseline_spec, **summarise(base)}
            result["difference"] = difference(summarise(ours), summarise(base))
        else:
            result["baseline"] = None
        if dist_info.is_main:
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(out, _json(result))
        return result
    finally:
        shutdown()


def _settings(cfg: TransferConfig, checkpoint: str, inputs: Inputs, seeds: int, dist_info: DistInfo,
              runs: list[dict], sets) -> dict:
    return {"task": cfg.task, "preset": cfg.preset, "source": cfg.source, "checkpoint": checkpoint,
            **vars(inputs), "seeds": seeds, "world_size": dist_info.world_size, "device": str(dist_info.device),
            "lr": cfg.solver.lr(), "config": to_dict(cfg), "transferred": runs[0]["transferred"],
            "train_counts": getattr(sets[0], "counts", None),
            "runs": [{k: r[k] for k in ("seed", "iters", "final_loss", "train_seconds", "skipped_train_images",
                                        "resumed_from", "run_dir")} for r in runs]}
