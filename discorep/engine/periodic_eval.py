"""k-NN accuracy and object-discovery ABO measured every N epochs during pretraining (R2O Fig. 4).

Runs on the main process with the live evaluated network (the method's `eval_branch()`, its online
encoder and projector) switched to eval mode (and back), so a user
watches the representation and the masks improve without labels ever reaching the training loss.
"""

from __future__ import annotations

import logging
import torch

from discorep.engine.config import Config
from discorep.models.modes import eval_mode

log = logging.getLogger("discorep")


class PeriodicEval:
    def __init__(self, cfg: Config, device: torch.device):
        self.cfg, self.device = cfg, device
        e = cfg.eval
        self.enabled = e.every_epochs > 0 and (e.knn_train is not None or e.objects_coco is not None)
        self.coco = None
        if self.enabled and e.objects_coco is not None:
            from discorep.data.datasets import CocoDataset

            self.coco = CocoDataset(e.objects_coco, e.objects_images)

    def due(self, epoch: float, last: bool) -> bool:
        return self.enabled and (epoch % self.cfg.eval.every_epochs == 0 or last)

    @torch.no_grad()
    def __call__(self, method) -> dict[str, float]:
        from discorep.eval.backbone import EvalModel

        e = self.cfg.eval
        branch = method.eval_branch()
        model = EvalModel(branch.encoder, branch.projector, self.cfg.model.arch, "online", {})
        metrics: dict[str, float] = {}
        with eval_mode(branch):
            if e.knn_train is not None:
                from discorep.eval.knn import evaluate_knn

                knn = evaluate_knn(model, e.knn_train, e.knn_val, e.size, e.features, self.device,
                                   e.knn_k, e.knn_temperature)
                metrics["eval/knn_top1"] = knn["top1"]
            if self.coco is not None:
                from discorep.eval.objects import evaluate_objects

                obj = evaluate_objects(model, self.coco, e.objects_ks, e.size, e.features, progress=False)
                metrics.update({"eval/abo_i": obj["abo_i"], "eval/abo_c": obj["abo_c"], "eval/or": obj["or"]})
        log.info("evaluation: %s", ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return metrics
