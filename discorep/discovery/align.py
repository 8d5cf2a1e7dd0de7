"""Map label maps between frames: one-hot masks resampled into a view's grid with RoIAlign.

A label map `(h, w)` covers a *frame box* in original-image pixels (the whole image for priors and
the raw view, the spanning box for Odin's v0). A view covers its own box, resized to the grid and
then possibly flipped (docs/architecture.md, "Coordinate conventions"). Odin §3.1 obtains the views'
masks "by simply cropping, flipping, and resizing" v0's masks; here that is RoIAlign
(`torchvision.ops.roi_align` semantics) of the one-hot masks, which gives each grid cell (approximately) the
fraction of its area covered by each mask. When a cell is smaller than a label pixel (upsampling,
e.g. Odin's 14×14 v0 labels into a small view), values are bilinear interpolations of the one-hot:
boundaries are soft over one label pixel, and their argmax is the nearest-neighbour mask.

Label maps are aligned without building that one-hot (`_align_labels`): each RoIAlign sample adds its
four bilinear weights to the ids of its four corner pixels (a scatter-add), which is the same sum RoIAlign
computes over the one-hot channels (equal to float rounding; tests/discovery/test_align.py checks it against
`roi_align` itself). Work and memory are then independent of the number of masks M: about
B·(h + 2·gh)·(w + 2·gw) samples per view instead of the B·M·h·w float32 one-hot (64 images × 100 SLIC
regions × 224² ≈ 1.2 GiB) that a literal RoIAlign call needs (the tests keep that call as their oracle,
`tests/oracles.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from discorep import hostsync


from discorep.errors import AlignInputError, LabelIdError  # noqa: F401,E402 (re-export)


@dataclass
class AlignedMasks:
    """`soft[b, m]`: area fraction of each grid cell covered by mask m; `present[b, m]`: enough area."""

    soft: Tensor  # (B, M, gh, gw) float
    present: Tensor  # (B, M) bool


def _check_labels(labels: Tensor, num_masks: int) -> Tensor:
    """Validated (B, h, w) int64 ids in [-1, num_masks)."""
    if not isinstance(labels, Tensor):
        raise AlignInputError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
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
    return labels.long()


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
    """`align_masks` for several views of the same label maps (RoIAlign's result, without the one-hot)."""
    labels = _check_labels(labels, num_masks)
    gh, gw = _grid_size(grid)
    B, h, w = labels.shape
    device = labels.device
    frame_boxes = _check_boxes("frame_boxes", frame_boxes, B).to(device)
    flips = _check_flips(view_flips, B, device)
    out = []
    for vb, flip in zip(view_boxes, flips):
        rois = _rois(frame_boxes, _check_boxes("view_boxes", vb, B).to(device), h, w)
        # Passed on directly (no variable keeps the unflipped copy alive while the next view is aligned).
        out.append(_finish(_align_labels(labels, num_masks, rois, (gh, gw)) if B
                           else torch.zeros(0, num_masks, gh, gw, device=device), flip, min_cells))
    return out


def _check_flips(view_flips: list[Tensor], batch: int, device: torch.device) -> list[Tensor]:
    flips = []
    for f in view_flips:
        f = f.to(device=device, dtype=torch.bool).reshape(-1)
        if f.shape != (batch,):
            raise AlignInputError(f"view_flips must have shape ({batch},), got {tuple(f.shape)}")
        flips.append(f)
    return flips


def _finish(soft: Tensor, flip: Tensor, min_cells: float) -> AlignedMasks:
    soft = torch.where(flip[:, None, None, None], soft.flip(-1), soft)
    return AlignedMasks(soft=soft, present=soft.sum(dim=(-2, -1)) >= min_cells)


def _axis_samples(start: Tensor, length: Tensor, cells: int, size: int, max_per_cell: int):
    """RoIAlign's sample positions along one axis and their bilinear corners, per roi.

    Mirrors torchvision's kernel (aligned=True, sampling_ratio=0): ceil(length / cells) samples per cell
    at (i + 0.5)/n of the cell, positions beyond [-1, size] weigh nothing, others are clamped into the
    map. Returns (low index, high index, low weight, high weight), each (R, cells, max_per_cell); the
    weights of unused sample slots (i >= n) are 0, and `n` (R,) for the average.
    """
    bin_size = length / cells
    n = bin_size.ceil().clamp(min=0, max=max_per_cell)
    i = torch.arange(max_per_cell, device=start.device, dtype=start.dtype)
    cell = torch.arange(cells, device=start.device, dtype=start.dtype)
    n_ = n[:, None, None]
    pos = start[:, None, None] + cell[None, :, None] * bin_size[:, None, None] \
        + (i[None, None, :] + 0.5) * bin_size[:, None, None] / n_.clamp(min=1)
    used = (i[None, None, :] < n_) & (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor().clamp(max=size - 1)
    last = low >= size - 1  # the kernel's last-row rule: no high neighbour, all weight on `low`
    frac = torch.where(last, 0.0, pos - low)
    high = torch.where(last, low, low + 1)
    w_low, w_high = (1 - frac) * used, frac * used
    return low.long(), high.long(), w_low, w_high, n


def _align_labels(labels: Tensor, num_masks: int, rois: Tensor, grid: tuple[int, int]) -> Tensor:
    """`roi_align(labels_to_onehot(labels), rois, grid, sampling_ratio=0, aligned=True)` from the ids.

    Every sample's four bilinear weights are scatter-added to the ids of its four corner pixels. Slots per
    cell are bounded by the label map (a view inside its frame never needs more); a larger box is
    sampled at that bound, which still averages its cells' areas.
    """
    B, h, w = labels.shape
    gh, gw = grid
    R = rois.shape[0]
    x0, y0 = rois[:, 1] - 0.5, rois[:, 2] - 0.5  # aligned=True: half-pixel offset
    y_low, y_high, wy_low, wy_high, n_y = _axis_samples(y0, (rois[:, 4] - 0.5) - y0, gh, h, -(-h // gh) + 1)
    x_low, x_high, wx_low, wx_high, n_x = _axis_samples(x0, (rois[:, 3] - 0.5) - x0, gw, w, -(-w // gw) + 1)
    count = (n_y * n_x).clamp(min=1)
    flat = labels.reshape(-1)
    base = rois[:, 0].long() * (h * w)
    cell = (torch.arange(gh, device=labels.device)[:, None, None, None] * gw
            + torch.arange(gw, device=labels.device)[None, None, :, None])  # (gh, 1, gw, 1)
    out = torch.zeros(R, (num_masks + 1) * gh * gw, device=labels.device)
    for yi, wy in ((y_low, wy_low), (y_high, wy_high)):
        for xi, wx in ((x_low, wx_low), (x_high, wx_high)):
            pixel = base[:, None, None, None, None] + yi[:, :, :, None, None] * w + xi[:, None, None, :, :]
            ids = flat[pixel]
            del pixel  # in-place from here on: the peak stays at two int64 samples-sized tensors
            ids.masked_fill_(ids < 0, num_masks)  # "no label" goes to a discarded extra channel
            ids.mul_(gh * gw).add_(cell)
            weight = wy[:, :, :, None, None] * wx[:, None, None, :, :]
            out.scatter_add_(1, ids.reshape(R, -1), weight.reshape(R, -1))
            del ids, weight
    out = out.view(R, num_masks + 1, gh, gw)[:, :num_masks]
    return out / count[:, None, None, None]


def hard_masks(soft: Tensor) -> Tensor:
    """(B, M, gh, gw) soft masks → 0/1 masks: each cell goes to its argmax mask; empty cells stay 0."""
    if soft.dim() != 4:
        raise AlignInputError(f"soft masks must be (B, M, gh, gw), got shape {tuple(soft.shape)}")
    winner = soft.argmax(dim=1, keepdim=True)
    hard = torch.zeros_like(soft).scatter_(1, winner, 1.0)
    covered = soft.amax(dim=1, keepdim=True) > 0
    return hard * covered
