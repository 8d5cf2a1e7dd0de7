"""`make demo`: generate the demo data, pretrain on CPU, measure the masks, and say where the results are."""

from __future__ import annotations

import time
from pathlib import Path

from discorep.checkpoint import latest_checkpoint
from discorep.data.datasets import CocoDataset
from discorep.apps.demodata.build import build_demo_data
from discorep.apps.demodata.photo_objects import make_photo_objects
from discorep.engine.config import Config
from discorep.engine.configio import load_config
from discorep.engine.train import ResumeConfigError, pretrain
from discorep.eval.report import print_table, write_json

# How the demo's masks are measured (the same as `discorep eval objects ... --size 192 --features c4`).
EVAL_SIZE, EVAL_FEATURES, EVAL_KS = 192, "c4", (1, 2, 4, 8, 16, 32, 64, 128)


def _in_demo_data(root: str, data_root: str | Path) -> Path:
    """A config's `data/demo/...` training folder, moved under the demo data folder actually used."""
    try:
        return Path(data_root) / Path(root).relative_to("data/demo")
    except ValueError:  # a folder outside the demo data: the user's own
        return Path(root)


def measure_masks(checkpoint: str, arch: str, sets: dict[str, tuple[Path, Path]]) -> list[dict]:
    """ABO_i of the trained network against `random:<arch>` on held-out sets it never trained on."""
    from discorep.eval.backbone import load_model
    from discorep.eval.objects import evaluate_objects

    models = {"trained": load_model(checkpoint), "random": load_model(f"random:{arch}")}
    rows = []
    for name, (ann, images) in sets.items():
        row = {"set": name}
        for label, model in models.items():
            result = evaluate_objects(model, CocoDataset(ann, images), EVAL_KS, EVAL_SIZE,
                                      EVAL_FEATURES, progress=False, num_workers=0)
            row[f"ABO_i {label} (%)"] = 100 * result["abo_i"]  # percent, as the README and docs quote it
        row["gain (points)"] = row["ABO_i trained (%)"] - row["ABO_i random (%)"]
        rows.append(row)
    return rows


def _printed(row: dict) -> dict:
    """One decimal, the gain signed: the precision the figures carry across CPUs and seeds."""
    return {k: (f"{v:+.1f}" if k.startswith("gain") else f"{v:.1f}") if isinstance(v, float) else v
            for k, v in row.items()}


def run_demo(config: str, data_root: Path, overrides: list[str] | None = None) -> Path:
    t0 = time.perf_counter()
    paths = build_demo_data(data_root)
    photos = make_photo_objects(Path(data_root) / "photo_objects")
    print(f"demo data ready in {data_root} ({time.perf_counter() - t0:.1f} s)")
    cfg = load_config(Config, config, overrides or [])
    cfg.data.root = str(_in_demo_data(cfg.data.root, data_root))
    try:
        run_dir = pretrain(cfg, resume="auto")
    except ResumeConfigError as err:  # e.g. a demo run left by an older version of the demo config
        old_run = Path(cfg.train.out_dir) / cfg.train.name
        raise ResumeConfigError(f"{err}\nThe demo resumes {old_run}, which another demo config trained: delete "
                                "that folder to train afresh, or add train.name=NEW_NAME to keep both.") from err
    checkpoint = latest_checkpoint(run_dir)
    sets = {"held-out scenes": (paths["scenes_val"] / "annotations.json", paths["scenes_val"] / "images"),
            "real-photo composites": (photos / "annotations.json", photos / "images")}
    rows = measure_masks(str(checkpoint), cfg.model.arch, sets)
    print_table(f"object discovery, never-seen images ({EVAL_FEATURES}, {EVAL_SIZE} px, K = 1..128; ABO_i in %)",
                [_printed(r) for r in rows], ("set", "ABO_i trained (%)", "ABO_i random (%)", "gain (points)"))
    write_json(run_dir / "demo_eval.json", {"checkpoint": checkpoint, "size": EVAL_SIZE, "features": EVAL_FEATURES,
                                            "ks": list(EVAL_KS), "rows": rows})
    minutes = (time.perf_counter() - t0) / 60
    print(f"\nDone in {minutes:.1f} min. Run folder: {run_dir}")
    print(f"  checkpoints:    {run_dir / 'checkpoints'}")
    print(f"  metrics:        {run_dir / 'metrics.jsonl'}")
    print(f"  mask pictures:  {run_dir / 'masks'}  (first: epoch_000.png, last: the highest epoch)")
    print(f"  mask quality:   {run_dir / 'demo_eval.json'}  (the table above; figures vary across CPUs and "
          "seeds, docs/results.md gives the three-seed spread)")
    print(f"  TensorBoard:    tensorboard --logdir {run_dir / 'tensorboard'}")
    return run_dir
