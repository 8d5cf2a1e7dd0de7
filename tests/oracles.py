"""Reference implementations the tests compare the library against; nothing in `discorep` uses them.

Each is the literal, slow form of something the package computes another way: the explicit one-hot
RoIAlign (`align_masks` scatter-adds from the ids instead), R2O's pooled k-means as a one-problem
batch, the k-NN argmax, Odin's discrete-update schedule, and an all-gather that passes gradients.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torchvision.ops import roi_align

from discorep.discovery.align import AlignedMasks, _check_boxes, _check_flips, _check_labels, _finish, _rois
from discorep.discovery.kmeans import KMeansResult, batched_kmeans
from discorep.eval.knn import CHUNK_ROWS, knn_scores


# ------------------------------------------------------------------------------------------ align
def labels_to_onehot(labels: Tensor, num_masks: int) -> Tensor:
    """(B, h, w) int ids in [-1, num_masks) → (B, M, h, w) float32 one-hot; id −1 gives all zeros."""
    labels = _check_labels(labels, num_masks)
    valid = labels >= 0
    onehot = torch.zeros(labels.shape[0], num_masks, *labels.shape[1:], device=labels.device)
    # Scatter 1 at each pixel's id; "no label" pixels scatter 0 into channel 0 (a no-op).
    onehot.scatter_(1, labels.clamp(min=0).unsqueeze(1), valid.unsqueeze(1).float())
    return onehot


def align_onehot_views(onehot: Tensor, frame_boxes: Tensor, view_boxes: list[Tensor], view_flips: list[Tensor],
                       grid: tuple[int, int], *, min_cells: float = 0.5) -> list[AlignedMasks]:
    """Align (B, M, h, w) masks (one-hot or any non-negative weights) into several views at once, by the
    literal `torchvision.ops.roi_align` call that `align_masks` avoids."""
    B, M, h, w = onehot.shape
    gh, gw = grid
    device = onehot.device
    frame_boxes = _check_boxes("frame_boxes", frame_boxes, B).to(device)
    flips = _check_flips(view_flips, B, device)
    if B == 0:
        empty = AlignedMasks(onehot.new_zeros(0, M, gh, gw), torch.zeros(0, M, dtype=torch.bool, device=device))
        return [empty for _ in view_boxes]
    rois = torch.cat([_rois(frame_boxes, _check_boxes("view_boxes", vb, B).to(device), h, w) for vb in view_boxes])
    # aligned=True: pixel (i, j) covers [j, j+1) × [i, i+1), the box convention. sampling_ratio=0 takes
    # ceil(bin size) samples per bin and axis: at least one per label pixel, so the bilinear samples
    # average to the cell's area fraction when downsampling (exact when bins are whole pixels).
    soft_all = roi_align(onehot, rois, output_size=(gh, gw), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    return [_finish(soft, flip, min_cells) for soft, flip in zip(soft_all.split(B), flips)]


# ----------------------------------------------------------------------------------------- k-means
def pooled_kmeans(x: Tensor, K: int, valid: Tensor | None = None, **kwargs) -> KMeansResult:
    """R2O mode: one k-means over all N points (e.g. every region embedding of a device's batch).

    x: (N, D), valid: (N,) bool or None; keyword arguments as `batched_kmeans`. Returns labels (N,),
    centroids (K, D), inertia () (scalar tensor), n_iter.
    """
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"x must be an (N, D) tensor, got {getattr(x, 'shape', type(x))}")
    if valid is not None and (not isinstance(valid, Tensor) or valid.shape != x.shape[:1]):
        raise ValueError(f"valid must have shape (N,) = ({x.shape[0]},), "
                         f"got {getattr(valid, 'shape', type(valid))}")
    res = batched_kmeans(x.unsqueeze(0), K, None if valid is None else valid.unsqueeze(0), **kwargs)
    return KMeansResult(res.labels[0], res.centroids[0], res.inertia[0], res.n_iter)


# -------------------------------------------------------------------------------------------- eval
def knn_classify(train_f: Tensor, train_y: Tensor, test_f: Tensor, k: int = 20, temperature: float = 0.07,
                 num_classes: int | None = None, chunk_rows: int = CHUNK_ROWS) -> Tensor:
    """(M,) int64 predicted class of each test row (argmax of `knn_scores`)."""
    return knn_scores(train_f, train_y, test_f, k, temperature, num_classes, chunk_rows).argmax(dim=1)


# ---------------------------------------------------------------------------------------- schedules
def discrete_update_due(epoch: float, every_epochs: int) -> bool:
    """Odin's discrete discovery updates: λτ = 1 every ``every_epochs`` epochs, 0 otherwise (Odin §3.2).

    Call at the start of epoch ``epoch`` (0-based count of completed epochs): True at positive whole
    multiples of ``every_epochs`` (the discovery network starts as a copy, so epoch 0 needs no copy).
    """
    if every_epochs < 1:
        raise ValueError(f"every_epochs must be >= 1, got {every_epochs}")
    if epoch <= 0 or epoch != int(epoch):
        return False
    return int(epoch) % every_epochs == 0


# ------------------------------------------------------------------------------------- distributed
class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: gather + cat along dim 0. Backward: this rank's slice of the summed gradient.

    Every rank's loss may depend on every slice, so d(Σ_r L_r)/dx_rank = Σ_r (dL_r/dcat)[rank slice].
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        from discorep.losses.distributed import _gather_padded, _gather_sizes

        sizes = _gather_sizes(x)
        rank = dist.get_rank()
        ctx.start = sum(sizes[:rank])
        ctx.stop = ctx.start + sizes[rank]
        return _gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start:ctx.stop]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenation over ranks along dim 0 that passes gradients back to each rank's own slice."""
    if not (dist.is_available() and dist.is_initialized()):
        return x
    if x.ndim > 7 or x.ndim == 0:
        raise ValueError(f"all_gather supports 1 to 7 dims, got shape {tuple(x.shape)}")
    return _AllGatherWithGrad.apply(x)
