"""The six pruning methods on a detector, side by side: same data, detector, epochs, budgets.

Run on demand (not a test; about 5 minutes per run on this project's 2-core CPU: 15 runs,
~75 minutes)::

    python benchmarks/detection_methods.py [--methods taylor halp] [--ratios 0.5 0.7]
                                           [--epochs 8] [--runs benchmarks/runs_det] [--reuse]
                                           [--dataset digits_voc] [--no-dense] [OVERRIDES]

Trains the dense detector (``method=none``) and each method at each ``cost.ratio`` (the
fraction of the core's MACs removed: 0.5 -> 50% kept, 0.7 -> 30%) on the embedded detection
demo (``experiment=detect_demo``: ssd_tiny on 96x96 Fashion-MNIST scenes, 8 epochs), each run a
separate ``prunecli train`` process, one after another. Every method gets the same epochs and
learning rate as the dense run; its schedule ends pruning by about 60% of training and the
rest fine-tunes (``SCHEDULES``). SMCP runs twice: as published (|w| importance, soft masks)
and with Taylor importance and hard masks (``SMCP_FOR_DETECTORS``). Scores are the runs' own
test-set evaluation of the slimmed detector (COCO mAP@[.5:.95] with COCOeval, VOC07 11-point
mAP).

Then the dense and every slimmed detector are timed on the CPU, interleaved in one loop so they
see the same machine load, on real test images at batch 1 and 8: the core (backbone and heads,
what pruning shrinks) and the whole detector (plus anchors, box decoding and NMS). Medians.

``--dataset digits_voc`` runs the same on a dataset none of this was designed on, read as a
user's VOC folder is (``digits_voc.py``: handwritten digits on photographs, written under
``--runs``); its table (``detection_methods_digits_voc.md``) used ``data.augment=false``, chosen
on its held-out ``val`` split (``detection_digits_voc_holdout.md``; ``--holdout`` scores there).

Writes ``detection_methods.md`` and ``.json`` to ``--out`` (default ``benchmarks/results``).
``--reuse`` skips runs whose ``results.json`` exists (re-time or re-tabulate only). Overrides
for every run (``trainer.threads=1``) go before ``--ratios`` and ``--methods``, which would take
them as their own values. Two processes can share the work: the second with ``--no-dense``,
then one ``--reuse`` pass with every method tabulates and times them on a quiet machine.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_voc import write_digits_voc  # noqa: E402
from methods import parse_variant, run_one  # noqa: E402  (the same one-run-per-process driver)

# 250 optimizer steps per epoch (8,000 scenes at batch 32), 2,000 in 8 epochs: every method
# starts after epoch 1 and is done pruning by ~60% of the run (step ~1,200); the rest fine-tunes.
SCHEDULES: dict[str, list[str]] = {
    "none": [],
    "taylor": ["method.start_epoch=1", "method.prune_every=20", "method.finish_at=0.6"],
    "slimming": ["method.sparsity=1e-4", "method.prune_at=0.6"],
    "halp": ["method.start_epoch=1", "method.prune_every=20", "method.prune_steps=40",
             "method.group_size=4"],
    "smcp": ["method.warmup_epochs=1", "method.ramp_epochs=4", "method.cooldown_epochs=3",
             "method.prune_every=20"],
    "gator": ["method.start_epoch=1", "method.gate_epochs=4"],
    "chex": ["method.update_every=0.1", "method.t_max=0.6"],
}
# SMCP as published scores channels by |w| and soft-masks them; on this detector that cost 16
# points at 50% of the MACs. Taylor importance with hard masks, chosen on held-out scenes
# (benchmarks/results/detection_smcp_importance.md), is run beside it.
SMCP_FOR_DETECTORS = "smcp+method.importance=taylor_fo+method.mask=hard"
BATCHES = (1, 8)


# what each --dataset trains and scores on, for the results file
DATASETS = {
    "fashion_det": "the embedded detection demo (`experiment=detect_demo`: 8,000 training scenes, "
                   "1,000 test scenes of unseen Fashion-MNIST items, 96x96)",
    "digits_voc": "a VOC-format folder none of the other benchmarks use (`digits_voc.py`: 8,000 "
                  "training and 1,000 test photographs of 112-176 x 88-144 px with 1-4 "
                  "handwritten digits each, test digits unseen, read by `data=voc` and resized "
                  "to 96x96); the demo's recipe, with the overrides in the command above",
}


def data_overrides(dataset: str, runs: Path, holdout: bool) -> list[str]:
    """The ``prunecli train`` overrides that select ``dataset``'s training and scoring splits."""
    if dataset == "fashion_det":
        return ["data.val_split=holdout"] if holdout else []
    folder = write_digits_voc(runs / "digits_voc")
    return [o.replace("data.val_split=test", "data.val_split=val") if holdout else o
            for o in folder]


