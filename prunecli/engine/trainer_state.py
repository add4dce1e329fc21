"""Saving and restoring a run's whole training state (the checkpoint ``last.pt``): model,
optimizer, scheduler, loss scaler, the method's state, every rank's RNG, and, for a run
preempted mid-epoch, where in the epoch it stopped and that epoch's training sums so far."""

from __future__ import annotations

import logging
from typing import Any

import torch.distributed as dist
from omegaconf import OmegaConf

from prunecli.engine import checkpoint as ckpt_io
from prunecli.engine.distributed import barrier
from prunecli.engine.seed import rng_state, seed_everything, set_rng_state

log = logging.getLogger("prunecli")


class TrainerState:
    """The :class:`~prunecli.engine.trainer.Trainer`'s checkpoint methods (a mixin: they read
    and set the trainer's attributes)."""

    cfg: Any
    dist: Any

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("slimmed"):  # the run was fine-tuning its slimmed model: rebuild it
            method: Any = self.method
            keep = method.structure.normalise_keep(state["slimmed"]["keep"])
            method.masker.set_keep(keep)
            self._slim_in_training(keep, check=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.precision.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state.get("method", {}))
        self.start_epoch = self._saved_epoch = int(state["epoch"])
        self._saved_path = self.resume_path
        self.ctx.step = int(state["step"])
        self._resume_batch = int(state.get("batch_in_epoch") or 0)
        rngs = state.get("rng") or []
        meters = state.get("meters") or []
        if len(rngs) == self.dist.world_size:
            if self._resume_batch:  # set once the epoch's loader iterator exists
                self._resume_rng = rngs[self.dist.rank]
                self._resume_meter = meters[self.dist.rank] if len(meters) == len(rngs) else {}
            else:
                set_rng_state(rngs[self.dist.rank])
        else:
            log.warning("resume: saved RNG states are for %d process(es), this run has %d; the "
                        "data order continues but augmentation differs", len(rngs),
                        self.dist.world_size)
            seed_everything(self.cfg.seed + 1000 * self.dist.rank + self.start_epoch)
        log.info("resumed from %s after epoch %d%s (step %d)", self.resume_path,
                 self.start_epoch, f" and {self._resume_batch} batches of the next"
                 if self._resume_batch else "", self.ctx.step)
        if self._resume_batch and self.cfg.data.num_workers > 0:
            log.warning("resume: this epoch continues with the same data order, but data "
                        "workers draw new augmentation seeds; an unbroken run would differ in "
                        "the augmentation of this epoch's remaining batches")

    def _save(self, epochs_done: int, metrics: dict[str, float], batch_in_epoch: int = 0,
              meter: dict[str, Any] | None = None) -> None:
        """``batch_in_epoch`` > 0: written mid-epoch (preempted) after that many batches of
        the next epoch, whose training sums so far are ``meter`` (this rank's)."""
        mine = (rng_state(), meter or {})
        per_rank = [mine]
        if self.dist.distributed:  # every rank's RNG and sums: each resumes its own
            per_rank = [None] * self.dist.world_size  # type: ignore[list-item]
            dist.all_gather_object(per_rank, mine)
        if self.dist.is_main:
            state = {
                "version": ckpt_io.CHECKPOINT_VERSION,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.precision.scaler.state_dict(),
                "method": self.method.state_dict(),
                "slimmed": {"keep": self.method.structure.ids_to_keys(  # type: ignore[attr-defined]
                    self.method.slimmed_keep)} if self.slimmed else None,
                "rng": [r for r, _ in per_rank],
                "meters": [m for _, m in per_rank],
                "epoch": epochs_done,
                "batch_in_epoch": batch_in_epoch,
                "step": self.ctx.step,
                "metrics": metrics,
                "config": OmegaConf.to_container(self.cfg, resolve=True),
                "data_info": {"num_classes": self.data.num_classes,
                              "channels": self.data.channels,
                              "image_size": self.data.image_size, "task": self.task.name,
                              "class_names": self.data.class_names},
            }
            ckpt_io.save_atomic(state, self.run_dir / ckpt_io.LAST)
        self._saved_epoch, self._saved_path = epochs_done, self.run_dir / ckpt_io.LAST
        barrier()

