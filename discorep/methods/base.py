"""What every method shares: online θ and target ξ networks, EMA, and the object-level loss path.

A method subclass only chooses where masks come from (its `forward`) and, for Odin, owns a discovery net.
It owns its modules: the engine asks it which are trained (`trained_modules`), saves its whole
`state_dict()` plus `extra_state_dict()`, evaluates `eval_branch()` and never names a submodule.
The object path (DetCon, Odin, R2O): sample mask ids present in both views → pool online and target
features inside the masks (Odin eq. 1) → projector/predictor heads → BYOL or contrastive loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from discorep.discovery.align import AlignedMasks, align_masks_views, hard_masks
from discorep.discovery.pooling import mask_pool, sample_mask_ids
from discorep.discovery.random import image_seeds
from discorep.discovery.sources import feature_kmeans_labels
from discorep.data.config import DataConfig
from discorep.data.views import ViewConfig
from discorep.losses.byol import object_byol_loss
from discorep.losses.contrastive import contrastive_loss
from discorep.models.backbones import Encoder
from discorep.models.config import ModelConfig
from discorep.models.ema import ema_update_, make_ema_copy
from discorep.models.heads import MLP
from discorep.models.dense import dense_features
from discorep.methods.options import MethodOptions


class RunConfig(Protocol):
    """What a method reads of the run config (the engine's `Config`; methods never import the engine)."""

    data: DataConfig
    views: ViewConfig
    model: ModelConfig
    method: Any  # the method's own `Options`
    train: Any  # train.batch_size and train.epochs, read by some options checks


@dataclass
class StepInfo:
    """Where training stands; methods derive every random draw from (seed, step) so runs resume exactly."""

    step: int
    epoch: float  # fractional epochs done
    total_epochs: float
    seed: int

    def kmeans_seed(self, salt: int = 0) -> int:
        """One seed for a whole-batch draw (R2O's pooled k-means)."""
        return (self.seed * 1_000_003 + self.step * 7919 + salt + 17) % (2**31 - 1)

    def cache_seed(self, version: int) -> int:
        """One seed per (train.seed, cached-segment version), independent of the step (Odin's cache)."""
        return (self.seed * 1_000_003 + version * 7919 + 29) % (2**31 - 1)

    def image_seeds(self, index: Tensor, salt: int = 0) -> Tensor:
        """(B,) per-image seeds from (seed, step, dataset index): batch-split independent draws."""
        return image_seeds(self.kmeans_seed(salt), index, salt)


class Branch(nn.Module):
    """Encoder f plus projector g: the part shared by online, target and discovery networks."""

    def __init__(self, cfg: RunConfig, feature: str):
        super().__init__()
        m = cfg.model
        self.encoder = Encoder(m.arch, fpn=m.fpn, fpn_dim=m.fpn_dim, norm=m.norm)
        # The heads normalise like the backbone: SyncBN makes BYOL's cross-replica BN in the projector
        # and predictor (a per-device BN there would break 2×b = 1×2b); GN stays per-sample.
        self.projector = MLP(self.encoder.channels[feature], m.proj_hidden, m.proj_dim, norm=m.norm)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.encoder(x)


class PretrainMethod(nn.Module):
    """Base: online (encoder, projector, predictor) and an EMA target (encoder, projector)."""

    Options = MethodOptions  # each registered subclass names its own options dataclass

    def __init__(self, cfg: RunConfig):
        super().__init__()
        self.cfg = cfg
        self.feature = cfg.method.features
        self.online = Branch(cfg, self.feature)
        m = cfg.model
        self.predictor = MLP(m.proj_dim, m.pred_hidden, m.proj_dim, norm=m.norm)
        self.target = make_ema_copy(self.online)

    # ----- hooks the engine calls -----
    @classmethod
    def needs_views(cls, cfg: RunConfig) -> frozenset[str]:
        """The views besides view1/view2 that `forward` reads, among `data.views.EXTRA_VIEWS`: "span"
        (Odin's v0, with span_box) and "raw" (the whole image). The engine asks before building the
        data set, so the others are never built nor shipped. `raw_box` (the frame of the priors) and
        `image_size` always come; the mask pictures' batch adds "raw" for `discover`."""
        return frozenset()

    def forward(self, batch: dict[str, Tensor], info: StepInfo) -> tuple[Tensor, dict[str, Tensor]]:
        """One training step's loss (DDP wraps this module, so the step is `forward`)."""
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, info: StepInfo, tau: float, steps_per_epoch: float) -> None:
        """`steps_per_epoch`: steps per schedule epoch (fractional with train.steps; `engine.runplan`).
        EMA update of the target network ξ ← τξ + (1−τ)θ (BYOL; Odin eq. 6)."""
        ema_update_(self.target, self.online, tau)

    def lr_scale(self, info: StepInfo) -> float:
        return 1.0

    def schedule_note(self, info: StepInfo) -> str | None:
        """One line on what the method's own schedules reach at `info` (the last step a cut-short run
        trains) when that falls short of their end at `info.total_epochs`; None: nothing to say."""
        return None

    def picture_k(self, info: StepInfo) -> int | None:
        """The number of clusters the mask pictures at `info` show (their label); None: not one number."""
        return None

    def trained_modules(self) -> nn.ModuleDict:
        """The modules the optimizer trains (and gradient clipping sees), in the optimizer's order: every
        submodule with a trainable parameter (online, predictor, and whatever a subclass adds); EMA copies
        (`make_ema_copy`: target, discovery) are frozen and left out."""
        return nn.ModuleDict({name: child for name, child in self.named_children()
                              if any(p.requires_grad for p in child.parameters())})

    def eval_branch(self) -> Branch:
        """The network evaluated during and after pretraining: `.encoder` and `.projector` (Odin §3.1)."""
        return self.online

    def encoders(self) -> list[Encoder]:
        """Every backbone copy (online, EMA, discovery): what `model.init` loads and `model.compile` compiles."""
        return [m for m in self.modules() if isinstance(m, Encoder)]

    def find_unused_parameters(self) -> bool:
        """Whether some trained parameters get no gradient, which DDP must then be told: levels the
        loss never reaches (layer4 when pooling C4, the FPN when pooling C5)."""
        feature, fpn = self.feature, self.cfg.model.fpn
        return not (feature == "fpn" or (feature == "c5" and not fpn))

    @torch.no_grad()
    def discover(self, batch: dict[str, Tensor], info: StepInfo) -> tuple[Tensor, Tensor]:
        """Label maps for pictures: (labels (B, h, w), frame boxes (B, 4)) of the current masks.

        The batch has the raw view and every view `needs_views` names. A look, not a step: networks in
        eval mode (no BN statistics move, no SyncBN collective), so the engine may call it on one
        process only."""
        feats = dense_features(self.target, batch["raw"], self.feature)
        return feature_kmeans_labels(feats, 8, seed=0), batch["raw_box"]

    def extra_state_dict(self) -> dict:
        """Small non-module state for rank 0's checkpoint (Odin: its segment cache's version)."""
        return {}

    def load_extra_state_dict(self, state: dict) -> None:
        pass

    # ----- per-rank state and the run's place (Odin's segment stores; nothing by default) -----
    def attach_run(self, run_dir: Path, rank: int, world_size: int, num_images: int) -> None:
        """Called once by the engine before training or resuming: where the run's files are, which rank
        this process is, and how many images the data set has."""

    def sampler_shard_period_epochs(self) -> int | None:
        """N to have the sampler keep each rank's images fixed for N epochs at a time (rank-stable shards,
        `data.pretrain.ResumableBatchSampler`); None (default): every epoch reshuffles across ranks."""
        return None

    def rank_state_dict(self) -> dict:
        """This rank's own part of a checkpoint, saved by every rank beside it (`runs.rank_state_path`);
        {} saves nothing. Called on every rank at every checkpoint: it must issue no collective."""
        return {}

    def load_rank_state_dict(self, state: dict | None, where: str) -> None:
        """On resume, after `load_extra_state_dict`: this rank's part, or None when it has none (`where`
        says which file was looked for)."""

    # ----- shared object-level path -----
    def grid(self) -> int:
        return self.cfg.views.size // self.online.encoder.strides[self.feature]

    def encode_views(self, batch: dict[str, Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Online features of v1, v2 (with gradients) and target features of v1, v2 (without)."""
        v1, v2 = batch["view1"], batch["view2"]
        both = torch.cat([v1, v2])
        online = self.online(both)[self.feature].chunk(2)
        with torch.no_grad():
            target = self.target(both)[self.feature].chunk(2)
        return list(online), [t.detach() for t in target]

    @record_function("discorep/align")
    def align_to_views(self, labels: Tensor, frame_boxes: Tensor, num_masks: int,
                       batch: dict[str, Tensor]) -> tuple[AlignedMasks, AlignedMasks]:
        m1, m2 = align_masks_views(labels, frame_boxes, [batch["box1"], batch["box2"]],
                                   [batch["flip1"], batch["flip2"]], self.grid(), num_masks)
        return m1, m2

    def object_loss(self, feats_online: list[Tensor], feats_target: list[Tensor],
                    masks: tuple[AlignedMasks, AlignedMasks], index: Tensor,
                    info: StepInfo) -> tuple[Tensor, dict]:
        """Sample masks present in both views, pool, project, predict, and apply the configured loss."""
        m1, m2 = masks
        present_both = m1.present & m2.present
        ids = sample_mask_ids(present_both, self.cfg.method.num_masks, seeds=info.image_seeds(index, salt=1))
        valid = present_both.gather(1, ids)
        q1, z2, q2, z1 = self.pool_and_project(feats_online, feats_target, masks, ids)
        loss = self.pair_loss(q1, z2, q2, z1, valid, ids)
        # Tensors, not floats: the engine reads them only on logging steps (no host sync per step).
        logs = {"masks_valid": valid.float().mean().detach(),
                "masks_present": present_both.sum(1).float().mean().detach()}
        return loss, logs

    @record_function("discorep/pool_heads")
    def pool_and_project(self, feats_online: list[Tensor], feats_target: list[Tensor],
                         masks: tuple[AlignedMasks, AlignedMasks], ids: Tensor) -> tuple[Tensor, ...]:
        """Pool the sampled masks (Odin eq. 1); online q(g(h)) and target g(h) for both views."""
        pooled = []
        for f_on, f_t, m in zip(feats_online, feats_target, masks):
            soft = hard_masks(m.soft) if self.cfg.method.hard_masks else m.soft
            sel = torch.gather(soft, 1, ids[:, :, None, None].expand(-1, -1, *soft.shape[-2:]))
            # float32 masks: mask_pool weighs in float32 (bf16 would round the area fractions)
            pooled.append((mask_pool(f_on, sel), mask_pool(f_t, sel)))
        (h_on1, h_t1), (h_on2, h_t2) = pooled
        q1, q2 = self.predictor(self.online.projector(h_on1)), self.predictor(self.online.projector(h_on2))
        with torch.no_grad():
            z1, z2 = self.target.projector(h_t1), self.target.projector(h_t2)
        return q1, z2, q2, z1

    @record_function("discorep/loss")
    def pair_loss(self, q1: Tensor, z2: Tensor, q2: Tensor, z1: Tensor, valid: Tensor, ids: Tensor) -> Tensor:
        """BYOL (symmetrised 2−2cos over valid masks) or contrastive (Odin eq. 2–4) on (B, S, D); both
        normalised by the global number of valid masks, so N processes × b = 1 process × N·b. The
        contrastive gather pads every process to train.batch_size (no process has more images), so no
        batch size is read back per step."""
        cfg = self.cfg.method
        if cfg.loss == "contrastive":
            return contrastive_loss(q1, z2, q2, z1, valid, temperature=cfg.temperature, ids=ids,
                                    negatives=cfg.negatives, rows=self.cfg.train.batch_size)
        return object_byol_loss(q1, z2, q2, z1, valid)
