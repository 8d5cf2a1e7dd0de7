"""The networks of `discorep transfer detect|segment`: torchvision detectors and segmenters on a pretrained ResNet.

* `load_backbone(checkpoint, weights)`: the ResNet weights to transfer, the online encoder's (as `eval` and
  `export` read it) or the EMA target's (SlotCon transfers the teacher), or `random:<arch>[:seed]`.
* `maskrcnn(...)`: torchvision Mask R-CNN (or Faster R-CNN) with an FPN. `norm="frozen"` is detectron2's
  default (FrozenBatchNorm2d in the ResNet, no norm in FPN and heads); "bn"/"syncbn" train batch norms in
  the ResNet, FPN and heads, like detectron2's SyncBN configs and torchvision's `maskrcnn_resnet50_fpn_v2`.
* `segmenter(...)`: a dilated ResNet with MoCo's FCN head (output stride 16) or DeepLabV3's (stride 8).

The weights always go strictly into a plain torchvision ResNet (a mismatch is one CheckpointError), which
then is used as it is, so the features at the ImageNet-normalised input equal `eval`'s backbone's.
"syncbn" only trains on GPUs: `check_norm_device` refuses it elsewhere (CPU runs take "bn" or "frozen").
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from discorep.checkpoint import CheckpointError, load_checkpoint, load_weights, upgrade_checkpoint
from discorep.data.views import IMAGENET_MEAN, IMAGENET_STD
from discorep.errors import UsageError
from discorep.export import online_backbone
from discorep.models.timm_backbones import TORCHVISION_RESNETS

__all__ = ["DETECTION_ARCHS", "HEADS", "NORMS", "WEIGHTS", "Backbone", "Segmenter", "check_norm_device",
           "load_backbone", "maskrcnn", "segmenter"]

DETECTION_ARCHS = TORCHVISION_RESNETS  # ("resnet18", "resnet50"): the torchvision ResNets the Encoder builds
NORMS = ("frozen", "bn", "syncbn")
WEIGHTS = ("online", "target")
HEADS = ("fcn", "deeplabv3")
FCN_CHANNELS, FCN_DILATION = 256, 6  # MoCo's FCN head, as R2O runs it
_BACKBONE = "backbone."  # of an encoder's keys: its FPN (fpn.*) stays behind
# torchvision's freezing order (`_resnet_fpn_extractor`): trainable_layers k trains the first k of these
_TRAIN_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")


@dataclass
class Backbone:
    """Weights to transfer: `state` has torchvision ResNet keys (no fc.*), float tensors on the CPU."""

    state: OrderedDict[str, Tensor]
    arch: str
    source: str  # the checkpoint path or "random:<arch>[:seed]"
    weights: str  # "online" | "target"


# ------------------------------------------------------------------------------------------ weights
def _check_arch(arch: str, source: str) -> None:
    if arch not in DETECTION_ARCHS:
        raise UsageError(f"{source}: architecture {arch!r} is not supported: transfer builds torchvision "
                         f"detectors on ResNets; use a checkpoint of one of {', '.join(DETECTION_ARCHS)}")


def _check_norm(norm: object, source: str) -> None:
    """A GroupNorm backbone has no running statistics: it would not fit a BatchNorm ResNet."""
    if norm not in ("bn", "syncbn"):
        raise UsageError(f"{source}: its backbone was trained with model.norm {norm!r}; transfer builds "
                         "BatchNorm ResNets and needs a checkpoint trained with model.norm bn or syncbn")


def _model_config(state: dict, path: Path) -> dict:
    config = state.get("config")
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(state.get("method"), dict) or not isinstance(model, dict):
        raise CheckpointError(f"{path}: not a discorep pretraining checkpoint (no network weights or model config); "
                              "pass a file from runs/<name>/checkpoints/")
    return model


def _target_prefix(state: dict, path: Path) -> str:
    """Where the EMA target's encoder is: the eval branch's encoder prefix with `online` swapped for `target`
    (every method keeps its target as `target`, an EMA copy of `online`: methods/base.py)."""
    online = (state.get("eval_branch") or {}).get("encoder")
    head, _, rest = online.partition(".") if isinstance(online, str) else ("", "", "")
    if head != "online":
        raise CheckpointError(f"{path}: its evaluated encoder is at {online!r}, not under 'online.', so its "
                              "target cannot be told; use weights online")
    return f"target.{rest}"


def _target_backbone(path: Path) -> tuple[OrderedDict[str, Tensor], str, object]:
    state = upgrade_checkpoint(load_checkpoint(path))  # weights_only: never executes code from the file
    model = _model_config(state, path)
    prefix = _target_prefix(state, path) + _BACKBONE
    weights = OrderedDict((k[len(prefix):], v) for k, v in state["method"].items() if k.startswith(prefix))
    if not weights:
        raise CheckpointError(f"{path}: holds no EMA target encoder (no '{prefix}*' weights); use weights online")
    return weights, model.get("arch"), model.get("norm", "bn")


def _random_arch(spec: str) -> str:
    parts = spec.split(":")
    return parts[1] if len(parts) > 1 else ""


def load_backbone(checkpoint: str | os.PathLike, weights: str = "online") -> Backbone:
    """The ResNet weights to transfer from a pretraining checkpoint or `random:<arch>[:seed]`.

    weights "online": the evaluated encoder's backbone (`export.online_backbone`: what `eval` and `export`
    read; for random: the very baseline `eval` measures); "target": the EMA target encoder's.
    Raises UsageError for an unknown `weights`, random: with "target", an arch outside DETECTION_ARCHS or
    a GroupNorm backbone; CheckpointError for a file that is no pretraining checkpoint or has no target.
    """
    if weights not in WEIGHTS:
        raise UsageError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    source = str(checkpoint)
    if source.startswith("random:"):
        if weights == "target":
            raise UsageError(f"{source}: a random baseline has no EMA target; use weights online")
        _check_arch(_random_arch(source), source)  # before building: random:vit_s would build a ViT
        state, arch, norm = online_backbone(source)
    elif weights == "online":
        state, arch, norm = online_backbone(checkpoint)
    else:
        state, arch, norm = _target_backbone(Path(checkpoint))
    _check_arch(arch, source)
    _check_norm(norm, source)
    return Backbone(OrderedDict(state), arch, source, weights)


# ------------------------------------------------------------------------------------------ ResNet
def _resolve(checkpoint: str | os.PathLike | Backbone, weights: str) -> Backbone:
    """A Backbone as given (its own `.weights` says which encoder it is), or loaded from `checkpoint`."""
    return checkpoint if isinstance(checkpoint, Backbone) else load_backbone(checkpoint, weights)


def _check_choice(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def _resnet(backbone: Backbone, norm: str) -> tuple[nn.Module, int]:
    """A torchvision ResNet holding `backbone.state` (loaded strictly), its fc and avgpool removed, and the
    number of tensors loaded. norm "frozen": FrozenBatchNorm2d (it has no num_batches_tracked to load)."""
    norm_layer = FrozenBatchNorm2d if norm == "frozen" else nn.BatchNorm2d
    net = getattr(torchvision.models, backbone.arch)(weights=None, norm_layer=norm_layer)
    own = net.state_dict()
    state = {k: v for k, v in backbone.state.items() if not (k.endswith(".num_batches_tracked") and k not in own)}
    # the file has no classifier: the ResNet's own fc completes the keys, so every other key is checked
    state.update({k: v for k, v in own.items() if k.startswith("fc.")})
    load_weights(net, state, what=f"{backbone.arch} backbone", path=backbone.source,
                 hint=f"the file's backbone is not a torchvision {backbone.arch}")
    loaded = len(state) - sum(k.startswith("fc.") for k in state)
    # Identity keeps every other key and leaves no parameter that never gets a gradient (DDP)
    net.fc, net.avgpool = nn.Identity(), nn.Identity()
    return net, loaded


def _dilate(net: nn.Module, dilate: tuple[bool, bool, bool]) -> None:
    """torchvision's `replace_stride_with_dilation` for layer2..4, in place and for both block types (its
    BasicBlock refuses dilation): a dilated layer's strided 3x3 conv and its shortcut get stride 1, the
    strided conv keeps the dilation before it, and every later 3x3 conv gets twice that (a trous: each
    conv then sees the pixels it saw on the strided grid). Bottleneck layers come out as torchvision's."""
    dilation = 1
    for i, flag in zip((2, 3, 4), dilate):
        if not flag:
            continue
        previous, dilation = dilation, dilation * 2
        convs = [m for m in getattr(net, f"layer{i}").modules() if isinstance(m, nn.Conv2d)]
        after_stride = False
        for conv in convs:
            if conv.kernel_size == (1, 1):  # the shortcut's stride; 1x1 convs have nothing to dilate
                conv.stride = (1, 1)
                continue
            d = dilation if after_stride else previous
            after_stride = after_stride or conv.stride != (1, 1)
            conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)