def test_images(count: int, overrides: list[str]) -> torch.Tensor:
    """The first ``count`` scoring images, as the detectors see them (in [0, 1])."""
    from prunecli.data import build_datasets

    cfg = {"name": "fashion_det", "image_size": 96}
    for o in overrides:
        key, value = o.split("=", 1)
        cfg["name" if key == "data" else key.removeprefix("data.")] = value
    val = build_datasets(cfg).val
    return torch.stack([val[i][0] for i in range(count)])


def time_detectors(rows: list[dict], runs: Path, repeats: int, threads: int,
                   data: list[str]) -> None:
    """Median CPU latency of the dense and every slimmed detector, core and whole, interleaved
    on the same real test images."""
    from prunecli.bench.timing import prepare, time_interleaved
    from prunecli.structure import load_slim, strip_all_masks
    from prunecli.structure.from_checkpoint import load_masked_model

    torch.set_num_threads(threads)
    cpu = torch.device("cpu")
    models = {}
    for r in rows:
        if "error" in r:
            continue
        if r["method"] == "none":
            dense = load_masked_model(runs / "dense" / "last.pt").model
            strip_all_masks(dense)
            models["dense"] = dense
        elif r.get("slim_model"):
            models[r["run_name"]] = load_slim(r["slim_model"]).model
    if not models:
        return
    images = test_images(max(BATCHES), data)
    normalised = next(iter(models.values())).normalise(images)
    for part, inputs in (("core", normalised), ("full", images)):
        fns = {k: prepare(m.core if part == "core" else m, cpu, "fp32", False, False)
               for k, m in models.items()}
        for batch in BATCHES:
            timings = time_interleaved(fns, tuple(images.shape[1:]), batch, cpu, warmup=5,
                                       repeats=repeats, inputs=inputs)
            for r in rows:
                if r.get("run_name") in timings:
                    r[f"{part}_ms_b{batch}"] = timings[r["run_name"]].median_ms


def _speedup(dense: dict | None, r: dict, key: str) -> str:
    if dense is None or not r.get(key) or not dense.get(key):
        return ""
    return f"{dense[key] / r[key]:.2f}x"


def table(rows: list[dict]) -> str:
    dense = next((r for r in rows if r["method"] == "none" and "error" not in r), None)
    head = ("| method | MACs kept (target) | mAP | vs dense | VOC07 mAP | vs dense | MACs | "
            "params | core ms @1 | speed-up | core ms @8 | speed-up | whole ms @1 | speed-up | "
            "whole ms @8 | speed-up | prune events | wall s |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} {r['ratio']} | failed: {r['error']} |" + " |" * 16)
            continue
        target = "100%" if r["method"] == "none" else \
            f"{100 * r['cost_kept']:.1f}% ({100 * r['cost_target']:.0f}%)"
        d_map = "" if dense is None else f"{r['map'] - dense['map']:+.1f}"
        d_voc = "" if dense is None else f"{r['voc07_map'] - dense['voc07_map']:+.1f}"
        keys = [f"{part}_ms_b{b}" for part in ("core", "full") for b in BATCHES]
        timing = " | ".join(f"{r.get(k, float('nan')):.2f} | {_speedup(dense, r, k)}"
                            for k in keys)
        lines.append(
            f"| {r['variant']} | {target} | {r['map']:.1f} | {d_map} | {r['voc07_map']:.1f} | "
            f"{d_voc} | {r['macs'] / 1e6:.2f} M | {r['params'] / 1e3:.0f} K | {timing} | "
            f"{r.get('prune_events', 0)} | {r['wall_time_s']:.0f} |")
    return "\n".join(lines)


