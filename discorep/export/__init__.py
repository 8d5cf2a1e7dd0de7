"""Export the online backbone of a pretraining checkpoint for torchvision, timm, detectron2 or mmseg.

How to load each export (`f` is the written file):

* torchvision (ResNets): `torchvision.models.resnet50().load_state_dict(torch.load(f), strict=True)`.
  The `fc` is an all-zero placeholder so that strict=True works: replace it with your head
  (`model.fc = nn.Linear(2048, n)`) or train it. The features equal the trained online backbone's.
* timm: `timm.create_model(name, pretrained=False).load_state_dict(torch.load(f), strict=True)` with
  name the checkpoint's model.arch (resnet18 / resnet50 / swin_tiny_patch4_window7_224 for swin_t /
  vit_small_patch16_224 for vit_s / any other timm name as it is); the classifier (`fc` or `head`) is the
  same zero placeholder, and layers the encoder drops after its deepest level (e.g. EfficientNet's
  conv_head) hold timm's initialisation (seed 0), untrained.
* detectron2 (ResNets; the file must end in .pkl): `MODEL.WEIGHTS f.pkl`, and because the weights are
  torchvision-style (stride in the 3x3 conv, RGB input, ImageNet mean/std in 0..255):
  `MODEL.RESNETS.STRIDE_IN_1X1 False`, `INPUT.FORMAT RGB`, `MODEL.PIXEL_MEAN [123.675, 116.28, 103.53]`,
  `MODEL.PIXEL_STD [58.395, 57.12, 57.375]`; for resnet18 also `MODEL.RESNETS.DEPTH 18`,
  `MODEL.RESNETS.RES2_OUT_CHANNELS 64`.
* mmseg (ResNets): backbone `type="ResNet"` (not ResNetV1c: the stem is torchvision's), `style="pytorch"`,
  `init_cfg=dict(type="Pretrained", checkpoint=f, prefix="backbone.")`, or `load_from=f` for the whole
  segmentor (keys are under `backbone.`).

With `protocol` (`discorep export --write-config [--protocol NAME]`), detectron2 and mmseg exports also get a
ready fine-tuning config beside the file, with those settings and the protocol's schedule
(`toolkit_configs.py`).

A GroupNorm backbone (model.norm "gn", 32 groups on every ResNet width) loads the same way once the
model is built with GroupNorm: torchvision `norm_layer=lambda c: nn.GroupNorm(32, c)`, detectron2
`MODEL.RESNETS.NORM GN`, mmseg `norm_cfg=dict(type="GN", num_groups=32)`.
"""

from __future__ import annotations

import io
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor

from discorep.checkpoint import CheckpointError, eval_weights, load_checkpoint, upgrade_checkpoint
from discorep.errors import UsageError
from discorep.export.converters import CONVERTERS
from discorep.export.toolkit_configs import config_path, resolve_protocol, toolkit_config
from discorep.fileio import atomic_write
from discorep.models.backbones import ARCHS, known_arch

__all__ = ["TARGETS", "export_backbone", "online_backbone", "placeholder_note"]

TARGETS = tuple(CONVERTERS)
_PREFIX = "backbone."  # of the evaluated encoder: its FPN (fpn.*) and the projector are dropped


def _model_config(state: dict, checkpoint: Path) -> dict:
    config = state.get("config")
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or not known_arch(model.get("arch")):
        raise CheckpointError(f"{checkpoint}: its config names no known architecture (config.model.arch must be a "
                              f"timm model name or one of {', '.join(ARCHS)}); "
                              "pass a file from runs/<name>/checkpoints/")
    return model


def _random_backbone(spec: str) -> tuple[OrderedDict[str, Tensor], str, str]:
    """The `random:<arch>[:<seed>]` baseline's backbone: the very weights `eval` measures as the baseline."""
    from discorep.eval.backbone import load_model

    model = load_model(spec)
    # Plain contiguous tensors, as a checkpoint's: eval's CPU model is channels-last (strides only).
    weights = OrderedDict((k, v.contiguous()) for k, v in model.encoder.backbone.state_dict().items())
    return weights, model.arch, model.model_config.get("norm", "bn")


