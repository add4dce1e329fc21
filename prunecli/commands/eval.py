"""``prunecli eval ckpt=RUN_DIR_OR_FILE``: the task's metrics (top-1/top-5 accuracy, or COCO and
VOC07 mAP for a detector), MACs and params of a trained model.

With ``ckpt`` (a training run/checkpoint, masks applied, or a ``prunecli slim`` file) the model
and dataset come from the file's own config (so the right architecture is rebuilt); ``data.*``
overrides typed on the command line still apply, e.g. a different ``data.root``, and
``data=NAME`` evaluates on another dataset (with as many classes as the model has). Without
``ckpt`` the ``model`` config is built, with ``model.weights=FILE`` for trained weights.

``baseline=RUN_OR_FILE`` (typically the dense model the pruned one came from) is evaluated on the
same images: its metric, the change, the MACs kept relative to it, and each class's figure beside
the model's, the classes that lost most first.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from prunecli.commands.common import run_dir, task_overrides, user_errors_as_one_line

log = logging.getLogger("prunecli")


@hydra.main(version_base="1.3", config_path="pkg://prunecli.conf", config_name="eval")
@user_errors_as_one_line
def main(cfg: DictConfig) -> float:
    from torch.utils.data import DataLoader

    from prunecli.data import build_datasets
    from prunecli.engine.distributed import resolve_device
    from prunecli.engine.precision import Precision
    from prunecli.models import build_model
    from prunecli.models.detection import core_of, native_input_size
    from prunecli.report import report_run
    from prunecli.reporting.baseline import against_baseline
    from prunecli.tasks import build_task

    t0 = time.time()
    model_cfg, data_cfg, model, classes, chans = cfg.model, cfg.data, None, None, None
    names = None  # the model's class names, when its file has them
    if cfg.ckpt:
        own = load_evaluated(cfg.ckpt)
        model, model_cfg, classes, chans, names = (own.model, own.model_config, own.num_classes,
                                                   own.in_chans, own.class_names)
        saved_data = own.data_config or cfg.data
        if not any(o.split("=", 1)[0] == "data" for o in task_overrides()):
            # the run's own dataset, with the data.* keys typed here (data=NAME: cfg.data as
            # composed, those keys included)
            data_over = [o.lstrip("+")[len("data."):] for o in task_overrides()
                         if o.lstrip("+").startswith("data.")]
            data_cfg = OmegaConf.merge(saved_data, OmegaConf.from_dotlist(data_over))
    size = native_input_size(model_cfg)  # a detector's input size, unless data sets one
    if size is not None and data_cfg.image_size is None:
        data_cfg.image_size = size
    device = resolve_device(cfg.trainer.device)
    data = build_datasets(data_cfg)
    task = build_task(data, data_cfg)
    check_fits(str(cfg.ckpt), classes, chans, names, data, data_cfg.name)
    if model is None:
        model = build_model(model_cfg, num_classes=data.num_classes, in_chans=data.channels)
    loader = DataLoader(data.val, batch_size=data_cfg.eval_batch_size or 2 * data_cfg.batch_size,
                        num_workers=data_cfg.num_workers, collate_fn=task.collate_fn)
    example = task.example_input(data.val).to(device)
    precision = Precision(cfg.trainer.precision, device)

    def evaluate(net: Any, name: str, masked: Evaluated | None) -> dict[str, Any]:
        task.check_model(net, name, data_cfg.name)
        net.to(device)
        metrics = task.evaluate(net, loader, device, precision,
                                limit=cfg.trainer.limit_val_batches, per_class=True)
        return {"model": name, "data": data_cfg.name, "task": task.name, "metric": task.metric,
                **task.results(metrics), "samples": metrics.get("samples", metrics.get("images")),
                **costs(core_of(net), example, masked)}

    results = evaluate(model, model_cfg.name, own if cfg.ckpt else None)
    if cfg.baseline:
        base = load_evaluated(cfg.baseline)
        check_fits(str(cfg.baseline), base.num_classes, base.in_chans, base.class_names, data,
                   data_cfg.name, who="the baseline")
        results = against_baseline(results, evaluate(base.model, base.model_config.name, base),
                                   str(cfg.baseline))
    results.update(wall_time_s=round(time.time() - t0, 2),
                   checkpoint=str(cfg.ckpt) if cfg.ckpt else model_cfg.weights)
    report_run(results, run_dir(), title=f"eval: {model_cfg.name} on {data_cfg.name}")
    return results[task.metric]


@dataclass
class Evaluated:
    """A saved model and what its file says about the data it was trained on."""

    model: Any
    model_config: DictConfig
    data_config: Any  # the run's data config, None when the file has none
    num_classes: int
    in_chans: int
    class_names: list[str] | None
    structure: Any = None  # a masked training checkpoint's channel structure ...
    keep: Any = None  # ... and the channels its masks keep (None or empty: nothing masked)


def costs(core: Any, example: Any, masked: Evaluated | None) -> dict[str, Any]:
    """MACs and params of what ``core`` computes: a masked checkpoint's are those of the channels
    its masks keep (what its slimmed model will cost), with the dense figures beside them."""
    from prunecli.cost import build_cost_model, count_macs, count_params

    macs, params = count_macs(core, example), count_params(core)
    if masked is None or not masked.keep:
        return {"macs": macs, "params": params}
    counts = {g: len(idx) for g, idx in masked.keep.items()}
    kept = {name: round(build_cost_model(name, core, masked.structure, example).cost(counts))
            for name in ("macs", "params")}
    return {**kept, "dense_macs": macs, "dense_params": params}


def load_evaluated(path: str) -> Evaluated:
    """A `prunecli slim` file, or a training run / checkpoint with its masks applied."""
    from prunecli.structure.from_checkpoint import load_masked_model
    from prunecli.structure.io import is_slim_file, load_slim

    if is_slim_file(path):
        small = load_slim(path)
        return Evaluated(small.model, OmegaConf.create(small.model_config),
                         small.extra.get("data_config"), small.num_classes, small.in_chans,
                         small.extra.get("class_names"))
    loaded = load_masked_model(path)
    return Evaluated(loaded.model, OmegaConf.create(loaded.model_config), loaded.data_config,
                     loaded.num_classes, loaded.in_chans, loaded.class_names, loaded.structure,
                     loaded.keep)


def check_fits(path: str, classes: int | None, chans: int | None, names: Any, data: Any,
               data_name: str, who: str = "the model") -> None:
    """A one-line error when the model in ``path`` cannot be scored on ``data`` (another class
    count or input channels); a warning when its class names differ."""
    from prunecli.errors import ConfigError

    if classes is not None and data.num_classes != classes:
        raise ConfigError(f"{path} holds a model of {classes} classes but data={data_name} "
                          f"has {data.num_classes}; evaluate it on a dataset with its classes "
                          "(data.class_names=[...] picks and orders them)")
    if chans is not None and data.channels != chans:
        raise ConfigError(f"{path} holds a model of {chans}-channel input but "
                          f"data={data_name} gives {data.channels}-channel images; set "
                          f"data.channels={chans}")
    if names and data.class_names and list(names) != list(data.class_names):
        differ = [f"{i}: {a} / {b}" for i, (a, b) in enumerate(zip(names, data.class_names,
                                                                  strict=True)) if a != b]
        log.warning("%s's classes are not data=%s's (label: model / data: %s%s); its "
                    "outputs are scored as data's classes by position", who, data_name,
                    ", ".join(differ[:5]), ", ..." if len(differ) > 5 else "")
