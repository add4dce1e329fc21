"""The training engine: schedules, parameter groups, checkpoints, resume, hooks, AMP."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch import nn

from prunecli.config.schema import OptimConfig
from prunecli.config.store import register_schemas
from prunecli.engine import checkpoint as ckpt_io
from prunecli.engine.events import TrainingHooks
from prunecli.engine.optim import lr_factor_fn, param_groups
from prunecli.engine.trainer import Trainer
from prunecli.errors import CheckpointError, ConfigError

register_schemas()

SMALL = ["experiment=smoke", "data.train_size=96", "data.val_size=32", "data.batch_size=16",
         "data.image_size=16", "trainer.progress=false"]


def make_cfg(*overrides: str):
    with initialize_config_module(version_base="1.3", config_module="prunecli.conf"):
        return compose("train", overrides=[*SMALL, *overrides])


def optim_cfg(**kw) -> OptimConfig:
    return OmegaConf.structured(OptimConfig(**kw))


# ---------------------------------------------------------------- schedules and groups
def test_cosine_with_warmup_shape() -> None:
    f = lr_factor_fn(optim_cfg(lr=0.1, warmup_epochs=1, warmup_start_factor=0.1), 100, 10)
    assert f(0) == pytest.approx(0.1)
    assert f(5) == pytest.approx(0.55)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5)
    assert f(100) == pytest.approx(0.0, abs=1e-12)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


def test_step_schedule_milestones_in_epochs_and_fractions() -> None:
    f = lr_factor_fn(optim_cfg(scheduler="step", milestones=[2, 0.8], gamma=0.1), 100, 10)
    assert f(19) == 1.0 and f(20) == pytest.approx(0.1) and f(80) == pytest.approx(0.01)


def test_cosine_floor() -> None:
    f = lr_factor_fn(optim_cfg(lr=0.1, min_lr=0.01), 50, 10)
    assert f(50) == pytest.approx(0.1)


def test_bad_scheduler_name() -> None:
    with pytest.raises(ConfigError, match="optim.scheduler"):
        lr_factor_fn(optim_cfg(scheduler="linearr"), 10, 1)


def test_norm_and_bias_excluded_from_weight_decay() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 5e-4, decay_norm_and_bias=False)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0
    (everything,) = param_groups(model, 5e-4, decay_norm_and_bias=True)
    assert len(everything["params"]) == 6


def test_shard_sampler_covers_every_sample_once() -> None:
    from prunecli.engine.evaluate import ShardSampler

    shards = [list(ShardSampler(10, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))


# ---------------------------------------------------------------- checkpoints
def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    ckpt_io.save_atomic({"epoch": 1}, path)

    def broken_save(obj, f):  # a crash in the middle of writing
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(CheckpointError, match="disk full.*previous file is intact"):
        ckpt_io.save_atomic({"epoch": 2}, path)
    monkeypatch.undo()
    assert ckpt_io.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind

    def read_only(src, dst):  # the rename refused (a read-only or vanished folder)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(ckpt_io.os, "replace", read_only)
    with pytest.raises(CheckpointError, match="Permission denied"):
        ckpt_io.save_atomic({"epoch": 3}, path)
    monkeypatch.undo()
    assert ckpt_io.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_full_disk_during_training_is_one_line_and_loses_nothing(
        run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The second epoch's checkpoint cannot be written (ENOSPC): the run stops with one line,
    epoch 1's last.pt is intact and no temp file is left; resuming finishes the run."""
    import errno

    from tests.conftest import read_results

    real, writes = torch.save, {"n": 0}

    def filling(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "optimizer" in obj:
            writes["n"] += 1
            if writes["n"] == 2:
                f.write(b"half a checkpoint")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", filling)
    common = ("experiment=smoke", "data.train_size=64", "data.val_size=32",
              "data.image_size=16", "trainer.epochs=3", "method=taylor", "cost.ratio=0.5")
    run = tmp_path / "run"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli("train", *common, run_dir=run)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "intact" in err[0]
    assert ckpt_io.load_checkpoint(run / "last.pt")["epoch"] == 1
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(torch, "save", real)
    resumed = run_cli("train", f"resume={run}", run_dir=tmp_path / "resumed")
    assert read_results(resumed)["epochs"] == 3


def test_corrupt_and_missing_checkpoints_are_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt_io.load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt_io.load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="no last.pt"):
        ckpt_io.load_checkpoint(tmp_path)


def test_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    results = Trainer(make_cfg("trainer.epochs=1"), tmp_path).fit()
    ckpt = torch.load(results["checkpoint"], weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["step"] > 0
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "config", "method"} <= set(ckpt)
    assert ckpt["config"]["data"]["name"] == "fake"


