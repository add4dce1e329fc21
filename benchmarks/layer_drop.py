"""Layer drop under a latency budget: does the allocator use it, does the table still predict
the slimmed model, and what does it buy on this device?

    python benchmarks/layer_drop.py [--model resnet50] [--size 224] [--batch 1] [--threads 2]
                                    [--ratios 0.3 0.5 0.7] [--repeats 15] [--out benchmarks/results]

Builds a `prunecli lut` table for the model on the CPU (step 128, quick), then for each latency
budget allocates with ``allocate_to_budget(cost=latency)`` on L1 scores, once with every group
keeping at least one channel and once with the droppable groups allowed to go whole
(``droppable=``, the cost seen through :class:`DropCascade`: a bottleneck whose first width goes
loses its middle width too, as ``method.layer_drop`` does). Both slimmed models and the dense
one are timed interleaved (median). Random weights: speed does not depend on them, and L1
scores of a random network are close to uniform, so which blocks go says nothing about
accuracy (``benchmarks/methods.py`` trains).
Writes ``layer_drop.md``/``.json``. glibc's allocator makes CPU timings swing (see
``latency_table.md``): the script re-executes itself with ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` set.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

MALLOC = {"MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "1000000000"}


def main() -> None:
    if any(os.environ.get(k) != v for k, v in MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--step", type=int, default=128)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--table-repeats", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    from prunecli.allocate import allocate_to_budget
    from prunecli.bench.timing import prepare, time_interleaved
    from prunecli.cost import build_cost_model, count_macs
    from prunecli.cost.cascade import DropCascade
    from prunecli.cost.latency_build import build_table
    from prunecli.models import build_model
    from prunecli.structure import l1_scores, slim, trace_structure

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = {"name": args.model, "source": "torchvision"} if args.model == "resnet50" else {
        "name": args.model}
    model = build_model(cfg, num_classes=1000 if args.model == "resnet50" else 10,
                        in_chans=3).eval()
    x = torch.randn(1, 3, args.size, args.size)
    structure = trace_structure(model, x, ignore=["conv1", "fc"])
    droppable = [g.id for g in structure.droppable_groups]
    table_path = Path(tempfile.mkdtemp()) / "lut.json"
    t0 = time.perf_counter()
    build_table(model, structure, step=args.step, batch_size=args.batch, path=table_path,
                progress=False, threads=args.threads, warmup=2, repeats=args.table_repeats,
                rounds=3)
    table_s = time.perf_counter() - t0
    lat = build_cost_model("latency", model, structure, x, table=str(table_path))
    macs = build_cost_model("macs", model, structure, x)
    scores = {g: v.numpy() for g, v in l1_scores(model, structure).items()}
    rows, models = [], {"dense": prepare(model, torch.device("cpu"), "fp32", False, False)}
    for ratio in args.ratios:
        for drop in (False, True):
            t0 = time.perf_counter()
            cm = DropCascade(lat, structure, droppable) if drop else lat
            r = allocate_to_budget(cm, scores, ratio, droppable=droppable if drop else ())
            keep = dict(r.keep)
            empty = {g for g, k in keep.items() if len(k) == 0}
            keep.update({g: [] for g in structure.constant_groups(empty)})  # the cascade
            alloc_s = time.perf_counter() - t0
            small = slim(model, structure, keep)
            name = f"{ratio:g}{'+drop' if drop else ''}"
            models[name] = prepare(small, torch.device("cpu"), "fp32", False, False)
            dropped = [structure.groups[g].key for g, k in keep.items() if len(k) == 0]
            rows.append({"name": name, "ratio": ratio, "layer_drop": drop,
                         "alloc_s": round(alloc_s, 3), "predicted": round(r.ratio, 4),
                         "macs_kept": round(count_macs(small, x) / macs.dense, 4),
                         "dropped": dropped})
            print(f"{name}: predicted {r.ratio:.3f} of dense latency, {len(dropped)} groups "
                  f"dropped, allocated in {alloc_s:.2f} s", flush=True)
    timings = time_interleaved(models, (3, args.size, args.size), args.batch,
                               torch.device("cpu"), warmup=3, repeats=args.repeats)
    dense_ms = timings["dense"].median_ms
    for row in rows:
        row["ms"] = round(timings[row["name"]].median_ms, 2)
        row["measured"] = round(timings[row["name"]].median_ms / dense_ms, 4)
    write(args, rows, dense_ms, table_s, len(droppable), len(structure.prunable_groups))


def write(args: argparse.Namespace, rows: list[dict], dense_ms: float, table_s: float,
          n_drop: int, n_prunable: int) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": dt.date.today().isoformat(), "model": args.model, "size": args.size,
            "batch": args.batch, "threads": args.threads, "step": args.step,
            "torch": torch.__version__, "dense_ms": round(dense_ms, 2),
            "table_s": round(table_s, 1), "droppable_groups": n_drop,
            "prunable_groups": n_prunable}
    (out / "layer_drop.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        "# Layer drop under a latency budget",
        "",
        f"`python benchmarks/layer_drop.py` ({meta['date']}, torch {meta['torch']}, CPU, "
        f"{args.threads} threads, glibc malloc thresholds set): {args.model} at "
        f"{args.size}x{args.size}, batch {args.batch}, random weights, L1 scores, table step "
        f"{args.step} built in {meta['table_s']} s. {n_drop} of {n_prunable} prunable groups "
        f"are droppable. Dense: {meta['dense_ms']} ms (median).",
        "",
        "| latency removed | layer drop | groups dropped | allocation s | MACs kept | "
        "predicted latency kept | measured latency kept | ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {100 * r['ratio']:.0f}% | {'yes' if r['layer_drop'] else 'no'} | "
                     f"{len(r['dropped'])} | {r['alloc_s']:.2f} | {100 * r['macs_kept']:.1f}% | "
                     f"{100 * r['predicted']:.1f}% | {100 * r['measured']:.1f}% | {r['ms']} |")
    lines += ["", "Dropped groups:", ""]
    for r in rows:
        if r["dropped"]:
            lines.append(f"- {r['name']}: {', '.join(r['dropped'])}")
    (out / "layer_drop.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
