"""Coverage benchmark: does prunecli's channel structure trace, prune and slim real CNNs exactly?

Run on demand (not a test)::

    python benchmarks/coverage.py [--models resnet18,dla34] [--threads 2] [--out benchmarks/results]

For each model (random init, eval mode, batch-1 input of its usual size) it measures:

* **coverage** -- how many channel groups :func:`prunecli.structure.trace_structure` finds, how
  many are prunable, and which share of all channels they hold; the ops it did not understand
  and the most common reasons groups were left unpruned. A low share means prunecli gave up on
  part of the network (safe, but a lost opportunity).
* **exactness** -- a random keep-set removing 30% of every prunable group is applied twice: as
  input-channel masks on the original model (:class:`ChannelMasker`) and by physically slimming a
  copy (:func:`slim`). Both must compute the same function; the check passes when
  ``max|masked - slimmed| / max|masked| <= 1e-4``. A mismatch means a slicing bug. The check is
  only worth something if the removed channels reach the logits, so the random init is first
  made "live" (see :func:`excite`) and the change pruning makes to the output is recorded too.
* **cost** -- MACs of one forward pass before and after slimming (:func:`count_macs`).
* **speed** -- trace, slim and trace+slim seconds (median of 3; ``slim`` includes the deep copy it
  makes).

The reference is Torch-Pruning 1.6.1 on the same models and ratio: ``BasePruner`` (alias
``MagnitudePruner``) with L1 ``MagnitudeImportance``, ``pruning_ratio=0.3``, the classifier in
``ignored_layers``. Its time is deep copy + building the pruner (dependency graph) +
``pruner.step()``, the equivalent of prunecli's trace+slim. Torch-Pruning has no masked model to
compare with, so only success (no exception and a forward pass with the right output shape),
MACs after and time are recorded. It runs in a worker process per model so that a hang (seen on
some timm models) is cut off after 120 s; its attempts are interleaved with prunecli's so both
see the same machine load.

Writes ``coverage.md`` (table + summary) and ``coverage.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import re
import signal
import statistics
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coverage_models import (  # noqa: E402  (sweep_exact.py imports some of these from here)
    KEEP_RATIO,
    MIN_CHANGE,
    MODELS,
    TOLERANCE,
    ModelSpec,
    build,
    example_input,
    excite,
    first_line,
    output_tensor,
    quiet,
    timed,
)
from coverage_report import (  # noqa: E402
    Record,
    cpu_name,
    fmt,
    load_previous,
    merge,
    now,
    versions,
    write_reports,
)
from coverage_tp import TPWorker, tp_step  # noqa: E402

__all__ = ["MIN_CHANGE", "TOLERANCE", "ModelSpec", "excite", "first_line", "generic",
           "masked_vs_slim", "prunable_mac_share", "prunecli_once", "quiet", "time_limit"]

REPEATS = 3  # timed runs per model (median reported)
PRUNECLI_TIMEOUT_S = 120  # per trace + slim: a hang is reported, not waited for


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise TimeoutError in this (main) thread after ``seconds`` (SIGALRM; POSIX)."""
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class PrunecliRun:
    """One trace -> random keep -> slim pass."""

    structure: Any
    keep: dict[int, torch.Tensor]
    small: nn.Module
    trace_s: float
    slim_s: float


def prunecli_once(model: nn.Module, x: torch.Tensor) -> PrunecliRun:
    from prunecli.structure import random_keep, slim, trace_structure

    structure, trace_s = timed(lambda: trace_structure(model, x))
    keep = random_keep(structure, keep_ratio=KEEP_RATIO,
                       generator=torch.Generator().manual_seed(0))
    small, slim_s = timed(lambda: slim(model, structure, keep))
    return PrunecliRun(structure, keep, small, trace_s, slim_s)