# ---------------------------------------------------------------- resume
def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def test_killed_and_resumed_run_ends_with_identical_weights(tmp_path: Path) -> None:
    common = ("trainer.epochs=3", "trainer.deterministic=true", "data.augment=true",
              "optim.warmup_epochs=1")
    full = Trainer(make_cfg(*common), tmp_path / "full").fit()
    part = Trainer(make_cfg(*common, "trainer.stop_after_epoch=1"), tmp_path / "part").fit()
    assert part["stopped_early"] and part["epochs"] == 1
    resumed = Trainer(make_cfg(*common, f"resume={tmp_path / 'part'}"), tmp_path / "res").fit()
    assert resumed["epochs"] == 3 and not resumed["stopped_early"]
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "res")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["top1"] == full["top1"]


def test_resume_takes_the_checkpoint_config(tmp_path: Path) -> None:
    Trainer(make_cfg("trainer.epochs=2", "trainer.stop_after_epoch=1", "optim.lr=0.01"),
            tmp_path / "a").fit()
    trainer = Trainer(make_cfg("trainer.epochs=2", "optim.lr=0.5", f"resume={tmp_path / 'a'}"),
                      tmp_path / "b")
    trainer.fit()
    assert trainer.cfg.optim.lr == 0.01


def test_resume_takes_run_keys_from_the_command_line_only_where_typed() -> None:
    """A default must not override the run's own epochs or data folder; a typed value does;
    how this session runs (progress, where to stop) is always today's."""
    from prunecli.engine.resume import merge_resume_config

    saved = OmegaConf.to_container(make_cfg("trainer.epochs=6", "trainer.threads=1",
                                            "trainer.stop_after_epoch=2"), resolve=True)
    current = make_cfg("resume=RUN", "trainer.progress=false")  # epochs: the default
    merged = merge_resume_config(current, saved, typed={"resume", "trainer.progress"})
    assert merged.trainer.epochs == 6 and merged.trainer.threads == 1
    assert merged.trainer.stop_after_epoch is None and merged.resume == "RUN"
    assert merged.trainer.progress is False
    longer = make_cfg("resume=RUN", "trainer.epochs=9")
    assert merge_resume_config(longer, saved, typed={"resume", "trainer.epochs"}
                               ).trainer.epochs == 9
    assert merge_resume_config(current, saved).trainer.epochs == current.trainer.epochs


def test_resume_warns_only_about_values_the_command_set(caplog) -> None:
    """`prunecli train resume=RUN` alone warned "keeping the checkpoint's value for cost.ratio,
    data.batch_size, ..." for every key the run's experiment had set: defaults are no
    difference; a value typed today (itself, or by its group or an experiment) is."""
    from prunecli.engine.resume import merge_resume_config

    saved = OmegaConf.to_container(make_cfg("optim.lr=0.01", "data.batch_size=16"), resolve=True)
    current = make_cfg("resume=RUN")  # lr and batch size: the defaults
    with caplog.at_level("WARNING", logger="prunecli"):
        merge_resume_config(current, saved, typed={"resume"})
    assert "keeping the checkpoint's value" not in caplog.text
    typed = make_cfg("resume=RUN", "optim.lr=0.3")
    for keys in ({"resume", "optim.lr"}, {"resume", "optim"}, {"resume", "experiment"}, None):
        caplog.clear()
        with caplog.at_level("WARNING", logger="prunecli"):
            merged = merge_resume_config(typed, saved, typed=keys)
        assert merged.optim.lr == 0.01 and "keeping the checkpoint's value for" in caplog.text
        assert "optim.lr" in caplog.text
    # another method named on resume: one line for the group, not each of its keys
    saved = OmegaConf.to_container(make_cfg("method=taylor"), resolve=True)
    caplog.clear()
    with caplog.at_level("WARNING", logger="prunecli"):
        merged = merge_resume_config(make_cfg("resume=RUN", "method=halp"), saved,
                                     typed={"resume", "method"})
    assert merged.method.name == "taylor"
    assert "keeping the checkpoint's method=taylor (the command line says method=halp)" \
        in caplog.text
    assert "method.prune_steps" not in caplog.text and "value for" not in caplog.text


def test_resume_from_a_non_training_file_is_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="not a prunecli training checkpoint"):
        Trainer(make_cfg(f"resume={tmp_path / 'w.pt'}"), tmp_path / "r").fit()


# ---------------------------------------------------------------- hooks
class Recorder(TrainingHooks):
    """Records the order of hook calls and checks what each hook may rely on."""

    def __init__(self, cfg) -> None:
        self.calls: list[str] = []
        self.unscaled_grad_seen = False

    def setup(self, ctx) -> None:
        assert ctx.optimizer is None and not hasattr(ctx.model, "module")
        self.calls.append("setup")

    def param_groups(self, groups):
        self.calls.append("param_groups")
        return groups

    def on_train_start(self, ctx) -> None:
        assert ctx.optimizer is not None
        self.calls.append("on_train_start")

    def on_epoch_start(self, ctx) -> None:
        self.calls.append("on_epoch_start")

    def extra_loss(self, ctx, outputs, targets):
        self.calls.append("extra_loss")
        return outputs.new_zeros(()) + 0.0 * outputs.sum()

    def after_backward(self, ctx) -> None:
        self.calls.append("after_backward")

    def before_optimizer_step(self, ctx) -> None:
        self.unscaled_grad_seen |= any(p.grad is not None for p in ctx.model.parameters())
        self.calls.append("before_optimizer_step")

    def after_optimizer_step(self, ctx) -> None:
        self.calls.append("after_optimizer_step")

    def on_epoch_end(self, ctx, metrics) -> None:
        assert "val_top1" in metrics
        self.calls.append("on_epoch_end")

    def on_train_end(self, ctx):
        self.calls.append("on_train_end")
        return {"recorded": len(self.calls)}

    def state_dict(self):
        return {"n": torch.tensor(len(self.calls))}


