"""Map label maps between frames: one-hot masks resampled into a view's grid with RoIAlign.

A label map `(h, w)` covers a *frame box* in original-image pixels (the whole image for priors and
the raw view, the spanning box for Odin's v0). A view covers its own box, resized to the grid and
then possibly flipped (docs/architecture.md, "Coordinate conventions"). Odin §3.1 obtains the views'
masks "by simply cropping, flipping, and resizing" v0's masks; here that is one batched
`torchvision.ops.roi_align` over the one-hot masks, which gives each grid cell (approximately) the
fraction of its area covered by each mask. When a cell is smaller than a label pixel (upsampling,
e.g. Odin's 14×14 v0 labels into a small view), values are bilinear interpolations of the one-hot:
boundaries are soft over one label pixel, and their argmax is the nearest-neighbour mask.

Memory: the one-hot tensor is B·M·h·w float32 (e.g. 64 images × 128 masks × 224² ≈ 1.6 GB), plus
the B·M·gh·gw output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import roi_align

from discorep import hostsync


class LabelIdError(ValueError):
    """A label map holds an id outside [-1, num_masks)."""


class AlignInputError(ValueError):
    """Shapes, dtypes, devices or boxes passed to `align_masks` are inconsistent."""


@dataclass
class AlignedMasks:
    """`soft[b, m]`: area fraction of each grid cell covered by mask m; `present[b, m]`: enough area."""

    soft: Tensor  # (B, M, gh, gw) float
    present: Tensor  # (B, M) bool


def labels_to_onehot(labels: Tensor, num_masks: int) -> Tensor:
    """(B, h, w) int ids in [-1, num_masks) → (B, M, h, w) float32 one-hot; id −1 gives all zeros."""
    if labels.dim() != 3 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise AlignInputError(f"labels must be an integer tensor (B, h, w), got {labels.dtype} {tuple(labels.shape)}")
    if isinstance(num_masks, bool) or not isinstance(num_masks, int) or num_masks < 1:
        raise AlignInputError(f"num_masks must be a positive int, got {num_masks!r}")
    # The range check reads two values back: free on CPU, a host-device sync per call on a GPU, where it
    # is skipped (label maps there come from the library's own k-means or its checked prior cache).
    if labels.numel() and hostsync.reads_are_free(labels):
        lo, hi = int(labels.min()), int(labels.max())
        if lo < -1 or hi >= num_masks:
            raise LabelIdError(f"label ids must lie in [-1, {num_masks}) (−1 = no label), found [{lo}, {hi}]; "
                               f"pass num_masks > {hi} or relabel the map")
    labels = labels.long()
    valid = labels >= 0
    onehot = torch.zeros(labels.shape[0], num_masks, *labels.shape[1:], device=labels.device)
    # Scatter 1 at each pixel's id; "no label" pixels scatter 0 into channel 0 (a no-op).
    onehot.scatter_(1, labels.clamp(min=0).unsqueeze(1), valid.unsqueeze(1).float())
    return onehot


def _grid_size(grid: int | tuple[int, int]) -> tuple[int, int]:
    size = (grid, grid) if isinstance(grid, int) else tuple(grid)
    if len(size) != 2 or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in size):
        raise AlignInputError(f"grid must be a positive int or a pair (gh, gw) of them, got {grid!r}")
    return int(size[0]), int(size[1])


def _check_boxes(name: str, boxes: Tensor, batch: int) -> Tensor:
    if boxes.shape != (batch, 4):
        raise AlignInputError(f"{name} must have shape ({batch}, 4) (x0, y0, x1, y1), got {tuple(boxes.shape)}")
    return boxes.float()


def _rois(frame_boxes: Tensor, view_boxes: Tensor, h: int, w: int) -> Tensor:
    """View boxes in the label map's pixel coordinates, as (B, 5) rows (batch index, x0, y0, x1, y1)."""
    fx0, fy0, fx1, fy1 = frame_boxes.unbind(1)
    if hostsync.reads_are_free(frame_boxes) and bool(((fx1 <= fx0) | (fy1 <= fy0)).any()):
        raise AlignInputError("every frame box needs x1 > x0 and y1 > y0")
    sx = w / (fx1 - fx0)
    sy = h / (fy1 - fy0)
    vx0, vy0, vx1, vy1 = view_boxes.unbind(1)
    coords = torch.stack([(vx0 - fx0) * sx, (vy0 - fy0) * sy, (vx1 - fx0) * sx, (vy1 - fy0) * sy], dim=1)
    index = torch.arange(frame_boxes.shape[0], device=coords.device, dtype=coords.dtype)
    return torch.cat([index[:, None], coords], dim=1)