@torch.no_grad()
def masked_vs_slim(model: nn.Module, run: PrunecliRun, x: torch.Tensor) -> tuple[float, float]:
    """``max|masked - slimmed| / max|masked|`` (masks go on a copy of ``model``), and the same
    between the unpruned model and the slimmed one: how much pruning changed the output, which
    must be large for the first number to mean anything."""
    from prunecli.structure import ChannelMasker

    full = output_tensor(model(x)).float()
    masked_model = copy.deepcopy(model)
    masker = ChannelMasker(masked_model, run.structure)
    masker.set_keep(run.keep)
    a = output_tensor(masked_model(x)).float()
    b = output_tensor(run.small(x)).float()
    masker.remove()
    if a.shape != b.shape:
        raise RuntimeError(f"slimmed output shape {tuple(b.shape)} != masked {tuple(a.shape)}")
    return rel_diff(a, b), rel_diff(full, b)


def rel_diff(ref: torch.Tensor, other: torch.Tensor) -> float:
    return float((ref - other).abs().max() / ref.abs().max().clamp_min(1e-12))


def generic(reason: str) -> str:
    """A reason without its module names and sizes, so that equal causes are counted together:
    ``grouped conv a.b.0 (groups=6) ...`` -> ``grouped conv … (groups=N) ...``."""
    if reason.startswith("op not understood"):  # names an op (Tensor.split), not a module
        return reason
    reason = re.sub(r"(?<![\w.])[A-Za-z_][\w-]*(?:\.[\w-]+)+", "…", reason)
    reason = re.sub(r"\[[\d, ]+\]", "[…]", reason)
    return re.sub(r"=\d+", "=N", reason)


def prunable_mac_share(model: nn.Module, structure: Any) -> float:
    """Share of the conv/linear MACs in layers whose cost shrinks when a group is pruned (they
    read or write a prunable group, or follow one depthwise)."""
    from prunecli.cost.layers import layer_macs

    per_layer = layer_macs(model, structure)
    total = sum(per_layer.values())

    def touches(name: str) -> bool:
        role = structure.roles[name]
        ids = {seg.group for seg in (*role.in_segments, *role.out_segments)}
        return any(structure.groups[i].prunable for i in ids)

    return sum(m for n, m in per_layer.items() if touches(n)) / total if total else 0.0


def describe_structure(rec: Record, structure: Any) -> None:
    rec.groups = len(structure.groups)
    rec.prunable_groups = len(structure.prunable_groups)
    total = structure.total_channels()
    rec.prunable_share = structure.prunable_channels() / total if total else 0.0
    rec.unknown_ops = list(structure.unknown_ops)
    reasons = Counter(generic(r) for g in structure.groups for r in g.reasons)
    rec.top_reasons = reasons.most_common(4)


def benchmark_model(spec: ModelSpec, threads: int, with_tp: bool,
                    repeats: int = REPEATS) -> Record:
    """prunecli and (interleaved) Torch-Pruning on one model; errors end up in the record."""
    from prunecli.cost import count_macs

    x = example_input(spec)
    rec = Record(spec.name, spec.source, list(x.shape), kind=spec.kind, measured=now())
    try:
        model = build(spec)
        rec.macs_before = count_macs(model, x)
    except Exception as exc:
        rec.status = f"error: build: {first_line(exc)}"
        return rec
    worker = TPWorker(spec, threads) if with_tp else None
    if worker is not None and worker.error:
        rec.tp.status = worker.error
        worker.close()
        worker = None
    runs: list[PrunecliRun] = []
    try:
        for _ in range(repeats):
            if rec.status in ("not run", "ok"):
                try:
                    with time_limit(PRUNECLI_TIMEOUT_S):
                        runs.append(prunecli_once(model, x))
                    rec.status = "ok"
                except TimeoutError:
                    rec.status = f"hang (>{PRUNECLI_TIMEOUT_S} s)"
                except Exception as exc:
                    rec.status = f"error: {first_line(exc)}"
            if worker is not None:
                worker = tp_step(worker, rec.tp)
    finally:
        if worker is not None:
            worker.close()
    rec.tp.seconds = median(rec.tp.times)
    if runs:
        check_prunecli(rec, model, runs, x)
    elif rec.status == "not run":
        rec.status = "error: no run"
    return rec


