"""``method.slim_when_final``: once the masks are final the trainer fine-tunes the slimmed model.
It must compute what the masked run computes (same losses, same final weights), resume from a
checkpoint written after the swap, and leave checkpoints every tool can read."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from prunecli.engine.checkpoint import load_checkpoint
from prunecli.engine.optim import param_groups
from prunecli.engine.slim_training import transfer_optimizer_state
from prunecli.models import build_model
from prunecli.structure import (
    ChannelMasker,
    load_slim,
    random_keep,
    slim,
    strip_all_masks,
    trace_structure,
)
from tests.conftest import console_script, read_results, torchrun_train

SMALL = ("experiment=smoke", "data.train_size=48", "data.val_size=32", "data.batch_size=8",
         "data.image_size=16", "trainer.progress=false", "trainer.epochs=4",
         "trainer.deterministic=true", "optim.lr=0.01")
# The slim model sums fewer zeros, so in float32 the two runs differ by rounding, which a few
# steps of training on random labels amplify to ~1e-4: the exact check is in float64 below.
# 6 optimizer steps an epoch (of 8 images); every method's masks are final by step 12 (end of
# epoch 2)
METHODS = {
    "taylor": ("method=taylor", "cost.ratio=0.5", "method.prune_every=2",
               "method.remove_per_step=0.1"),
    "slimming": ("method=slimming", "cost.ratio=0.4", "method.sparsity=1e-3"),
    "halp": ("method=halp", "cost.ratio=0.5", "method.prune_every=2", "method.prune_steps=4",
             "method.group_size=4"),
    "smcp": ("method=smcp", "cost.ratio=0.5", "method.warmup_epochs=0.2",
             "method.ramp_epochs=1", "method.cooldown_epochs=2", "method.prune_every=2"),
    "gator": ("method=gator", "cost.ratio=0.5", "method.gate_init_prob=0.6",
              "method.criteria_weight=5", "method.sync_every=2", "method.gate_epochs=1.5"),
    "chex": ("method=chex", "cost.ratio=0.5", "method.update_every=0.125", "method.t_max=0.5"),
}


def _slim_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_slim(run / "slim.pt").model.state_dict()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_fine_tuning_the_slim_model_computes_what_the_masked_one_would(
        run_cli, shared_run, tmp_path: Path, method: str) -> None:
    masked = run_cli("train", *SMALL, *METHODS[method], run_dir=tmp_path / "masked")
    # read only: the tests below reuse the taylor and halp runs
    slimmed = shared_run("train", *SMALL, *METHODS[method], "method.slim_when_final=true")
    a, b = read_results(masked), read_results(slimmed)
    assert b["slimmed_at_step"] is not None and b["slimmed_at_step"] < 24
    assert b["cost_kept"] == a["cost_kept"] and b["macs"] == a["macs"]
    assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-2)  # float32 noise, see above
    assert _slim_weights(masked).keys() == _slim_weights(slimmed).keys()
    state = load_checkpoint(slimmed / "last.pt")
    assert state["slimmed"]["keep"] and not any(".mask" in k for k in state["model"])


def _stripped(m: nn.Module) -> nn.Module:
    dense = copy.deepcopy(m)
    strip_all_masks(dense)
    return dense


def test_the_swap_is_exact_in_float64() -> None:
    """Masked training, then the swap (slim + optimizer state sliced over), then both go on
    with the same batches: the slim model stays the masked one's kept part to 1e-10."""
    torch.manual_seed(0)
    model = build_model({"name": "resnet20"}, num_classes=10, in_chans=3).double().train()
    x, y = torch.randn(8, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (8,))
    s = trace_structure(model, x[:1])
    keep = random_keep(s, 0.5, torch.Generator().manual_seed(1))
    keep[s.droppable_groups[0].id] = torch.zeros(0, dtype=torch.int64)  # and a dropped block
    ChannelMasker(model, s).set_keep(keep)

    def sgd(m: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(param_groups(m, 5e-4, False), lr=0.05, momentum=0.9)

    def step(m: nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()

    opt = sgd(model)
    for _ in range(3):  # momentum builds up under the masks
        step(model, opt)
    log: dict = {}
    small = slim(_stripped(model), s, keep, inplace=True, log=log)
    small_opt = sgd(small)
    transfer_optimizer_state(opt, model, small_opt, small, log)
    for _ in range(5):
        step(model, opt)
        step(small, small_opt)
    want = slim(_stripped(model), s, keep, inplace=True).state_dict()
    got = small.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.allclose(want[k], got[k], atol=1e-10, rtol=0), k


def test_a_run_stopped_after_the_swap_resumes_to_the_same_end(run_cli, shared_run,
                                                               tmp_path: Path) -> None:
    common = (*SMALL, *METHODS["taylor"], "method.slim_when_final=true")
    full = shared_run("train", *common)
    part = run_cli("train", *common, "trainer.stop_after_epoch=3", run_dir=tmp_path / "part")
    assert load_checkpoint(part / "last.pt")["slimmed"]  # written after the swap
    res = run_cli("train", *common, f"resume={part}", run_dir=tmp_path / "res")
    a, b = read_results(full), read_results(res)
    assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-6)
    wa, wb = _slim_weights(full), _slim_weights(res)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_tools_read_a_checkpoint_of_a_slimmed_run(run_cli, shared_run, tmp_path: Path) -> None:
    run = shared_run("train", *SMALL, *METHODS["halp"], "method.slim_when_final=true")
    r = read_results(run)
    out = console_script("eval", f"ckpt={run / 'last.pt'}", "trainer.progress=false",
                         f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    again = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert again["top1"] == r["top1"]  # the masked model, rebuilt in dense shapes
    run_cli("slim", f"ckpt={run / 'last.pt'}", f"out={tmp_path / 's.pt'}",
            run_dir=tmp_path / "slim")
    assert load_slim(tmp_path / "s.pt").model.state_dict().keys() == _slim_weights(run).keys()
    # and it starts another run (dense shapes, pruned channels zero)
    run_cli("train", *SMALL, "trainer.epochs=1", f"model.weights={run / 'last.pt'}",
            run_dir=tmp_path / "next")


def test_the_swap_under_torchrun_on_two_processes(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    proc = torchrun_train(*SMALL, *METHODS["halp"], "method.slim_when_final=true",
                          f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = read_results(out)
    assert r["world_size"] == 2 and r["slimmed_at_step"] is not None
    assert 0.48 <= r["cost_kept"] <= 0.5 + 1e-9 and r["slim_top1"] == r["top1"]


def test_the_swap_keeps_channels_last(run_cli, tmp_path: Path) -> None:
    run = run_cli("train", *SMALL, *METHODS["taylor"], "method.slim_when_final=true",
                  "trainer.channels_last=true", run_dir=tmp_path / "cl")
    r = read_results(run)
    assert r["slimmed_at_step"] is not None and r["slim_top1"] == r["top1"]
