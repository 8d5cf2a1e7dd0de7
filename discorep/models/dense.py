"""Dense features: one stage's (B, D, h, w) map of a network, each vector optionally projected.

The one extraction used by the methods (Odin's discovery network, R2O's region features, mask
pictures) and by every evaluation. It runs without gradients and with the network in eval mode: an
image's features then depend only on the image and the weights, not on the rest of its batch.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from discorep.errors import UsageError
from discorep.models.backbones import Encoder
from discorep.models.modes import eval_mode


def project_vectors(projector: nn.Module, h: Tensor) -> Tensor:
    """g applied to each vector of a (B, C, h, w) map (Odin §3.1): (B, D, h, w)."""
    B, _, gh, gw = h.shape
    z = projector(h.flatten(2).transpose(1, 2))
    return z.transpose(1, 2).reshape(B, -1, gh, gw)


def _takes_width(projector: nn.Module, width: int) -> bool:
    first = next(p for p in projector.parameters() if p.dim() == 2)
    return first.shape[1] == width


@torch.no_grad()
@record_function("discorep/discovery_forward")
def dense_features(net: Any, x: Tensor, feature: str, project: bool | Literal["fpn"] = False,
                   project_dtype: torch.dtype | None = None) -> Tensor:
    """(B, D, h, w) float features `feature` ("c4", "c5", "fpn") of `net` (anything with an ``encoder``
    and a ``projector``: a method's branch, an evaluation model) for normalised images `x`.

    project: True applies the projector g to every vector (Odin §3.1: discovery clusters z = g(h));
    "fpn" only to FPN features, and only when the net has a projector of their width (Odin A.4: "with
    FPN, we use the projections z": what evaluation does); False returns the hidden vectors h.
    project_dtype: run the projector under autocast to this dtype (e.g. bfloat16: Odin's per-vector
    projector is its largest discovery cost); None keeps the surrounding precision.
    """
    encoder, projector = net.encoder, getattr(net, "projector", None)
    modules = [m for m in (encoder, projector) if isinstance(m, nn.Module)]
    with eval_mode(*modules):
        # Our Encoder stops after the stage `feature` needs; other encoders (a user's module) get the plain call.
        out = encoder(x, up_to=feature) if isinstance(encoder, Encoder) else encoder(x)
        if feature not in out:
            source = getattr(net, "source", type(encoder).__name__)
            raise UsageError(f"features '{feature}' are not available for {source} (available: {', '.join(sorted(out))})")
        h = out[feature]
        if project == "fpn":
            project = feature == "fpn" and projector is not None and _takes_width(projector, h.shape[1])
        if project:
            # enabled=False would switch off a surrounding bf16 autocast (train.precision): no context then
            cast = torch.autocast(h.device.type, dtype=project_dtype) if project_dtype else contextlib.nullcontext()
            with cast:
                h = project_vectors(projector, h)
    return h.float()