def online_backbone(checkpoint: str | os.PathLike) -> tuple[OrderedDict[str, Tensor], str, str]:
    """(backbone weights of the online encoder, arch, norm) of a pretraining checkpoint or `random:<arch>`.

    Only the evaluated (online) encoder is read: the target, discovery network, predictor, FPN and
    projector stay behind.
    """
    if str(checkpoint).startswith("random:"):
        return _random_backbone(str(checkpoint))
    checkpoint = Path(checkpoint)
    state = upgrade_checkpoint(load_checkpoint(checkpoint))  # weights_only: never executes code from the file
    if not isinstance(state.get("method"), dict):
        raise CheckpointError(f"{checkpoint}: not a discorep pretraining checkpoint (no network weights); "
                              "pass a file from runs/<name>/checkpoints/")
    model = _model_config(state, checkpoint)
    encoder = eval_weights(state, "encoder")
    backbone = OrderedDict((k[len(_PREFIX):], v) for k, v in encoder.items() if k.startswith(_PREFIX))
    if not backbone:
        raise CheckpointError(f"{checkpoint}: the evaluated encoder has no '{_PREFIX}*' weights")
    return backbone, model["arch"], model.get("norm", "bn")


def _serialise(payload: dict, to: str) -> bytes:
    buffer = io.BytesIO()
    if to == "detectron2":
        # detectron2 reads a .pkl with plain pickle (numpy arrays), not torch.load
        pickle.dump(payload, buffer, protocol=4)
    else:
        torch.save(payload, buffer)
    return buffer.getvalue()


def placeholder_note(to: str) -> str:
    """What a user must do with the export's zero classifier (empty for toolkits without one)."""
    if to in ("torchvision", "timm"):
        return ("the classifier (fc / head) in the file is an all-zero placeholder so that strict loading works: "
                "replace it with your own head (e.g. model.fc = nn.Linear(in_features, n_classes)) or train it")
    return ""


def export_backbone(*, checkpoint: str | os.PathLike, to: str, out: str | os.PathLike,
                    protocol: str | None = None) -> Path:
    """Write the online backbone of `checkpoint` in `to`'s format to `out` (atomically); returns `out`.

    With `protocol` (detectron2: coco_1x_d2 | coco_1x_tpu; mmseg: voc_fcn_30k | cityscapes_fcn) a ready
    fine-tuning config for that transfer protocol is written beside it too, at
    `toolkit_configs.config_path(out, to)`, naming the weights by their absolute path.

    Raises UsageError (a ValueError) for an unknown `to`, an unsupported arch/target pair, a
    detectron2 file not named *.pkl or a protocol `to` does not have, and CheckpointError for a file that
    is not a pretraining checkpoint or cannot be written. See the module docstring for how each toolkit
    loads the result.
    """
    if to not in CONVERTERS:
        raise UsageError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    out = Path(out)
    if to == "detectron2" and out.suffix != ".pkl":
        raise UsageError(f"--out {out}: detectron2 only reads *.pkl files as pickled weights; name it {out.stem}.pkl")
    if protocol is not None:
        resolve_protocol(to, protocol)  # refused before anything is read or written
    backbone, arch, norm = online_backbone(checkpoint)
    try:
        payload = CONVERTERS[to](backbone, arch, norm)
        # the config text is built before any file is written: an unsupported arch leaves nothing behind
        config = None if protocol is None else toolkit_config(to, arch=arch, norm=norm, weights=out.resolve(),
                                                                protocol=protocol)
    except ValueError as err:
        raise UsageError(f"{checkpoint}: {err}") from err
    _write(out, memoryview(_serialise(payload, to)))
    if config is not None:
        _write(config_path(out, to), config.encode())
    return out


def _write(path: Path, data: bytes | memoryview) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
    except OSError as err:
        raise CheckpointError(f"could not write {path}: {err.strerror or err} "
                              "(an earlier file there is unchanged)") from err