def check_prunecli(rec: Record, model: nn.Module, runs: list[PrunecliRun],
                   x: torch.Tensor) -> None:
    """Fill structure, timing, MACs and the masked-vs-slimmed check from the timed runs."""
    from prunecli.cost import count_macs

    run = runs[0]
    describe_structure(rec, run.structure)
    rec.prunable_macs = prunable_mac_share(model, run.structure)
    rec.trace_s = median([r.trace_s for r in runs])
    rec.slim_s = median([r.slim_s for r in runs])
    rec.total_s = median([r.trace_s + r.slim_s for r in runs])
    rec.times = [(r.trace_s, r.slim_s) for r in runs]
    try:
        rec.macs_after = count_macs(run.small, x)
        rec.max_rel_diff, rec.output_change = masked_vs_slim(model, run, x)
        if rec.status == "ok" and not rec.max_rel_diff <= TOLERANCE:
            rec.status = "mismatch"
        elif rec.status == "ok" and not rec.output_change >= MIN_CHANGE:
            rec.status = "void: pruning did not change the output"
    except Exception as exc:
        rec.status = f"error: {first_line(exc)}"


def select(models: str | None) -> Iterator[ModelSpec]:
    """All models, or those whose name or ``source/name`` is listed."""
    if not models:
        yield from MODELS
        return
    wanted = {m.strip() for m in models.split(",") if m.strip()}
    found = [s for s in MODELS if s.name in wanted or s.label in wanted]
    missing = wanted - {s.name for s in found} - {s.label for s in found}
    if missing:
        raise SystemExit(f"unknown model(s): {', '.join(sorted(missing))}; "
                         f"choose from: {', '.join(s.label for s in MODELS)}")
    yield from found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated names or source/name (default: all)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                   help="output folder for coverage.md / coverage.json")
    p.add_argument("--repeats", type=int, default=REPEATS,
                   help=f"timed runs per model, median reported (default {REPEATS})")
    p.add_argument("--merge", action="store_true",
                   help="replace only these models' rows in an existing coverage.json (re-measure "
                        "rows disturbed by other load on a shared machine)")
    p.add_argument("--no-tp", action="store_true", help="skip the Torch-Pruning reference")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = now()
    quiet()
    torch.set_num_threads(args.threads)
    specs = list(select(args.models))
    with_tp = not args.no_tp
    if with_tp:
        try:
            import torch_pruning  # noqa: F401
        except ImportError:
            print("torch-pruning not installed (pip install 'prunecli[bench]'); skipping it")
            with_tp = False
    records: list[Record] = []
    for spec in specs:
        rec = benchmark_model(spec, args.threads, with_tp, args.repeats)
        records.append(rec)
        print(f"{spec.label:32s} {rec.status[:50]:50s} prunable {fmt(rec.prunable_share, '.2f')}"
              f" {fmt(rec.total_s, '.3f')} s | TP {rec.tp.status[:40]} "
              f"{fmt(rec.tp.seconds, '.3f')} s", flush=True)
    meta = {"date": started, "versions": versions(), "threads": args.threads, "cpu": cpu_name(),
            "keep_ratio": KEEP_RATIO, "tolerance": TOLERANCE, "repeats": args.repeats,
            "torch_pruning": with_tp}
    if args.merge:
        old_meta, old_records = load_previous(args.out / "coverage.json")
        if old_meta:
            redone = [f"{s.label} ({meta['date']})" for s in specs]
            meta = {**old_meta, "remeasured": old_meta.get("remeasured", []) + redone}
        records = merge(old_records, records)
    write_reports(records, meta, args.out)
    print(f"wrote {args.out / 'coverage.md'} and {args.out / 'coverage.json'}")


if __name__ == "__main__":
    main()
