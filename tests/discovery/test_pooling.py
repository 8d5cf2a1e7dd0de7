"""Mask pooling (Odin eq. 1) and mask-id sampling."""

from __future__ import annotations

import pytest
import torch

from discorep.discovery.pooling import mask_pool, sample_mask_ids


def naive_pool(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Reference: explicit loops over images and masks."""
    B, C = features.shape[:2]
    M = masks.shape[1]
    out = torch.zeros(B, M, C, dtype=torch.float64)
    for b in range(B):
        for m in range(M):
            w = masks[b, m].double()
            if w.sum() > 0:
                out[b, m] = (features[b].double() * w).sum((1, 2)) / w.sum()
    return out


def test_mask_pool_hand_computed() -> None:
    # One image, 1 channel, 2x2 grid with values [[1, 2], [3, 4]].
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    masks = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]],     # diagonal → (1 + 4) / 2
                           [[0.0, 0.0], [0.0, 0.0]],     # empty → 0, not NaN
                           [[0.5, 0.5], [0.0, 0.0]],     # soft top row → (0.5 + 1) / 1
                           [[1.0, 1.0], [1.0, 1.0]]]])   # global average pooling → 2.5
    out = mask_pool(f, masks)
    assert out.shape == (1, 4, 1)
    torch.testing.assert_close(out[0, :, 0], torch.tensor([2.5, 0.0, 1.5, 2.5]))


def test_mask_pool_matches_naive_loop_and_bool_masks() -> None:
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(3, 5, 6, 7, generator=gen)
    soft = torch.rand(3, 4, 6, 7, generator=gen) * (torch.rand(3, 4, 6, 7, generator=gen) < 0.5)
    soft[1, 2] = 0.0  # an empty mask
    torch.testing.assert_close(mask_pool(f, soft).double(), naive_pool(f, soft), rtol=1e-5, atol=1e-6)
    hard = soft > 0.3
    torch.testing.assert_close(mask_pool(f, hard).double(), naive_pool(f, hard.float()), rtol=1e-5, atol=1e-6)


def test_mask_pool_gradient_and_low_precision() -> None:
    gen = torch.Generator().manual_seed(1)
    f = torch.randn(2, 3, 4, 4, generator=gen, requires_grad=True)
    masks = torch.zeros(2, 2, 4, 4)
    masks[:, 0, :2] = 1.0  # top half: 8 cells
    mask_pool(f, masks)[:, 0].sum().backward()
    # d(mean over 8 cells)/d f = 1/8 inside the mask, 0 outside.
    expected = torch.zeros(2, 3, 4, 4)
    expected[:, :, :2] = 1 / 8
    torch.testing.assert_close(f.grad, expected)
    out = mask_pool(f.detach().bfloat16(), masks.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), mask_pool(f.detach(), masks), rtol=2e-2, atol=2e-2)


def _large_fpn_features() -> tuple[torch.Tensor, torch.Tensor]:
    """Odin's 56×56 FPN grid with |features| ≈ 25 and masks covering most of the view: an fp16 sum
    reaches 25 · 3136 ≈ 78 400 > 65 504 (fp16's largest value), the mean stays at ≈ 25."""
    gen = torch.Generator().manual_seed(2)
    f = 25.0 + torch.rand(2, 8, 56, 56, generator=gen)  # in [25, 26)
    f[:, 1] *= -1.0  # both signs
    masks = torch.zeros(2, 3, 56, 56)
    masks[:, 0, 4:, :] = 1.0  # 52 of 56 rows: 93 % of the view
    masks[:, 1] = torch.rand(2, 56, 56, generator=gen)  # soft weights over the whole view
    masks[:, 2, :10, :10] = 1.0  # a small mask: no overflow even in the old code
    return f, masks


@pytest.mark.parametrize("where", ["fp16 tensors", "fp16 autocast", "bf16 tensors"])
def test_mask_pool_accumulates_in_fp32_on_a_56x56_grid(where: str) -> None:
    """Issue 23 item 4: summing in fp16 gave inf for features of 25 on a 56×56 grid (bf16: lost bits).
    The result must be finite and equal the float32 pooling up to the output dtype's rounding, with
    finite gradients."""
    f, masks = _large_fpn_features()
    reference = mask_pool(f, masks)
    assert reference[:, 0].abs().min() > 24.9  # the means really are ≈ 25
    if where == "fp16 autocast":
        x = f.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.float16):
            out = mask_pool(x, masks)
        assert out.dtype == torch.float32  # the features' dtype: autocast does not bring fp16 back
    else:
        dtype = torch.float16 if where.startswith("fp16") else torch.bfloat16
        x = f.to(dtype).requires_grad_(True)
        out = mask_pool(x, masks.to(dtype))
        assert out.dtype == dtype
    assert torch.isfinite(out).all()
    eps = torch.finfo(out.dtype).eps
    # Inputs rounded to the dtype (rel. eps/2) and the mean rounded once (eps/2): within 2 eps · 26.
    torch.testing.assert_close(out.float(), reference, rtol=2 * eps, atol=0.0)
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all()
    # d(Σ_k h_k)/dh[i, j] = Σ_k m_k[i, j] / area_k (the same for every channel).
    expected = (masks / masks.sum((2, 3), keepdim=True)).sum(1, keepdim=True).expand_as(f)
    torch.testing.assert_close(x.grad.float(), expected, rtol=2 * eps, atol=1e-6)


@pytest.mark.parametrize(
    "features, masks, match",
    [
        (torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 8, 8), "align masks"),
        (torch.zeros(2, 3, 4, 4), torch.zeros(3, 5, 4, 4), "batch size"),
        (torch.zeros(3, 4, 4), torch.zeros(2, 5, 4, 4), "features must be"),
        (torch.zeros(2, 3, 4, 4), torch.zeros(5, 4, 4), "masks must be"),
    ],
)
def test_mask_pool_bad_input(features: torch.Tensor, masks: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mask_pool(features, masks)


def test_sample_ids_present_only_and_unique_when_enough() -> None:
    gen = torch.Generator().manual_seed(2)
    present = torch.rand(50, 12, generator=gen) < 0.6
    present[:, :5] = True  # at least 5 present per image
    ids = sample_mask_ids(present, 5, gen)
    assert ids.shape == (50, 5) and ids.dtype == torch.int64
    assert present.gather(1, ids).all()
    assert all(row.unique().numel() == 5 for row in ids)


def test_sample_ids_fills_with_replacement_and_empty_rows() -> None:
    present = torch.zeros(3, 8, dtype=torch.bool)
    present[0, [2, 6]] = True   # fewer present than samples
    present[1, 4] = True
    # row 2: nothing present
    ids = sample_mask_ids(present, 6, torch.Generator().manual_seed(3))
    assert set(ids[0].tolist()) == {2, 6}  # both present ones appear, nothing else
    assert sorted(ids[0, :2].tolist()) == [2, 6]  # all present ones come first
    assert (ids[1] == 4).all()
    assert (ids[2] == 0).all() and not present.gather(1, ids)[2].any()


def test_sample_ids_more_samples_than_masks() -> None:
    present = torch.ones(2, 3, dtype=torch.bool)
    ids = sample_mask_ids(present, 7, torch.Generator().manual_seed(4))
    assert ids.shape == (2, 7)
    assert all(sorted(row[:3].tolist()) == [0, 1, 2] for row in ids)
    assert ((ids >= 0) & (ids < 3)).all()


def test_sample_ids_deterministic() -> None:
    present = torch.rand(10, 9, generator=torch.Generator().manual_seed(5)) < 0.5
    a = sample_mask_ids(present, 4, torch.Generator().manual_seed(6))
    b = sample_mask_ids(present, 4, torch.Generator().manual_seed(6))
    c = sample_mask_ids(present, 4, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sample_ids_roughly_uniform() -> None:
    # 20000 images with masks {1, 3, 4, 7} present, draw 2 each: every present id has probability 1/2
    # of being chosen per image (without replacement), absent ids never.
    n = 20000
    present = torch.zeros(n, 8, dtype=torch.bool)
    present[:, [1, 3, 4, 7]] = True
    ids = sample_mask_ids(present, 2, torch.Generator().manual_seed(8))
    freq = torch.bincount(ids.flatten(), minlength=8).float() / n
    torch.testing.assert_close(freq[[1, 3, 4, 7]], torch.full((4,), 0.5), atol=0.02, rtol=0)
    assert freq[[0, 2, 5, 6]].sum() == 0
    # Replacement fill is uniform too: 3 present, 6 samples → 3 extra draws among them.
    present3 = torch.zeros(n, 5, dtype=torch.bool)
    present3[:, [0, 2, 4]] = True
    extra = sample_mask_ids(present3, 6, torch.Generator().manual_seed(9))[:, 3:]
    freq3 = torch.bincount(extra.flatten(), minlength=5).float() / extra.numel()
    torch.testing.assert_close(freq3[[0, 2, 4]], torch.full((3,), 1 / 3), atol=0.02, rtol=0)


@pytest.mark.parametrize(
    "present, num, match",
    [
        (torch.ones(2, 3), 2, "bool"),
        (torch.ones(3, dtype=torch.bool), 2, "present must be"),
        (torch.ones(2, 3, dtype=torch.bool), 0, "num_samples"),
        (torch.ones(2, 0, dtype=torch.bool), 1, "M = 0"),
    ],
)
def test_sample_ids_bad_input(present: torch.Tensor, num: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sample_mask_ids(present, num)
