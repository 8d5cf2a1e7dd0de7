"""Schedules: pure functions of the step or (possibly fractional) epoch; no state, no torch.

R2O's K(t) curriculum lives with the methods (`methods.schedules`); it is re-exported here.
"""

from __future__ import annotations

import math

from discorep.methods.schedules import k_at, k_lr_scale  # noqa: F401 (re-exported)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """Linear scaling rule: ``base_lr · global_batch / 256`` (BYOL; Odin A.3; R2O A.1)."""
    _check(global_batch >= 1, f"global_batch must be >= 1, got {global_batch}")
    return base_lr * global_batch / 256


def lr_at(step: float, total_steps: float, warmup_steps: float, peak_lr: float, final_lr: float = 0.0) -> float:
    """Linear warmup from 0 (step 0) to ``peak_lr`` (step ``warmup_steps``), then cosine to ``final_lr``.

    ``lr = final + (peak − final) · (1 + cos(π · p)) / 2`` with ``p = (step − warmup)/(total − warmup)``
    clamped to [0, 1], so steps past ``total_steps`` stay at ``final_lr``.
    """
    _check(step >= 0, f"step must be >= 0, got {step}")
    _check(warmup_steps >= 0, f"warmup_steps must be >= 0, got {warmup_steps}")
    _check(total_steps > 0, f"total_steps must be > 0, got {total_steps}")
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    span = total_steps - warmup_steps
    progress = 1.0 if span <= 0 else min(1.0, (step - warmup_steps) / span)
    return final_lr + (peak_lr - final_lr) * (1.0 + math.cos(math.pi * progress)) / 2.0


def ema_tau_at(step: float, total_steps: float, tau_base: float = 0.99) -> float:
    """Target EMA rate ``τ = 1 − (1 − τ_base) · (cos(π · step / total) + 1) / 2`` (BYOL §3.2).

    Rises from ``tau_base`` to 1 (R2O A.1: 0.99 → 1; 0.996 is BYOL's option); clamped after ``total``.
    """
    _check(total_steps > 0, f"total_steps must be > 0, got {total_steps}")
    _check(0.0 <= tau_base <= 1.0, f"tau_base must be in [0, 1], got {tau_base}")
    progress = min(1.0, max(0.0, step / total_steps))
    return 1.0 - (1.0 - tau_base) * (math.cos(math.pi * progress) + 1.0) / 2.0


