"""The pretraining loop: one function per concern, the same code for 1 CPU process and N GPUs."""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from discorep.engine import builders, startup
from discorep.engine.agreement import StopOnSignals, exchange_flags, gather_skips, interrupted
from discorep.checkpoint import (CHECKPOINT_FORMAT, checkpoint_path, get_rng_state, latest_checkpoint,
                                 load_module_weights, load_rank_state, prune_checkpoints, save_checkpoint,
                                 save_rank_state, set_rng_state, upgrade_checkpoint)
from discorep.engine.config import Config
from discorep.engine.configio import ConfigError, save_config, to_dict
from discorep.engine.distributed import DistInfo, init_distributed, long_barrier, shutdown
from discorep.engine.logger import ExpectedDuration, RunLogger, progress_bar
from discorep.engine.optim import clip_grad_norm
from discorep.engine.periodic_eval import PeriodicEval
from discorep.engine.runplan import already_complete, cut_note, plan_run
from discorep.engine.summary import run_summary
from discorep.engine.resume import (RESUME_SAFE_KEYS, ResumeConfigError, check_resume_config,  # noqa: F401
                                    checked_resume_state, resolve_resume)
from discorep.engine.startup import RunFolderError, TooManyBadImagesError  # noqa: F401 (re-exported)
from discorep.engine.schedules import ema_tau_at, lr_at, scaled_lr
from discorep.methods import build_method
from discorep.methods.base import StepInfo
from discorep.models.modes import eval_mode
from discorep.viz import denormalize, grid_picture

log = logging.getLogger("discorep")

from discorep.errors import NonFiniteLossError, PeerLostError  # noqa: F401 (re-exported)


_PEER_FAILURE_HINTS = ("connection reset", "connection closed", "broken pipe", "timed out", "timeout",
                       "nccl", "gloo", "socket")


