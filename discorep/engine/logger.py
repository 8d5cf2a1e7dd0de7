"""Run logging: JSONL metrics, TensorBoard scalars and images, all from the main process only."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np


class RunLogger:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **{k: _plain(v) for k, v in values.items()}}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def image(self, tag: str, step: int, picture: np.ndarray) -> None:
        if self.enabled:
            self.writer.add_image(tag, picture, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


class ExpectedDuration:
    """Says once, after the first `after` timed steps, how long the rest of the run should take.

    The first step of a (re)started run is not timed: it carries one-off costs (allocation, data workers
    starting). Epoch-end pictures and probes are not in the estimate, so it is a lower bound.
    """

    def __init__(self, start_step: int, end_step: int, after: int = 5, enabled: bool = True):
        self.start, self.end, self.after, self.enabled = start_step, end_step, after, enabled
        self.t_first: float | None = None
        self.message: str | None = None

    def update(self, step: int) -> str | None:
        """Call after each step; returns (and keeps) the message the one time it is ready."""
        if not self.enabled or self.message is not None:
            return None
        now = time.perf_counter()
        if step == self.start + 1:
            self.t_first = now
            return None
        timed = step - self.start - 1
        if self.t_first is None or timed < self.after:
            return None
        per_step = (now - self.t_first) / timed
        remaining = self.end - step
        self.message = (f"{timed} steps timed: {per_step:.2f} s/step; expect about {remaining * per_step / 60:.1f} min "
                        f"for the remaining {remaining} steps (plus per-epoch pictures and probes)")
        return self.message


def progress_bar(enabled: bool, start: int, end: int, *, desc: str = "pretrain", unit: str = "step",
                 leave: bool = True):
    """A progress bar on rank 0 (pretraining's by default; transfer's loop and evaluation too), or None."""
    if not enabled:
        return None
    from tqdm import tqdm

    # disable=None: no bar when stdout is not a terminal (logs stay free of progress-bar debris)
    return tqdm(total=end, initial=start, unit=unit, dynamic_ncols=True, desc=desc, disable=None, leave=leave)
