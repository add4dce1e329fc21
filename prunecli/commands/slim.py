"""``prunecli slim ckpt=RUN_DIR``: from a masked training checkpoint, write the slimmed model,
check it against the masked model on a batch, and print MACs/params before and after."""

from __future__ import annotations

from pathlib import Path

import hydra
import rich
from omegaconf import DictConfig
from rich.table import Table

from prunecli.commands.common import user_errors_as_one_line
from prunecli.errors import CheckpointError, PrunecliError


@hydra.main(version_base="1.3", config_path="pkg://prunecli.conf", config_name="slim")
@user_errors_as_one_line
def main(cfg: DictConfig) -> float:
    import torch

    from prunecli.cost import count_macs, count_params
    from prunecli.engine.checkpoint import resolve_checkpoint
    from prunecli.models.detection import core_of
    from prunecli.structure import save_slim, slim
    from prunecli.structure.from_checkpoint import load_masked_model
    from prunecli.structure.slim import max_relative_difference

    source = resolve_checkpoint(cfg.ckpt)
    loaded = load_masked_model(source)
    if not loaded.keep:
        raise CheckpointError(f"{source} has no pruned channels (no masks, or all channels "
                              "kept): nothing to slim; train with a pruning method first")
    small = slim(loaded.model, loaded.structure, loaded.keep)
    x = torch.randn(cfg.batch_size, *loaded.example.shape[1:],
                    generator=torch.Generator().manual_seed(0))
    diff = max_relative_difference(loaded.model, small, x)
    if diff > cfg.tolerance:
        raise PrunecliError(f"slimmed model differs from the masked model by {diff:.2e} "
                            f"(> tolerance {cfg.tolerance}); please report this model")
    out = Path(cfg.out) if cfg.out else source.parent / "slim.pt"
    save_slim(out, small, loaded.structure, loaded.keep, loaded.model_config,
              loaded.num_classes, loaded.in_chans,
              extra={"source": str(source), "epoch": loaded.epoch,
                     "data_config": loaded.data_config, "class_names": loaded.class_names})

    dense_net, small_net = core_of(loaded.model), core_of(small)  # a detector: its core
    macs = (count_macs(dense_net, loaded.example), count_macs(small_net, loaded.example))
    params = (count_params(dense_net), count_params(small_net))
    table = Table(title=f"slim {loaded.model_config['name']}", title_justify="left")
    for col in ("", "dense", "slim", "kept"):
        table.add_column(col, justify="right")
    table.add_row("MACs", f"{macs[0] / 1e6:.2f} M", f"{macs[1] / 1e6:.2f} M",
                  f"{100 * macs[1] / max(1, macs[0]):.1f} %")
    table.add_row("params", f"{params[0] / 1e6:.3f} M", f"{params[1] / 1e6:.3f} M",
                  f"{100 * params[1] / max(1, params[0]):.1f} %")
    console = rich.get_console()
    console.print(table)
    console.print(f"{len(loaded.keep)} groups pruned; masked vs slimmed on {cfg.batch_size} "
                  f"inputs: max relative difference {diff:.1e}")
    if loaded.planned_epochs is not None and loaded.epoch < loaded.planned_epochs:
        console.print(f"[yellow]note:[/yellow] {source} is from epoch {loaded.epoch} of "
                      f"{loaded.planned_epochs}: these are the masks so far, not necessarily "
                      "the method's last ones (continue the run with resume=RUN to finish it)")
    console.print(f"slim model: [bold]{out.resolve()}[/bold] "
                  "(load with prunecli.structure.load_slim)")
    return diff
