"""What every process of a run must agree on at each step, so that all of them act alike (issue 23).

* The step's flags: a non-finite loss on any rank (every rank skips or stops), a stop signal received by
  any rank (every rank checkpoints and stops after the same step, and exits with the same status), and
  whether any rank met unreadable images in its share of the batch. One small all-reduce carries them;
  it is the step's one host read-back, so the common case costs no extra collective.
* The unreadable images themselves: only when some rank met new ones do all ranks (each knows, from the
  flags) gather every rank's records, so every rank keeps the same set and checks the same count against
  `data.max_bad_images` — one rank raising alone would leave the others waiting out the timeout.
* SIGINT / SIGTERM during training: recorded, not raised, so the loop finishes the step and checkpoints.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist

from discorep.errors import Interrupted


@dataclass
class StepFlags:
    loss: float  # this rank's loss value
    nonfinite: bool  # a non-finite loss on some rank
    stop_signal: int  # the largest signal number any rank received (0: none; SIGTERM wins over SIGINT)
    new_skips: bool  # some rank met unreadable images it had not seen before


def exchange_flags(loss: torch.Tensor, stop_signal: int, new_skips: int, world_size: int) -> StepFlags:
    """The flags of every rank, combined by one MAX all-reduce (the loss value rides along, unreduced)."""
    value = loss.detach().float()
    t = torch.stack([(~torch.isfinite(value)).float(),
                     torch.tensor(float(stop_signal), device=loss.device),
                     torch.tensor(float(new_skips), device=loss.device)])
    if world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    loss_value, bad, stop, skips = torch.cat([value.reshape(1), t]).tolist()
    return StepFlags(loss_value, bad > 0, int(stop), skips > 0)


def gather_skips(records: list[tuple[str, str]], world_size: int) -> list[tuple[str, str]]:
    """Every rank's new (path, reason) records, in rank order; called by all ranks or by none."""
    if world_size == 1:
        return list(records)
    shares: list = [None] * world_size
    dist.all_gather_object(shares, list(records))
    return [tuple(record) for share in shares for record in share]


def interrupted(signum: int, step: int, checkpoint) -> Interrupted:
    """The error a run stopped by a signal ends with (exit status 128 + signum in the CLI)."""
    name = signal.Signals(signum).name if signum in signal.valid_signals() else f"signal {signum}"
    return Interrupted(f"{name}: stopped after step {step}, checkpoint saved at {checkpoint}; continue with "
                       "the same command plus --resume auto", signum=signum)


class StopOnSignals:
    """SIGTERM/SIGINT ask the loop to checkpoint and stop after the current step (`trainer.stop_signal`)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def __enter__(self):
        self.previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.trainer.stop_signal = max(self.trainer.stop_signal, int(signum))

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False
