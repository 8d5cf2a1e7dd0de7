"""How long a run is: its schedules' length, where it stops, and what the start line says about both.

Two lengths, kept apart on purpose. The *schedules* (warm-up and cosine lr, EMA τ, and whatever a method
derives from `StepInfo.epoch`: R2O's K(t), Odin's discrete copies) span `total_steps`; the run *stops* at
`end_step` (`train.max_steps`, a hard stop). `train.steps = N` makes the schedules N steps long by
changing the clock, not the settings: one schedule epoch is N / train.epochs steps, so every
`*_epochs` setting keeps its share of the run (10 warm-up epochs of 300 = the first 1/30 of N steps).
Without it a schedule epoch is a data epoch, as before. Data epochs (pictures, probes, the sampler's
shuffles) always count real passes over the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class RunPlan:
    steps_per_epoch: int  # data epochs: len(dataset) // global batch
    schedule_steps_per_epoch: float  # steps per schedule epoch (= steps_per_epoch unless train.steps)
    total_steps: int  # the schedules' length
    end_step: int  # where the run stops
    epochs: float  # train.epochs: the schedules' length in schedule epochs
    steps: Optional[int]  # train.steps
    max_steps: Optional[int]  # train.max_steps

    def epoch_at(self, step: int) -> float:
        """The schedules' (fractional) epoch at `step`: what `StepInfo.epoch` carries."""
        return step / self.schedule_steps_per_epoch

    def length_text(self) -> str:
        """How the start line and the summary name the schedules' length."""
        if self.steps is not None:
            return f"train.steps {self.steps}"
        return f"train.epochs {self.epochs:g} = {self.total_steps} steps"


def plan_run(train: Any, num_images: int, global_batch: int) -> RunPlan:
    """The plan of a run of `train` (the config's train section) over `num_images` images."""
    per_epoch = max(1, num_images // global_batch)
    if train.steps is not None:
        total, schedule_per_epoch = int(train.steps), train.steps / train.epochs
    else:  # as before train.steps existed: identical schedules, so old runs resume identically
        total, schedule_per_epoch = math.ceil(train.epochs * per_epoch), per_epoch
    end = min(total, train.max_steps or total)
    return RunPlan(per_epoch, schedule_per_epoch, total, end, train.epochs, train.steps, train.max_steps)


def cut_note(plan: RunPlan, lr_last: float, lr_final: float, tau_last: float, method_note: Optional[str]) -> Optional[str]:
    """The start line's warning when `train.max_steps` cuts the schedules short, or lies past their end
    (never capped silently); None when the run is a whole run. `*_last`: at the last step it trains."""
    m, total = plan.max_steps, plan.total_steps
    if m is not None and m > total:
        return (f"train.max_steps={m} is past the schedules' end ({plan.length_text()}): the run ends at step "
                f"{total}; set train.steps={m} for a whole run of {m} steps")
    if plan.end_step >= total:
        return None
    parts = [f"lr {lr_last:.3g} (schedule end {lr_final:.3g})", f"τ {tau_last:.5g} (schedule end 1)"]
    if method_note:
        parts.append(method_note)
    return (f"train.max_steps={m} stops the schedules at step {m} of {total} ({plan.length_text()}): "
            f"{', '.join(parts)} — set train.steps={m} for a short whole run")


def already_complete(step: int, plan: RunPlan) -> str:
    text = f"already complete at step {step} ({plan.length_text()}); nothing to do"
    if plan.end_step < plan.total_steps:
        text += f" (train.max_steps={plan.max_steps} stops it there: raise it or set it to null to go on)"
    return text
