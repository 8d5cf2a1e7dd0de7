"""Ready fine-tuning configs for an export: detectron2 (Mask R-CNN, R-FPN) and MMSegmentation 1.x (FCN).

`discorep export --write-config [--protocol NAME]` writes one beside the weights, so that the settings
users of DetCon/R2O/MoCo exports most often get wrong are right from the start: SyncBN in the backbone,
FPN and heads; no frozen stage; stride in the 3x3 conv (torchvision-style ResNet); RGB input with the
ImageNet mean/std in the 0..255 scale; the ResNet depth and widths of the checkpoint; the protocol's
schedule. Every value taken from a paper or a toolkit names its source in a comment of the written file.

Protocols (names and defaults: `cliargs.CONFIG_PROTOCOLS`, torch-free, so that the CLI checks them first):

* detectron2 `coco_1x_d2`: detectron2's / MoCo's 1x (90k iterations x 16 images, lr 0.02, wd 1e-4,
  640..800 px multi-scale); `coco_1x_tpu`: DetCon's / Odin's / R2O's (1024 px, scale jitter 0.8..1.25,
  batch 64, lr 0.3, wd 4e-5, 12 epochs).
* mmseg `voc_fcn_30k`, `cityscapes_fcn`: MoCo's FCN as R2O (appendix A.2) runs it, 30k iterations x 16.

The detectron2 file is self-contained (no `_BASE_`): every key exists in detectron2's `config/defaults.py`
with the same type, which its yacs merge requires. The mmseg file is a plain Python config (no `_base_`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from discorep.cliargs import check_config_protocol
from discorep.data.views import IMAGENET_MEAN, IMAGENET_STD
from discorep.errors import UsageError
from discorep.export.converters import RESNETS

__all__ = ["CONFIG_SUFFIX", "PIXEL_MEAN", "PIXEL_STD", "config_path", "detectron2_config", "mmseg_config",
           "resolve_protocol", "toolkit_config"]

CONFIG_SUFFIX = {"detectron2": ".yaml", "mmseg": "_config.py"}
# The statistics discorep pretrains with (data/views.py), in the 0..255 scale both toolkits normalise in.
PIXEL_MEAN = [round(255 * m, 3) for m in IMAGENET_MEAN]  # [123.675, 116.28, 103.53]
PIXEL_STD = [round(255 * s, 3) for s in IMAGENET_STD]  # [58.395, 57.12, 57.375]

# Sources named in the comments of the written files.
D2_DEFAULTS = "detectron2 config/defaults.py"
D2_FPN = "detectron2 configs/Base-RCNN-FPN.yaml"
D2_SYNCBN = "detectron2 configs/Misc/mask_rcnn_R_50_FPN_3x_syncbn.yaml"
MOCO = "MoCo detection/configs (Base-RCNN-C4-BN.yaml, coco_R_50_C4_2x_moco.yaml)"
MMSEG = "mmseg 1.x configs"
MMSEG_769 = "mmseg configs/fcn/fcn-d6_r50-d16_4xb2-80k_cityscapes-769x769.py"
R2O = "R2O appendix A.2"
ODIN_A1, ODIN_A3, ODIN_BN = "Odin appendix A.1", "Odin appendix A.3", "Odin §3.2 (cross-replica BN)"
EXPORTED = "discorep's export: torchvision-style ResNet"


class V(NamedTuple):
    """A leaf of a config tree: its value and the source its comment names ("" for none)."""
    value: Any
    source: str = ""


class Expr(str):
    """Python source written as it is (a name defined earlier in the mmseg config)."""


def config_path(weights: str | Path, to: str) -> Path:
    """Where the config for `weights` goes: `<stem>.yaml` (detectron2) or `<stem>_config.py` (mmseg)."""
    weights = Path(weights)
    return weights.with_name(weights.stem + CONFIG_SUFFIX[to])


def resolve_protocol(to: str, protocol: str | None) -> str:
    """`protocol`, or `to`'s default when None; UsageError (one line) when `to` has no such protocol."""
    return check_config_protocol(to, True, protocol)


def _resnet(arch: str) -> tuple[int, int, int]:
    """(depth, res2 output width, res5 output width) of a torchvision ResNet: BasicBlocks (18) keep 64/512
    channels, Bottlenecks (50) expand them 4x."""
    if arch not in RESNETS:
        raise UsageError(f"--write-config supports {', '.join(RESNETS)} backbones, not {arch}")
    depth = int(arch.removeprefix("resnet"))
    return (depth, 64, 512) if depth < 50 else (depth, 256, 2048)