class Trainer:
    def __init__(self, cfg: Config, dist_info: DistInfo, run_dir: Path):
        self.cfg, self.dist, self.run_dir = cfg, dist_info, run_dir
        self.dataset = builders.build_dataset(cfg, dist_info)
        self.method = build_method(cfg).to(dist_info.device)
        self.method.attach_run(run_dir, dist_info.rank, dist_info.world_size, len(self.dataset))
        if cfg.model.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        builders.compile_encoders(self.method, cfg.model.compile, dist_info.device)
        self.model = self.method
        if dist_info.world_size > 1:
            self.model = DistributedDataParallel(
                self.method, device_ids=[dist_info.local_rank] if dist_info.device.type == "cuda" else None,
                find_unused_parameters=self.method.find_unused_parameters())
        self.optimizer = builders.build_optimizer_for(cfg, self.method.trained_modules())
        use_fp16 = cfg.train.precision == "fp16"
        if use_fp16 and dist_info.device.type != "cuda":
            raise ConfigError("train.precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU")
        self.scaler = torch.amp.GradScaler("cuda") if use_fp16 else None
        self.global_batch = cfg.train.batch_size * dist_info.world_size
        self.plan = plan_run(cfg.train, len(self.dataset), self.global_batch)
        self.steps_per_epoch, self.total_steps, self.end_step = (self.plan.steps_per_epoch, self.plan.total_steps,
                                                                 self.plan.end_step)
        self.step = 0
        self.last_loss = float("nan")
        self.skipped: dict[str, str] = {}
        self.pending_skips: list[tuple[str, str]] = []  # this rank's new unreadable images, shared in the step
        self.stop_signal = self.stopped_by = 0  # a signal received here; the one all ranks stopped on
        self.saved_step = 0  # known to every rank (only rank 0 writes): the save decisions stay symmetric
        self.logger = RunLogger(run_dir, enabled=dist_info.is_main)
        self.periodic_eval = PeriodicEval(cfg, dist_info.device)
        if dist_info.is_main:
            log.info("%s on %s: %d process(es) x batch %d = global batch %d; %d images, %d steps/epoch, "
                     "%d steps (%s); run folder %s", cfg.method.name, dist_info.device,
                     dist_info.world_size, cfg.train.batch_size, self.global_batch, len(self.dataset),
                     self.steps_per_epoch, self.end_step, self.plan.length_text(), run_dir)
            last = self.info(max(0, self.end_step - 1))  # what train.max_steps cuts (or that it lies past the end)
            note = cut_note(self.plan, self.lr_at(last), self.lr_at(self.info(self.total_steps)),
                            ema_tau_at(last.step, self.total_steps, cfg.optim.tau_base), self.method.schedule_note(last))
            if note:
                log.warning("%s", note)

    # ----- state -----
    def state_dict(self) -> dict:
        """The checkpoint (layout: `discorep.checkpoint`, "format versions"): the method's whole state."""
        m = self.method
        state = {"format": CHECKPOINT_FORMAT, "step": self.step, "config": to_dict(self.cfg),
                 "world_size": self.dist.world_size, "method": m.state_dict(), "eval_branch": self.eval_prefixes(),
                 "optimizer": self.optimizer.state_dict(), "rng": get_rng_state(),
                 "skipped": sorted(self.skipped.items()), "extra": m.extra_state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def eval_prefixes(self) -> dict[str, str]:
        """Where the evaluated network's encoder and projector sit in the method's state dict (for `eval`,
        `discover` and `export`, which read checkpoints without building the method)."""
        branch = self.method.eval_branch()
        names = {id(mod): name for name, mod in self.method.named_modules()}
        return {part: names[id(getattr(branch, part))] + "." for part in ("encoder", "projector")}

    def load_state_dict(self, state: dict, source: str | Path = "checkpoint") -> None:
        state = upgrade_checkpoint(state)
        load_module_weights(self.method, state.get("method"), path=source,
                            hint="resume with the model settings that wrote it (model.*, method.*)")
        self.method.load_extra_state_dict(state.get("extra", {}))
        self.method.load_rank_state_dict(*load_rank_state(source, self.dist.rank, self.dist.world_size))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.skipped = dict(state.get("skipped", []))
        self.step = self.saved_step = int(state["step"])

    def save(self) -> Path | None:
        self.saved_step = self.step
        path = checkpoint_path(self.run_dir, self.step)
        # Every rank its own part (no collective): rank 0's checkpoint holds nothing of the other ranks.
        save_rank_state(self.method.rank_state_dict(), path, self.dist.rank, self.dist.world_size)
        if not self.dist.is_main:
            return None
        path = save_checkpoint(self.state_dict(), path)
        prune_checkpoints(self.run_dir, keep_last=self.cfg.train.keep_last)
        self.last_checkpoint = path
        return path

    def save_if_unsaved(self) -> None:
        """Called by every rank alike: decided on state they share, not on what rank 0 may have written."""
        if self.step > self.saved_step:
            self.save()

    # ----- one step -----
    def info(self, step: int | None = None) -> StepInfo:
        step = self.step if step is None else step
        return StepInfo(step, self.plan.epoch_at(step), self.cfg.train.epochs, self.cfg.train.seed)

    def lr_at(self, info: StepInfo) -> float:
        o = self.cfg.optim
        peak = scaled_lr(o.base_lr, self.global_batch)
        warmup = round(o.warmup_epochs * self.plan.schedule_steps_per_epoch)
        return lr_at(info.step, self.total_steps, warmup, peak, o.final_lr) * self.method.lr_scale(info)

    def set_lr(self, info: StepInfo) -> float:
        lr = self.lr_at(info)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def autocast(self):
        p = self.cfg.train.precision
        if p == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if p == "bf16" else torch.float16
        return torch.autocast(self.dist.device.type, dtype=dtype)

    def buffer_snapshot(self) -> list[torch.Tensor] | None:
        """Copies of every buffer (BN running statistics, counters) when non-finite steps are skipped:
        the forward runs in train mode and writes its batch statistics into them *before* the loss can
        be checked, and an inf there would reach the target/discovery nets through the EMA."""
        if self.cfg.train.nonfinite != "skip":
            return None
        return [b.detach().clone() for b in self.method.buffers()]

    def restore_buffers(self, snapshot: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for buf, saved in zip(self.method.buffers(), snapshot):
                buf.copy_(saved)

    def train_step(self, batch: dict) -> tuple[float, dict, float]:
        info = self.info()
        lr = self.set_lr(info)
        snapshot = self.buffer_snapshot()
        with self.autocast():
            loss, logs = self.model(batch, info)
        # The step's one read-back (before the backward: a non-finite loss never reaches the weights).
        flags = exchange_flags(loss, self.stop_signal, len(self.pending_skips), self.dist.world_size)
        self.stop_signal = flags.stop_signal
        if flags.new_skips:  # every rank knows it from the flags, so every rank joins the gather
            self.record_skips(gather_skips(self.pending_skips, self.dist.world_size))
        self.pending_skips = []
        loss_value = flags.loss
        if flags.nonfinite:
            if snapshot is not None:
                self.restore_buffers(snapshot)
            loss_value = self.handle_nonfinite(loss_value)
        else:
            self.optimizer_step(loss)
        # Also on a skipped step (docs/training.md): θ is unchanged, but what the step counter schedules
        # (the EMA ξ, τ toward θ; Odin's discrete copy of θ into τ and its cache clear) must not slip.
        tau = ema_tau_at(self.step, self.total_steps, self.cfg.optim.tau_base)
        self.method.after_step(info, tau, self.plan.schedule_steps_per_epoch)
        logs["tau"] = tau
        return loss_value, logs, lr

    def optimizer_step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.cfg.optim.clip_grad:
            clip_grad_norm(self.method.trained_modules().parameters(), self.cfg.optim.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def guarded_step(self, batch: dict) -> tuple[float, dict, float]:
        """A training step whose collective failures (a dead or hung peer) become one clear error."""
        try:
            return self.train_step(batch)
        except RuntimeError as err:
            text = str(err).lower()
            if self.dist.world_size == 1 or not any(h in text for h in _PEER_FAILURE_HINTS):
                raise
            last = getattr(self, "last_checkpoint", None) or latest_checkpoint(self.run_dir)
            reason = str(err).strip().splitlines()[0][:200]
            raise PeerLostError(
                f"rank {self.dist.rank}: lost contact with another process at step {self.step} ({reason}). "
                f"Last checkpoint: {last or 'none yet'}; restart all processes with --resume auto.") from err

    def handle_nonfinite(self, loss: float) -> float:
        last = getattr(self, "last_checkpoint", None)
        if self.cfg.train.nonfinite == "stop":
            raise NonFiniteLossError(
                f"non-finite loss ({loss if not math.isfinite(loss) else 'on another process'}) at step "
                f"{self.step}; last good checkpoint: {last or 'none yet'}. "
                "Lower optim.base_lr, set optim.clip_grad, or set train.nonfinite=skip to skip such steps.")
        log.warning("non-finite loss at step %d: step skipped (train.nonfinite=skip)", self.step)
        self.optimizer.zero_grad(set_to_none=True)
        return float("nan")

    # ----- bookkeeping -----
    def new_skips(self, batch: dict) -> list[tuple[str, str]]:
        """This rank's unreadable images of `batch` not yet recorded (shared with all ranks in the step)."""
        return list({p: r for p, r in batch.get("skipped", []) if p not in self.skipped}.items())

    def record_skips(self, records: list[tuple[str, str]]) -> None:
        """Add unreadable images (every rank's, so every rank holds the same set); rank 0 lists them."""
        new = {path: reason for path, reason in records if path not in self.skipped}
        self.skipped.update(new)
        if new and self.dist.is_main:
            for path, reason in new.items():
                log.warning("skipped unreadable image %s: %s", path, reason)
            with open(self.run_dir / "skipped.txt", "a") as f:
                f.writelines(f"{path}\t{reason}\n" for path, reason in new.items())

    def check_skips(self) -> None:
        startup.check_bad_count(self.cfg, len(self.skipped), len(self.dataset), self.run_dir)

    @contextmanager
    def looking(self):
        """Pictures and probes look at the networks without touching training state: eval mode (BN
        statistics stay put and SyncBN issues no collective, so one process may look alone), no
        gradients, and every RNG restored, so a run that looks is bit-identical to one that does not."""
        rng = get_rng_state()
        try:
            with eval_mode(self.method), torch.no_grad():
                yield
        finally:
            set_rng_state(rng)

    def pictures(self, tag: str) -> None:
        if not self.dist.is_main or self.cfg.train.picture_images < 1:
            return
        with self.looking():  # nothing a picture does may touch the training state, its RNGs included
            batch = builders.to_device(self.pic_batch, self.dist.device)
            labels, _ = self.method.discover(batch, self.info())
            k = self.method.picture_k(self.info())
            title = f"step {self.step}" + (f"  K={k}" if k is not None else "")
            picture = grid_picture([denormalize(x) for x in batch["raw"]], [lab.cpu().numpy() for lab in labels],
                                   title=title)
        out = self.run_dir / "masks" / f"{tag}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        picture.save(out)
        self.logger.image("masks", self.step, np.asarray(picture))

    def maybe_evaluate(self, epoch: int) -> None:
        """k-NN / ABO probes every eval.every_epochs epochs (main process; the others wait)."""
        if not self.periodic_eval.due(epoch, last=self.step == self.end_step):
            return
        if self.dist.is_main:
            with self.looking():
                metrics = self.periodic_eval(self.method)
            self.logger.scalars(self.step, {"epoch": epoch, **metrics})
        # A probe on a large labelled set may outlast the training timeout that detects dead peers.
        long_barrier()

    def log_step(self, loss: float, logs: dict, lr: float, images_per_s: float) -> None:
        values = {"loss": loss, "lr": lr, "epoch": self.step / self.steps_per_epoch, "img_per_s": images_per_s}
        values.update({k: float(v) for k, v in logs.items()})
        self.logger.scalars(self.step, values)

    # ----- the loop -----
    def fit(self) -> None:
        if self.dist.is_main and self.cfg.train.picture_images > 0:
            with self.looking():  # decoding and views draw from the global RNGs: pictures stay state-free
                self.pic_batch = builders.picture_batch(self.dataset, self.cfg.train.picture_images)
        if self.step == 0:
            self.pictures("epoch_000")
        loader, _ = builders.build_loader(self.cfg, self.dataset, self.dist, self.step, self.end_step,
                                          self.method.sampler_shard_period_epochs())
        bar = progress_bar(self.cfg.train.progress and self.dist.is_main, self.step, self.end_step)
        expected = ExpectedDuration(self.step, self.end_step, enabled=self.dist.is_main)
        tic = time.perf_counter()
        for batch in loader:
            self.pending_skips = self.new_skips(batch)
            if batch["size"] == 0:
                self.record_skips(self.pending_skips)
                raise TooManyBadImagesError(f"a whole batch at step {self.step} was unreadable")
            batch = builders.to_device(batch, self.dist.device)
            loss, logs, lr = self.guarded_step(batch)
            self.step += 1
            self.last_loss = loss
            if expected.update(self.step):
                log.info("%s", expected.message)
            toc = time.perf_counter()
            img_s = batch["size"] * self.dist.world_size / max(toc - tic, 1e-9)
            tic = toc
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{img_s:.1f}")
            if self.step % self.cfg.train.log_every == 0 or self.step == self.end_step:
                self.log_step(loss, logs, lr, img_s)
            self.check_skips()  # the same set on every rank: all stop after the same (logged) step, one message
            if self.step % self.steps_per_epoch == 0:
                epoch = self.step // self.steps_per_epoch
                if epoch % self.cfg.train.picture_every_epochs == 0 or self.step == self.end_step:
                    self.pictures(f"epoch_{epoch:03d}")
                self.maybe_evaluate(epoch)
            if self.step % self.cfg.train.checkpoint_every == 0 or self.step == self.end_step:
                self.save()
            if self.stop_signal:  # the same on every rank (the step's flags)
                self.stopped_by = self.stop_signal
                self.save()
                log.warning("stop requested: checkpoint saved at step %d; resume with --resume auto", self.step)
                break
        if bar is not None:
            bar.close()
        if self.step == self.end_step and self.step % self.steps_per_epoch != 0:
            self.pictures("final")
            self.maybe_evaluate(self.step / self.steps_per_epoch)  # a run ending mid-epoch is still probed
        self.logger.close()


def pretrain(cfg: Config, *, resume: str | None = None, allow_config_change: bool = False,
             overwrite: bool = False, report: bool = False) -> Path:
    """Train `cfg` (resuming if asked) and return the run folder; `engine.startup` says what is refused.
    `report`: rank 0 prints the finished run's summary (`engine.summary`; the CLI asks for it)."""
    startup.check_environment(cfg)
    dist_info = init_distributed(cfg.train.device)
    run_dir = Path(cfg.train.out_dir) / cfg.train.name
    created, trainer = False, None
    try:
        ckpt_path = resolve_resume(run_dir, resume)
        startup.claim_run_dir(run_dir, resume, overwrite, dist_info)
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        startup.seed_rngs(cfg.train.seed)
        with startup.interrupt_on_sigterm():  # the region-prior build can take hours: Ctrl-C/SIGTERM stop it
            trainer = Trainer(cfg, dist_info, run_dir)
        if ckpt_path is None:  # a resumed run's weights come from its checkpoint
            builders.init_backbone(cfg, trainer.method)
        if ckpt_path is not None:
            trainer.load_state_dict(checked_resume_state(ckpt_path, cfg, allow_config_change, dist_info.world_size),
                                    ckpt_path)
            if trainer.step >= trainer.end_step:  # every rank alike: nothing to train, no collective
                if dist_info.is_main:
                    log.info("%s", already_complete(trainer.step, trainer.plan))
                trainer.logger.close()
                return run_dir
            log.info("resumed from %s at step %d", ckpt_path, trainer.step)
        startup.check_bad_images(trainer)
        if dist_info.is_main:
            save_config(cfg, run_dir / "config.yaml")
        start_step, tic = trainer.step, time.perf_counter()
        with StopOnSignals(trainer):
            try:
                trainer.fit()
            except TooManyBadImagesError:  # raised between steps: keep the steps done
                trainer.save_if_unsaved()
                raise
        if trainer.stopped_by and trainer.step < trainer.end_step:  # exit 130/143, not 0 (cli.py)
            raise interrupted(trainer.stopped_by, trainer.step, checkpoint_path(run_dir, trainer.step))
        if report and dist_info.is_main:
            print(run_summary(run_dir, step=trainer.step, start_step=start_step, global_batch=trainer.global_batch,
                              seconds=time.perf_counter() - tic, final_loss=trainer.last_loss,
                              features=cfg.method.features, length=trainer.plan.length_text()), flush=True)
        return run_dir
    except BaseException as err:
        if trainer is not None:  # TensorBoard's writer thread would write into a removed folder
            trainer.logger.close()
        if created and dist_info.is_main:
            startup.clean_failed_run(run_dir, err)
        raise
    finally:
        shutdown()