def align_masks(labels: Tensor, frame_boxes: Tensor, view_boxes: Tensor, view_flips: Tensor,
                grid: int | tuple[int, int], num_masks: int, *, min_cells: float = 0.5) -> AlignedMasks:
    """Resample a label map covering `frame_boxes` into the `grid` of views covering `view_boxes`.

    labels (B, h, w) int64 with ids in [-1, num_masks); boxes (B, 4) float original-image pixels;
    view_flips (B,) bool. Returns soft masks (B, M, gh, gw): per cell, the (approximate) fraction of its
    area covered by each mask; cells outside the frame get 0 (RoIAlign replicates the border for half a
    label pixel). `present[b, m]` is `soft[b, m].sum() >= min_cells` (in grid cells).
    """
    return align_masks_views(labels, frame_boxes, [view_boxes], [view_flips], grid, num_masks,
                             min_cells=min_cells)[0]


def align_masks_views(labels: Tensor, frame_boxes: Tensor, view_boxes: list[Tensor], view_flips: list[Tensor],
                      grid: int | tuple[int, int], num_masks: int, *, min_cells: float = 0.5) -> list[AlignedMasks]:
    """`align_masks` for several views of the same label maps: one one-hot, one RoIAlign call."""
    if not isinstance(labels, Tensor):
        raise AlignInputError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    gh, gw = _grid_size(grid)
    onehot = labels_to_onehot(labels, num_masks)
    return align_onehot_views(onehot, frame_boxes, view_boxes, view_flips, (gh, gw), min_cells=min_cells)


def align_onehot_views(onehot: Tensor, frame_boxes: Tensor, view_boxes: list[Tensor], view_flips: list[Tensor],
                       grid: tuple[int, int], *, min_cells: float = 0.5) -> list[AlignedMasks]:
    """Align (B, M, h, w) masks (one-hot or any non-negative weights) into several views at once."""
    B, M, h, w = onehot.shape
    gh, gw = grid
    device = onehot.device
    frame_boxes = _check_boxes("frame_boxes", frame_boxes, B).to(device)
    flips = []
    for f in view_flips:
        f = f.to(device=device, dtype=torch.bool).reshape(-1)
        if f.shape != (B,):
            raise AlignInputError(f"view_flips must have shape ({B},), got {tuple(f.shape)}")
        flips.append(f)
    if B == 0:
        empty = AlignedMasks(onehot.new_zeros(0, M, gh, gw), torch.zeros(0, M, dtype=torch.bool, device=device))
        return [empty for _ in view_boxes]
    rois = torch.cat([_rois(frame_boxes, _check_boxes("view_boxes", vb, B).to(device), h, w) for vb in view_boxes])
    # aligned=True: pixel (i, j) covers [j, j+1) × [i, i+1), the box convention. sampling_ratio=0 takes
    # ceil(bin size) samples per bin and axis: at least one per label pixel, so the bilinear samples
    # average to the cell's area fraction when downsampling (exact when bins are whole pixels).
    soft_all = roi_align(onehot, rois, output_size=(gh, gw), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    out = []
    for soft, flip in zip(soft_all.split(B), flips):
        soft = torch.where(flip[:, None, None, None], soft.flip(-1), soft)
        out.append(AlignedMasks(soft=soft, present=soft.sum(dim=(-2, -1)) >= min_cells))
    return out


def hard_masks(soft: Tensor) -> Tensor:
    """(B, M, gh, gw) soft masks → 0/1 masks: each cell goes to its argmax mask; empty cells stay 0."""
    if soft.dim() != 4:
        raise AlignInputError(f"soft masks must be (B, M, gh, gw), got shape {tuple(soft.shape)}")
    winner = soft.argmax(dim=1, keepdim=True)
    hard = torch.zeros_like(soft).scatter_(1, winner, 1.0)
    covered = soft.amax(dim=1, keepdim=True) > 0
    return hard * covered
