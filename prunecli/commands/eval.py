"""``prunecli eval ckpt=RUN_DIR_OR_FILE``: the task's metrics (top-1/top-5 accuracy, or COCO and
VOC07 mAP for a detector), MACs and params of a trained model.

With ``ckpt`` (a training run/checkpoint, masks applied, or a ``prunecli slim`` file) the model
and dataset come from the file's own config (so the right architecture is rebuilt); ``data.*``
overrides typed on the command line still apply, e.g. a different ``data.root``, and
``data=NAME`` evaluates on another dataset (with as many classes as the model has). Without
``ckpt`` the ``model`` config is built, with ``model.weights=FILE`` for trained weights.
"""

from __future__ import annotations

import logging
import time

import hydra
from omegaconf import DictConfig, OmegaConf

from prunecli.commands.common import run_dir, task_overrides, user_errors_as_one_line

log = logging.getLogger("prunecli")


@hydra.main(version_base="1.3", config_path="pkg://prunecli.conf", config_name="eval")
@user_errors_as_one_line
def main(cfg: DictConfig) -> float:
    from torch.utils.data import DataLoader

    from prunecli.cost import count_macs, count_params
    from prunecli.data import build_datasets
    from prunecli.engine.distributed import resolve_device
    from prunecli.engine.precision import Precision
    from prunecli.errors import ConfigError
    from prunecli.models import build_model
    from prunecli.models.detection import core_of, native_input_size
    from prunecli.report import report_run
    from prunecli.structure.from_checkpoint import load_masked_model
    from prunecli.structure.io import is_slim_file, load_slim
    from prunecli.tasks import build_task

    t0 = time.time()
    model_cfg, data_cfg, model, classes, chans = cfg.model, cfg.data, None, None, None
    names = None  # the model's class names, when its file has them
    if cfg.ckpt:
        if is_slim_file(cfg.ckpt):  # a `prunecli slim` output
            small = load_slim(cfg.ckpt)
            model, saved_data = small.model, small.extra.get("data_config") or cfg.data
            model_cfg = OmegaConf.create(small.model_config)
            classes, chans = small.num_classes, small.in_chans
            names = small.extra.get("class_names")
        else:  # a training checkpoint; masked channels stay masked
            loaded = load_masked_model(cfg.ckpt)
            model, saved_data = loaded.model, loaded.data_config
            model_cfg = OmegaConf.create(loaded.model_config)
            classes, chans = loaded.num_classes, loaded.in_chans
            names = loaded.class_names
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
    if classes is not None and data.num_classes != classes:
        raise ConfigError(f"{cfg.ckpt} holds a model of {classes} classes but data={data_cfg.name} "
                          f"has {data.num_classes}; evaluate it on a dataset with its classes "
                          "(data.class_names=[...] picks and orders them)")
    if chans is not None and data.channels != chans:
        raise ConfigError(f"{cfg.ckpt} holds a model of {chans}-channel input but "
                          f"data={data_cfg.name} gives {data.channels}-channel images; set "
                          f"data.channels={chans}")
    if names and data.class_names and list(names) != list(data.class_names):
        differ = [f"{i}: {a} / {b}" for i, (a, b) in enumerate(zip(names, data.class_names,
                                                                  strict=True)) if a != b]
        log.warning("the model's classes are not data=%s's (label: model / data: %s%s); its "
                    "outputs are scored as data's classes by position", data_cfg.name,
                    ", ".join(differ[:5]), ", ..." if len(differ) > 5 else "")
    if model is None:
        model = build_model(model_cfg, num_classes=data.num_classes, in_chans=data.channels)
    task.check_model(model, model_cfg.name, data_cfg.name)
    model.to(device)
    loader = DataLoader(data.val, batch_size=data_cfg.eval_batch_size or 2 * data_cfg.batch_size,
                        num_workers=data_cfg.num_workers, collate_fn=task.collate_fn)
    metrics = task.evaluate(model, loader, device, Precision(cfg.trainer.precision, device),
                            limit=cfg.trainer.limit_val_batches, per_class=True)
    example = task.example_input(data.val).to(device)
    results = {"model": model_cfg.name, "data": data_cfg.name, "task": task.name,
               "metric": task.metric, **task.results(metrics),
               "samples": metrics.get("samples", metrics.get("images")),
               "macs": count_macs(core_of(model), example),
               "params": count_params(core_of(model)), "wall_time_s": round(time.time() - t0, 2),
               "checkpoint": str(cfg.ckpt) if cfg.ckpt else model_cfg.weights}
    report_run(results, run_dir(), title=f"eval: {model_cfg.name} on {data_cfg.name}")
    return results[task.metric]
