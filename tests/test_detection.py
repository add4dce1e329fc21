"""Detection end to end through the commands: train, eval, resume, torchrun, inspect, bench,
export, on the embedded scenes and on VOC / COCO folders in their own layouts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from prunecli.config.schema import OptimConfig
from prunecli.engine.optim import lr_factor_fn, param_groups
from prunecli.errors import ConfigError
from tests.conftest import console_script, read_results, torchrun_train
from tests.det_fixtures import make_coco, make_voc

# the embedded demo, made small: 64 training scenes, 24 test scenes, one epoch
SMALL_DEMO = ("experiment=detect_demo", "data.train_size=64", "data.val_size=24",
              "data.batch_size=16", "trainer.epochs=1", "trainer.threads=1")


def _epochs(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "epoch"]


def test_demo_trains_and_eval_gives_the_same_map(run_cli, tmp_path: Path, capsys) -> None:
    run = run_cli("train", *SMALL_DEMO, "trainer.epochs=2")
    results = read_results(run)
    assert results["task"] == "detection" and results["metric"] == "map"
    for key in ("map", "map50", "map75", "voc07_map"):
        assert 0.0 <= results[key] <= 100.0
    assert results["map50"] >= results["map"]  # AP only falls as the IoU threshold rises
    assert [e["epoch"] for e in _epochs(run)] == [1, 2]
    capsys.readouterr()
    # a fresh evaluation of the checkpoint scores the same detections
    ev = run_cli("eval", f"ckpt={run}", run_dir=tmp_path / "eval")
    again = read_results(ev)
    for key in ("map", "map50", "voc07_map"):
        assert again[key] == pytest.approx(results[key], abs=1e-9), key
    assert again["samples"] == 24
    shown = capsys.readouterr().out
    assert "mAP" in shown and "VOC07 mAP" in shown
    rows = again["per_class"]  # eval adds each class's AP: their mean over classes with
    assert len(rows) == 10  # objects is the mAP
    scored = [r for r in rows.values() if r["objects"]]
    assert np.mean([r["AP"] for r in scored]) == pytest.approx(again["map"])
    assert np.mean([r["VOC07 AP"] for r in scored]) == pytest.approx(again["voc07_map"])
    assert "VOC07 AP" in shown and "objects" in shown


def test_sweep_bf16_and_channels_last(run_cli, capsys) -> None:
    """A -m sweep of detection runs, in bf16 autocast with channels_last: each run has its
    metrics, the sweep summary its primary metric."""
    sweep = run_cli("train", "-m", *SMALL_DEMO, "data.train_size=32", "data.val_size=16",
                    "trainer.precision=bf16", "trainer.channels_last=true", "optim.lr=0.1,0.05")
    rows = json.loads((sweep / "summary.json").read_text())
    assert [r["overrides"] for r in rows] == ["optim.lr=0.1", "optim.lr=0.05"]
    for i in (0, 1):
        results = read_results(sweep / str(i))
        assert results["metric"] == "map" and np.isfinite(results["map"])
    assert "mAP" in capsys.readouterr().out


@pytest.mark.parametrize("layout", ["voc", "coco"])
def test_voc_and_coco_folders_train_and_evaluate(run_cli, tmp_path: Path, layout: str) -> None:
    if layout == "voc":
        root = make_voc(tmp_path / "data", n_trainval=8, n_test=4, single_folder=True)
        data = ["data=voc", f"data.root={root}"]
    else:
        root = make_coco(tmp_path / "data", n_images=8)
        data = ["data=coco", f"data.root={root}"]
    run = run_cli("train", "model=ssd_tiny", *data, "data.batch_size=4", "data.num_workers=0",
                  "trainer.epochs=1", "optim.lr=0.01", "trainer.threads=1")
    results = read_results(run)
    assert results["metric"] == ("voc07_map" if layout == "voc" else "map")
    assert results["task"] == "detection"
    assert np.isfinite(results[results["metric"]])
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["data_info"]["image_size"] == 96  # ssd_tiny's own input size
    assert ckpt["data_info"]["class_names"]


def test_a_learning_rate_far_above_the_detectors_recipe_is_warned() -> None:
    """prunecli's default SGD (lr 0.1 per batch, no warm-up) is the classifiers'; SSD300-RN50 at
    that rate diverged (training loss 610 -> 3,400 in two epochs on 60 images)."""
    from omegaconf import OmegaConf

    from prunecli.models.detection import lr_warning

    ssd300 = OmegaConf.create({"name": "ssd300_resnet50", "source": "prunecli"})
    sgd = OmegaConf.create({"name": "sgd", "lr": 0.1, "warmup_epochs": 0})
    # NVIDIA's 2.6e-3 per 32 images is 6.5e-4 for 8: 0.1 is 154x that
    advice = lr_warning(ssd300, sgd, 8)
    assert advice is not None and "154x" in advice and "optim.lr=0.00065" in advice
    assert "optim.warmup_epochs=1" in advice and "experiment=ssd300_resnet50_coco" in advice
    assert lr_warning(ssd300, OmegaConf.merge(sgd, {"lr": 2.6e-3}), 8) is None  # 4x: within
    assert "5x" in lr_warning(ssd300, OmegaConf.merge(sgd, {"lr": 3.25e-3}), 8)
    assert lr_warning(ssd300, OmegaConf.merge(sgd, {"name": "adamw"}), 8) is None
    retina = OmegaConf.create({"name": "retinanet_resnet50_fpn_v2", "source": "torchvision_det"})
    assert "(torchvision's reference: 0.01 per 16 images)" in lr_warning(retina, sgd, 16)
    for no_recipe in ({"name": "ssd_tiny", "source": "prunecli"},
                      {"name": "resnet20", "source": "prunecli"}):
        assert lr_warning(OmegaConf.create(no_recipe), sgd, 1) is None


def test_the_learning_rate_warning_reaches_the_run_log(run_cli, monkeypatch) -> None:
    from prunecli.models.detection import recipes

    monkeypatch.setitem(recipes.PRUNECLI_RECIPES, "ssd_tiny", recipes.Recipe(1e-3, 32, "a test"))
    run = run_cli("train", *SMALL_DEMO, "data.train_size=16", "data.val_size=8",
                  "trainer.epochs=1", "data.batch_size=8", "trainer.grad_accum=2")
    # 0.1 for 8 x 2 images against 1e-3 per 32: 200x
    assert "optim.lr=0.1 for 16 images is 200x the rate ssd_tiny is published with (a test: " \
           "0.001 per 32 images)" in (run / "train.log").read_text()


def test_an_unset_learning_rate_is_the_detectors_published_rate_for_the_batch() -> None:
    """The issue's own command (``prunecli train method=chex data=coco model=ssd300_resnet50``)
    has no optim.lr; at the classifiers' 0.1 SSD300 diverged, so an unset rate is the recipe's."""
    from omegaconf import OmegaConf

    from prunecli.engine.optim import DEFAULT_LR, choose_lr

    def chosen(model: dict, optim: dict, batch: int) -> tuple[float, str | None]:
        cfg = OmegaConf.create({"name": "sgd", "lr": None, **optim})
        line = choose_lr(OmegaConf.create(model), cfg, batch)
        return cfg.lr, line

    ssd300 = {"name": "ssd300_resnet50", "source": "prunecli"}
    lr, line = chosen(ssd300, {}, 8)  # NVIDIA's 2.6e-3 per 32 images
    assert lr == pytest.approx(6.5e-4) and line is not None
    assert "optim.lr not set: 0.00065 for ssd300_resnet50 (NVIDIA's SSD300 v1.1: 0.0026 per 32" \
        " images, scaled to the global batch of 8" in line
    assert chosen({"name": "ssd512_resnet50", "source": "prunecli"}, {}, 256)[0] \
        == pytest.approx(1.6e-2)  # SMCP's 8e-3 per 128
    frcnn = {"name": "fasterrcnn_mobilenet_v3_large_fpn", "source": "torchvision_det"}
    assert chosen(frcnn, {}, 4)[0] == pytest.approx(5e-3)  # torchvision's 0.02 per 16
    assert chosen(ssd300, {"lr": 0.05}, 8) == (0.05, None)  # a rate the user set is kept
    assert chosen(ssd300, {"name": "adamw"}, 8) == (DEFAULT_LR["adamw"], None)
    for no_recipe in ({"name": "ssd_tiny", "source": "prunecli"},
                      {"name": "resnet20", "source": "prunecli"}):
        assert chosen(no_recipe, {}, 64) == (0.1, None)
    with pytest.raises(ConfigError, match="optim.name=lamb is not one of sgd, adamw"):
        chosen(no_recipe, {"name": "lamb"}, 64)


@pytest.mark.parametrize("steps_per_epoch,epochs,steps", [
    (3697, 65, 300),  # COCO at 32 images: NVIDIA's 300 iterations
    (625, 4, 125),    # a 4-epoch fine-tune: 5% of its 2,500 steps
    (50, 90, 50),     # 50 steps an epoch: one epoch at most, torchvision's rule
    (60, 3, 9),       # 3 epochs of 60 steps: 5% of the run
    (8, 3, 0)])       # 60 images in 3 epochs: none (5% of the run is one step)
def test_an_unset_warm_up_is_the_recipes_within_an_epoch_and_5_percent_of_the_run(
        steps_per_epoch: int, epochs: int, steps: int) -> None:
    """The recipes warm up (NVIDIA 300 iterations); a run with neither optim.lr nor
    optim.warmup_epochs gets that warm-up, capped so a short run is hardly slowed."""
    from omegaconf import DictConfig, OmegaConf

    from prunecli.engine.optim import choose_lr, lr_factor_fn

    ssd300 = OmegaConf.create({"name": "ssd300_resnet50", "source": "prunecli"})

    def filled(optim: dict) -> tuple[DictConfig, str | None]:
        cfg = OmegaConf.create({"name": "sgd", "lr": None, "warmup_epochs": None, **optim})
        line = choose_lr(ssd300, cfg, 32, steps_per_epoch, epochs * steps_per_epoch)
        return cfg, line

    cfg, line = filled({})
    if not steps:
        assert cfg.warmup_epochs == 0.0 and "warm-up" not in line
        return
    assert f"optim.warmup_epochs not set: a linear warm-up over the first {steps} steps " \
        "(NVIDIA's" in line
    full = OmegaConf.create({**OmegaConf.to_container(cfg), "scheduler": "constant",
                             "warmup_start_factor": 0.1, "min_lr": 0.0, "milestones": []})
    factor = lr_factor_fn(full, epochs * steps_per_epoch, steps_per_epoch)
    assert factor(0) == pytest.approx(0.1) and factor(steps) == 1.0
    assert factor(steps - 1) < 1.0
    # a warm-up or a rate the user set is kept; a rate the user set brings no warm-up
    assert filled({"warmup_epochs": 2})[0].warmup_epochs == 2
    assert filled({"lr": 0.01})[0].warmup_epochs == 0.0
    no_recipe = OmegaConf.create({"name": "sgd", "lr": None, "warmup_epochs": None})
    choose_lr(OmegaConf.create({"name": "resnet20", "source": "prunecli"}), no_recipe, 64, 100,
              1000)
    assert no_recipe.warmup_epochs == 0.0


def test_the_chosen_rate_is_the_runs_and_is_kept_on_resume(run_cli, tmp_path: Path,
                                                          monkeypatch) -> None:
    """The rate filled in is the one trained with and saved in the checkpoint; the resumed run
    trains on at it."""
    from prunecli.models.detection import recipes

    monkeypatch.setitem(recipes.PRUNECLI_RECIPES, "ssd_tiny",
                        recipes.Recipe(4e-3, 32, "a test", warmup_steps=20))
    # 2 steps an epoch and 40 in all: the recipe's warm-up is capped at 5% of the run, 2 steps
    # (the first epoch; the warm-up factor itself: the test above)
    common = (*SMALL_DEMO, "data.train_size=16", "data.val_size=8", "data.batch_size=8",
              "optim.lr=null", "optim.warmup_epochs=null", "optim.scheduler=constant")
    part = run_cli("train", *common, "trainer.epochs=20", "trainer.stop_after_epoch=1",
                   run_dir=tmp_path / "part")
    log = (part / "train.log").read_text()
    assert "optim.lr not set: 0.001 for ssd_tiny (a test: 0.004 per 32 images, scaled to the " \
           "global batch of 8" in log
    assert "optim.warmup_epochs not set: a linear warm-up over the first 2 steps (a test" in log
    state = torch.load(part / "last.pt", weights_only=True)
    assert state["config"]["optim"]["lr"] == pytest.approx(1e-3)
    assert state["config"]["optim"]["warmup_epochs"] == 1.0
    groups = state["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-3] * len(groups))  # warmed up
    run_cli("train", *common, "trainer.epochs=20", "trainer.stop_after_epoch=2",
            f"resume={part}", run_dir=part)
    epochs = _epochs(part)
    assert [e["lr"] for e in epochs] == pytest.approx([1e-3, 1e-3])  # at each epoch's end


def test_killed_detection_run_resumes_exactly(run_cli, tmp_path: Path) -> None:
    common = (*SMALL_DEMO, "trainer.epochs=2", "trainer.deterministic=true")
    whole = run_cli("train", *common, run_dir=tmp_path / "whole")
    part = run_cli("train", *common, "trainer.stop_after_epoch=1", run_dir=tmp_path / "part")
    assert torch.load(part / "last.pt", weights_only=True)["epoch"] == 1
    resumed = run_cli("train", *common, f"resume={part}", run_dir=tmp_path / "resumed")
    log = (resumed / "train.log").read_text()
    # the same command: no "keeping the checkpoint's value" for the image size the run filled in
    assert "resumed from" in log and "keeping the checkpoint's value" not in log
    a = torch.load(whole / "last.pt", weights_only=True)["model"]
    b = torch.load(resumed / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert read_results(resumed)["map"] == read_results(whole)["map"]


def test_torchrun_two_processes_prune_and_count_every_image_once(tmp_path: Path) -> None:
    """DDP on 2 CPU processes with a pruning method: the run lands on its budget, its slimmed
    detector equals the masked one, and the evaluation counts every test scene once."""
    out = tmp_path / "ddp"
    # 25 test scenes over 2 ranks: the sampler pads one rank, the metric must not see it twice
    proc = torchrun_train(*SMALL_DEMO, "data.val_size=25", "trainer.epochs=2", "method=taylor",
                          "cost.ratio=0.5", "method.prune_every=1", f"hydra.run.dir={out}",
                          cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(out)
    assert results["world_size"] == 2
    assert _epochs(out)[-1]["val_images"] == 25
    assert results["cost_kept"] == pytest.approx(0.5, abs=0.01)
    assert results["slim_max_diff"] < 1e-5 and results["slim_map"] == results["map"]


class _Oracle(nn.Module):
    """Returns each batch's own ground truth as detections (in input pixels)."""

    def __init__(self, batches: list) -> None:
        super().__init__()
        self.batches = iter(batches)

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        _, targets = next(self.batches)
        return [{"boxes": t["boxes"], "scores": torch.linspace(1.0, 0.5, len(t["boxes"])),
                 "labels": t["labels"]} for t in targets]