def _frozen_bn(bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    """The same normalisation with its statistics and affine parameters fixed (a frozen stage's norms)."""
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(frozen, name).copy_(getattr(bn, name))
    return frozen


def _freeze(net: nn.Module, trainable_layers: int) -> None:
    """torchvision's `trainable_backbone_layers` (k trains layer4 .. of _TRAIN_ORDER[:k]; 5 adds bn1): the
    other parameters stop training, and their batch norms become FrozenBatchNorm2d, so that their running
    statistics stay too (detectron2's FREEZE_AT does the same; torchvision would keep updating them)."""
    trained = (*_TRAIN_ORDER[:trainable_layers], *(("bn1",) if trainable_layers == 5 else ()))

    def is_trained(name: str) -> bool:
        return any(name == t or name.startswith(t + ".") for t in trained)

    for name, param in net.named_parameters():
        param.requires_grad_(is_trained(name))
    for name, module in list(net.named_modules()):
        if isinstance(module, nn.BatchNorm2d) and not is_trained(name):
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, child, _frozen_bn(module))


def _widths(net: nn.Module) -> list[int]:
    """C2..C5 channels of a torchvision ResNet (64..512 for ResNet-18, 256..2048 for ResNet-50)."""
    widths = []
    for i in range(1, 5):
        block = getattr(net, f"layer{i}")[-1]
        widths.append((block.conv3 if hasattr(block, "conv3") else block.conv2).out_channels)
    return widths


