"""The pruning methods end to end: from the CLI on tiny data, the budget is met, the slimmed
model is saved and reloads in a fresh process to the same accuracy, runs resume mid-pruning,
sweeps summarise; plus each method's own rule (slimming's subgradient, pruned channels never
returning, Taylor's per-step cap) through the Python API."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from prunecli.engine.checkpoint import load_checkpoint
from prunecli.methods.pruner import Pruner
from prunecli.models import build_model
from prunecli.structure import load_slim
from tests import test_latency
from tests.conftest import console_script, pruner_steps, read_results, torchrun_train

SMALL = ("experiment=smoke", "data.train_size=48", "data.val_size=32", "data.batch_size=8",
         "data.image_size=16", "trainer.progress=false", "trainer.epochs=4")
fake_timing = test_latency.fake_timing  # the fixture: layer timings from a known formula

# 6 optimizer steps (of 8 images) per epoch, 24 in all; every schedule ends by step 12
SCHEDULE = {
    "taylor": ("method.prune_every=2", "method.remove_per_step=0.1"),
    "slimming": ("method.sparsity=1e-3",),
    "halp": ("method.prune_every=2", "method.prune_steps=4", "method.group_size=4"),
}


@pytest.mark.parametrize(("method", "cost", "ratio"), [
    ("taylor", "macs", 0.5), ("slimming", "params", 0.4), ("halp", "memory", 0.3)])
def test_method_meets_the_budget_and_saves_a_slim_model(run_cli, tmp_path: Path, method: str,
                                                        cost: str, ratio: float) -> None:
    run = run_cli("train", *SMALL, f"method={method}", f"cost={cost}", f"cost.ratio={ratio}",
                  *SCHEDULE[method])
    r = read_results(run)
    assert r["cost"] == cost and r["cost_target"] == pytest.approx(1 - ratio)
    assert 1 - ratio - 0.02 <= r["cost_kept"] <= 1 - ratio + 1e-9
    assert r["prune_events"] >= 1 and r["macs"] < r["dense_macs"]
    assert r["slim_top1"] == r["top1"] and r["slim_max_diff"] < 1e-4
    small = load_slim(run / "slim.pt")
    assert sum(p.numel() for p in small.model.parameters()) == r["params"]
    # a fresh process rebuilds it from the file alone and gets the same accuracy
    out = console_script("eval", f"ckpt={run / 'slim.pt'}", "trainer.progress=false",
                         f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    again = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert again["top1"] == r["top1"] and again["macs"] == r["macs"]


@pytest.mark.parametrize(("source", "name", "method"), [
    ("timm", "convnextv2_atto", "taylor"),  # MLP widths on channels-last tensors, with GRN
    ("torchvision", "regnet_x_400mf", "smcp"),  # grouped convs pruned in whole conv groups
])
def test_methods_prune_newly_covered_families(run_cli, source: str, name: str,
                                              method: str) -> None:
    run = run_cli("train", *SMALL, "data.image_size=32", "trainer.epochs=2", f"model={source}",
                  f"model.name={name}", f"method={method}", "cost.ratio=0.5",
                  "method.prune_every=2" if method == "taylor" else "method.prune_every=3")
    r = read_results(run)
    assert 0.48 <= r["cost_kept"] <= 0.5 + 1e-9
    assert r["slim_top1"] == r["top1"] and r["slim_max_diff"] < 1e-4
    assert sum(p.numel() for p in load_slim(run / "slim.pt").model.parameters()) == r["params"]


def _masks(run: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run / "last.pt")["model"]
    return {k: v for k, v in state.items() if k.endswith(".mask")}


@pytest.mark.parametrize("method", ["taylor", "halp"])
def test_a_run_resumed_mid_pruning_is_the_same_run(run_cli, tmp_path: Path, method: str,
                                                   capsys) -> None:
    common = (*SMALL, f"method={method}", "cost.ratio=0.5", "trainer.deterministic=true",
              *SCHEDULE[method])
    full = run_cli("train", *common, run_dir=tmp_path / "full")
    part = run_cli("train", *common, "trainer.stop_after_epoch=1", run_dir=tmp_path / "part")
    assert read_results(part)["stopped_early"]
    # stopped as if killed: no last cut to the budget and no slim model (Taylor cut to the
    # budget and wrote slim.pt "without fine-tuning" at the stop)
    stopped = read_results(part)
    assert stopped["cost_kept"] > 0.55 and not (part / "slim.pt").exists()
    assert stopped["macs"] / stopped["dense_macs"] == pytest.approx(stopped["cost_kept"], abs=1e-3)
    assert "without fine-tuning" not in (part / "train.log").read_text()
    capsys.readouterr()
    run_cli("slim", f"ckpt={part}", run_dir=tmp_path / "slim")  # slims, and says it is unfinished
    assert "last.pt is from epoch 1 of 4: these are the masks so far" in " ".join(
        capsys.readouterr().out.split())
    mid = _masks(part)
    assert any(not bool(m.all()) for m in mid.values())  # pruning had started ...
    assert load_checkpoint(part / "last.pt")["method"]["history"]
    res = run_cli("train", *common, f"resume={part}", run_dir=tmp_path / "res")
    a, b = _masks(full), _masks(res)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # ... same end
    assert read_results(res)["top1"] == read_results(full)["top1"]


def test_a_budget_sweep_is_summarised(run_cli, tmp_path: Path) -> None:
    sweep = run_cli("train", "-m", *SMALL, "trainer.epochs=2", "method=halp",
                    "method.prune_every=1", "method.prune_steps=3", "cost.ratio=0.3,0.6")
    summary = json.loads((sweep / "summary.json").read_text())
    rows = summary["runs"] if isinstance(summary, dict) else summary
    kept = sorted(round(row["results"]["cost_kept"] if "results" in row else row["cost_kept"], 2)
                  for row in rows)
    assert len(kept) == 2 and kept[0] <= 0.4 + 1e-6 and 0.68 <= kept[1] <= 0.7 + 1e-6
    text = (sweep / "summary.txt").read_text()
    title, header = text.splitlines()[0], " ".join(text.splitlines()[1:4])
    assert "method halp" in title and "cost.ratio" in header  # shared in the title, swept a column
    assert "overrides" not in header and " method " not in header


def test_two_stage_slimming_from_a_sparsity_trained_checkpoint(run_cli, tmp_path: Path) -> None:
    sparse = run_cli("train", *SMALL, "method=slimming", "method.channel_ratio=0.3",
                     "method.prune_at=1.0", "method.sparsity=1e-2", run_dir=tmp_path / "s")
    first = read_results(sparse)
    assert first["prune_events"] == 1  # pruned at the very end
    tuned = run_cli("train", *SMALL, "method=slimming", "method.channel_ratio=0.3",
                    "method.prune_at=0", "method.sparsity=0", f"model.weights={sparse}/last.pt",
                    run_dir=tmp_path / "f")
    second = read_results(tuned)
    assert second["dense_top1"] is not None  # the loaded model was evaluated before pruning
    assert second["channels_kept"] == first["channels_kept"]
    assert second["channels_kept"] == pytest.approx(0.7 * second["channels_prunable"], abs=1)


def test_pruning_without_a_budget_is_a_one_line_error(run_cli, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        run_cli("train", *SMALL, "method=taylor")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cost.ratio" in err[0]
    with pytest.raises(SystemExit):  # the paper's explicit schedule: 30 x 40 steps > 24
        run_cli("train", *SMALL, "method=halp", "cost.ratio=0.5", "method.prune_every=40")
    assert "prune_steps" in capsys.readouterr().err


def test_halp_defaults_spread_the_steps_over_a_short_run(run_cli, tmp_path: Path) -> None:
    """12 optimizer steps, half of them the pruning window: the 30 default steps become 6, one
    per step, and the run still lands on its budget."""
    from prunecli.methods.schedule import spread_steps

    assert spread_steps(0, 390, 30) == (30, 13) and spread_steps(2, 8, 30) == (6, 1)
    run = run_cli("train", *SMALL, "trainer.epochs=2", "method=halp", "cost.ratio=0.5")
    r = read_results(run)
    assert 0.48 <= r["cost_kept"] <= 0.5 + 1e-9 and 1 <= r["prune_events"] <= 6


# ------------------------------------------------------------------ Python API, method rules
def _loop(method: str, steps: int = 12, **hyper):
    torch.manual_seed(0)
    model = build_model({"name": "resnet20"}, num_classes=10)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    pruner = Pruner(model, x, method, ratio=0.5, epochs=1, steps_per_epoch=steps, **hyper)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pruner.start(opt)
    masks = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y) + pruner.extra_loss(None, y)
        loss.backward()
        pruner.before_step()
        opt.step()
        opt.zero_grad()
        pruner.after_step()
        masks.append(pruner.method.masker.channel_masks())
    pruner.end_epoch()
    return model, x, pruner, masks


@pytest.mark.parametrize(("method", "hyper"), [
    ("halp", {"prune_every": 2, "prune_steps": 5, "group_size": 4}),
    ("taylor", {"prune_every": 2, "remove_per_step": 0.05, "finish_at": 0.9})])
def test_pruned_channels_never_return_and_the_api_slims_exactly(method: str, hyper) -> None:
    model, x, pruner, masks = _loop(method, **hyper)
    for before, after in zip(masks, masks[1:], strict=False):
        for g in before:
            assert not (after[g] & ~before[g]).any()  # nothing comes back
    small, summary = pruner.finish()
    assert 0.48 <= summary["cost_kept"] <= 0.5
    model.eval()
    torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)


def test_taylor_removes_at_most_its_step_count_until_the_last_step() -> None:
    _, _, pruner, masks = _loop("taylor", prune_every=2, remove_per_step=10, finish_at=0.9)
    kept = [sum(int(m.sum()) for m in step.values()) for step in masks]
    drops = [a - b for a, b in zip(kept, kept[1:], strict=False) if a != b]
    assert drops and all(d <= 10 for d in drops[:-1])


def test_slimming_adds_the_l1_subgradient_to_bn_scales() -> None:
    torch.manual_seed(0)
    model = build_model({"name": "resnet20"}, num_classes=10)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    pruner = Pruner(model, x, "slimming", ratio=0.3, epochs=1, steps_per_epoch=10,
                    sparsity=0.5, prune_at=1.0)
    pruner.start()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(-1, 1)
    nn.functional.cross_entropy(model(x), y).backward()
    task = {id(bn): bn.weight.grad.clone() for bn in bns}
    pruner.before_step()
    for bn in bns:
        expected = task[id(bn)] + 0.5 * torch.sign(bn.weight)
        torch.testing.assert_close(bn.weight.grad, expected)


def test_pruner_rejects_unknown_options() -> None:
    model = build_model({"name": "resnet20"}, num_classes=10)
    with pytest.raises(Exception, match="no option prune_evry"):
        Pruner(model, torch.randn(1, 3, 16, 16), "taylor", prune_evry=3)


def test_halp_on_a_latency_table(run_cli, tmp_path: Path, fake_timing) -> None:
    """The table's timings follow a known formula (a noisy real table of a 16x16 ResNet-20 is
    mostly fixed overhead, so a 30% cut may be out of reach on it)."""
    table = tmp_path / "r20.json"
    run_cli("lut", "model=resnet20", "input_size=[3,16,16]", "num_classes=10", "batch_size=1",
            "device=cpu", "step=16", "warmup=0", "repeats=1", "rounds=1", "threads=1",
            "check=false", f"out={table}", run_dir=tmp_path / "lut")
    run = run_cli("train", *SMALL, "method=halp", "cost=latency", f"cost.table={table}",
                  "cost.ratio=0.3", *SCHEDULE["halp"], "method.group_size=16",
                  run_dir=tmp_path / "train")
    r = read_results(run)
    assert r["cost"] == "latency" and 0.68 <= r["cost_kept"] <= 0.7 + 1e-9
    assert np.isfinite(r["cost_pruned"]) and r["cost_pruned"] < r["cost_dense"]
    # layer drop under the table: an emptied layer costs 0 ms, and the budget still holds
    run = run_cli("train", *SMALL, "method=halp", "cost=latency", f"cost.table={table}",
                  "cost.ratio=0.6", *SCHEDULE["halp"], "method.group_size=16",
                  "method.layer_drop=true", run_dir=tmp_path / "drop")
    r = read_results(run)  # 16-channel chunks of 16-wide layers: all-or-nothing steps
    assert 0.33 <= r["cost_kept"] <= 0.4 + 1e-9 and r["slim_max_diff"] < 1e-4
    assert isinstance(r["groups_dropped"], list)


def test_pruning_under_torchrun_on_two_processes(tmp_path: Path) -> None:
    """Activation-based scores differ per process: they are averaged, so both processes set
    the same masks (rank 0 alone writes slim.pt). With distillation: a teacher on every rank,
    outside DDP."""
    from hydra import compose, initialize_config_module

    from prunecli.config.store import register_schemas
    from prunecli.data import build_datasets
    from prunecli.models import build_model

    register_schemas()
    with initialize_config_module(version_base="1.3", config_module="prunecli.conf"):
        cfg = compose("train", overrides=list(SMALL))
    data = build_datasets(cfg.data)
    torch.manual_seed(0)
    teacher = build_model(cfg.model, num_classes=data.num_classes, in_chans=data.channels)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    out = tmp_path / "ddp"
    proc = torchrun_train(*SMALL, "method=taylor", "method.criterion=iclr2017", "cost.ratio=0.5",
                          *SCHEDULE["taylor"], "distill.enabled=true",
                          f"model.weights={tmp_path / 'teacher.pt'}", f"hydra.run.dir={out}",
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = read_results(out)
    assert r["world_size"] == 2 and 0.48 <= r["cost_kept"] <= 0.5
    assert r["distill"]["teacher_ms_per_batch"] > 0
    assert r["slim_top1"] == r["top1"]
    assert load_slim(out / "slim.pt").model is not None


def test_taylor_spreads_the_removal_evenly_by_default() -> None:
    _, _, pruner, masks = _loop("taylor", steps=24, prune_every=2, finish_at=0.75)
    kept = [sum(int(m.sum()) for m in step.values()) for step in masks]
    drops = [a - b for a, b in zip(kept, kept[1:], strict=False) if a != b]
    assert len(drops) >= 6  # pruned over many steps, not in one final cut
    assert max(drops) <= 2 * min(drops) + 2
    assert 0.48 <= pruner.method.kept_cost_ratio() <= 0.5


CAPPED = [("taylor", {"prune_every": 2, "remove_per_step": 0.05, "finish_at": 0.9}),
          ("halp", {"prune_every": 2, "prune_steps": 5, "group_size": 4}),
          ("slimming", {"sparsity": 1e-3, "prune_at": 0.5}),
          ("smcp", {"warmup_epochs": 0.1, "ramp_epochs": 0.4, "cooldown_epochs": 0.5,
                    "prune_every": 1, "round_to": 1}),
          ("gator", {"gate_epochs": 0.5}),
          ("chex", {"update_every": 0.25, "t_max": 0.5})]


@pytest.mark.parametrize(("method", "hyper"), CAPPED, ids=[m for m, _ in CAPPED])
def test_max_prune_per_group_leaves_every_group_its_share(method: str, hyper) -> None:
    """``max_prune_per_group=0.4``: no group loses more than 40% of its channels, in every
    method, and the budget (half the MACs, reachable within the cap) is still met."""
    model, x, pruner, _ = _loop(method, max_prune_per_group=0.4, **hyper)
    sizes = {g.id: g.size for g in pruner.method.structure.prunable_groups}
    kept = {g: int(m.sum()) for g, m in pruner.method.masker.channel_masks().items()}
    assert all(kept[g] >= math.ceil(0.6 * n) for g, n in sizes.items()), (kept, sizes)
    assert any(kept[g] < n for g, n in sizes.items())  # it did prune
    small, summary = pruner.finish()
    assert summary["cost_kept"] <= 0.5 + 1e-9
    model.eval()
    torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)


def test_an_uncapped_run_empties_a_group_a_capped_one_cannot() -> None:
    """Without the cap, slimming's global |gamma| ranking cuts the groups with the smallest
    scales to a few channels; the cap is what stops it (so the test above is not void)."""
    def run(**cap):
        torch.manual_seed(0)
        model = build_model({"name": "resnet20"}, num_classes=10)
        with torch.no_grad():  # the first stage's scales far below the rest
            for name, m in model.named_modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.mul_(0.01 if name.startswith("layer1") else 1.0)
        pruner = Pruner(model, torch.randn(4, 3, 16, 16), "slimming", ratio=0.3, epochs=1,
                        steps_per_epoch=1, prune_at=0.0, **cap)
        pruner.start()
        return pruner.method.structure, pruner.method.masker.channel_masks()

    structure, masks = run()
    assert min(int(m.sum()) for m in masks.values()) <= 2
    structure, masks = run(max_prune_per_group=0.5)
    assert all(int(masks[g.id].sum()) >= g.size // 2 for g in structure.prunable_groups)


def test_max_prune_per_group_out_of_range_is_a_one_line_error() -> None:
    from prunecli.errors import ConfigError

    model = build_model({"name": "resnet20"}, num_classes=10)
    with pytest.raises(ConfigError, match="max_prune_per_group=0.*must be in"):
        Pruner(model, torch.randn(2, 3, 16, 16), "taylor", ratio=0.5,
               max_prune_per_group=0.0).start()


def test_a_cap_that_cannot_meet_the_budget_fails_before_training_and_names_one_that_can() -> None:
    import re

    from prunecli.errors import ConfigError

    def start(cap: float) -> Pruner:
        model = build_model({"name": "resnet20"}, num_classes=10)
        pruner = Pruner(model, torch.randn(2, 3, 16, 16), "slimming", ratio=0.7,
                        max_prune_per_group=cap)
        pruner.start()
        return pruner

    with pytest.raises(ConfigError) as err:
        start(0.3)  # every group keeps 70% or more: about half the MACs, not 30%
    message = str(err.value)
    assert "\n" not in message and "keeps at least" in message
    fits = float(re.search(r"raise it to ([0-9.]+)", message).group(1))
    pruner = start(fits)  # the cap it names does fit
    method = pruner.method
    floors = {g.id: method.floor(g.id) for g in method.structure.prunable_groups}
    assert method.cost_model.cost(floors) <= method.target_cost


class _TwoNarrowLayers(nn.Module):
    """Two 16-channel groups; MACs per pixel ``3a + ab + 10b``: with neuron groups of 8 the
    widths are 8 or 16, so a 50% budget (232 of 464) is met only by (8, 8) at 36%."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.out = nn.Conv2d(16, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.b(self.a(x))).mean((2, 3))


