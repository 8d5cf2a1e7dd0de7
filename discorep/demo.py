"""`make demo`: generate the demo data, pretrain on CPU, and say where the results are."""

from __future__ import annotations

import time
from pathlib import Path

from discorep.data.demo import build_demo_data
from discorep.engine.config import Config
from discorep.engine.configio import load_config
from discorep.engine.train import pretrain


def run_demo(config: str, data_root: Path, overrides: list[str] | None = None) -> Path:
    t0 = time.perf_counter()
    paths = build_demo_data(data_root)
    print(f"demo data ready in {data_root} ({time.perf_counter() - t0:.1f} s)")
    cfg = load_config(Config, config, [f"data.root={paths['scenes_train'] / 'images'}", *(overrides or [])])
    run_dir = pretrain(cfg, resume="auto")
    minutes = (time.perf_counter() - t0) / 60
    print(f"\nDone in {minutes:.1f} min. Run folder: {run_dir}")
    print(f"  checkpoints:    {run_dir / 'checkpoints'}")
    print(f"  metrics:        {run_dir / 'metrics.jsonl'}")
    print(f"  mask pictures:  {run_dir / 'masks'}  (first: epoch_000.png, last: the highest epoch)")
    print(f"  TensorBoard:    tensorboard --logdir {run_dir / 'tensorboard'}")
    return run_dir