def _finish(model: nn.Module, norm: str, info: dict) -> nn.Module:
    if norm == "syncbn":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.discorep_transfer = info
    return model


def check_norm_device(norm: str, device: torch.device | str) -> None:
    """Refuse "syncbn" on a device torch's SyncBatchNorm cannot train on.

    In training mode under a process group (any world size, gloo included) torch raises "SyncBatchNorm
    expected input tensor to be on GPU ..." for CPU tensors: CPU runs need norm bn (or frozen).
    """
    _check_choice("norm", norm, NORMS)
    kind = torch.device(device).type
    if norm == "syncbn" and kind not in ("cuda", "hpu", "xpu", torch._C._get_privateuse1_backend_name()):
        raise UsageError(f"norm syncbn needs GPUs, got device {kind}: torch's SyncBatchNorm does not train on "
                         f"{kind} tensors; use norm bn (per-process batch statistics) or frozen")


# ------------------------------------------------------------------------------------------ detection
def _norm_heads(out_channels: int, masks: bool, mask_convs: int) -> dict:
    """detectron2's SyncBN heads / torchvision's v2: 2-conv RPN head, 4 conv + 1 fc box head, 4 conv mask
    head, batch norm after every head conv (the RPN head has none, as in both)."""
    anchors = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    heads = {"rpn_anchor_generator": anchors,
             "rpn_head": RPNHead(out_channels, anchors.num_anchors_per_location()[0], conv_depth=2),
             "box_head": FastRCNNConvFCHead((out_channels, 7, 7), [256] * 4, [1024], norm_layer=nn.BatchNorm2d)}
    if masks:
        heads["mask_head"] = MaskRCNNHeads(out_channels, [256] * mask_convs, 1, norm_layer=nn.BatchNorm2d)
    return heads


