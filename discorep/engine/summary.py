"""What a finished `pretrain` prints (rank 0 only): what the run did, where its files are, what to run next."""

from __future__ import annotations

from pathlib import Path

from discorep.runs import latest_checkpoint


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def run_summary(run_dir: Path, *, step: int, start_step: int, global_batch: int, seconds: float,
                final_loss: float, features: str, length: str) -> str:
    """The summary block; `start_step`: where this session began (0, or the step resumed from)."""
    run, checkpoint = str(run_dir), latest_checkpoint(run_dir)
    session = f", {step - start_step} in this session" if start_step else ""
    lines = [
        f"pretraining done: {step} steps ({length}{session}), {step * global_batch} images seen "
        f"({step} x global batch {global_batch}), {_duration(seconds)}, final loss {final_loss:.4g}",
        f"  run folder:  {run}",
        f"  checkpoint:  {checkpoint or 'none'}",
    ]
    if (run_dir / "masks").is_dir():
        lines.append(f"  pictures:    {run_dir / 'masks'}")
    lines += [
        f"  TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}",
        "next (a run folder stands for its latest checkpoint):",
        f"  discorep discover --checkpoint {run} --images IMAGE_FOLDER --out {run_dir / 'discover'} "
        f"--features {features}",
        f"  discorep eval objects --checkpoint {run} --coco ANNOTATIONS.json --images IMAGE_FOLDER "
        f"--features {features}",
        f"  discorep export --checkpoint {run} --to torchvision --out {run_dir / 'export' / 'backbone.pth'}",
    ]
    return "\n".join(lines)
