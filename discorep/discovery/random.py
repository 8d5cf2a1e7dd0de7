"""Counter-based random numbers: each image's draws depend only on its own seed.

A torch.Generator is one stream shared by the whole batch, so image b's draws would depend on which
images precede it — and a 2-process run (batch b per process) would then segment and sample masks
differently from 1 process with batch 2b. Hashing (seed, counter) instead gives every image its own
reproducible stream, vectorised over the batch. The hash is Wellons' "lowbias32" on 32-bit values
held in int64 (only the low 32 bits of each product are kept, so int64 wrap-around is harmless).
"""

from __future__ import annotations

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF


def hash32(x: Tensor) -> Tensor:
    """lowbias32 on int64 tensors holding values in [0, 2^32)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def image_seeds(base_seed: int, image_ids: Tensor, salt: int = 0) -> Tensor:
    """(B,) int64 per-image seeds from a run-level seed (e.g. of the step) and dataset indices."""
    run = hash32(torch.as_tensor((base_seed ^ (salt * 0x9E3779B9)) & _MASK32, dtype=torch.int64))
    # Add (not xor) a differently-salted image hash so seed == id never cancels out.
    return hash32(run + hash32(image_ids.to(torch.int64) ^ 0x5BD1E995))


def uniform(seeds: Tensor, n: int, counter: int = 0) -> Tensor:
    """(B, n) floats in [0, 1): the `counter`-th draw of n numbers from each image's stream."""
    stream = hash32(seeds.to(torch.int64) + ((counter * 0x9E3779B9 + 0x7F4A7C15) & _MASK32))
    idx = torch.arange(n, device=seeds.device, dtype=torch.int64)
    bits = hash32(hash32(stream[:, None] ^ ((idx[None, :] * 0x27D4EB2F) & _MASK32)) + 0x165667B1)
    return (bits >> 8).to(torch.float32) / float(1 << 24)
