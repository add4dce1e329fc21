"""``prunecli list [what=methods|models|datasets|costs|all]``: what the registries hold."""

from __future__ import annotations

import hydra
import rich
from omegaconf import DictConfig
from rich.table import Table

from prunecli.commands.common import user_errors_as_one_line
from prunecli.errors import ConfigError

SECTIONS = ("methods", "models", "datasets", "costs")


def _rows(what: str) -> tuple[list[str], list[tuple[str, ...]]]:
    if what == "methods":
        from prunecli.methods import describe_methods

        return ["method", "description"], describe_methods()
    if what == "models":
        from prunecli.models import describe_models

        choices = _model_choices()
        rows = [(_how_to_use(source, name, choices), source, desc)
                for source, name, desc in describe_models()]
        rows += [(f"model={option}", source, f"shortcut for {source} '{name}'")
                 for (source, name), option in choices.items() if source != "prunecli"]
        return ["use as", "source", "description"], rows
    if what == "datasets":
        from prunecli.data import describe_datasets

        return ["dataset", "description"], describe_datasets()
    from prunecli.cost import COSTS

    return ["cost", "description"], [(e.name, e.description) for e in COSTS.entries()]


def _model_choices() -> dict[tuple[str, str], str]:
    """(source, registry name) -> the ``model=`` option whose YAML builds it."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    choices = {}
    for path in sorted(files("prunecli.conf").joinpath("model").iterdir(), key=lambda p: p.name):
        if path.name.endswith(".yaml"):
            node = OmegaConf.create(path.read_text())
            name = OmegaConf.select(node, "name", throw_on_missing=False, default=None)
            if name is not None and name != "???":
                choices[(str(node.source), str(name))] = path.name[: -len(".yaml")]
    return choices


def _how_to_use(source: str, name: str, choices: dict[tuple[str, str], str]) -> str:
    if (source, name) in choices:
        return f"model={choices[(source, name)]}"
    if name == "*":
        return f"model={source} model.name=NAME"
    return f"model={source} model.name={name}"


@hydra.main(version_base="1.3", config_path="pkg://prunecli.conf", config_name="list")
@user_errors_as_one_line
def main(cfg: DictConfig) -> None:
    if cfg.what != "all" and cfg.what not in SECTIONS:
        raise ConfigError(f"what={cfg.what} is not one of all, {', '.join(SECTIONS)}")
    console = rich.get_console()
    for section in SECTIONS if cfg.what == "all" else (cfg.what,):
        headers, rows = _rows(section)
        table = Table(title=section, title_justify="left")
        for h in headers:
            table.add_column(h)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    console.print("Use a name as a config choice, e.g. `prunecli train model=resnet56 "
                  "data=cifar10 data.root=PATH`; any torchvision/timm model with "
                  "`model=torchvision model.name=NAME` or `model=timm model.name=NAME`.")
