"""What the pruning machinery costs on ResNet-50: set-up, every training step, every pruning
event. Run on demand (not a test)::

    python benchmarks/method_overhead.py [--repeats 20] [--out benchmarks/results]

For each method on torchvision ResNet-50 at 224x224 (CPU): the time of ``Pruner(...)`` (trace
the structure, build the MACs cost model, attach masks), the median time of its per-step hooks
(``before_step`` + ``after_step`` on steps without a pruning event: scoring, accumulating,
sparsity subgradients, gate/mask upkeep), and the median time of one pruning event (scores to
the host, allocation under the budget, masks set) at cost.ratio 0.5. For scale: one forward +
backward pass at batch 8 on this CPU of the model with the method attached (masks, gates) and
of a plain ResNet-50, timed interleaved with the hooks, so machine load affects all alike.
Writes ``method_overhead.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

from prunecli.methods import method_names
from prunecli.methods.pruner import Pruner

# how to trigger one pruning event directly, per method
EVENTS = {
    "taylor": lambda m, ctx: m.prune_step(ctx),
    "slimming": lambda m, ctx: m.prune(ctx),
    "halp": lambda m, ctx: m.prune_step(ctx),
    "smcp": lambda m, ctx: m.resolve(ctx),
    "gator": lambda m, ctx: m.sync(ctx, final=True),  # the end of gating: cut to the budget
    "chex": lambda m, ctx: m.update(ctx),
}
HYPER = {
    "slimming": {"prune_at": 1.0},
    "halp": {"prune_every": 1000, "prune_steps": 1},
    "smcp": {"warmup_epochs": 0, "ramp_epochs": 0.5, "cooldown_epochs": 0.1,
             "prune_every": 1000},
    "taylor": {"prune_every": 1000, "finish_at": 0.9},
    "gator": {"sync_every": 1000, "gate_epochs": 0.9},
    "chex": {"update_every": 1000},
}


def _ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def measure(name: str, x: torch.Tensor, y: torch.Tensor, repeats: int) -> tuple:
    model = torchvision.models.resnet50()
    t0 = time.perf_counter()
    pruner = Pruner(model, x[:1], name, ratio=0.5, epochs=10, steps_per_epoch=1000,
                    ignore=["conv1", "fc"], **HYPER.get(name, {}))
    setup_s = time.perf_counter() - t0
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    pruner.start(opt)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # optimizer state exists (SMCP's momentum importance)

    def fwd_bwd() -> None:
        model.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(model(x), y).backward()

    def hooks() -> None:
        pruner.before_step()
        pruner.ctx.step += 1
        pruner.method.after_optimizer_step(pruner.ctx)

    plain = torchvision.models.resnet50()

    def plain_fwd_bwd() -> None:
        plain.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(plain(x), y).backward()

    fwd_bwd()
    plain_fwd_bwd()
    ref, hook, dense = [], [], []
    for _ in range(max(3, repeats // 4)):  # interleaved: the same load for all
        ref.append(_ms(fwd_bwd, 1))
        hook.append(_ms(hooks, 4))
        dense.append(_ms(plain_fwd_bwd, 1))
    pruner.ctx.step = 500  # mid-run: every schedule is pruning
    event = _ms(lambda: EVENTS[name](pruner.method, pruner.ctx), 1)  # the first one works
    after, dense2 = [], []
    for _ in range(max(3, repeats // 4)):  # masks (and gates) now cut channels
        after.append(_ms(fwd_bwd, 1))
        dense2.append(_ms(plain_fwd_bwd, 1))
    row = (name, setup_s, statistics.median(hook), event, statistics.median(ref),
           statistics.median(after), statistics.median(dense + dense2),
           pruner.method.kept_cost_ratio())
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(8, 3, 224, 224)
    y = torch.randint(0, 1000, (8,))
    rows = [measure(name, x, y, args.repeats) for name in method_names() if name in EVENTS]
    lines = [
        "# Pruning machinery overhead on ResNet-50",
        "",
        f"`python benchmarks/method_overhead.py` ({dt.date.today()}, {os.cpu_count()} cores, "
        f"{args.threads} threads, torch {torch.__version__}); torchvision ResNet-50 at 224x224, "
        "stem and classifier input left whole, MACs budget cost.ratio=0.5.",
        "",
        "| method | set-up (trace + cost model + masks) | hooks per step | one pruning event | "
        "MACs kept after it | fwd+bwd batch 8: plain model | method attached, nothing "
        "pruned | after the event | hooks / fwd+bwd |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, setup_s, hook_ms, event_ms, ref_ms, after_ms, dense_ms, kept in rows:
        lines.append(f"| {name} | {setup_s:.2f} s | {hook_ms:.1f} ms | {event_ms / 1000:.2f} s | "
                     f"{100 * kept:.1f}% | {dense_ms / 1000:.2f} s | {ref_ms / 1000:.2f} s | "
                     f"{after_ms / 1000:.2f} s | {100 * hook_ms / dense_ms:.2f}% |")
    lines.append("")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "method_overhead.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
