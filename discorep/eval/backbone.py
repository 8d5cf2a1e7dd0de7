"""Load the network to evaluate: a pretraining checkpoint's online encoder, or `random:<arch>`.

Evaluation never imports training code (`methods/`, `engine/`): a checkpoint is read as plain state
dicts plus the config it was trained with; its "eval_branch" says where the evaluated network (the
online one) is in the method's weights (older checkpoints: `checkpoint.upgrade_checkpoint`). After
pretraining only the online network is kept (Odin §3.1); its projector g is kept too because Odin A.4
clusters FPN projections z.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discorep.checkpoint import CheckpointError, eval_weights, load_checkpoint, load_weights, upgrade_checkpoint
from discorep.data.views import IMAGENET_MEAN, IMAGENET_STD
from discorep.errors import UsageError
from discorep.models.backbones import ARCHS, Encoder, known_arch, supports_fpn
from discorep.models.heads import MLP

RANDOM_SEED = 0  # the fixed seed of every `random:<arch>` baseline


@dataclass
class EvalModel:
    encoder: Encoder
    projector: nn.Module | None
    arch: str
    source: str
    model_config: dict

    def to(self, device: torch.device | str) -> EvalModel:
        self.encoder.to(device)
        if torch.device(device).type == "cpu":
            # oneDNN's own layout: 0.73-0.92x (ResNet-18) and 0.73-0.82x (ResNet-50) forward time at
            # 224 px on a 2-core AVX2 EPYC (docs/performance.md); features equal up to float rounding.
            # Not on GPUs: not measured there.
            self.encoder.to(memory_format=torch.channels_last)
        if self.projector is not None:
            self.projector.to(device)
        return self


def _random_model(arch: str, seed: int = RANDOM_SEED) -> EvalModel:
    if not known_arch(arch):
        raise CheckpointError(f"random:{arch}: unknown architecture; a timm model name or one of {', '.join(ARCHS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        multi_scale = supports_fpn(arch)
        encoder = Encoder(arch, fpn=multi_scale)
    cfg = {"arch": arch, "fpn": multi_scale, "fpn_dim": 256, "norm": "bn"}
    name = f"random:{arch}" if seed == RANDOM_SEED else f"random:{arch}:{seed}"
    return EvalModel(encoder.eval(), None, arch, name, cfg)


def _parse_random(spec: str) -> tuple[str, int]:
    """`random:<arch>` (seed 0) or `random:<arch>:<seed>` (another draw of the initial weights)."""
    parts = spec.split(":")
    if len(parts) == 2:
        return parts[1], RANDOM_SEED
    if len(parts) == 3 and parts[2].isdigit():
        return parts[1], int(parts[2])
    raise CheckpointError(f"--checkpoint {spec}: expected random:<arch> or random:<arch>:<seed> (e.g. random:resnet18:1)")


def _checkpoint_model(path: Path) -> EvalModel:
    state = upgrade_checkpoint(load_checkpoint(path))
    if not isinstance(state.get("method"), dict) or "config" not in state:
        raise CheckpointError(f"{path}: not a discorep pretraining checkpoint (no network weights/config); "
                              "pass a file from runs/<name>/checkpoints/ or random:<arch>")
    m = state["config"].get("model", {}) if isinstance(state["config"], dict) else {}
    if not known_arch(m.get("arch")):
        raise CheckpointError(f"{path}: its config names no known model.arch ({m.get('arch')!r}); "
                              f"expected a timm model name or one of {', '.join(ARCHS)}")
    encoder = Encoder(m["arch"], fpn=m.get("fpn", False), fpn_dim=m.get("fpn_dim", 256), norm=m.get("norm", "bn"))
    load_weights(encoder, eval_weights(state, "encoder"), what=f"{m['arch']} encoder", path=path,
                 hint="the file's weights come from another architecture than its config says")
    projector = None
    proj_state = eval_weights(state, "projector")
    if proj_state:
        projector = _projector_from_state(proj_state, m)
    return EvalModel(encoder.eval(), projector, m["arch"], str(path), dict(m))


def _projector_from_state(proj_state: dict, m: dict) -> nn.Module | None:
    """Rebuild the projector g from its weights (its input width depends on the pooled feature)."""
    linears = [v for k, v in proj_state.items() if k.endswith("weight") and v.dim() == 2]
    if len(linears) != 2:
        return None
    hidden, in_dim = linears[0].shape
    out_dim = linears[1].shape[0]
    norm = "none" if m.get("norm") == "gn" else "bn"
    projector = MLP(in_dim, hidden, out_dim, norm=norm)
    try:
        projector.load_state_dict(proj_state, strict=True)
    except RuntimeError:
        return None
    return projector.eval()


def load_model(spec: str | Path, device: torch.device | str = "cpu") -> EvalModel:
    """`random:<arch>` (fixed seed 0), `random:<arch>:<seed>`, or a pretraining checkpoint path."""
    spec = str(spec)
    if spec.startswith("random:"):
        return _random_model(*_parse_random(spec)).to(device)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint {spec}: no such file (or use random:<arch>, e.g. random:resnet18)")
    return _checkpoint_model(path).to(device)


def normalize_images(x: Tensor) -> Tensor:
    """(B, 3, H, W) floats in [0, 1] → ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def resize_for_eval(image: Tensor, size: int) -> Tensor:
    """(3, H, W) float [0, 1] → (3, size, size), bicubic + antialias, clamped."""
    return F.interpolate(image[None], size=(size, size), mode="bicubic", antialias=True,
                         align_corners=False)[0].clamp(0, 1)