def test_hooks_are_called_in_the_documented_order(tmp_path: Path, monkeypatch) -> None:
    rec = Recorder(None)
    monkeypatch.setattr("prunecli.engine.trainer.build_method", lambda cfg: rec)
    results = Trainer(make_cfg("trainer.epochs=1", "trainer.grad_accum=2",
                               "data.train_size=64"), tmp_path).fit()
    # 64 images / batch 16 = 4 micro-batches = 2 optimizer steps
    micro = ["extra_loss", "after_backward"]
    step = ["before_optimizer_step", "after_optimizer_step"]
    expected = (["setup", "param_groups", "on_train_start", "on_epoch_start"]
                + (micro * 2 + step) * 2 + ["on_epoch_end", "on_train_end"])
    assert rec.calls == expected
    assert rec.unscaled_grad_seen and results["recorded"] == len(expected)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["step"] == 2 and int(ckpt["method"]["n"]) == len(expected) - 1


# ---------------------------------------------------------------- precision and layout
def test_bf16_autocast_and_channels_last_on_cpu(tmp_path: Path) -> None:
    results = Trainer(make_cfg("trainer.epochs=1", "trainer.precision=bf16",
                               "trainer.channels_last=true"), tmp_path).fit()
    assert math.isfinite(results["val_loss"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the refusal on a CPU-only host")
def test_fp16_needs_cuda() -> None:
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        Trainer(make_cfg("trainer.precision=fp16"), Path("/nonexistent")).fit()


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the refusal on a CPU-only host")
def test_sync_bn_needs_cuda(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sync_bn"):
        Trainer(make_cfg("trainer.sync_bn=true"), tmp_path).fit()


def test_training_learns_the_embedded_dataset(tmp_path: Path) -> None:
    """Two short epochs on 2k real images: well above chance (10%)."""
    cfg = make_cfg("data=fashion_mnist", "data.train_size=2000", "data.val_size=500",
                   "data.batch_size=64", "data.image_size=null", "trainer.epochs=2",
                   "optim.lr=0.05")
    results = Trainer(cfg, tmp_path).fit()
    assert results["top1"] > 60.0


def test_a_nan_loss_mid_pruning_stops_with_one_line_and_keeps_the_good_checkpoint(
        run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A NaN loss in epoch 2 of a Taylor run: exit 2 with one line naming the kept checkpoint;
    last.pt is epoch 1's, with finite weights and method scores; resuming finishes the run."""
    from prunecli.tasks.classification import ClassificationTask
    from tests.conftest import read_results

    real, calls = ClassificationTask.loss, {"n": 0}

    def poisoned(self, model, inputs, targets):
        loss, out = real(self, model, inputs, targets)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 8 else loss), out

    monkeypatch.setattr(ClassificationTask, "loss", poisoned)
    common = ("experiment=smoke", "data.train_size=96", "data.val_size=32", "data.batch_size=16",
              "data.image_size=16", "trainer.epochs=3", "trainer.log_every=1", "method=taylor",
              "cost.ratio=0.5", "method.prune_every=2", "method.finish_at=0.9")
    run = tmp_path / "run"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli("train", *common, run_dir=run)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nan" in err[0] and f"{run / 'last.pt'} (epoch 1)" in err[0]
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    scores = [v for v in state["method"]["smooth"].values() if torch.is_tensor(v)] + [
        t for d in state["method"]["smooth"].values() if isinstance(d, dict)
        for t in d.values() if torch.is_tensor(t)]
    assert scores and all(torch.isfinite(t).all() for t in scores)
    monkeypatch.setattr(ClassificationTask, "loss", real)
    resumed = run_cli("train", *common, f"resume={run}", run_dir=tmp_path / "resumed")
    assert read_results(resumed)["cost_kept"] == pytest.approx(0.5, abs=0.02)


def test_a_file_not_written_by_torch_save_is_named_so(tmp_path: Path) -> None:
    """A latency table or an ONNX file passed as a checkpoint: not 'pickled objects refused'."""
    table = tmp_path / "lut.json"
    table.write_text('{"format": "prunecli-latency-table"}')
    with pytest.raises(CheckpointError, match=r"not a file written by torch.save .*b'\{\"format"):
        ckpt_io.load_checkpoint(table)
    legacy = tmp_path / "legacy.pt"  # torch.save's old pickle format still loads
    torch.save({"a": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(ckpt_io.load_checkpoint(legacy)["a"], torch.ones(2))
