"""R2O's region-to-object curriculum: K(t) and its learning-rate factor (pure functions, no torch)."""

from __future__ import annotations

import math
from typing import Literal


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def k_at(
    epoch: float,
    *,
    schedule: Literal["fixed", "cosine", "linear"],
    K0: int = 128,
    K_f: int = 4,
    t_alpha: float = 40,
    T: float = 300,
) -> int:
    """Number of k-means clusters at ``epoch`` for R2O's region-to-object curriculum.

    * ``fixed``: ``K0`` always.
    * ``cosine``: ``K0`` for ``t < t_alpha``, then ``K_f + (K0 − K_f) · cos(π/2 · (t − t_alpha)/(T − t_alpha))``.
      R2O's eq. (A1) prints the cosine argument inverted (``2(t − t_α)/((T − t_α)π)``), which would never
      reach K_f; this is the public code's version, which does go from K0 at t_alpha to K_f at T.
    * ``linear``: ``K0 + (K_f − K0) · (t − t_alpha)/(T − t_alpha)`` after ``t_alpha`` (R2O appendix
      scheduler ablation: 72.2 vs 72.1 mIoU for cosine).

    R2O Table 9 compares these curricula: fixed K, object-to-region (``K0 < K_f``, e.g. 4 → 128, the same
    formula) and region-to-object (128 → 4, the default). Progress is clamped at T, the result truncated
    to an integer like the public scheduler (``int(k)`` in ``get_num_segments``), which gives the paper's
    K = 119 at epoch 100 and 74 at epoch 200 (R2O Fig. 5; rounding to nearest would give 120 and 75), and
    clamped to ``[min(K0, K_f), max(K0, K_f)]``.
    """
    _check(K0 >= 1 and K_f >= 1, f"K0 and K_f must be >= 1, got K0={K0}, K_f={K_f}")
    _check(epoch >= 0, f"epoch must be >= 0, got {epoch}")
    if schedule == "fixed" or epoch < t_alpha:
        return int(K0)
    span = T - t_alpha
    progress = 1.0 if span <= 0 else min(1.0, (epoch - t_alpha) / span)
    if schedule == "cosine":
        value = K_f + (K0 - K_f) * math.cos(math.pi / 2.0 * progress)
    elif schedule == "linear":
        value = K0 + (K_f - K0) * progress
    else:
        raise ValueError(f"unknown K schedule {schedule!r}; choose 'fixed', 'cosine' or 'linear'")
    k = int(math.floor(value + 1e-9))  # cos(π/2) ≈ 6e-17: 4 → 128 must end at 128, not 127
    return max(min(K0, K_f), min(max(K0, K_f), k))


def k_lr_scale(K: int, reference: int = 16) -> float:
    """Learning-rate factor ``K / reference`` (R2O A.1: "the learning rate is scaled by K(t)"; the
    public code multiplies by K(t)/16). An option the engine applies when ``lr_scale_by_k`` is set."""
    _check(reference >= 1, f"reference must be >= 1, got {reference}")
    return K / reference
