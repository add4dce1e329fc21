"""``prunecli train``: train (and, with a method, prune) a model; print and save the results."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from prunecli.commands.common import run_dir, typed_keys, user_errors_as_one_line


@hydra.main(version_base="1.3", config_path="pkg://prunecli.conf", config_name="train")
@user_errors_as_one_line
def main(cfg: DictConfig) -> float | None:
    from prunecli.engine.trainer import Trainer
    from prunecli.report import report_run

    out = run_dir()
    results = Trainer(cfg, out, typed=typed_keys()).fit()
    if int(results.get("world_size", 1)) == 1 or _is_rank0():
        report_run(results, out, title=f"{results['model']} on {results['data']}")
    return results.get(results.get("metric", "top1"))  # the task's primary metric (sweepers)


def _is_rank0() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0