# ------------------------------------------------------------------------------------------ detectron2
_LSJ_NOTE = [
    "# INPUT approximates the papers' augmentation (R2O A.2, Odin A.1): they scale the LONGEST side to",
    "# u x 1024 (u uniform in [0.8, 1.25]) and crop/pad to 1024x1024, i.e. detectron2's",
    "# T.ResizeScale(0.8, 1.25, 1024, 1024) + T.FixedSizeCrop((1024, 1024)) in a custom mapper or LazyConfig.",
    "# yacs INPUT keys resize the SHORTEST side and run INPUT.CROP before the resize, so the range below",
    "# reproduces the longest side for COCO's usual 4:3 images and leaves the crop out."]


def _d2_schedule(protocol: str) -> dict:
    if protocol == "coco_1x_d2":
        return {
            "SOLVER": {
                "IMS_PER_BATCH": V(16, D2_FPN), "BASE_LR": V(0.02, D2_FPN + "; " + MOCO),
                "MOMENTUM": V(0.9, D2_DEFAULTS), "WEIGHT_DECAY": V(0.0001, D2_DEFAULTS),
                "STEPS": V([60000, 80000], "1x: " + D2_FPN), "MAX_ITER": V(90000, "1x: " + D2_FPN),
                "WARMUP_ITERS": V(1000, D2_DEFAULTS), "WARMUP_FACTOR": V(0.001, D2_DEFAULTS)},
            "INPUT": {
                "MIN_SIZE_TRAIN": V([640, 672, 704, 736, 768, 800], "multi-scale: " + D2_FPN),
                "MIN_SIZE_TRAIN_SAMPLING": V("choice", D2_DEFAULTS), "MAX_SIZE_TRAIN": V(1333, D2_DEFAULTS),
                "MIN_SIZE_TEST": V(800, D2_DEFAULTS), "MAX_SIZE_TEST": V(1333, D2_DEFAULTS)},
            "TEST": {"PRECISE_BN": {"ENABLED": V(True, D2_SYNCBN + "; " + MOCO)}},
        }
    # coco_1x_tpu. 1x = 12 epochs (R2O A.2, Odin §3.2): 22,500 x 64 images = detectron2's 90k x 16,
    # 12.2 epochs of train2017's 118,287; lr drops at 2/3 and 8/9 of it.
    side, (lo, hi) = 1024, (0.8, 1.25)
    return {
        "SOLVER": {
            "IMS_PER_BATCH": V(64, ODIN_A3 + " (R2O A.2 states 32)"),
            "BASE_LR": V(0.3, "R2O A.2 swept 0.003/0.1/0.3 without naming its pick: 0.3 at batch 64 is "
                              + ODIN_A3 + "; scale it linearly with IMS_PER_BATCH"),
            "MOMENTUM": V(0.9, R2O + ", " + ODIN_A3), "WEIGHT_DECAY": V(0.00004, R2O + ", " + ODIN_A3),
            "STEPS": V([15000, 20000], "x0.1 at 2/3 and 8/9: " + R2O + ", " + ODIN_A3),
            "MAX_ITER": V(22500, "1x = 12 epochs: " + R2O + ", Odin §3.2"),
            "WARMUP_ITERS": V(500, ODIN_A3 + " (R2O's 1000 at batch 32: as many images)"),
            "WARMUP_FACTOR": V(0.001, "linear warm-up from ~0: " + D2_DEFAULTS)},
        "INPUT": {  # an approximation: see _LSJ_NOTE
            "MIN_SIZE_TRAIN": V([round(lo * side * 3 / 4), round(hi * side * 3 / 4)],
                                "longest side 1024 x U[0.8, 1.25] for 4:3 images: " + R2O + ", " + ODIN_A1),
            "MIN_SIZE_TRAIN_SAMPLING": V("range", D2_DEFAULTS + " (uniform in MIN_SIZE_TRAIN)"),
            "MAX_SIZE_TRAIN": V(round(hi * side), "longest side at most 1.25 x 1024: " + R2O),
            "MIN_SIZE_TEST": V(side, "with MAX_SIZE_TEST: longest side 1024 at test: " + R2O + ", " + ODIN_A1),
            "MAX_SIZE_TEST": V(side, R2O + ", " + ODIN_A1)},
    }


