"""The one nearest-neighbour resizer of label maps (priors, mask pictures, evaluation maps).

Sampling is at pixel centres, torch's "nearest-exact" (the box convention of docs/architecture.md). Ids
are copied, never interpolated, so every integer dtype (and -1 "no label") stays exact. Nearest
resampling is separable: a gather of source columns, then of source rows;
interpolating a whole 480×640 map as floats took ~16 ms (benchmarks/discover.py, docs/performance.md).
"""

from __future__ import annotations

import functools
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

LabelMap = TypeVar("LabelMap", torch.Tensor, np.ndarray)


@functools.lru_cache(maxsize=64)
def _source_index(size_in: int, size_out: int) -> np.ndarray:
    """Source index of every output position, asked of F.interpolate itself so rounding is identical."""
    src = torch.arange(size_in, dtype=torch.float64).view(1, 1, size_in)
    return F.interpolate(src, size=size_out, mode="nearest-exact")[0, 0].long().numpy()


def resize_nearest(labels: LabelMap, height: int, width: int) -> LabelMap:
    """(..., h, w) label map → (..., height, width); a tensor stays a tensor (same dtype and device), an
    array an array (same dtype). A map already of that size is returned as is."""
    h, w = labels.shape[-2:]
    if (h, w) == (height, width):
        return labels
    rows, cols = _source_index(h, height), _source_index(w, width)
    # Columns first, then whole rows: two gathers, the second copying contiguous rows (4x faster than
    # one 2-D fancy index for 224² → 480×640).
    if isinstance(labels, torch.Tensor):
        r, c = torch.from_numpy(rows).to(labels.device), torch.from_numpy(cols).to(labels.device)
        return labels.index_select(-1, c).index_select(-2, r)
    return labels[..., cols][..., rows, :]
