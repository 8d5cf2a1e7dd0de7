"""align_masks / hard_masks / labels_to_onehot: hand-computed cases, an avg-pool oracle, and the
geometric invariant (masks aligned from any frame match the object rasterised in the view)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

from discorep.data.views import ViewConfig, ViewSampler, crop_to_view
from discorep.discovery.align import (AlignedMasks, AlignInputError, LabelIdError, align_masks, align_masks_views,
                                      hard_masks)
from tests.float_criteria import assert_equal_except_near_ties
from tests.oracles import align_onehot_views, labels_to_onehot

# 4x4 label map; grid 2 over the whole map makes each cell exactly 2x2 label pixels.
LABELS = torch.tensor([[0, 0, 1, 1],
                       [0, -1, 1, 1],
                       [2, 2, 2, 1],
                       [2, 2, 2, -1]])
# Hand-computed area fractions per cell for masks 0..3 (mask 3 never occurs).
EXPECTED = torch.tensor([[[0.75, 0.0], [0.0, 0.0]],
                         [[0.0, 1.0], [0.0, 0.25]],
                         [[0.0, 0.0], [1.0, 0.5]],
                         [[0.0, 0.0], [0.0, 0.0]]])
EXPECTED_HARD = torch.tensor([[[1.0, 0.0], [0.0, 0.0]],
                              [[0.0, 1.0], [0.0, 0.0]],
                              [[0.0, 0.0], [1.0, 1.0]],
                              [[0.0, 0.0], [0.0, 0.0]]])


pytestmark = pytest.mark.usefixtures("one_thread")


def test_onehot_hand_case():
    onehot = labels_to_onehot(LABELS[None], 4)
    assert onehot.shape == (1, 4, 4, 4) and onehot.dtype == torch.float32
    assert onehot[0, :, 1, 1].sum() == 0 and onehot[0, :, 3, 3].sum() == 0  # id -1: no mask
    assert torch.equal(onehot[0].argmax(0)[LABELS >= 0], LABELS[LABELS >= 0])
    assert onehot[0, 3].sum() == 0 and onehot.sum() == (LABELS >= 0).sum()


def test_align_hand_case_with_frames_and_flip():
    # Sample 0: frame = view = the 4x4 map 1:1. Sample 1: the same map covers an 8x8 box elsewhere in
    # the image (0.5 label pixels per image pixel) and the view is that box, flipped.
    labels = torch.stack([LABELS, LABELS])
    frames = torch.tensor([[0.0, 0.0, 4.0, 4.0], [10.0, 20.0, 18.0, 28.0]])
    flips = torch.tensor([False, True])
    out = align_masks(labels, frames, frames.clone(), flips, 2, 4)
    assert isinstance(out, AlignedMasks) and out.soft.shape == (2, 4, 2, 2)
    torch.testing.assert_close(out.soft[0], EXPECTED)
    torch.testing.assert_close(out.soft[1], EXPECTED.flip(-1))
    assert out.present.tolist() == [[True, True, True, False]] * 2
    assert torch.equal(hard_masks(out.soft)[0], EXPECTED_HARD)
    assert torch.equal(hard_masks(out.soft)[1], EXPECTED_HARD.flip(-1))


def test_align_sub_box_and_present_threshold():
    frame = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    # Top-left 2x2 pixels at grid 2: one cell per pixel, so soft is exactly the one-hot there.
    out = align_masks(LABELS[None], frame, torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([False]), 2, 4)
    torch.testing.assert_close(out.soft[0], labels_to_onehot(LABELS[None, :2, :2], 4)[0])
    # Mask 0 covers 3 cells; it is present at min_cells 3 and absent at 3.5.
    assert align_masks(LABELS[None], frame, frame, torch.tensor([False]), 4, 4, min_cells=3).present[0, 0]
    assert not align_masks(LABELS[None], frame, frame, torch.tensor([False]), 4, 4, min_cells=3.5).present[0, 0]
    # Rectangular grid (gh, gw) = (1, 2) over the top half: left = {0,0,0,-1}, right = all 1.
    out = align_masks(LABELS[None], frame, torch.tensor([[0.0, 0.0, 4.0, 2.0]]), torch.tensor([False]), (1, 2), 4)
    torch.testing.assert_close(out.soft[0, :, 0], torch.tensor([[0.75, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))


def test_view_outside_frame_is_empty():
    frame = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    out = align_masks(LABELS[None], frame, torch.tensor([[6.0, 0.0, 10.0, 4.0]]), torch.tensor([False]), 2, 4)
    assert out.soft.abs().sum() == 0 and not out.present.any()


def test_align_matches_avg_pool_oracle():
    # Integer boxes whose size is a multiple of the grid: each cell is whole label pixels, so the
    # area fraction is exactly average pooling of the cropped one-hot.
    g = torch.Generator().manual_seed(0)
    B, M, h, w, gh, gw = 6, 5, 20, 24, 3, 4
    labels = torch.randint(-1, M, (B, h, w), generator=g)
    onehot = labels_to_onehot(labels, M)
    views, expected = [], []
    flips = torch.rand(B, generator=g) < 0.5
    for b in range(B):
        ky, kx = (int(v) for v in torch.randint(1, 5, (2,), generator=g))
        y0 = int(torch.randint(0, h - gh * ky + 1, (), generator=g))
        x0 = int(torch.randint(0, w - gw * kx + 1, (), generator=g))
        views.append([x0, y0, x0 + gw * kx, y0 + gh * ky])
        pooled = F.avg_pool2d(onehot[b, :, y0:y0 + gh * ky, x0:x0 + gw * kx], (ky, kx))
        expected.append(pooled.flip(-1) if flips[b] else pooled)
    frames = torch.tensor([[0.0, 0.0, float(w), float(h)]]).expand(B, 4)
    out = align_masks(labels, frames, torch.tensor(views, dtype=torch.float32), flips, (gh, gw), M)
    torch.testing.assert_close(out.soft, torch.stack(expected), atol=1e-5, rtol=0)
    hard = hard_masks(out.soft)
    covered = out.soft.sum(1) > 0
    assert torch.equal(hard.sum(1), covered.float())  # one mask per covered cell, none elsewhere
    assert torch.equal(out.present, out.soft.sum((-2, -1)) >= 0.5)


@pytest.mark.parametrize("case", ["downsample", "upsample", "edges"])
def test_label_alignment_equals_roi_align_on_the_one_hot(case):
    # The oracle: torchvision's roi_align over the explicit one-hot (what align_onehot_views runs).
    g = torch.Generator().manual_seed({"downsample": 0, "upsample": 1, "edges": 2}[case])
    B, M = 12, 7
    h, w, grid = {"downsample": (40, 52, (3, 5)), "upsample": (6, 5, (14, 14)), "edges": (17, 23, (4, 4))}[case]
    labels = torch.randint(-1, M, (B, h, w), generator=g)
    frames = torch.rand(B, 2, generator=g) * 30
    frames = torch.cat([frames, frames + torch.tensor([w * 3.0, h * 3.0]) * (0.5 + torch.rand(B, 1, generator=g))], 1)
    size = frames[:, 2:] - frames[:, :2]
    if case == "edges":  # boxes flush with the frame, thin boxes, and a whole-frame box
        lo = torch.rand(B, 2, generator=g) * torch.tensor([[0.0, 0.5]])
        hi = 1 - torch.rand(B, 2, generator=g) * torch.tensor([[0.5, 0.0]])
        lo[0], hi[0] = 0.0, 1.0
        hi[1] = lo[1] + 0.01
    else:  # random sub-pixel boxes anywhere inside the frame
        a, b = torch.rand(B, 2, generator=g), torch.rand(B, 2, generator=g)
        lo, hi = torch.minimum(a, b), torch.maximum(a, b).clamp(min=torch.minimum(a, b) + 0.05)
    # Third view: the frame shifted by a fifth of its size, so part of it lies outside the label map.
    views = [torch.cat([frames[:, :2] + lo * size, frames[:, :2] + hi * size], 1), frames.clone(),
             frames + 0.2 * size.repeat(1, 2) * torch.tensor([1.0, -1.0, 1.0, -1.0])]
    flips = [torch.rand(B, generator=g) < 0.5, torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)]
    got = align_masks_views(labels, frames, views, flips, grid, M, min_cells=0.3)
    want = align_onehot_views(labels_to_onehot(labels, M), frames, views, flips, grid, min_cells=0.3)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.soft, b.soft, atol=2e-6, rtol=0)
        # present thresholds a float sum that the two paths round differently: equal except where the
        # oracle's sum lies within the soft tolerance, summed over the grid, of min_cells.
        tie = 2e-6 * grid[0] * grid[1]
        assert_equal_except_near_ties(a.present, b.present, (b.soft.sum((-2, -1)) - 0.3).abs(), tie, "present")
    assert all(a.soft.sum() > 0 for a in got)


def test_hard_masks_empty_cells_stay_zero():
    soft = torch.zeros(1, 3, 2, 2)
    soft[0, 1, 0, 0], soft[0, 2, 0, 0] = 0.2, 0.7
    soft[0, 0, 1, 1] = 0.1
    hard = hard_masks(soft)
    assert hard[0, :, 0, 0].tolist() == [0, 0, 1] and hard[0, :, 1, 1].tolist() == [1, 0, 0]
    assert hard[0, :, 0, 1].sum() == 0 and hard[0, :, 1, 0].sum() == 0


def test_bad_inputs_raise_named_errors():
    frame = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    no = torch.tensor([False])
    with pytest.raises(LabelIdError, match="num_masks"):
        align_masks(LABELS[None], frame, frame, no, 2, 2)  # id 2 with num_masks 2
    with pytest.raises(LabelIdError):
        labels_to_onehot(torch.full((1, 2, 2), -2), 3)
    with pytest.raises(AlignInputError, match="integer"):
        align_masks(LABELS[None].float(), frame, frame, no, 2, 4)
    with pytest.raises(AlignInputError, match="frame_boxes"):
        align_masks(LABELS[None], frame[:, :3], frame, no, 2, 4)
    with pytest.raises(AlignInputError, match="x1 > x0"):
        align_masks(LABELS[None], torch.tensor([[4.0, 0.0, 4.0, 4.0]]), frame, no, 2, 4)
    with pytest.raises(AlignInputError, match="grid"):
        align_masks(LABELS[None], frame, frame, no, 0, 4)
    assert issubclass(LabelIdError, ValueError) and issubclass(AlignInputError, ValueError)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_align_on_cuda_matches_cpu():
    frames = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    cpu = align_masks(LABELS[None], frames, frames, torch.tensor([True]), 3, 4)
    gpu = align_masks(LABELS[None].cuda(), frames.cuda(), frames.cuda(), torch.tensor([True]).cuda(), 3, 4)
    torch.testing.assert_close(gpu.soft.cpu(), cpu.soft)


# ---------------------------------------------------------------- geometric invariant
H, W = 301, 437
CX, CY, R = 300.3, 140.7, 62.0  # a disk right of centre, so left crops miss it


def _disk(h: int, w: int, box: tuple[float, float, float, float]) -> torch.Tensor:
    """The disk rasterised on an (h, w) grid covering `box`, by testing each pixel centre."""
    x0, y0, x1, y1 = box
    xs = x0 + (torch.arange(w, dtype=torch.float64) + 0.5) * (x1 - x0) / w
    ys = y0 + (torch.arange(h, dtype=torch.float64) + 0.5) * (y1 - y0) / h
    return ((xs[None] - CX) ** 2 + (ys[:, None] - CY) ** 2 <= R * R).long()


def _disk_hits_box(box: torch.Tensor) -> bool:
    x0, y0, x1, y1 = box.tolist()
    nx, ny = min(max(CX, x0), x1), min(max(CY, y0), y1)
    return (nx - CX) ** 2 + (ny - CY) ** 2 < R * R


def test_geometric_invariant_all_frames_and_grids():
    full = _disk(H, W, (0, 0, W, H))
    pixels = np.full((H, W, 3), 40, np.uint8)
    pixels[full.numpy() == 1] = (220, 60, 30)
    cfg = ViewConfig(size=112, spanning_size=224, jitter_p=0, gray_p=0, blur_p=(0, 0), solarize_p=(0, 0))
    sampler = ViewSampler(cfg)
    outs = [sampler(Image.fromarray(pixels), seed=s) for s in range(48)]
    span_boxes = torch.stack([o["span_box"] for o in outs])
    sources = {  # name -> (labels (B, h, w), frame boxes (B, 4))
        "full": (full.expand(len(outs), H, W), torch.tensor([[0.0, 0.0, W, H]]).expand(len(outs), 4)),
        "reduced": (_disk(76, 110, (0, 0, W, H)).expand(len(outs), 76, 110),
                    torch.tensor([[0.0, 0.0, W, H]]).expand(len(outs), 4)),
        "span": (torch.stack([crop_to_view(full, o["span_box"], 224, False, InterpolationMode.NEAREST_EXACT)
                              for o in outs]), span_boxes),
    }
    checked = flipped = absent = 0
    for v in (1, 2):
        boxes = torch.stack([o[f"box{v}"] for o in outs])
        flips = torch.stack([o[f"flip{v}"] for o in outs])
        hits = [_disk_hits_box(b) for b in boxes]
        for grid in (112, 56, 14):
            # Reference: the full-resolution object cropped/resized/flipped like the image itself.
            ref = torch.stack([crop_to_view(full[None].float(), o[f"box{v}"], grid, o[f"flip{v}"],
                                            InterpolationMode.BILINEAR)[0] > 0.5 for o in outs])
            for name, (labels, frames) in sources.items():
                aligned = align_masks(labels, frames, boxes, flips, grid, 2)
                obj = hard_masks(aligned.soft)[:, 1] > 0
                for b in range(len(outs)):
                    if not hits[b]:
                        assert not aligned.present[b, 1], (name, grid, b)
                        absent += 1
                    elif ref[b].float().mean() >= 0.05:
                        iou = (obj[b] & ref[b]).sum() / (obj[b] | ref[b]).sum()
                        assert iou >= 0.9, (name, grid, v, b, float(iou))
                        assert aligned.present[b, 1]
                        checked += 1
                        flipped += int(flips[b])
    # The invariant was exercised on flipped and un-flipped views, and on views missing the object.
    assert checked > 100 and flipped > 30 and absent > 10