def _d2_model(arch: str, norm: str, weights: Path) -> dict:
    depth, res2, _ = _resnet(arch)
    gn = norm == "gn"
    return {
        "META_ARCHITECTURE": V("GeneralizedRCNN", D2_FPN),
        "WEIGHTS": V(str(weights), "the .pkl written beside this file; moved? pass MODEL.WEIGHTS on the command line"),
        "MASK_ON": V(True, "Mask R-CNN: R2O §4.1, Odin §3.2"),
        "PIXEL_MEAN": V(PIXEL_MEAN, "RGB ImageNet mean x 255, as pretrained: " + MOCO),
        "PIXEL_STD": V(PIXEL_STD, "RGB ImageNet std x 255 (detectron2's MSRA default of 1.0 is wrong here): " + MOCO),
        "BACKBONE": {"NAME": V("build_resnet_fpn_backbone", D2_FPN),
                     "FREEZE_AT": V(0, "no frozen stage, BN trains: " + MOCO)},
        "RESNETS": {
            "DEPTH": V(depth, "the exported " + arch),
            "NORM": V("GN" if gn else "SyncBN",
                      "the checkpoint's GroupNorm" if gn else "SyncBN in the backbone: " + D2_SYNCBN + "; " + ODIN_BN),
            "STRIDE_IN_1X1": V(False, EXPORTED + " (stride in the 3x3 conv): " + MOCO),
            "OUT_FEATURES": V(["res2", "res3", "res4", "res5"], D2_FPN),
            "RES2_OUT_CHANNELS": V(res2, "the exported " + arch + " (64 for R18/34: " + D2_DEFAULTS + ")")},
        "FPN": {"IN_FEATURES": V(["res2", "res3", "res4", "res5"], D2_FPN),
                "NORM": V("SyncBN", "SyncBN in the FPN: " + D2_SYNCBN + "; " + ODIN_BN)},
        "ANCHOR_GENERATOR": {"SIZES": V([[32], [64], [128], [256], [512]], D2_FPN),
                             "ASPECT_RATIOS": V([[0.5, 1.0, 2.0]], D2_FPN)},
        "RPN": {"IN_FEATURES": V(["p2", "p3", "p4", "p5", "p6"], D2_FPN),
                "PRE_NMS_TOPK_TRAIN": V(2000, D2_FPN), "PRE_NMS_TOPK_TEST": V(1000, D2_FPN),
                "POST_NMS_TOPK_TRAIN": V(1000, D2_FPN), "POST_NMS_TOPK_TEST": V(1000, D2_FPN)},
        "ROI_HEADS": {"NAME": V("StandardROIHeads", D2_FPN), "IN_FEATURES": V(["p2", "p3", "p4", "p5"], D2_FPN),
                      "NUM_CLASSES": V(80, "COCO: " + D2_DEFAULTS)},
        "ROI_BOX_HEAD": {"NAME": V("FastRCNNConvFCHead", D2_SYNCBN), "NUM_CONV": V(4, "4conv1fc: " + D2_SYNCBN),
                         "NUM_FC": V(1, D2_SYNCBN), "POOLER_RESOLUTION": V(7, D2_FPN),
                         "NORM": V("SyncBN", "SyncBN in the box head: " + D2_SYNCBN)},
        "ROI_MASK_HEAD": {"NAME": V("MaskRCNNConvUpsampleHead", D2_FPN), "NUM_CONV": V(4, D2_FPN),
                          "POOLER_RESOLUTION": V(14, D2_FPN),
                          "NORM": V("SyncBN", "SyncBN in the mask head: " + D2_SYNCBN)},
    }


