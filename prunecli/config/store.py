"""Register the typed schemas in Hydra's ConfigStore.

Group YAML files start from these (``defaults: [/schema/<group>@_here_, _self_]``), so Hydra
itself rejects an unknown key or a wrongly typed value (YAML, experiment, command line). The
schemas sit in a ``schema`` group of their own so they never show up as choices of ``model``,
``method``, ...

Experiment configs (top-level ``experiments/``, installed as ``prunecli.conf.experiment``) are
registered here as the ``experiment`` group, which makes ``experiment=NAME`` work from an
editable install and a wheel alike.
"""

from __future__ import annotations

import os
from importlib.resources import files

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from prunecli.config import schema
from prunecli.methods.schemas import METHOD_SCHEMAS

_GROUPS = {
    "model": schema.ModelConfig,
    "data": schema.DataConfig,
    "optim": schema.OptimConfig,
    "trainer": schema.TrainerConfig,
    "cost": schema.CostConfig,
}
# each command's primary config
PRIMARY_SCHEMAS = {
    "train": schema.TrainConfig, "eval": schema.EvalConfig, "list": schema.ListConfig,
    "slim": schema.SlimConfig, "inspect": schema.InspectConfig, "export": schema.ExportConfig,
    "bench": schema.BenchConfig, "lut": schema.LutConfig, "report": schema.ReportConfig,
}

_done = False


def register_resolvers() -> None:
    """``${rank_zero_only:VALUE}``: VALUE on the first torchrun rank (or without torchrun),
    null elsewhere, so only rank 0 writes Hydra's files into the shared run folder.
    ``${workers:N}``: N data-loading processes, at most the CPU cores this process may use
    (shared by the ranks of a node).
    ``${run_id:FORMAT}``: the output folder's id, the same on every rank of one run (see
    :func:`prunecli.engine.slurm.run_id`)."""
    if not OmegaConf.has_resolver("rank_zero_only"):
        OmegaConf.register_new_resolver(
            "rank_zero_only", lambda value: value if os.environ.get("RANK", "0") == "0" else None)
    if not OmegaConf.has_resolver("workers"):
        OmegaConf.register_new_resolver("workers", data_workers)
    if not OmegaConf.has_resolver("run_id"):
        from prunecli.engine.slurm import run_id

        # cached: every use in one process (run dir, sweep dir) gives the same id, as `now`
        OmegaConf.register_new_resolver("run_id", run_id, use_cache=True)


def data_workers(most: int) -> int:
    """``most`` loader workers, capped by this rank's share of the usable CPU cores (PyTorch
    warns when a loader has more workers than cores, and they only contend)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    per_rank = max(1, (cores or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    return min(int(most), per_rank)


def register_schemas() -> None:
    """Idempotent: the CLI and the tests both call it."""
    global _done
    if _done:
        return
    cs = ConfigStore.instance()
    for group, node in _GROUPS.items():
        cs.store(group="schema", name=group, node=node)
    for name, (node, _impl, _doc) in METHOD_SCHEMAS.items():
        cs.store(group="schema/method", name=name, node=node)
    for name, node in PRIMARY_SCHEMAS.items():
        cs.store(group="schema", name=name, node=node)
    # A wheel installs experiments/ as prunecli/conf/experiment, where Hydra finds it by itself;
    # an editable install maps it elsewhere, so it is registered here (never both: Hydra
    # would take the stored node for a schema of the file).
    if not files("prunecli.conf").joinpath("experiment").is_dir():
        _register_experiments(cs)
    _done = True


def config_groups() -> set[str]:
    """The names a bare ``NAME=option`` override may choose: prunecli's config groups
    (``conf/<group>/``), ``experiment`` and Hydra's own."""
    root = files("prunecli.conf")
    return {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")} | {
        "experiment", "hydra"}


def _register_experiments(cs: ConfigStore) -> None:
    for path in sorted(files("prunecli.conf.experiment").iterdir(), key=lambda p: p.name):
        if path.name.endswith(".yaml"):
            node = OmegaConf.create(path.read_text())
            cs.store(group="experiment", name=path.name[: -len(".yaml")], node=node,
                     package="_global_")
