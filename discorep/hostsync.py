"""Whether reading a tensor's value on the host is free (CPU) or a host-device sync (accelerators).

`bool(t)`, `t.item()`, `int(t.max())` on a CUDA tensor wait until every kernel queued before it has
run, so the host stops queueing work and the device idles between steps. The training step therefore
reads nothing back on accelerators: validity checks of tensors that the library itself produced
(label-id ranges, boxes, finite features) run where they are free, on CPU, and k-means reads
"converged?" back only every few iterations. Everything goes through `reads_are_free` so a test can
pretend to be on an accelerator and catch any read-back in the step (tests/engine/test_host_syncs.py).
"""

from __future__ import annotations

import torch


def reads_are_free(x: torch.Tensor | torch.device) -> bool:
    """True when `x` (a tensor or a device) lives on the CPU, where a value read-back costs nothing."""
    device = x.device if isinstance(x, torch.Tensor) else x
    return device.type == "cpu"
