"""`data.labelmaps.resize_nearest`: the one label-map resizer equals torch's "nearest-exact", any dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from discorep.data.labelmaps import resize_nearest


@pytest.mark.parametrize("src, dst", [((7, 7), (480, 640)), ((14, 14), (333, 500)), ((56, 56), (20, 31)),
                                      ((1, 5), (7, 3)), ((224, 224), (56, 56))])
def test_equals_torch_nearest_exact_for_tensors_and_arrays(src, dst):
    labels = torch.randint(-1, 128, (2, *src), generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(labels[:, None].float(), size=dst, mode="nearest-exact")[:, 0].long()
    got = resize_nearest(labels, *dst)
    assert got.dtype == torch.int64 and torch.equal(got, expected)  # a batch (..., h, w) too
    arr = labels[0].numpy().astype(np.int32)
    out = resize_nearest(arr, *dst)
    assert out.dtype == np.int32 and np.array_equal(out, expected[0].numpy())


def test_ids_beyond_float32_precision_are_copied_exactly():
    labels = torch.tensor([[2**40 + 1, -1], [7, 2**53 - 1]])
    out = resize_nearest(labels, 4, 4)
    assert set(out.unique().tolist()) == {2**40 + 1, -1, 7, 2**53 - 1}
    assert resize_nearest(labels, 2, 2) is labels  # already that size
