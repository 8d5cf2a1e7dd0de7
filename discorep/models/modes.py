"""One eval-mode switch for every "look" at a network (pictures, probes, discovery, evaluation).

A look must not change training state: BN layers in train mode would update their running statistics
(and SyncBN would issue a collective from whichever ranks happen to look). Every submodule's own flag is
restored afterwards, so a module deliberately kept in eval mode inside a training one stays so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put `modules` (recursively) in eval mode; restore each submodule's previous mode on exit."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training