@pytest.mark.parametrize("padded", [False, True])
def test_an_oracle_detector_scores_100_through_the_task(tmp_path: Path, monkeypatch,
                                                        padded: bool) -> None:
    """Images of several sizes resized to the input, difficult objects in the truth: the task
    maps detections back to each image's pixels and scores them exactly. ``padded``: a second
    rank's share repeats three images (as DistributedSampler pads): each is scored once."""
    if padded:
        monkeypatch.setattr("prunecli.tasks.detection.gather_to_main",
                            lambda found: [found, found[:3]])
    from prunecli.data import build_datasets
    from prunecli.engine.precision import Precision
    from prunecli.tasks import build_task

    root = make_voc(tmp_path, n_trainval=4, n_test=6, single_folder=True)
    cfg = {"name": "voc", "root": str(root), "image_size": 64, "num_workers": 0}
    bundle = build_datasets(cfg)
    task = build_task(bundle, cfg)
    loader = torch.utils.data.DataLoader(bundle.val, batch_size=4, collate_fn=task.collate_fn)
    metrics = task.evaluate(_Oracle(list(loader)), loader, torch.device("cpu"),
                            Precision("fp32", torch.device("cpu")))
    assert metrics["images"] == 6
    for key in ("map", "map50", "map75", "voc07_map"):
        assert metrics[key] == pytest.approx(100.0), key


