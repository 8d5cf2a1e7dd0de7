"""MLP heads: BYOL projector g and predictor q (R2O §4: "2 layer MLPs with BN after the hidden layer")."""

from __future__ import annotations

from torch import Tensor, nn

from discorep.models.backbones import NORMS, convert_norm


class MLP(nn.Module):
    """Linear → norm → ReLU → Linear on (N, D) or (B, M, D) inputs.

    `norm`: "bn" (BatchNorm1d, the BYOL head), "syncbn", "gn" (GroupNorm per sample, batch-split
    independent; same rule as `convert_norm`) or "none".
    """

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256, norm: str = "bn"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
        if min(in_dim, hidden_dim, out_dim) <= 0:
            raise ValueError(f"MLP dims must be positive, got in={in_dim} hidden={hidden_dim} out={out_dim}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
        convert_norm(self.net, norm)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim not in (2, 3) or x.shape[-1] != self.in_dim:
            raise ValueError(f"MLP expects (N, {self.in_dim}) or (B, M, {self.in_dim}); got {tuple(x.shape)}")
        lead = x.shape[:-1]
        # BatchNorm1d wants (N, C): flatten (B, M) so statistics cover every mask of the batch.
        y = self.net(x.reshape(-1, self.in_dim))
        return y.reshape(*lead, self.out_dim)