def detectron2_config(*, arch: str, norm: str, weights: str | Path, protocol: str | None = None) -> str:
    """The YAML text of a self-contained detectron2 Mask R-CNN config for an export at `weights`."""
    protocol = resolve_protocol("detectron2", protocol)
    schedule = _d2_schedule(protocol)
    schedule["INPUT"] = {"FORMAT": V("RGB", "the weights expect RGB, as pretrained: " + MOCO), **schedule["INPUT"]}
    tree = {"MODEL": _d2_model(arch, norm, Path(weights)),
            "DATASETS": {"TRAIN": V(["coco_2017_train"], D2_FPN), "TEST": V(["coco_2017_val"], D2_FPN)},
            **schedule, "VERSION": V(2, D2_DEFAULTS)}
    head = [f"# discorep export: detectron2 config, protocol {protocol}, backbone {arch} ({norm}).",
            "# Self-contained (no _BASE_). Train: tools/train_net.py --config-file THIS_FILE --num-gpus 8",
            "# (SyncBN needs several GPUs; SOLVER.IMS_PER_BATCH is the total over all of them)."]
    if protocol == "coco_1x_tpu":
        head += _LSJ_NOTE
    return "\n".join(head + list(_yaml_lines(tree))) + "\n"


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        # PyYAML reads 4e-05 as a string (YAML 1.1 floats need a dot): write plain decimals
        text = repr(value)
        return text if "e" not in text else format(value, ".12f").rstrip("0")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def _yaml_lines(tree: dict, depth: int = 0):
    pad = "  " * depth
    for key, node in tree.items():
        if isinstance(node, dict):
            yield f"{pad}{key}:"
            yield from _yaml_lines(node, depth + 1)
        else:
            line = f"{pad}{key}: {_yaml_scalar(node.value)}"
            yield f"{line}  # {node.source}" if node.source else line


# ---------------------------------------------------------------------------------------------- mmseg
_SEG = {  # per protocol: data set, crops and schedule (R2O appendix A.2 unless said otherwise)
    "voc_fcn_30k": dict(
        num_classes=21, dataset="PascalVOCDataset", data_root="data/VOCdevkit/VOC2012", crop=(513, 513),
        scale=(2048, 512), scale_source=MMSEG + " for VOC (R2O: other details are mmseg's)",
        test_resize=None, test_cfg=dict(mode="whole"),
        lr=V(0.02, ODIN_A3 + " at batch 16; R2O A.2 swept 0.001/0.003/0.01/0.03/0.1 and reports the best")),
    "cityscapes_fcn": dict(
        num_classes=19, dataset="CityscapesDataset", data_root="data/cityscapes/", crop=(769, 769),
        scale=(2049, 1025), scale_source=R2O, test_resize=(2049, 1025),
        test_cfg=dict(mode="slide", crop_size=(769, 769), stride=(513, 513)),
        lr=V(0.04, "Odin A.3's 0.005 at batch 2, x8 for batch 16 (linear scaling); R2O A.2 swept 0.004/0.01/0.04")),
}
_ITERS, _BATCH, _GPUS = 30000, 16, 8  # R2O A.2: 30k iterations at batch 16 for both data sets


def _city_split(name: str, pipeline: str) -> dict:
    return dict(type=Expr("dataset_type"), data_root=Expr("data_root"),
                data_prefix=dict(img_path=f"leftImg8bit/{name}", seg_map_path=f"gtFine/{name}"),
                pipeline=Expr(f"{pipeline}_pipeline"))


def _seg_data(p: dict) -> dict:
    """Pipelines, data loaders and evaluators of protocol settings `p` (mmseg 1.x names)."""
    train = [V(dict(type="LoadImageFromFile")), V(dict(type="LoadAnnotations")),
             V(dict(type="RandomResize", scale=p["scale"], ratio_range=(0.5, 2.0), keep_ratio=True),
               "ratio 0.5..2.0: " + R2O + "; base scale: " + p["scale_source"]),
             V(dict(type="RandomCrop", crop_size=Expr("crop_size"), cat_max_ratio=0.75), "cat_max_ratio: " + MMSEG),
             V(dict(type="RandomFlip", prob=0.5), R2O), V(dict(type="PhotoMetricDistortion"), MMSEG),
             V(dict(type="PackSegInputs"))]
    resize = [V(dict(type="Resize", scale=p["test_resize"], keep_ratio=True), "test at 2049x1025: " + R2O)]
    test = ([V(dict(type="LoadImageFromFile"))] + (resize if p["test_resize"] else [])
            + [V(dict(type="LoadAnnotations")), V(dict(type="PackSegInputs"))])
    if p["dataset"] == "PascalVOCDataset":  # train_aug = VOC train + SBD's aug list
        sets = [("SegmentationClass", "ImageSets/Segmentation/train.txt"),
                ("SegmentationClassAug", "ImageSets/Segmentation/aug.txt")]
        parts = [dict(type=Expr("dataset_type"), data_root=Expr("data_root"), ann_file=ann,
                      data_prefix=dict(img_path="JPEGImages", seg_map_path=seg), pipeline=Expr("train_pipeline"))
                 for seg, ann in sets]
        train_set = V(dict(type="ConcatDataset", datasets=parts), "train_aug2012: " + R2O)
        val_set = dict(type=Expr("dataset_type"), data_root=Expr("data_root"),
                       ann_file="ImageSets/Segmentation/val.txt", data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
                       pipeline=Expr("test_pipeline"))
    else:
        train_set, val_set = V(_city_split("train", "train"), "train_fine: " + R2O), _city_split("val", "test")
    return {
        "dataset_type": V(p["dataset"]), "data_root": V(p["data_root"], MMSEG + " layout"),
        "train_pipeline": train, "test_pipeline": test,
        "train_dataloader": {"batch_size": V(_BATCH // _GPUS, f"per GPU: {_GPUS} GPUs x {_BATCH // _GPUS} = "
                                             f"batch {_BATCH} ({R2O}); keep the product on other GPU counts"),
                             "num_workers": V(4), "persistent_workers": V(True),
                             "sampler": V(dict(type="InfiniteSampler", shuffle=True)), "dataset": train_set},
        "val_dataloader": {"batch_size": V(1), "num_workers": V(4), "persistent_workers": V(True),
                           "sampler": V(dict(type="DefaultSampler", shuffle=False)), "dataset": V(val_set)},
        "test_dataloader": V(Expr("val_dataloader")),
        "val_evaluator": V(dict(type="IoUMetric", iou_metrics=["mIoU"]), "mIoU: " + R2O),
        "test_evaluator": V(Expr("val_evaluator")),
    }