def widths_table(rows: list[dict], ratio: float) -> str:
    """Kept channels per group of every slimmed detector at one budget (from ``widths`` in each
    run's results): where each method cut."""
    runs = [r for r in rows if "error" not in r and r["method"] != "none"
            and abs(r.get("cost_target", -1) - (1 - ratio)) < 1e-6 and r.get("widths")]
    if not runs:
        return ""
    kept = {r["variant"]: {w["group"]: w["kept"] for w in ast.literal_eval(str(r["widths"]))}
            for r in runs}
    sizes = {w["group"]: w["size"] for w in ast.literal_eval(str(runs[0]["widths"]))}
    head = "| group | dense | " + " | ".join(kept) + " |"
    lines = [head, "|---" + "|---:" * (len(kept) + 1) + "|"]
    for group, size in sizes.items():
        lines.append(f"| {group} | {size} | "
                     + " | ".join(str(k.get(group, "")) for k in kept.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    from prunecli.methods import method_names

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+",
                    default=[m for m in method_names() if m != "none"] + [SMCP_FOR_DETECTORS],
                    help="method names; NAME+key=value+... changes a setting of NAME")
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.7])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--runs", type=Path, default=Path("benchmarks/runs_det"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--name", default="detection_methods",
                    help="results file stem in --out (another setting keeps the default table)")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--holdout", action="store_true",
                    help="for choosing settings: every run scores on scenes of the last 10%% of "
                         "the training items (data.val_split=holdout), never on the test scenes")
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="fashion_det",
                    help="digits_voc: the same runs on a VOC-format folder written under --runs")
    ap.add_argument("--no-dense", action="store_true",
                    help="leave the dense run to another process running beside this one (same "
                         "--runs); a later --reuse pass tabulates and times them all")
    ap.add_argument("extra", nargs="*", help="further overrides for every run")
    args = ap.parse_args()
    t0 = time.time()
    data = data_overrides(args.dataset, args.runs, args.holdout)
    extra = ["experiment=detect_demo", *data, *args.extra]

    def one(name: str, ratio: float) -> dict:
        method, schedule, folder = parse_variant(name, SCHEDULES)
        r = run_one(method, ratio, args.epochs, args.runs, args.reuse, extra,
                    schedules={method: schedule}, metric="map", label=folder)
        return {**r, "variant": name, "run_name": "dense" if method == "none"
                else f"{folder}_{ratio:g}"}

    rows = [] if args.no_dense else [one("none", 0.0)]
    for ratio in args.ratios:
        for method in args.methods:
            rows.append(one(method, ratio))
    time_detectors(rows, args.runs, args.repeats, args.threads, data)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    scored_on = ("1,000 held-out images (items or digits the training images do not use)"
                 if args.holdout else "the test images")
    md = [
        "# Pruning methods side by side on a detector",
        "",
        f"`python benchmarks/detection_methods.py {' '.join(sys.argv[1:])}` ({dt.date.today()}, "
        f"{platform.processor() or 'CPU'}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{time.time() - t0:.0f} s in all).",
        "",
        f"ssd_tiny on {DATASETS[args.dataset]}, {args.epochs} epochs "
        "for every run, SGD lr 0.1 cosine; budgets in MACs of the core (backbone, extra layers, "
        "heads). mAP = COCO mAP@[.5:.95] (COCOeval), VOC07 = 11-point AP at IoU 0.5, both of "
        f"the slimmed detector on {scored_on}. Pruning schedules (`SCHEDULES` in the script) "
        "end by ~60% of training, the rest fine-tunes. Latency: CPU, fp32, eager PyTorch, "
        f"{args.threads} threads, the dense and all slimmed detectors timed interleaved on the "
        "same real test images, median of the repeats; core = the network pruning shrinks, "
        "whole = plus anchors, box decoding and NMS.",
        "",
        table(rows),
        "",
    ]
    for ratio in args.ratios:
        cut = widths_table(rows, ratio)
        if cut:
            md += [f"## Where each method cut (kept channels per group, "
                   f"{100 * (1 - ratio):.0f}% of the MACs)", "", cut, ""]
    (args.out / f"{args.name}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
