"""Every pruning method side by side: same data, model, epochs and budgets.

Run on demand (not a test; about 2 minutes per run on this project's 2-core CPU)::

    python benchmarks/methods.py [--methods taylor slimming halp] [--ratios 0.5 0.7]
                                 [--epochs 5] [--runs benchmarks/runs] [--reuse]

Trains the dense baseline (``method=none``) and each method at each ``cost.ratio`` (the
fraction of dense MACs removed: 0.5 -> 50% of the MACs kept, 0.7 -> 30%) on the embedded
default (ResNet-20 on the Fashion-MNIST subset), each run a separate ``prunecli train``
process, one after another. Every method gets the same epochs; its schedule is set so that
pruning ends by about 60% of training and the rest fine-tunes (``SCHEDULES``). Then the dense
model and every slimmed model (``slim.pt``) are timed on the CPU, interleaved in one loop so
they see the same machine load, at batch 1 and 32; medians are reported.

Writes ``methods.md`` and ``methods.json`` to ``--out`` (default ``benchmarks/results``;
``--name`` another stem). ``--reuse`` skips runs whose ``results.json`` exists (re-time or
re-tabulate only).

With distillation: ``python benchmarks/methods.py distill.enabled=true --name methods_kd``
prunes from scratch with the dense run of the same call as teacher (``distill.*`` overrides go
to the pruned runs only; ``distill.teacher`` defaults to ``<runs>/dense``). Use another
``--runs`` folder than the plain table's, or ``--reuse`` returns its runs. Pruning a *trained*
model with a short fine-tune, with and without distillation, is ``distill_finetune.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

# 157 optimizer steps per epoch on the embedded data at batch 128; pruning ends by ~60% of
# 5 epochs (471 steps) for every method.
SCHEDULES: dict[str, list[str]] = {
    "none": [],
    "taylor": ["method.start_epoch=1", "method.prune_every=10", "method.remove_per_step=0.03",
               "method.finish_at=0.6"],
    "slimming": ["method.sparsity=1e-4", "method.prune_at=0.6"],
    "halp": ["method.start_epoch=1", "method.prune_every=10", "method.prune_steps=20",
             "method.group_size=4"],
    "smcp": ["method.warmup_epochs=1", "method.ramp_epochs=2", "method.cooldown_epochs=2",
             "method.prune_every=10"],
    "gator": ["method.start_epoch=1", "method.gate_epochs=2"],
    "chex": ["method.update_every=0.1", "method.t_max=0.6"],
}


def parse_variant(name: str, schedules: dict[str, list[str]]) -> tuple[str, list[str], str]:
    """``NAME`` or ``NAME+key=value+...`` (a ``schedules`` entry with some settings changed or
    added, e.g. ``slimming+method.max_prune_per_group=0.75``): the ``schedules`` key, its
    overrides, and a folder name Hydra accepts (``+`` and ``=`` break ``hydra.run.dir``)."""
    base, *changes = name.split("+")
    if base not in schedules:
        raise SystemExit(f"unknown method {base!r}: choose from {', '.join(schedules)}")
    settings = dict(item.split("=", 1) for item in schedules[base])
    for change in changes:
        if "=" not in change:
            raise SystemExit(f"bad variant item {change!r} in {name!r}: write key=value")
        key, value = change.split("=", 1)
        settings[key] = value
    return base, [f"{k}={v}" for k, v in settings.items()], re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def run_one(method: str, ratio: float, epochs: int, runs: Path, reuse: bool,
            extra: list[str], schedules: dict[str, list[str]] = SCHEDULES,
            metric: str = "top1", label: str | None = None) -> dict:
    """One ``prunecli train`` process (``method=none``: the dense baseline); its results.
    ``label``: the run folder's stem (default: the method)."""
    name = "dense" if method == "none" else f"{label or method}_{ratio:g}"
    out = runs / name
    if reuse and (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    shutil.rmtree(out, ignore_errors=True)  # redone from scratch (a run refuses a used folder)
    cmd = [sys.executable, "-m", "prunecli", "train", f"method={method}",
           f"trainer.epochs={epochs}", "trainer.progress=false", f"hydra.run.dir={out}",
           *([] if method == "none" else [f"cost.ratio={ratio}"]), *schedules.get(method, []),
           *extra]
    print("$", " ".join(cmd[2:]), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"  FAILED ({proc.returncode}): {' | '.join(tail)}", flush=True)
        return {"method": method, "error": " ".join(tail), "ratio": ratio}
    r = json.loads((out / "results.json").read_text())
    print(f"  {metric} {r[metric]:.2f}  MACs {r['macs'] / 1e6:.2f} M  {time.time() - t0:.0f} s",
          flush=True)
    return r


def time_models(rows: list[dict], runs: Path, repeats: int, threads: int) -> None:
    """Median CPU latency of the dense and every slimmed model, interleaved."""
    from prunecli.bench.timing import prepare, time_interleaved
    from prunecli.structure import load_slim
    from prunecli.structure.from_checkpoint import load_masked_model

    torch.set_num_threads(threads)
    cpu = torch.device("cpu")
    models, shape = {}, None
    for r in rows:
        if "error" in r:
            continue
        if r["method"] == "none":
            loaded = load_masked_model(runs / "dense" / "last.pt")
            models["dense"], shape = loaded.model, tuple(loaded.example.shape[1:])
        elif r.get("slim_model"):
            models[r["run_name"]] = load_slim(r["slim_model"]).model
    if shape is None:
        return
    fns = {k: prepare(m, cpu, "fp32", False, False) for k, m in models.items()}
    for batch in (1, 32):
        timings = time_interleaved(fns, shape, batch, cpu, warmup=5, repeats=repeats)
        for r in rows:
            key = "dense" if r["method"] == "none" else r.get("run_name")
            if key in timings:
                r[f"ms_b{batch}"] = timings[key].median_ms


def table(rows: list[dict]) -> str:
    dense = next((r for r in rows if r["method"] == "none" and "error" not in r), None)
    head = ("| method | MACs kept (target) | top-1 % | vs dense | MACs | params | "
            "ms @1 | speed-up @1 | ms @32 | speed-up @32 | prune events | wall s |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} {r['ratio']} | failed: {r['error']} |" + " |" * 10)
            continue
        target = "100%" if r["method"] == "none" else f"{100 * r['cost_kept']:.1f}% " \
            f"({100 * r['cost_target']:.0f}%)"
        delta = "" if dense is None else f"{r['top1'] - dense['top1']:+.2f}"
        sp1 = sp32 = ""
        if dense is not None and r.get("ms_b1") and dense.get("ms_b1"):
            sp1 = f"{dense['ms_b1'] / r['ms_b1']:.2f}x"
            sp32 = f"{dense['ms_b32'] / r['ms_b32']:.2f}x"
        lines.append(
            f"| {r['method']} | {target} | {r['top1']:.2f} | {delta} | "
            f"{r['macs'] / 1e6:.2f} M | {r['params'] / 1e3:.1f} K | "
            f"{r.get('ms_b1', float('nan')):.2f} | {sp1} | {r.get('ms_b32', float('nan')):.1f} | "
            f"{sp32} | {r.get('prune_events', 0)} | {r['wall_time_s']:.0f} |")
    return "\n".join(lines)


def split_distill(extra: list[str], dense_run: Path) -> tuple[list[str], list[str]]:
    """The overrides of the dense run and of the pruned runs: ``distill.*`` only for the pruned
    ones (the dense run is the teacher), whose teacher is ``dense_run`` unless one is given."""
    dense = [o for o in extra if not o.lstrip("+~").startswith("distill.")]
    pruned = list(extra)
    if any(o.lower() == "distill.enabled=true" for o in extra) and not any(
            o.lstrip("+").startswith("distill.teacher=") for o in extra):
        pruned.append(f"distill.teacher={dense_run}")
    return dense, pruned


def main() -> None:
    from prunecli.methods import method_names

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+",
                    default=[m for m in method_names() if m != "none"])
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.7])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--runs", type=Path, default=Path("benchmarks/runs"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="methods", help="results file stem in --out")
    ap.add_argument("extra", nargs="*", help="further overrides for every run (distill.*: the "
                                             "pruned runs only)")
    args = ap.parse_args()
    t0 = time.time()
    dense_extra, pruned_extra = split_distill(args.extra, args.runs / "dense")
    rows = [{**run_one("none", 0.0, args.epochs, args.runs, args.reuse, dense_extra),
             "run_name": "dense"}]
    for ratio in args.ratios:
        for method in args.methods:
            r = run_one(method, ratio, args.epochs, args.runs, args.reuse, pruned_extra)
            rows.append({**r, "run_name": f"{method}_{ratio:g}"})
    time_models(rows, args.runs, args.repeats, args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    md = [
        "# Pruning methods side by side",
        "",
        f"`python benchmarks/methods.py {' '.join(sys.argv[1:])}` ({dt.date.today()}, "
        f"{platform.processor() or 'CPU'}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{time.time() - t0:.0f} s in all).",
        "",
        f"ResNet-20 on the embedded Fashion-MNIST subset (20k train / 4k test, 28x28), "
        f"{args.epochs} epochs for every run, SGD lr 0.1 cosine; budgets in MACs. Pruning "
        "schedules (`SCHEDULES` in the script) end by ~60% of training, the rest fine-tunes. "
        f"Latency: CPU, fp32, eager PyTorch, {args.threads} threads, the dense and all slimmed "
        "models timed interleaved, median of the repeats."
        + (" Distilled from the dense run (`distill.*` overrides on the pruned runs)."
           if "distill.enabled=true" in (o.lower() for o in args.extra) else ""),
        "",
        table(rows),
        "",
    ]
    (args.out / f"{args.name}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