def maskrcnn(checkpoint: str | os.PathLike | Backbone, num_classes: int, *, norm: str = "frozen",
             trainable_layers: int = 3, masks: bool = True, weights: str = "online",
             min_size: int | tuple[int, ...] = (800,), max_size: int = 1333, heads: str = "auto",
             mask_head_convs: int = 4, **kwargs) -> nn.Module:
    """torchvision MaskRCNN (masks=False: FasterRCNN) with an FPN on the pretrained ResNet.

    Inputs follow torchvision: a list of float (3, H, W) images in [0, 1] (RGB); the model normalises them
    with ImageNet mean/std, as pretraining did. num_classes counts the background (categories + 1).
    trainable_layers 0..5 (torchvision's meaning, never changed). `weights` is ignored for a Backbone.
    heads: "norm" (BN in the FPN and heads: detectron2's SyncBN configs, torchvision's v2), "classic" (none:
    detectron2's default, torchvision's v1, ~4x cheaper box head), "auto" (norm unless norm is "frozen").
    mask_head_convs: 3x3 convs of 256 in the mask head (4: detectron2's ROI_MASK_HEAD.NUM_CONV; the mask
    head is most of a CPU iteration's cost, so the cpu preset takes 2).
    `kwargs` go to MaskRCNN/FasterRCNN. The returned model has `discorep_transfer`, a dict of what it holds.
    """
    _check_choice("heads", heads, ("auto", "norm", "classic"))
    normed = norm != "frozen" if heads == "auto" else heads == "norm"
    _check_choice("norm", norm, NORMS)
    _check_choice("trainable_layers", trainable_layers, tuple(range(6)))
    if not isinstance(num_classes, int) or num_classes < 2:
        raise UsageError(f"num_classes counts the background too (categories + 1), so it must be >= 2; "
                         f"got {num_classes!r}")
    backbone = _resolve(checkpoint, weights)
    net, loaded = _resnet(backbone, norm)
    _freeze(net, trainable_layers)
    body = BackboneWithFPN(net, {f"layer{i}": str(i - 1) for i in range(1, 5)}, _widths(net), 256,
                           extra_blocks=LastLevelMaxPool(), norm_layer=nn.BatchNorm2d if normed else None)
    if normed:
        head_modules = _norm_heads(body.out_channels, masks, mask_head_convs)
    elif masks and mask_head_convs != 4:
        head_modules = {"mask_head": MaskRCNNHeads(body.out_channels, [256] * mask_head_convs, 1)}
    else:
        head_modules = {}
    build = MaskRCNN if masks else FasterRCNN
    model = build(body, num_classes=num_classes, min_size=min_size, max_size=max_size,
                  image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), **head_modules, **kwargs)
    return _finish(model, norm, {"source": backbone.source, "arch": backbone.arch, "weights": backbone.weights,
                                 "norm": norm, "heads": "norm" if normed else "classic",
                                 "mask_head_convs": mask_head_convs if masks else 0,
                                 "trainable_layers": trainable_layers, "masks": masks,
                                 "backbone_keys_loaded": loaded})


# ------------------------------------------------------------------------------------------ segmentation
class Segmenter(nn.Module):
    """images float (B, 3, H, W) in [0, 1], not normalised -> logits float (B, num_classes, H, W).

    `backbone` is the torchvision ResNet (fc and avgpool are Identity), `head` maps its C5 to class logits,
    which are upsampled bilinearly to the input size.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Segmenter expects images (B, 3, H, W); got shape {tuple(images.shape)}")
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1((images - self.mean) / self.std))))
        x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
        return F.interpolate(self.head(x), size=images.shape[-2:], mode="bilinear", align_corners=False)


def _fcn_head(in_channels: int, num_classes: int) -> nn.Sequential:
    """MoCo's FCN head: two 3x3 convs (256 channels, dilation 6) with BN and ReLU, then a 1x1 classifier."""
    layers = []
    for c_in in (in_channels, FCN_CHANNELS):
        layers += [nn.Conv2d(c_in, FCN_CHANNELS, 3, padding=FCN_DILATION, dilation=FCN_DILATION, bias=False),
                   nn.BatchNorm2d(FCN_CHANNELS), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Conv2d(FCN_CHANNELS, num_classes, 1))


def segmenter(checkpoint: str | os.PathLike | Backbone, num_classes: int, *, head: str = "fcn", norm: str = "bn",
              weights: str = "online") -> Segmenter:
    """A dilated pretrained ResNet with a segmentation head; every layer trains.

    head "fcn": C5 dilated (output stride 16) + MoCo's FCN head; "deeplabv3": C4 and C5 dilated (output
    stride 8) + torchvision's DeepLabHead. norm sets the ResNet's norms ("frozen": FrozenBatchNorm2d);
    the new head always has batch norms (as MMSegmentation's and torchvision's heads do: a random head has
    no statistics to freeze), which "syncbn" converts with the ResNet's. `weights` is ignored for a Backbone.
    """
    _check_choice("head", head, HEADS)
    _check_choice("norm", norm, NORMS)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UsageError(f"num_classes must be a positive number of classes, got {num_classes!r}")
    backbone = _resolve(checkpoint, weights)
    dilation = (False, False, True) if head == "fcn" else (False, True, True)
    net, loaded = _resnet(backbone, norm)
    _dilate(net, dilation)
    c5 = _widths(net)[-1]
    decoder = _fcn_head(c5, num_classes) if head == "fcn" else DeepLabHead(c5, num_classes)
    return _finish(Segmenter(net, decoder), norm,
                   {"source": backbone.source, "arch": backbone.arch, "weights": backbone.weights, "norm": norm,
                    "head": head, "backbone_keys_loaded": loaded})
