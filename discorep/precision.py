"""Numerically sensitive code runs in float32 whatever autocast the caller has on.

Under `train.precision: bf16|fp16` the engine wraps the step in `torch.autocast`, which would also
run k-means distance matmuls and the contrastive logits in half precision: with bf16's 8-bit
mantissa k-means co-assignments agreed with fp32 only ~91 % of the time (issue 12), about as much as
changing the seed. `full_precision` switches autocast off (CPU and CUDA) for one function; its inputs
are cast to float32 by the function itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import ExitStack
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)

_DEVICE_TYPES = ("cpu", "cuda")


def no_autocast() -> ExitStack:
    """A context in which autocast is off on every device type (float32 stays float32)."""
    stack = ExitStack()
    for device_type in _DEVICE_TYPES:
        stack.enter_context(torch.autocast(device_type, enabled=False))
    return stack


def full_precision(fn: F) -> F:
    """Decorator: run `fn` with autocast disabled (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with no_autocast():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