def test_inspect_shows_the_channel_groups_of_ssd512(run_cli, tmp_path: Path, capsys) -> None:
    run_cli("inspect", "model=ssd512_resnet50", run_dir=tmp_path / "inspect")
    out = capsys.readouterr().out
    assert "512" in out and "extras" in out and "trunk.layer3" in out


def test_bench_and_export_a_trained_detector(run_cli, tmp_path: Path, capsys) -> None:
    """`prunecli bench` and `prunecli export` on a detector's checkpoint, in process (the
    console script itself is tested in test_cli): a user error would raise SystemExit."""
    run = run_cli("train", *SMALL_DEMO, "data.train_size=16", "data.val_size=8",
                  "data.image_size=128")  # not ssd_tiny's native 96: exported at the run's size
    capsys.readouterr()
    run_cli("bench", f"ckpt={run}", "batch_sizes=[1,2]", "repeats=2", "warmup=1",
            run_dir=tmp_path / "b")
    shown = capsys.readouterr().out
    assert "full" in shown or "whole" in shown
    out = tmp_path / "x" / "det.onnx"
    run_cli("export", f"ckpt={run}", f"out={out}", run_dir=tmp_path / "e")
    ort = pytest.importorskip("onnxruntime")
    from prunecli.structure.from_checkpoint import load_masked_model

    det = load_masked_model(run / "last.pt").model.eval()
    images = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        raw = det.core(det.normalise(images))
        found = det(images)[0]
    core = ort.InferenceSession(str(out)).run(None, {"input": det.normalise(images).numpy()})
    for got, want in zip(core, raw, strict=True):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
    whole = ort.InferenceSession(str(out.with_name("det.full.onnx")))
    assert whole.get_inputs()[0].shape == [1, 3, 128, 128]
    boxes, scores, labels = whole.run(None, {"images": images.numpy()})
    np.testing.assert_allclose(boxes, found["boxes"].numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(scores, found["scores"].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(labels, found["labels"].numpy())
    # a model as built, without a checkpoint (as `prunecli bench model=...` does)
    run_cli("export", "model=ssd_tiny", "num_classes=3", "whole=false",
            f"out={tmp_path / 'y' / 'tiny.onnx'}", run_dir=tmp_path / "f")
    assert (tmp_path / "y" / "tiny.onnx").is_file()
    assert not (tmp_path / "y" / "tiny.full.onnx").exists()


def test_a_missing_voc_annotation_is_one_line(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "data", n_trainval=4, n_test=2, single_folder=True)
    missing = sorted((root / "Annotations").iterdir())[0]
    missing.unlink()
    proc: subprocess.CompletedProcess = console_script(
        "train", "model=ssd_tiny", "data=voc", f"data.root={root}", "trainer.epochs=1",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode != 0
    lines = [x for x in (proc.stderr + proc.stdout).splitlines() if x.strip()]
    error = [x for x in lines if str(missing) in x]
    assert len(error) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_ssd_recipe_lr_schedule_and_bias_groups() -> None:
    cfg = OptimConfig(lr=8e-3, scheduler="step", warmup_epochs=50, warmup_start_factor=0.0,
                      milestones=[600, 700, 740, 770],
                      milestone_factors=[0.375, 0.125, 0.05, 0.005])
    factor = lr_factor_fn(cfg, total_steps=800, steps_per_epoch=1)
    assert factor(0) == 0.0 and factor(25) == pytest.approx(0.5) and factor(50) == 1.0
    assert [factor(s) for s in (599, 600, 699, 700, 740, 770, 799)] == \
        [1.0, 0.375, 0.375, 0.125, 0.05, 0.005, 0.005]
    with pytest.raises(Exception, match="milestone_factors"):
        lr_factor_fn(OptimConfig(scheduler="step", milestone_factors=[0.5]), 10, 1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    groups = param_groups(model, 2e-3, decay_norm_and_bias=False, bias_lr_factor=2.0, lr=8e-3)
    by_id = {id(p): g for g in groups for p in g["params"]}
    for conv in (model[0], model[2]):
        assert by_id[id(conv.bias)]["lr"] == pytest.approx(16e-3)
        assert by_id[id(conv.bias)]["weight_decay"] == 0.0
        assert by_id[id(conv.weight)]["weight_decay"] == 2e-3
        assert by_id[id(conv.weight)].get("lr", 8e-3) == pytest.approx(8e-3)
    assert by_id[id(model[1].weight)]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize("method", ["taylor", "halp", "smcp", "slimming", "gator", "chex",
                                    "smcp+method.importance=taylor_fo+method.mask=hard"])
def test_every_method_prunes_a_detector_to_its_budget(run_cli, method: str) -> None:
    """Each method on the detection losses: the run lands on half the core's MACs, the slimmed
    detector equals the masked one, scores the same mAP, and its slim.pt rebuilds it. The last
    case is the SMCP form the README recommends for detectors."""
    from prunecli.cost import count_macs
    from prunecli.models.detection import Detector
    from prunecli.structure import load_slim

    method, *extra = method.split("+")
    extra += ["method.prune_steps=4", "method.prune_every=4"] if method == "halp" else []
    # 16 steps an epoch (each method's schedule in steps as with 256 scenes in 16s), 8 scenes
    run = run_cli("train", *SMALL_DEMO, "data.train_size=128", "data.batch_size=8",
                  "data.val_size=32", "trainer.epochs=3", f"method={method}", "cost.ratio=0.5",
                  *extra)
    results = read_results(run)
    # at most the budget; HALP removes whole neuron groups, and on this tiny core its last
    # group can take 1-3 % of the MACs at once (it lands at 48.9 % here, 48.5 % in the README's
    # table); the others fill the budget to within 1 %
    under = 0.03 if method == "halp" else 0.01
    assert 0.5 - under <= results["cost_kept"] <= 0.5 + 1e-6
    assert results["slim_max_diff"] < 1e-5
    assert results["slim_map"] == results["map"]
    small = load_slim(run / "slim.pt").model
    assert isinstance(small, Detector)
    x = small.normalise(torch.rand(1, 3, 96, 96))
    assert count_macs(small.core, x) == results["macs"]


def test_slim_command_on_a_pruned_detector_checkpoint(run_cli, tmp_path: Path) -> None:
    """`prunecli slim ckpt=RUN` maps the detector's mask names (net.*) onto its core."""
    from prunecli.structure import load_slim

    run = run_cli("train", *SMALL_DEMO, "data.train_size=64", "data.batch_size=8",
                  "data.val_size=16", "trainer.epochs=2", "method=taylor", "cost.ratio=0.4")
    first = load_slim(run / "slim.pt").model
    out = tmp_path / "again.pt"
    run_cli("slim", f"ckpt={run}", f"out={out}", run_dir=tmp_path / "s")
    again = load_slim(out).model
    images = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for a, b in zip(first.core(first.normalise(images)), again.core(again.normalise(images)),
                        strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("distilled", [False, True])
def test_pruning_a_detector_resumes_exactly(run_cli, tmp_path: Path, distilled: bool) -> None:
    """Masks live on the core's modules, which the detector's checkpoint carries (net.*). With
    distillation (box term on) the resumed run rebuilds its teacher and ends the same."""
    extra: tuple[str, ...] = ()
    if distilled:
        from prunecli.models import build_model

        torch.manual_seed(0)
        weights = tmp_path / "start.pt"  # the start and the teacher (a fresh detector)
        torch.save(build_model({"name": "ssd_tiny"}, num_classes=10, in_chans=3).state_dict(),
                   weights)
        extra = ("distill.enabled=true", f"model.weights={weights}")
    common = (*SMALL_DEMO, "data.train_size=64", "data.batch_size=8", "data.val_size=16",
              "trainer.epochs=3", "trainer.deterministic=true", "method=taylor", "cost.ratio=0.5",
              *extra)
    whole = run_cli("train", *common, run_dir=tmp_path / "whole")
    part = run_cli("train", *common, "trainer.stop_after_epoch=2", run_dir=tmp_path / "part")
    resumed = run_cli("train", *common, f"resume={part}", run_dir=tmp_path / "resumed")
    a = torch.load(whole / "last.pt", weights_only=True)["model"]
    b = torch.load(resumed / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and any(".mask" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert read_results(resumed)["cost_kept"] == read_results(whole)["cost_kept"]
    if distilled:
        assert read_results(resumed)["distill"]["box_weight"] == 2.0


def test_slim_when_final_on_a_detector(run_cli, tmp_path: Path) -> None:
    """Fine-tuning the slimmed detector once the masks are final: the same mAP as the masked
    run, optimizer state carried under the detector's names, exact resume after the swap, and
    `prunecli eval` reads the slim-shaped checkpoint."""
    common = (*SMALL_DEMO, "data.train_size=64", "data.batch_size=8", "data.val_size=16",
              "trainer.epochs=3", "trainer.deterministic=true", "method=taylor", "cost.ratio=0.5",
              "method.prune_every=2", "method.finish_at=0.4")
    masked = run_cli("train", *common, run_dir=tmp_path / "masked")
    slimmed = run_cli("train", *common, "method.slim_when_final=true", run_dir=tmp_path / "slim")
    a, b = read_results(masked), read_results(slimmed)
    assert b["slimmed_at_step"] is not None and a.get("slimmed_at_step") is None
    assert b["macs"] == a["macs"] and b["map"] == pytest.approx(a["map"], abs=0.05)
    state = torch.load(slimmed / "last.pt", weights_only=True)
    assert state["slimmed"]["keep"] and not any(".mask" in k for k in state["model"])
    # the fine-tuned weights are the masked run's kept ones (float32 rounding apart): the
    # optimizer state (momentum) moved into the slim detector under the detector's names
    from prunecli.structure import load_slim

    wa, wb = (load_slim(r / "slim.pt").model.state_dict() for r in (masked, slimmed))
    assert wa.keys() == wb.keys()
    print("max weight diff", max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-3, atol=1e-4, msg=k)
    part = run_cli("train", *common, "method.slim_when_final=true", "trainer.stop_after_epoch=2",
                   run_dir=tmp_path / "part")
    resumed = run_cli("train", *common, "method.slim_when_final=true", f"resume={part}",
                      run_dir=tmp_path / "resumed")
    end = torch.load(resumed / "last.pt", weights_only=True)["model"]
    assert end.keys() == state["model"].keys()
    for k in end:
        assert torch.equal(end[k], state["model"][k]), k
    ev = run_cli("eval", f"ckpt={slimmed}", "data.val_size=16", run_dir=tmp_path / "eval")
    assert read_results(ev)["map"] == pytest.approx(b["map"], abs=1e-6)


def test_latency_table_of_a_detector_core_drives_halp(run_cli, tmp_path: Path,
                                                      capsys) -> None:
    """`prunecli lut` times a detector's core (at its native size) and says that the
    post-processing is outside it; HALP prunes to it."""
    table = tmp_path / "lut.json"
    run_cli("lut", "model=ssd_tiny", "num_classes=10", "step=32", "repeats=1", "rounds=1",
            "warmup=1", "check=false", f"out={table}", run_dir=tmp_path / "lut")
    assert json.loads(table.read_text())["grids"]
    said = " ".join(capsys.readouterr().out.split())
    assert "post-processing (anchors, box decoding, NMS)" in said
    assert "`prunecli bench ckpt=RUN` times it beside the core" in said
    common = (*SMALL_DEMO, "data.train_size=128", "data.batch_size=8", "data.val_size=16",
              "trainer.epochs=3", "method=halp", "method.prune_steps=4", "method.prune_every=4",
              "cost=latency", f"cost.table={table}")
    run = run_cli("train", *common, "cost.ratio=0.2", run_dir=tmp_path / "run")
    results = read_results(run)
    assert results["cost"] == "latency"
    # a table timed in a second on a shared CPU is noisy, and so is its fitted rest (at a 60%
    # budget 0.595-0.641 kept seen here on a quiet machine, 0.77 with another job running, and
    # the floor 56-65%): the MACs tests above check landing on a budget exactly; here HALP must
    # prune toward the latency target
    assert results["cost_target"] == pytest.approx(0.8) and results["cost_kept"] < 0.95
    assert results["slim_max_diff"] < 1e-5


def test_latency_table_of_a_run_fits_the_runs_started_from_it(run_cli, tmp_path: Path) -> None:
    """`prunecli lut ckpt=RUN` times the run's own network (its class count and input size,
    here 128x128 rather than ssd_tiny's native 96): pruning from that run finds its model in
    the table, where `lut model=ssd_tiny` (80 classes, 96x96) would not have it."""
    dense = run_cli("train", *SMALL_DEMO, "data.train_size=16", "data.val_size=8",
                    "data.image_size=128", run_dir=tmp_path / "dense")
    table = tmp_path / "lut.json"
    run_cli("lut", f"ckpt={dense}", "step=64", "repeats=1", "rounds=1", "warmup=1",
            "check=false", f"out={table}", run_dir=tmp_path / "lut")
    run = run_cli("train", *SMALL_DEMO, "data.train_size=16", "data.val_size=8",
                  "data.image_size=128", f"model.weights={dense}/last.pt", "method=taylor",
                  "method.prune_every=1", "cost=latency", f"cost.table={table}",
                  "cost.ratio=0.2", run_dir=tmp_path / "run")
    assert read_results(run)["cost"] == "latency"


def test_the_python_api_loop_prunes_a_detector() -> None:
    """The README's own-loop example with a detector: its core is pruned to the budget and
    finish() returns the whole slimmed detector, equal to the masked one."""
    from prunecli.methods.pruner import Pruner
    from prunecli.models import build_model
    from tests.conftest import pruner_steps

    torch.manual_seed(0)
    det = build_model({"name": "ssd_tiny"}, num_classes=3).train()
    images = torch.rand(4, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])}
               for _ in range(4)]
    pruner = Pruner(det, images, "taylor", cost="macs", ratio=0.5, epochs=1, steps_per_epoch=8,
                    prune_every=1)
    opt = torch.optim.SGD(det.parameters(), lr=0.01, momentum=0.9)
    pruner.start(opt)
    pruner_steps(pruner, opt, lambda: sum(det(images, targets).values()), 8)
    pruner.end_epoch()
    small, summary = pruner.finish()
    assert 0.45 <= summary["cost_kept"] <= 0.5 + 1e-9 and summary["slim_max_diff"] < 1e-5
    found = small.eval()(images)
    assert len(found) == 4 and set(found[0]) == {"boxes", "scores", "labels"}
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in det.parameters())