def _seg_model(arch: str, norm: str, weights: Path, p: dict) -> dict:
    depth, _, width = _resnet(arch)
    backbone_norm = dict(type="GN", num_groups=32, requires_grad=True) if norm == "gn" else Expr("norm_cfg")
    return {
        "type": V("EncoderDecoder"), "data_preprocessor": V(Expr("data_preprocessor")), "pretrained": V(None),
        "backbone": {
            "type": V("ResNet", EXPORTED + " (one 7x7 stem conv): not ResNetV1c's deep stem"),
            "depth": V(depth, "the exported " + arch), "num_stages": V(4), "out_indices": V((0, 1, 2, 3)),
            "dilations": V((1, 1, 1, 2), "MoCo's FCN: conv5 dilation 2, stride 1 (" + R2O + ")"),
            "strides": V((1, 2, 2, 1), R2O),
            "norm_cfg": V(backbone_norm, "the checkpoint's GroupNorm" if norm == "gn" else "SyncBN: " + ODIN_BN),
            "norm_eval": V(False, "norm statistics train"), "frozen_stages": V(-1, "no frozen stage"),
            "style": V("pytorch", EXPORTED + " (stride in the 3x3 conv)"),
            "init_cfg": V(dict(type="Pretrained", checkpoint=str(weights), prefix="backbone."),
                          "the file written beside this one; its keys are under backbone.")},
        "decode_head": {
            "type": V("FCNHead"), "in_channels": V(width, "C5 of the exported " + arch), "in_index": V(3),
            "channels": V(256, R2O), "num_convs": V(2, "two 3x3 convs: " + R2O), "kernel_size": V(3, R2O),
            "dilation": V(6, R2O), "concat_input": V(False, "then a 1x1 classifier: " + R2O),
            "dropout_ratio": V(0.1, MMSEG), "num_classes": V(p["num_classes"]),
            "norm_cfg": V(Expr("norm_cfg"), "BN + ReLU after each conv: " + R2O),
            "align_corners": V(True, "for 8k+1 crops (513, 769): " + MMSEG_769),
            "loss_decode": V(dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0), MMSEG)},
        "train_cfg": V({}), "test_cfg": V(p["test_cfg"], MMSEG_769 if p["test_resize"] else "original size: " + R2O),
    }


