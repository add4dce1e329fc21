"""``prunecli inspect model=NAME``: a table of the model's channel groups (``ckpt=RUN`` or
``ckpt=slim.pt``: with the kept/size of every pruned group). ``prunecli inspect data=NAME``:
the dataset instead (:mod:`prunecli.commands.inspect_data`)."""

from __future__ import annotations

import time

import hydra
import rich
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from prunecli.commands.common import model_input, user_errors_as_one_line
from prunecli.errors import ConfigError


def _names(items: list[str], limit: int = 2) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" +{len(items) - limit}" if len(items) > limit else "")


@hydra.main(version_base="1.3", config_path="pkg://prunecli.conf", config_name="inspect")
@user_errors_as_one_line
def main(cfg: DictConfig) -> None:
    import torch

    from prunecli.cost import build_cost_model, count_macs, group_macs
    from prunecli.models import architecture, build_model
    from prunecli.models.detection import core_of, is_detector
    from prunecli.structure import trace_structure
    from prunecli.structure.from_checkpoint import load_masked_model
    from prunecli.structure.io import is_slim_file, load_slim

    if cfg.get("data") is not None:  # `prunecli inspect data=NAME`: the dataset, not a model
        from prunecli.commands.inspect_data import inspect_data

        return inspect_data(cfg.data, cfg.threads)
    if cfg.show not in ("all", "prunable", "unprunable"):
        raise ConfigError(f"show={cfg.show} is not one of all, prunable, unprunable")
    keep: dict = {}
    if cfg.ckpt and is_slim_file(cfg.ckpt):  # a slim file: its dense architecture, kept/size
        small = load_slim(cfg.ckpt)
        model = build_model(architecture(small.model_config),
                            num_classes=small.num_classes, in_chans=small.in_chans).eval()
        structure, keep = small.structure, small.keep
        x = torch.zeros(structure.input_shape)
        title = f"{small.model_config['name']} from {cfg.ckpt}"
        seconds = None  # traced while loading
    elif cfg.ckpt:
        loaded = load_masked_model(cfg.ckpt)
        model, structure, keep, x = loaded.model, loaded.structure, loaded.keep, loaded.example
        title = f"{loaded.model_config['name']} from {cfg.ckpt}"
        seconds = None
        if cfg.ignore:
            t0 = time.perf_counter()
            structure = trace_structure(core_of(model), x, ignore=list(cfg.ignore))
            seconds = time.perf_counter() - t0
    else:
        shape, num_classes = model_input(cfg.model, cfg.input_size, cfg.num_classes)
        model = build_model(OmegaConf.to_container(cfg.model), num_classes=num_classes,
                            in_chans=shape[0]).eval()
        x = torch.randn(1, *shape)
        t0 = time.perf_counter()
        structure = trace_structure(core_of(model), x, ignore=list(cfg.ignore))
        seconds = time.perf_counter() - t0
        title = f"{cfg.model.name} at {'x'.join(map(str, shape))}"
        if is_detector(model):
            title += " (the detector's core: backbone, neck and heads)"
    model = core_of(model)  # a detector's costs and groups are its core's
    total = count_macs(model, x)
    macs_text = f"{total / 1e6:.1f} M MACs"
    if keep:  # what the pruned channels leave of the dense cost
        kept = build_cost_model("macs", model, structure, x).cost(
            {g: len(idx) for g, idx in keep.items()})
        macs_text = (f"{total / 1e6:.1f} M MACs dense, {kept / 1e6:.1f} M kept "
                     f"({100 * kept / max(1, total):.1f}%)")
    traced = "" if seconds is None else f"; traced in {seconds:.2f} s"
    per_group = group_macs(model, structure)

    table = Table(title=f"channel groups of {title}", title_justify="left")
    for col in ("group", "size", "producers", "cons.", "foll.", "MACs %", "prunable"):
        table.add_column(col, justify="right" if col in ("size", "cons.", "foll.", "MACs %")
                         else "left")
    for g in structure.groups:
        if not g.producers and not g.consumers:
            continue
        if (cfg.show == "prunable" and not g.prunable) or (
                cfg.show == "unprunable" and g.prunable):
            continue
        size = f"{len(keep[g.id])}/{g.size}" if g.id in keep else str(g.size)
        if g.unit > 1:  # pruned in whole conv groups of a grouped conv
            size += f" x{g.unit}"
        status = ("[green]yes[/green], droppable" if g.droppable else "[green]yes[/green]") \
            if g.prunable else f"[red]no[/red]: {g.reason}"
        table.add_row(g.key, size, _names(g.producers), str(len(g.consumers)),
                      str(len(g.followers) + len(g.params)),
                      f"{100.0 * per_group[g.id] / max(1, total):.1f}", status)
    console = rich.get_console()
    console.print(table)
    prunable = structure.prunable_channels() / max(1, structure.total_channels())
    console.print(
        f"{len(structure.groups)} groups, {len(structure.prunable_groups)} prunable "
        f"({len(structure.droppable_groups)} droppable whole: method.layer_drop=true) holding "
        f"{100 * prunable:.1f}% of the channels; {macs_text}{traced}. MACs % = share of the "
        "model's MACs in layers whose cost scales with "
        "the group's width; size xN: pruned in units of N channels (a grouped conv's groups).")
    if structure.unknown_ops:
        console.print(f"ops not understood (their channels stay whole): "
                      f"{', '.join(structure.unknown_ops)}")
