"""`discorep transfer detect|segment`: fine-tune a pretrained backbone on detection or segmentation
(torchvision's Mask R-CNN / FCN / DeepLabV3, pycocotools' COCOeval), beside the random-init baseline.

For your own code, the one-call builders::

    from discorep.transfer import maskrcnn, segmenter
    detector = maskrcnn("runs/r2o_cpu_demo", num_classes=1 + 80, norm="frozen", trainable_layers=3)
    detector.train()
    losses = detector(images, targets)          # torchvision's Mask R-CNN contract: [0, 1] RGB images
    fcn = segmenter("runs/r2o_cpu_demo/checkpoints/step_00000100.pt", num_classes=21, head="fcn")
    logits = fcn(images)                        # (B, 21, H, W)
"""

from discorep.transfer.config import TransferConfig, load_transfer_config, preset_names
from discorep.transfer.models import load_backbone, maskrcnn, segmenter
from discorep.transfer.report import print_result
from discorep.transfer.run import Inputs, run_transfer

__all__ = ["Inputs", "TransferConfig", "load_backbone", "load_transfer_config", "maskrcnn", "preset_names",
           "print_result", "run_transfer", "segmenter"]