def _seg_schedule(p: dict) -> dict:
    steps = [_ITERS * 7 // 10, _ITERS * 9 // 10]
    return {
        "optim_wrapper": {"type": V("OptimWrapper"), "clip_grad": V(None),
                          "optimizer": {"type": V("SGD"), "lr": p["lr"], "momentum": V(0.9, MMSEG),
                                        "weight_decay": V(0.0001, R2O)}},
        "param_scheduler": [V(dict(type="MultiStepLR", by_epoch=False, begin=0, end=_ITERS, milestones=steps,
                                   gamma=0.1), "x0.1 at 7/10 and 9/10: " + R2O)],
        "train_cfg": V(dict(type="IterBasedTrainLoop", max_iters=_ITERS, val_interval=3000), "30k iterations: " + R2O),
        "val_cfg": V(dict(type="ValLoop")), "test_cfg": V(dict(type="TestLoop")),
        "default_hooks": V(dict(timer=dict(type="IterTimerHook"),
                                logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
                                param_scheduler=dict(type="ParamSchedulerHook"),
                                checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=3000),
                                sampler_seed=dict(type="DistSamplerSeedHook"),
                                visualization=dict(type="SegVisualizationHook")), MMSEG + " runtime"),
        "default_scope": V("mmseg"), "env_cfg": V(dict(cudnn_benchmark=True, dist_cfg=dict(backend="nccl"),
                                                       mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0))),
        "vis_backends": V([dict(type="LocalVisBackend")]),
        "visualizer": V(dict(type="SegLocalVisualizer", vis_backends=Expr("vis_backends"), name="visualizer")),
        "log_processor": V(dict(by_epoch=False)), "log_level": V("INFO"), "load_from": V(None), "resume": V(False),
        "randomness": V(dict(seed=0), "R2O reports 3 seeds: --cfg-options randomness.seed=N"),
    }


def mmseg_config(*, arch: str, norm: str, weights: str | Path, protocol: str | None = None) -> str:
    """The Python text of an MMSegmentation 1.x FCN config for an export at `weights`."""
    protocol = resolve_protocol("mmseg", protocol)
    p = _SEG[protocol]
    top = {"norm_cfg": V(dict(type="SyncBN", requires_grad=True), "SyncBN in backbone and head: " + ODIN_BN),
           "crop_size": V(p["crop"], R2O + ", " + ODIN_A1),
           "data_preprocessor": {
               "type": V("SegDataPreProcessor"),
               "mean": V(PIXEL_MEAN, "ImageNet mean x 255 in R, G, B order, as pretrained"),
               "std": V(PIXEL_STD, "ImageNet std x 255 in R, G, B order"),
               "bgr_to_rgb": V(True, "mmseg decodes BGR; the weights expect RGB (mean/std are then R, G, B)"),
               "pad_val": V(0), "seg_pad_val": V(255), "size": V(Expr("crop_size"))},
           "model": _seg_model(arch, norm, Path(weights), p), **_seg_data(p), **_seg_schedule(p)}
    head = [f"# discorep export: MMSegmentation 1.x config, protocol {protocol}, backbone {arch} ({norm}).",
            f"# Self-contained (no _base_). Train: tools/dist_train.sh THIS_FILE {_GPUS} (batch size: per GPU)."]
    lines = [line for name, node in top.items() for line in _py_lines(node, 0, f"{name} = ")]
    return "\n".join(head + lines) + "\n"


def _py(value: Any) -> str:
    if isinstance(value, Expr):
        return str(value)
    if isinstance(value, dict):
        return "dict(" + ", ".join(f"{k}={_py(v)}" for k, v in value.items()) + ")"
    if isinstance(value, list):
        return "[" + ", ".join(_py(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(_py(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


_WIDTH = 110  # longer inline dicts and lists are written one entry a line


def _py_lines(node: Any, depth: int, lead: str) -> list[str]:
    """`lead` + `node` as Python source lines: a dict or list node one entry a line, each leaf with its
    source as a comment; leaves are written inline."""
    pad, comma = "    " * depth, "," if depth else ""
    source = ""
    if isinstance(node, V):
        text = f"{pad}{lead}{_py(node.value)}{comma}"
        if len(text) <= _WIDTH or not isinstance(node.value, (dict, list)):
            return [f"{text}  # {node.source}" if node.source else text]
        value, source = node.value, node.source  # too long: one entry a line
        node = {k: V(v) for k, v in value.items()} if isinstance(value, dict) else [V(v) for v in value]
    is_dict = isinstance(node, dict)
    items = node.items() if is_dict else [("", child) for child in node]
    body = [line for key, child in items for line in _py_lines(child, depth + 1, f"{key}=" if key else "")]
    opening = f"{pad}{lead}{'dict(' if is_dict else '['}" + (f"  # {source}" if source else "")
    return [opening, *body, f"{pad}{')' if is_dict else ']'}{comma}"]


def toolkit_config(to: str, *, arch: str, norm: str, weights: str | Path, protocol: str | None = None) -> str:
    """The config text for `to` ("detectron2" or "mmseg"); UsageError for any other target."""
    resolve_protocol(to, protocol)
    writer = detectron2_config if to == "detectron2" else mmseg_config
    return writer(arch=arch, norm=norm, weights=weights, protocol=protocol)
