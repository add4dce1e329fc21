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

        return ["source", "model", "description"], describe_models()
    if what == "datasets":
        from prunecli.data import describe_datasets

        return ["dataset", "description"], describe_datasets()
    from prunecli.cost import COSTS

    return ["cost", "description"], [(e.name, e.description) for e in COSTS.entries()]


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
