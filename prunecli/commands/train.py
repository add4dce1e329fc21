"""``prunecli train``: train (and, with a method, prune) a model; print and save the results."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from prunecli.commands.common import run_dir, typed_keys, user_errors_as_one_line


@hydra.main(version_base="1.3", config_path="pkg://prunecli.conf", config_name="train")
@user_errors_as_one_line
def main(cfg: DictConfig) -> float | None:
    from prunecli.engine.preempt import Preempted
    from prunecli.engine.trainer import Trainer
    from prunecli.report import report_run, run_table

    out = run_dir()
    try:
        results = Trainer(cfg, out, typed=typed_keys()).fit()
    except Preempted as exc:  # the checkpoint is written; the launcher runs us again
        print(f"prunecli: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(exc.exit_code) from None
    title = f"{results['model']} on {results['data']}"
    if results.pop("skipped", False):  # resume=auto on a finished run: its results as they are
        if _is_rank0():
            import rich

            rich.get_console().print(run_table(results, f"{title} (finished before)"))
    elif int(results.get("world_size", 1)) == 1 or _is_rank0():
        report_run(results, out, title=title)
    return results.get(results.get("metric", "top1"))  # the task's primary metric (sweepers)


def _is_rank0() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0
