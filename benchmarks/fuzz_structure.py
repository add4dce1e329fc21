"""A fuzzer for the channel tracer: random CNNs, random keep-sets, slim, compare.

Each net is drawn from a seeded generator (the seed alone rebuilds it): convolutions with random
widths, kernels and strides, grouped and depthwise convs, BatchNorm/GroupNorm, residual adds,
concatenations, squeeze-excite gates, channel splits and chunks (sizes in the code, or held by a
module: MixNet's ``splits``, Res2Net's ``width``), GhostNet's ``cat([x1, dw(x1)])``,
channels-last MLPs (permute, Linear over the last axis, permute back), LayerNorm over channels,
ConvNeXt V2's Global Response Norm (NCHW or channels-last), a conv module called on two
tensors, element-wise products, ops the tracer does not know (roll, flip, cumsum over channels),
pooling, and a head that pools or flattens into a Linear (sometimes two heads).

For each net: trace, a random keep-set of every prunable group (norm statistics and affines
randomised, so a wrongly sliced norm shows), slim, and compare the slimmed model's outputs with
the masked model's. Every net must end one of two ways: **exact** (the slimmed outputs equal
the masked ones to 1e-4 relative) or **whole** (nothing prunable; every group says why). Anything
else is a finding: **wrong** (a slimmed model that computes something else), **crash** (an
exception that is not a clear prunecli error), **timeout** (over ``--time-limit`` seconds).

    python benchmarks/fuzz_structure.py --nets 2000 [--start 0] [--out benchmarks/results]

writes ``fuzz_structure.md``; a failing seed is reproduced with ``--start SEED --nets 1 -v``.
The test suite runs the first hundred seeds (tests/test_fuzz_structure.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import random
import signal
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import torch
from timm.layers.grn import GlobalResponseNorm
from torch import nn

from prunecli.errors import PrunecliError
from prunecli.structure import ChannelMasker, random_keep, slim, trace_structure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_nets import SIZE, RandomNet  # noqa: E402

__all__ = ["SIZE", "RandomNet", "check", "randomise_norms", "slim"]

OUTCOMES = ("exact", "whole", "wrong", "crash", "timeout")


def randomise_norms(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        if isinstance(m, nn.BatchNorm2d | nn.GroupNorm | nn.LayerNorm | GlobalResponseNorm):
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g))


def _outputs(out: torch.Tensor | tuple) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


class _Timeout(Exception):
    pass


def check(seed: int, time_limit: float = 20.0) -> tuple[str, str]:
    """(outcome, detail) of net ``seed``: see the module docstring."""
    def alarm(*_: object) -> None:
        raise _Timeout

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    try:
        torch.manual_seed(seed)
        model = RandomNet(seed).eval()
        randomise_norms(model, seed)
        x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
        structure = trace_structure(model, x[:1])
        if not structure.prunable_groups:
            silent = [g.id for g in structure.groups if not g.reasons]
            return ("whole", "") if not silent else ("wrong", f"groups {silent} lack a reason")
        keep = random_keep(structure, random.Random(seed).uniform(0.2, 0.9),
                           torch.Generator().manual_seed(seed))
        small = slim(model, structure, keep)
        masker = ChannelMasker(model, structure)
        masker.set_keep(keep)
        with torch.no_grad():
            masked, slimmed = _outputs(model(x)), _outputs(small(x))
        masker.remove()
        worst = 0.0
        for a, b in zip(masked, slimmed, strict=True):
            if a.shape != b.shape:
                return "wrong", f"output shape {tuple(b.shape)} != {tuple(a.shape)}"
            worst = max(worst, float((a - b).abs().max() / a.abs().max().clamp_min(1e-6)))
        if worst > 1e-4:
            return "wrong", f"max relative difference {worst:.2e}"
        return "exact", f"{len(structure.prunable_groups)} groups pruned"
    except _Timeout:
        return "timeout", f"over {time_limit:g} s"
    except PrunecliError as exc:  # a clear refusal is a stated reason, not a wrong model
        return "whole", f"refused: {str(exc).splitlines()[0][:120]}"
    except Exception as exc:  # noqa: BLE001  (every other failure is a finding)
        return "crash", f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", type=int, default=2000)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=20.0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("prunecli").setLevel(logging.ERROR)  # unknown ops are expected here
    counts: Counter[str] = Counter()
    ops: Counter[str] = Counter()
    findings = []
    t0 = time.time()
    for seed in range(args.start, args.start + args.nets):
        outcome, detail = check(seed, args.time_limit)
        counts[outcome] += 1
        with contextlib.suppress(Exception):
            ops.update(RandomNet(seed).log)
        if outcome not in ("exact", "whole"):
            findings.append((seed, outcome, detail))
        if args.verbose:
            print(seed, outcome, detail, flush=True)
            if outcome == "crash":
                traceback.print_exc()
    wall = time.time() - t0
    lines = [
        "# Tracer fuzzing", "",
        f"`python benchmarks/fuzz_structure.py --nets {args.nets} --start {args.start}` "
        f"({dt.date.today()}, torch {torch.__version__}, {wall:.0f} s, "
        f"{1000 * wall / max(1, args.nets):.0f} ms per net).", "",
        "| outcome | nets |", "|---|---:|",
        *[f"| {k} | {counts[k]} |" for k in OUTCOMES], "",
        "Ops drawn: " + ", ".join(f"{k} {v}" for k, v in ops.most_common()) + ".", "",
    ]
    if findings:
        lines += ["| seed | outcome | detail |", "|---:|---|---|",
                  *[f"| {s} | {o} | {d} |" for s, o, d in findings[:50]], ""]
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fuzz_structure.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
