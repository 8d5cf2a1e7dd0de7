"""Segments cached between discrete discovery-network updates (Odin §3.1, A.5).

Memory: one int16 label map per image seen, i.e. N · h · w · 2 bytes (ImageNet at a 112² grid:
~32 GB — use a coarser grid or a continuous schedule there). The cache is saved in checkpoints so a
resumed run uses exactly the segments the interrupted one would have.
"""

from __future__ import annotations

import torch
from torch import Tensor

from discorep import hostsync


class SegmentCache:
    def __init__(self) -> None:
        self.labels: dict[int, Tensor] = {}
        self.version = 0  # number of discovery-network copies the cached segments belong to

    def clear(self) -> None:
        self.labels.clear()
        self.version += 1

    def missing(self, indices: list[int]) -> list[int]:
        return [i for i, idx in enumerate(indices) if idx not in self.labels]

    def store(self, indices: list[int], labels: Tensor) -> None:
        # Checked where the read-back is free (CPU); on GPUs the ids are < method.K <= 32767 by config.
        if hostsync.reads_are_free(labels) and labels.numel() and labels.max() > torch.iinfo(torch.int16).max:
            raise ValueError("segment ids exceed int16; the cache cannot hold them")
        for idx, lab in zip(indices, labels.to("cpu", torch.int16)):
            self.labels[idx] = lab.clone()

    def lookup(self, indices: list[int], device: torch.device) -> Tensor:
        return torch.stack([self.labels[i] for i in indices]).to(device=device, dtype=torch.long)

    def state_dict(self) -> dict:
        keys = sorted(self.labels)
        stacked = torch.stack([self.labels[k] for k in keys]) if keys else torch.zeros(0, dtype=torch.int16)
        return {"indices": torch.tensor(keys, dtype=torch.long), "labels": stacked, "version": self.version}

    def load_state_dict(self, state: dict) -> None:
        self.labels = {int(i): lab.clone() for i, lab in zip(state["indices"], state["labels"])}
        self.version = int(state["version"])
