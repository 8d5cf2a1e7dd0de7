"""Run a study: pretrain every (run, seed) under one budget, evaluate each checkpoint, then report.

Every finished (run, seed) leaves `<out_dir>/per_run/<run>_seed<k>.json`; a study that is interrupted
(or extended with more seeds) continues where it stopped, and an interrupted pretraining resumes from
its last checkpoint (`--resume auto` semantics). Evaluation calls the same functions as `discorep eval`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from discorep.checkpoint import latest_checkpoint
from discorep.data.datasets import CocoDataset
from discorep.engine.config import Config
from discorep.models.backbones import feature_strides
from discorep.engine.configio import load_config
from discorep.engine.train import pretrain
from discorep.eval.backbone import load_model
from discorep.eval.foreground import CocoTruth, evaluate_foreground
from discorep.eval.knn import evaluate_knn
from discorep.eval.objects import evaluate_objects
from discorep.eval.report import resolve_device, write_json
from discorep.eval.video import evaluate_video
from discorep.apps.study.baselines import grid_oracle_objects, slic_foreground, slic_objects
from discorep.apps.study.data import study_data, study_data_paths
from discorep.apps.study.spec import DENSE_TASKS, RunSpec, StudySpec, dotted

log = logging.getLogger("discorep")


def _probe_overrides(spec: StudySpec, run: RunSpec, data: dict[str, Path]) -> dict:
    """ABO on a few held-out scenes every epoch, for the ABO-over-training plot (main table only)."""
    e = spec.eval
    if e.probe_every_epochs <= 0 or "main" not in run.tables:
        return {}
    return {"eval.every_epochs": e.probe_every_epochs, "eval.objects_coco": str(data["probe_coco"]),
            "eval.objects_images": str(data["val_images"]), "eval.objects_ks": e.objects_ks,
            "eval.size": e.size, "eval.features": e.features}


def run_config(spec: StudySpec, run: RunSpec, seed: int, data: dict[str, Path]) -> Config:
    """The pretraining config of one (run, seed): run config < study budget < run overrides < study paths."""
    out = Path(spec.out_dir)
    paths = {"data.root": str(data["train_images"]), "data.prior_cache": str(out / "prior_cache"),
             "train.out_dir": str(out / "runs" / run.name), "train.name": f"seed{seed}", "train.seed": seed}
    overrides = {**_budget_for(spec.budget, run), **run.overrides, **_probe_overrides(spec, run, data), **paths}
    return load_config(Config, run.config, dotted(overrides))


def _budget_for(budget: dict, run: RunSpec) -> dict:
    """The shared budget less the `method.*` keys the run's method does not have (each method declares its
    own options: k-means iterations mean nothing to BYOL)."""
    from discorep.engine.configio import load_yaml
    from discorep.methods.registry import options_class

    method = {**(load_yaml(run.config).get("method") or {}),
              **{k[len("method."):]: v for k, v in run.overrides.items() if k.startswith("method.")}}
    fields = options_class(method.get("name", "byol"), method.get("module")).__dataclass_fields__
    return {k: v for k, v in budget.items() if not k.startswith("method.") or k[len("method."):] in fields}


def evaluate_checkpoint(spec: StudySpec, checkpoint: str, data: dict[str, Path], seed: int,
                        tasks: list[str] | None = None) -> dict:
    """The tasks of `spec.eval` (or just `tasks`) on one network (a checkpoint or random:<arch>[:seed])."""
    e, device = spec.eval, resolve_device("auto")
    tasks = e.tasks if tasks is None else tasks
    model = load_model(checkpoint, device)
    out: dict = {}
    for name, coco, images in (("objects", data["val_coco"], data["val_images"]),
                               ("photos", data["photo_coco"], data["photo_images"])):
        if name in tasks:
            r = evaluate_objects(model, CocoDataset(coco, images), e.objects_ks, e.size, e.features, seed=seed,
                                 progress=False, num_workers=0)
            out[name] = {k: r[k] for k in ("abo_i", "abo_c", "or", "n_images")}
    if "foreground" in tasks:
        r = evaluate_foreground(model, CocoTruth(data["val_coco"], data["val_images"]), e.foreground_k, e.size,
                                e.features, seed=seed, progress=False, num_workers=0)
        out["foreground"] = {k: r[k] for k in ("miou", "miou_fg_bg", "n_images")}
    if "video" in tasks:
        r = evaluate_video(model, data["videos"], size=e.video_size, features=e.video_features, device=device,
                           progress=False)
        out["video"] = {k: r[k] for k in ("J", "F", "J&F", "n_objects")}
    if "knn" in tasks:
        r = evaluate_knn(model, data["knn_train"], data["knn_val"], e.knn_size, e.knn_features, device, e.knn_k)
        out["knn"] = {k: r[k] for k in ("top1", "n_train", "n_val", "num_classes")}
    if set(tasks) & set(DENSE_TASKS):
        out.update(dense_tasks(model, spec, data, seed, tasks))
    return out


def dense_tasks(model, spec: StudySpec, data: dict[str, Path], seed: int, tasks: list[str]) -> dict:
    """linear-seg / overcluster / retrieval / corloc on the semantic set (features encoded once)."""
    from discorep.data.semantic import open_boxes, open_semantic
    from discorep.eval.corloc import evaluate_corloc
    from discorep.eval.dense import encode_set
    from discorep.eval.linear_seg import evaluate_linear_seg
    from discorep.eval.overcluster import evaluate_overcluster, parse_overcluster_ks
    from discorep.eval.retrieval import evaluate_retrieval

    e, out = spec.eval, {}
    val_set = open_semantic(data["seg_val"])
    val = encode_set(model, val_set, e.dense_size, e.dense_features, progress=False, num_workers=0)
    if {"linear_seg", "retrieval"} & set(tasks):
        train = encode_set(model, open_semantic(data["seg_train"]), e.dense_size, e.dense_features, progress=False,
                           num_workers=0)
        if "linear_seg" in tasks:
            r = evaluate_linear_seg(train, val, epochs=e.linear_seg_epochs, seed=seed)
            out["linear_seg"] = {k: r[k] for k in ("miou", "pixel_accuracy", "n_train", "n_val")}
        if "retrieval" in tasks:
            r = evaluate_retrieval(train, val, k=e.retrieval_k, seed=seed)
            out["retrieval"] = {k: r[k] for k in ("miou", "pixel_accuracy", "bank_entries", "n_val")}
    if "overcluster" in tasks:
        r = evaluate_overcluster(val, parse_overcluster_ks(e.overcluster_k, val_set.num_classes), seeds=1,
                                 first_seed=seed)
        out["overcluster"] = {f"miou_k{p['k']}": p["miou_mean"] for p in r["per_k"]}
        out["overcluster"]["miou"] = r["per_k"][-1]["miou_mean"]  # the report's column: the largest K
    if "corloc" in tasks:
        r = evaluate_corloc(model, open_boxes(data["seg_val"]), e.dense_size, e.dense_features, seed=seed,
                            progress=False)
        out["corloc"] = {k: r[k] for k in ("corloc", "n_images")}
    return out


def _complete(spec: StudySpec, target: Path, data: dict[str, Path]) -> dict:
    """A finished result, with any evaluation task added to the study since then computed and saved."""
    result = json.loads(target.read_text())
    missing = [t for t in spec.eval.tasks if t not in result]
    if missing:
        result.update(evaluate_checkpoint(spec, result["checkpoint"], data, result["seed"], missing))
        write_json(target, result)
    return result


def _probe_curve(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{"epoch": r["epoch"], "step": r["step"], "abo_i": r["eval/abo_i"]} for r in rows if "eval/abo_i" in r]


def run_one(spec: StudySpec, run: RunSpec, seed: int, data: dict[str, Path]) -> dict:
    target = Path(spec.out_dir) / "per_run" / f"{run.name}_seed{seed}.json"
    if target.exists():
        return _complete(spec, target, data)
    cfg = run_config(spec, run, seed, data)
    t0 = time.perf_counter()
    run_dir = pretrain(cfg, resume="auto")
    t1 = time.perf_counter()
    checkpoint = latest_checkpoint(run_dir)
    result = {"run": run.name, "seed": seed, "checkpoint": str(checkpoint), "run_dir": str(run_dir),
              "overrides": run.overrides, "train_seconds": t1 - t0,
              **evaluate_checkpoint(spec, str(checkpoint), data, seed), "probe": _probe_curve(run_dir)}
    result["eval_seconds"] = time.perf_counter() - t1
    write_json(target, result)
    return result


def coco_val(data: dict[str, Path]) -> CocoDataset:
    return CocoDataset(data["val_coco"], data["val_images"])


def run_baselines(spec: StudySpec, data: dict[str, Path]) -> dict[str, list[dict]]:
    """random:<arch> per seed (its weights depend on it) and SLIC once (it is deterministic)."""
    results: dict[str, list[dict]] = {}
    folder = Path(spec.out_dir) / "per_run"
    if "random" in spec.baselines:
        results["random"] = []
        for seed in spec.seeds:
            target = folder / f"random_seed{seed}.json"
            if not target.exists():
                write_json(target, {"run": "random", "seed": seed,
                                     **evaluate_checkpoint(spec, f"random:{spec.arch}:{seed}", data, seed)})
            results["random"].append(json.loads(target.read_text()))
    if "slic" in spec.baselines:
        target = folder / "slic.json"
        if not target.exists():
            coco = coco_val(data)
            payload = {"run": "slic", "seed": 0,
                       "objects": slic_objects(coco, spec.eval.slic_segments),
                       "objects_prior100": slic_objects(coco, [100]),
                       "foreground": slic_foreground(CocoTruth(data["val_coco"], data["val_images"]),
                                                     spec.eval.foreground_k)}
            write_json(target, payload)
        slic = json.loads(target.read_text())
        if "grid_oracle" not in slic:
            cells = spec.eval.size // feature_strides(spec.arch)[spec.eval.features]
            slic["grid_oracle"] = {"cells": cells, "objects": grid_oracle_objects(coco_val(data), cells)}
            if "photos" in spec.eval.tasks:
                slic["grid_oracle"]["photos"] = grid_oracle_objects(
                    CocoDataset(data["photo_coco"], data["photo_images"]), cells)
            write_json(target, slic)
        if "photos" in spec.eval.tasks and "photos" not in slic:
            slic["photos"] = slic_objects(CocoDataset(data["photo_coco"], data["photo_images"]),
                                          spec.eval.slic_segments)
            write_json(target, slic)
        results["slic"] = [slic]
    return results


def probe_set(data: dict[str, Path], out_dir: Path, n: int) -> Path:
    """The first `n` held-out scenes as a small COCO file for the during-training ABO probe."""
    target = out_dir / "probe_annotations.json"
    coco = json.loads(data["val_coco"].read_text())
    keep = {img["id"] for img in coco["images"][:n]}
    coco["images"] = [img for img in coco["images"] if img["id"] in keep]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    write_json(target, coco)
    return target


def run_study(spec: StudySpec, command: str, report_only: bool = False) -> Path:
    """Train + evaluate everything, then write the report; returns the report's path.

    `report_only`: train nothing; report the (run, seed) pairs that are finished (evaluation tasks added
    since are still computed for them) and list the missing ones in the report.
    """
    from tqdm import tqdm

    from discorep.apps.study.report import write_report

    t0 = time.perf_counter()
    out = Path(spec.out_dir)
    if report_only:
        return _report_only(spec, command, t0)
    out.mkdir(parents=True, exist_ok=True)
    data = study_data(spec)
    data["probe_coco"] = probe_set(data, out, spec.eval.probe_images)
    baselines = run_baselines(spec, data)
    # Main-table runs first (every seed), then the ablations: a study stopped early has its headline table.
    jobs = [(run, seed) for main in (True, False) for seed in spec.seeds for run in spec.runs
            if ("main" in run.tables) == main]
    results: dict[str, list[dict]] = {run.name: [] for run in spec.runs}
    missing = []
    for run, seed in tqdm(jobs, desc=f"study {spec.name}", unit="run", disable=None):
        log.info("study: %s seed %d", run.name, seed)
        results[run.name].append(run_one(spec, run, seed, data))
    elapsed = time.perf_counter() - t0
    return write_report(spec, results, baselines, data, command=command, elapsed=elapsed, missing=missing)


def _report_only(spec: StudySpec, command: str, t0: float) -> Path:
    """The report from the results on disk as they are: nothing generated, trained or evaluated (seconds)."""
    from discorep.apps.study.report import write_report

    folder = Path(spec.out_dir) / "per_run"
    results: dict[str, list[dict]] = {run.name: [] for run in spec.runs}
    missing = []
    for main in (True, False):
        for seed in spec.seeds:
            for run in spec.runs:
                if ("main" in run.tables) != main:
                    continue
                target = folder / f"{run.name}_seed{seed}.json"
                if target.exists():
                    results[run.name].append(json.loads(target.read_text()))
                else:
                    missing.append(f"{run.name} seed {seed}")
    baselines: dict[str, list[dict]] = {}
    randoms = [folder / f"random_seed{seed}.json" for seed in spec.seeds]
    if "random" in spec.baselines and any(p.exists() for p in randoms):
        baselines["random"] = [json.loads(p.read_text()) for p in randoms if p.exists()]
    if "slic" in spec.baselines and (folder / "slic.json").exists():
        baselines["slic"] = [json.loads((folder / "slic.json").read_text())]
    return write_report(spec, results, baselines, study_data_paths(spec), command=command,
                        elapsed=time.perf_counter() - t0, missing=missing)