@pytest.mark.parametrize(("group_size", "warned"), [(8, True), (1, False)])
def test_halp_says_when_its_neuron_groups_undershoot_the_budget(caplog, group_size: int,
                                                                 warned: bool) -> None:
    import logging

    torch.manual_seed(0)
    model = _TwoNarrowLayers()
    x, y = torch.randn(8, 3, 4, 4), torch.randint(0, 10, (8,))
    pruner = Pruner(model, x, "halp", ratio=0.5, epochs=1, steps_per_epoch=6, prune_every=1,
                    prune_steps=3, group_size=group_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    pruner.start(opt)
    with caplog.at_level(logging.WARNING, logger="prunecli"):
        pruner_steps(pruner, opt, lambda: nn.functional.cross_entropy(model(x), y), 6)
    kept = pruner.method.kept_cost_ratio()
    assert kept <= 0.5 + 1e-9
    if warned:
        assert kept == pytest.approx(168 / 464) and "method.group_size=4 or lower" in caplog.text
    else:
        assert kept >= 0.48 and "lands nearer the budget" not in caplog.text


def test_taylor_warns_when_its_window_does_not_fit_the_run(run_cli) -> None:
    """24 steps and the default window of 30 minibatches: the whole cut came at the last step,
    with no fine-tuning after it, and nothing said so."""
    run = run_cli("train", *SMALL, "method=taylor", "cost.ratio=0.5", run_dir=None)
    log = (run / "train.log").read_text()
    assert "method.prune_every=30 minibatches does not fit" in log
    assert "the whole cut comes at step 24 (no fine-tuning after it)" in log
    r = read_results(run)
    assert r["prune_events"] == 1 and r["cost_kept"] <= 0.5
    fits = run_cli("train", *SMALL, "method=taylor", "cost.ratio=0.5", "method.prune_every=3",
                   run_dir=run.parent / "fits")
    assert "does not fit" not in (fits / "train.log").read_text()
    assert read_results(fits)["prune_events"] > 1
