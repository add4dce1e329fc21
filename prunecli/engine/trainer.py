"""The training loop: plain PyTorch, one code path for CPU/CUDA, single process or DDP.

Pruning methods plug in through :class:`prunecli.engine.events.TrainingHooks`; this module knows
nothing about any of them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from prunecli.config.paths import anchor_paths
from prunecli.cost import count_macs, count_params
from prunecli.cost.counting import count_macs_on_data
from prunecli.data import DatasetBundle, build_datasets
from prunecli.engine import checkpoint as ckpt_io
from prunecli.engine.distill import build_distiller
from prunecli.engine.distributed import DistEnv, barrier, init_distributed, quiet_non_main_rank
from prunecli.engine.events import HookContext, TrainingHooks
from prunecli.engine.loaders import build_loaders, workers_stopped_after
from prunecli.engine.optim import build_optimizer, build_scheduler, choose_lr, param_groups
from prunecli.engine.precision import Precision
from prunecli.engine.preempt import PreemptionWatch
from prunecli.engine.progress import make_progress
from prunecli.engine.resume import (
    auto_resume,
    finished_results,
    merge_resume_config,
    refuse_to_overwrite,
)
from prunecli.engine.run_log import RunLog
from prunecli.engine.seed import seed_everything, set_deterministic, set_rng_state
from prunecli.engine.slim_training import transfer_optimizer_state
from prunecli.engine.trainer_state import TrainerState
from prunecli.errors import ConfigError, DivergedError
from prunecli.methods import build_method
from prunecli.models import build_model
from prunecli.models.detection import core_of, lr_warning, native_input_size
from prunecli.tasks import Task, build_task

log = logging.getLogger("prunecli")

class Trainer(TrainerState):
    """Builds everything a run needs from its config and trains it.

    ``run_dir`` receives the checkpoints (``last.pt``), ``metrics.jsonl`` and the results; only
    rank 0 writes there.
    """

    def __init__(self, cfg: DictConfig, run_dir: str | Path,
                 typed: Collection[str] | None = None) -> None:
        """``typed``: the config keys the user set on the command line (see
        :func:`merge_resume_config`); ``None`` for a config built in Python."""
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.typed = typed
        self.resume_state: dict[str, Any] | None = None
        # the last checkpoint written (or resumed from) and its epoch
        self._saved_epoch, self._saved_path = 0, Path(run_dir) / ckpt_io.LAST
        # a checkpoint written mid-epoch: where the epoch continues, and its per-rank state
        self._resume_batch, self._resume_meter, self._resume_rng = 0, {}, None

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.cfg
        if cfg.resume == "auto":  # this run's own folder: continue it if it has a checkpoint
            found = auto_resume(self.run_dir)
            OmegaConf.update(cfg, "resume", None if found is None else str(found))
        self.resume_path = ckpt_io.resolve_checkpoint(cfg.resume) if cfg.resume else None
        refuse_to_overwrite(self.run_dir, resuming=self.resume_path)
        if self.resume_path is not None:
            state = ckpt_io.load_checkpoint(self.resume_path)
            ckpt_io.require_training_checkpoint(state, self.resume_path)
            self.cfg = cfg = merge_resume_config(cfg, state["config"], self.typed)
            self.resume_state = state
        anchor_paths(cfg)  # the saved config reads the same from any folder
        tcfg = cfg.trainer
        if tcfg.threads:
            torch.set_num_threads(tcfg.threads)
        self.dist: DistEnv = init_distributed(tcfg.device)
        self.device = self.dist.device
        if not self.dist.is_main:
            quiet_non_main_rank()
        set_deterministic(tcfg.deterministic, self.device)
        seed_everything(cfg.seed)  # same on every rank: identical initial weights
        self.precision = Precision(tcfg.precision, self.device)
        self.memory_format = torch.channels_last if tcfg.channels_last else torch.contiguous_format

        size = native_input_size(cfg.model)  # a detector's input size, unless data sets one
        if size is not None and cfg.data.image_size is None:
            OmegaConf.update(cfg, "data.image_size", size)
        self.data: DatasetBundle = build_datasets(cfg.data)
        self.task: Task = build_task(self.data, cfg.data, tcfg.label_smoothing)
        model = build_model(cfg.model, num_classes=self.data.num_classes,
                            in_chans=self.data.channels)
        self.task.check_model(model, cfg.model.name, cfg.data.name)
        # the teacher is taken before a method edits the model
        self.distiller = build_distiller(cfg, model, self.task, self.device, self.memory_format)
        self.model: nn.Module = model.to(self.device, memory_format=self.memory_format)
        self._build_loaders()
        example = self.task.example_input(self.data.val).to(self.device,
                                                             memory_format=self.memory_format)
        # costs are the prunable part's: a classifier, or a detector's core (backbone, heads)
        self.dense_macs = count_macs_on_data(core_of(self.model), example, cfg.model.name)
        self.dense_params = count_params(core_of(self.model))

        accum = tcfg.grad_accum
        if accum < 1:
            raise ConfigError(f"trainer.grad_accum={accum} must be >= 1")
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / accum)
        self.global_batch = cfg.data.batch_size * self.dist.world_size * accum
        if (chosen := choose_lr(cfg.model, cfg.optim, self.global_batch, self.steps_per_epoch,
                                tcfg.epochs * self.steps_per_epoch)) and self.dist.is_main:
            log.info(chosen)
        self.method: TrainingHooks = build_method(cfg.method)
        self.hooks: TrainingHooks = self.method  # per-step hooks; a no-op once slimmed in training
        self.slimmed = False
        self.ctx = HookContext(model=self.model, config=cfg, dist=self.dist,
                               example_inputs=example, epochs=tcfg.epochs,
                               steps_per_epoch=self.steps_per_epoch,
                               grad_scaler=self.precision.scaler, run_dir=self.run_dir,
                               evaluate=self._evaluate, metric=self.task.metric,
                               class_names=self.data.class_names)
        self.method.setup(self.ctx)
        if tcfg.sync_bn and self.device.type != "cuda":
            raise ConfigError("trainer.sync_bn=true needs CUDA (PyTorch's SyncBatchNorm runs "
                              "only on GPUs); leave it off on the CPU")
        if self.dist.distributed and tcfg.sync_bn:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.ctx.model = self.model

        self.optimizer, self.scheduler = self._build_optimizer()
        self.ctx.optimizer, self.ctx.scheduler = self.optimizer, self.scheduler
        self.start_epoch = 0
        if self.resume_state is not None:
            self._restore(self.resume_state)
        else:  # a different augmentation stream per rank, reproducible from the seed
            seed_everything(cfg.seed + 1000 * self.dist.rank + 1)

        self.train_model: nn.Module = self.model
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        if self.distiller is not None:
            self.distiller.attach(self.model)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = RunLog(self.run_dir if self.dist.is_main else None,
                             OmegaConf.select(cfg, "logger", default="jsonl"),
                             fresh=self.resume_state is None)
        self.ctx.record = self.writer.write
        self.preempt = PreemptionWatch(self.dist.distributed)

    def _build_optimizer(self) -> tuple[torch.optim.Optimizer, Any]:
        cfg = self.cfg
        groups = param_groups(self.model, cfg.optim.weight_decay, cfg.optim.decay_norm_and_bias,
                              cfg.optim.bias_lr_factor, cfg.optim.lr)
        groups = self.method.param_groups(groups)
        optimizer = build_optimizer(groups, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.optim, cfg.trainer.epochs * self.steps_per_epoch,
                                    self.steps_per_epoch)
        return optimizer, scheduler

    def _slim_due(self) -> bool:
        return (not self.slimmed and bool(getattr(self.cfg.method, "slim_when_final", False))
                and bool(getattr(self.method, "masks_final", lambda: False)()))

    def _slim_in_training(self, keep: dict[int, torch.Tensor] | None = None,
                          check: bool = True) -> None:
        """Swap the masked model for its slimmed copy and carry the optimizer over (see
        :mod:`prunecli.engine.slim_training`); ``check``: compare the two first."""
        method: Any = self.method
        if keep is None:
            keep = method.pruned_keep()
        log_: dict = {}
        old_model, old_opt, old_sched = self.model, self.optimizer, self.scheduler
        small = method.slim_model(old_model, keep, log=log_)
        diff = method._check_equal(old_model, small, self.ctx.example_inputs) if check else None
        small.train(old_model.training)
        small.to(memory_format=self.memory_format)  # slicing made contiguous (NCHW) tensors
        self.model = self.ctx.model = small
        if self.distiller is not None:
            self.distiller.attach(small)
        self.optimizer, self.scheduler = self._build_optimizer()
        transfer_optimizer_state(old_opt, old_model, self.optimizer, small, log_)
        self.scheduler.load_state_dict(old_sched.state_dict())
        self.ctx.optimizer, self.ctx.scheduler = self.optimizer, self.scheduler
        if hasattr(self, "train_model"):
            self.train_model = self.model
            if self.dist.distributed:
                ids = [self.device.index] if self.device.type == "cuda" else None
                self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        self.hooks = TrainingHooks()
        self.slimmed = True
        method.mark_slimmed(keep, diff)
        if check:
            macs = count_macs(core_of(small), self.ctx.example_inputs)
            log.info("masks final at step %d: fine-tuning the slimmed model from here (%.1f%% "
                     "of the dense MACs)", self.ctx.step, 100.0 * macs / max(1, self.dense_macs))

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        """The validation metrics of ``model`` (any model of the same task, e.g. a slimmed one)."""
        return self.task.evaluate(model, self.val_loader, self.device, self.precision,
                                  self.cfg.trainer.channels_last,
                                  self.cfg.trainer.limit_val_batches)

    def _build_loaders(self) -> None:
        loaders = build_loaders(self.data, self.cfg, self.dist, self.device,
                                self.task.collate_fn)
        self.train_sampler, self.train_loader = loaders.sampler, loaders.train
        self.val_loader, self.batches_per_epoch = loaders.val, loaders.batches_per_epoch

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        t0 = time.time()
        if self.cfg.resume == "auto" and (done := finished_results(self.run_dir)) is not None:
            log.info("resume=auto: %s already finished (results.json); nothing to do",
                     self.run_dir)
            return {**done, "skipped": True}
        self._setup()
        cfg, tcfg = self.cfg, self.cfg.trainer
        (self.hooks if self.slimmed else self.method).on_train_start(self.ctx)
        if self.dist.is_main:
            log.info("run dir: %s", self.run_dir.resolve())
            log.info("%s on %s: %d train / %d val images, %d classes, %.2f M params, %.2f M MACs,"
                     " %s, world size %d, %d CPU threads", cfg.model.name, cfg.data.name,
                     len(self.data.train), len(self.data.val), self.data.num_classes,
                     self.dense_params / 1e6, self.dense_macs / 1e6, self.device,
                     self.dist.world_size, torch.get_num_threads())
            if advice := lr_warning(cfg.model, cfg.optim, self.global_batch):
                log.warning(advice)
        metrics: dict[str, float] = {}
        val: dict[str, float] = {}
        stopped_early = False
        train_time = 0.0
        progress = make_progress(tcfg.progress and self.dist.is_main)
        with progress or contextlib.nullcontext(), self.preempt, \
                workers_stopped_after(lambda: self.train_loader):
            for epoch in range(self.start_epoch, tcfg.epochs):
                te = time.time()
                train = self._train_epoch(epoch, progress)
                train_time += time.time() - te
                last = epoch + 1 == tcfg.epochs
                if (epoch + 1) % tcfg.eval_every == 0 or last:
                    val = self._evaluate(self.model)
                metrics = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in train.items()},
                           **{f"val_{k}": v for k, v in val.items()},
                           "lr": self.optimizer.param_groups[0]["lr"],
                           "epoch_time": time.time() - te}
                self.method.on_epoch_end(self.ctx, metrics)
                self._log_epoch(metrics)
                self._save(epoch + 1, metrics)
                if not last and self.preempt.requested():
                    self._stop_preempted()
                if tcfg.stop_after_epoch is not None and epoch + 1 >= tcfg.stop_after_epoch \
                        and not last:
                    stopped_early = True
                    log.warning("stopping after epoch %d as asked (trainer.stop_after_epoch); "
                                "continue with resume=%s", epoch + 1, self.run_dir)
                    break
        if self.distiller is not None:
            self.distiller.close()  # the final model carries no hook
        self.ctx.stopped_early = stopped_early
        summary = self.method.on_train_end(self.ctx)
        macs = count_macs(core_of(self.model), self.ctx.example_inputs)
        results = {
            "model": cfg.model.name, "data": cfg.data.name, "method": cfg.method.name,
            "task": self.task.name, "metric": self.task.metric,
            "epochs": metrics.get("epoch", self.start_epoch), **self.task.results(val),
            "macs": macs, "params": count_params(core_of(self.model)),
            "dense_macs": self.dense_macs, "dense_params": self.dense_params,
            "train_time_s": round(train_time, 2), "wall_time_s": round(time.time() - t0, 2),
            "world_size": self.dist.world_size, "device": str(self.device),
            "stopped_early": stopped_early, "run_dir": str(self.run_dir.resolve()),
            "checkpoint": str((self.run_dir / ckpt_io.LAST).resolve()), **summary,
        }
        if self.distiller is not None:
            results["distill"] = self.distiller.summary(train_time)
        self.writer.write(kind="results", **results)
        self.writer.close()
        barrier()
        return results

    def _stop_preempted(self) -> None:
        """The checkpoint is written: let a launcher's own handler run (submitit requeues the
        job), then end the run with :class:`Preempted`."""
        self.writer.write(kind="preempted", step=self.ctx.step, epoch=self._saved_epoch)
        self.writer.close()
        raise self.preempt.stop(self.ctx.step, f"{self._saved_path} (step {self.ctx.step})",
                                self.run_dir)

    def _train_epoch(self, epoch: int, progress: Any) -> dict[str, float]:
        tcfg, ctx = self.cfg.trainer, self.ctx
        skip, self._resume_batch = self._resume_batch, 0  # > 0: resumed mid-epoch
        ctx.epoch, ctx.micro_step = epoch, skip
        self.train_sampler.set_epoch(epoch)
        self.train_sampler.skip_next(skip * self.cfg.data.batch_size)
        self.train_model.train()
        meter = self.task.train_meter(self.device)
        batches = iter(self.train_loader)
        if skip:  # the hooks saw this epoch start before the checkpoint
            meter.load_state_dict(self._resume_meter)
            if self._resume_rng is not None:  # after iter(): creating it draws a seed
                set_rng_state(self._resume_rng)
        else:
            self.hooks.on_epoch_start(ctx)
        task = progress.add_task(f"epoch {epoch + 1}/{tcfg.epochs}", total=self.batches_per_epoch,
                                 completed=skip, info="") if progress else None
        accum, scaler = tcfg.grad_accum, self.precision.scaler
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(batches, start=skip):
            if i >= self.batches_per_epoch:
                break
            inputs, targets = self.task.to_device(batch, self.device, self.memory_format)
            boundary = (i + 1) % accum == 0 or i + 1 == self.batches_per_epoch
            sync = contextlib.nullcontext()
            if not boundary and isinstance(self.train_model, DistributedDataParallel):
                sync = self.train_model.no_sync()
            with sync:
                with self.precision.autocast():
                    loss, outputs = self.task.loss(self.train_model, inputs, targets)
                    objective = loss if self.distiller is None else self.distiller.mix(
                        loss, inputs, outputs)
                extra = self.hooks.extra_loss(ctx, outputs, targets)
                total = objective if extra is None else objective + extra.float()
                scaler.scale(total / accum).backward()
            ctx.micro_step = i + 1
            self.hooks.after_backward(ctx)
            meter.update(outputs, targets, loss.detach())
            if boundary:
                self._optimizer_step()
                if ctx.step % tcfg.log_every == 0:  # the only per-step host sync, when logging
                    self._check_finite(total, epoch)
                    self.writer.write(kind="train", epoch=epoch + 1, step=ctx.step,
                                      loss=float(loss.detach()),
                                      lr=self.optimizer.param_groups[0]["lr"])
                if i + 1 < self.batches_per_epoch and self.preempt.requested():
                    self._save(epoch, {}, batch_in_epoch=i + 1, meter=meter.state_dict())
                    self._stop_preempted()
            if task is not None:
                info = f"loss {loss.item():.3f}" if i % 20 == 0 else None
                progress.update(task, advance=1, **({"info": info} if info else {}))
        if task is not None:
            progress.remove_task(task)
        metrics = meter.compute()
        if self.distiller is not None:
            metrics.update(self.distiller.epoch_stats())
        self._check_finite(torch.tensor(metrics["loss"]), epoch)
        return metrics

    def _check_finite(self, loss: torch.Tensor, epoch: int) -> None:
        """Stop at a NaN/Inf loss (checked when logging and at the epoch's end, the host syncs
        the loop already has) before anything is saved: the last checkpoint stays the last
        good state, model and method alike."""
        if torch.isfinite(loss):
            return
        kept = (f"the last good checkpoint {self._saved_path} (epoch {self._saved_epoch}) is kept"
                if self._saved_epoch else "no checkpoint was written yet")
        raise DivergedError(
            f"training loss became {loss.item()} in epoch {epoch + 1} (step {self.ctx.step}); "
            f"{kept}; lower optim.lr, add optim.warmup_epochs or use trainer.precision=fp32, "
            "then resume or restart")

    def _optimizer_step(self) -> None:
        ctx, scaler, tcfg = self.ctx, self.precision.scaler, self.cfg.trainer
        scaler.unscale_(self.optimizer)  # methods and clipping see true gradients
        self.hooks.before_optimizer_step(ctx)
        if tcfg.clip_grad_norm:
            nn.utils.clip_grad_norm_(self.model.parameters(), tcfg.clip_grad_norm)
        scaler.step(self.optimizer)
        scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        ctx.step += 1
        self.hooks.after_optimizer_step(ctx)
        if self._slim_due():
            self._slim_in_training()

    # ------------------------------------------------------------------ output
    def _log_epoch(self, m: dict[str, float]) -> None:
        if not self.dist.is_main:
            return
        part = {k[4:]: v for k, v in m.items() if k.startswith("val_")}
        train = {k[6:]: v for k, v in m.items() if k.startswith("train_")}
        log.info("epoch %d/%d  train %s  val %s  lr %.4g  %.1f s", m["epoch"],
                 self.cfg.trainer.epochs, self.task.describe(train), self.task.describe(part),
                 m["lr"], m["epoch_time"])
        self.writer.write(kind="epoch", step=self.ctx.step, **m)
