"""Prune a trained detector in a short fine-tune, with and without distillation from it.

Run on demand (not a test; 2-4 minutes per run on this project's 2-core CPU)::

    python benchmarks/detection_distill.py [--dataset fashion_det|digits_voc] [--dense RUN]
                                           [--ratios 0.7] [--seeds 0 1 2] [--jobs 2]
                                           [--methods taylor halp ...] [--reuse] [OVERRIDES]

The setting of ``benchmarks/results/detection_distill_boxes.md`` (section 2), as one command: the
trained dense ssd_tiny (``--dense``: a finished ``prunecli train`` run of ``method=none``, or
trained here by ``detection_methods.py``'s recipe) pruned by each method to ``cost.ratio`` in a
3-epoch fine-tune (lr 0.02 cosine, no warm-up, every method's pruning over by half of the run,
``SETTINGS``), twice from the same weights: plain, and with ``distill.enabled=true`` (the dense
detector as teacher; the detection defaults, box distillation at weight 2, class scores off,
chosen on the demo's held-out scenes). ``--dataset digits_voc`` runs it on the VOC-format folder
of ``digits_voc.py``, which none of these settings was chosen on (add ``data.augment=false``, the
setting its dense model trained with).

Reports COCO mAP@[.5:.95] and VOC07 mAP of every slimmed detector on the test images, plain
and distilled, the change from dense, MACs kept, the teacher's share of the training time and
wall time; means over ``--seeds`` with each seed's figure beside them. ``--jobs 2`` runs two
processes at a time (give ``trainer.threads=1`` then). Overrides go before ``--methods``,
``--ratios`` and ``--seeds``, which would take them as their own values. Writes ``--name``.md /
.json to ``--out``; runs go to ``--runs`` (``--reuse`` skips finished runs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detection_methods import DATASETS, data_overrides  # noqa: E402
from methods import parse_variant, run_one  # noqa: E402

# The short-fine-tune settings of each method on the detector (3 epochs; 250 steps per epoch on
# 8,000 images at batch 32): pruning over by half of the run. The caps are the tightest each
# method accepts at 30% of ssd_tiny's MACs (detection_cap_30.md); the *_finetune entries are the
# classification benchmark's short-run variants (experiments/*_finetune.yaml) with those caps.
SETTINGS: dict[str, list[str]] = {
    "taylor": ["method.start_epoch=0", "method.prune_every=5", "method.finish_at=0.5"],
    "halp": ["method.start_epoch=0", "method.finish_at=0.5"],
    "smcp_finetune": ["method.mask=hard", "method.warmup_epochs=0.05", "method.ramp_epochs=0.45",
                      "method.cooldown_epochs=0.5", "method.max_prune_per_group=0.7"],
    "gator": ["method.gate_epochs=0.5"],
    "chex_finetune": ["method.update_every=0.1", "method.t_max=0.5",
                      "method.max_prune_per_group=0.6"],
    "slimming_finetune": ["method.prune_at=0.25", "method.max_prune_per_group=0.6"],
}
DENSE_EPOCHS = 8  # detection_methods.py's recipe for the dense detector


def dense_run(args: argparse.Namespace, extra: list[str]) -> tuple[dict, Path]:
    """The trained dense detector's results and its model weights (written beside the runs)."""
    folder = args.dense or args.runs / "dense"
    if args.dense is None:
        run_one("none", 0.0, DENSE_EPOCHS, args.runs, args.reuse,
                ["experiment=detect_demo", *extra], metric="map")
    results = folder / "results.json"
    if not results.is_file():
        raise SystemExit(f"--dense {folder}: no results.json; give a finished dense run folder")
    weights = args.runs / "dense_weights.pt"
    if not weights.is_file():
        args.runs.mkdir(parents=True, exist_ok=True)
        state = torch.load(folder / "last.pt", map_location="cpu", weights_only=True)
        torch.save(state["model"], weights)
    return json.loads(results.read_text()), weights


def finetune(variant: str, ratio: float, seed: int, distill: bool, args: argparse.Namespace,
             weights: Path, extra: list[str]) -> dict:
    """One fine-tune run (its own ``prunecli train`` process) and its results."""
    base, settings, folder = parse_variant(variant, SETTINGS)
    method = base.removesuffix("_finetune")
    runs = args.runs / f"seed{seed}" / ("distill" if distill else "plain")
    overrides = ["experiment=detect_demo", f"model.weights={weights}", f"optim.lr={args.lr}",
                 "optim.warmup_epochs=0", f"seed={seed}", f"distill.enabled={str(distill).lower()}",
                 *extra]
    r = run_one(method, ratio, args.epochs, runs, args.reuse, overrides,
                schedules={method: settings}, metric="map", label=folder)
    return {**r, "variant": variant, "ratio": ratio, "seed": seed, "distilled": distill,
            "settings": " ".join(settings)}


def _mean(runs: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in runs)


def _scores(runs: list[dict]) -> str:
    """'mAP / VOC07' as a mean, with each seed's mAP when there are several."""
    text = f"{_mean(runs, 'map'):.2f} / {_mean(runs, 'voc07_map'):.2f}"
    if len(runs) > 1:
        text += " (" + ", ".join(f"{r['map']:.2f}" for r in runs) + ")"
    return text


def _span(kept: list[float]) -> str:
    low, high = f"{100 * min(kept):.1f}", f"{100 * max(kept):.1f}"
    return f"{low}%" if low == high else f"{low}-{high}%"


def table(rows: list[dict], dense: dict) -> str:
    head = ("| method | settings | MACs kept (target) | plain mAP / VOC07 | distilled mAP / VOC07 "
            "| plain vs dense | distilled vs dense | distillation gain mAP / VOC07 | teacher "
            "share of train time | wall s plain / distilled |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    groups: dict[tuple[str, float], dict[bool, list[dict]]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["ratio"]), {}).setdefault(r["distilled"], []).append(r)
    for (variant, ratio), by_kind in groups.items():
        failed = [r for runs in by_kind.values() for r in runs if "error" in r]
        plain, kd = by_kind.get(False, []), by_kind.get(True, [])
        if failed or not plain or not kd:
            state = f"failed: {failed[0]['error']}" if failed else "not run yet"
            lines.append(f"| {variant} {ratio:g} | {state} |" + " |" * 8)
            continue
        shares = [(r.get("distill") or {}).get("teacher_share_of_train_time") for r in kd]
        shares = [s for s in shares if s is not None]
        kept = [r["cost_kept"] for r in plain + kd]
        d_map, d_voc = dense["map"], dense["voc07_map"]
        lines.append(
            f"| {variant} | `{plain[0]['settings']}` | {_span(kept)} ({100 * (1 - ratio):.0f}%) | "
            f"{_scores(plain)} | "
            f"{_scores(kd)} | {_mean(plain, 'map') - d_map:+.2f} / "
            f"{_mean(plain, 'voc07_map') - d_voc:+.2f} | {_mean(kd, 'map') - d_map:+.2f} / "
            f"{_mean(kd, 'voc07_map') - d_voc:+.2f} | "
            f"**{_mean(kd, 'map') - _mean(plain, 'map'):+.2f}** / "
            f"{_mean(kd, 'voc07_map') - _mean(plain, 'voc07_map'):+.2f} | "
            f"{f'{100 * statistics.fmean(shares):.0f}%' if shares else ''} | "
            f"{_mean(plain, 'wall_time_s'):.0f} / {_mean(kd, 'wall_time_s'):.0f} |")
    return "\n".join(lines)


def write(rows: list[dict], dense: dict, args: argparse.Namespace, t0: float) -> None:
    """The table so far (rewritten after every run, so a long call can be read while it runs)."""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(
        json.dumps({"dense": dense, "runs": rows}, indent=2) + "\n")
    done = [r for r in rows if "error" not in r]
    worst = max((r.get("slim_max_diff") or 0.0 for r in done), default=0.0)
    md = [
        "# A trained detector pruned in a short fine-tune, with and without distillation",
        "",
        f"`python benchmarks/detection_distill.py {' '.join(sys.argv[1:])}` ({dt.date.today()}, "
        f"{platform.processor() or 'CPU'}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{time.time() - t0:.0f} s in all).",
        "",
        f"ssd_tiny on {DATASETS[args.dataset]}. The dense detector (`{dense['run_dir']}`): "
        f"**{dense['map']:.2f} mAP / {dense['voc07_map']:.2f} VOC07** on the test images. Each "
        f"method prunes it to the target share of the core's MACs in a {args.epochs}-epoch "
        f"fine-tune (SGD lr {args.lr} cosine, no warm-up, pruning over by half of the run), "
        "plain and with `distill.enabled=true` (the dense detector as teacher, the detection "
        "defaults: box regressions distilled at `distill.box_weight=2`, class scores off). "
        "mAP = COCO mAP@[.5:.95] (COCOeval), VOC07 = 11-point AP at IoU 0.5, both of the "
        f"slimmed detector on the test images; seeds {', '.join(map(str, args.seeds))} (means, "
        f"each seed's mAP in brackets). Every slimmed detector equals its masked one "
        f"(largest difference {worst:.1e}).",
        "",
        table(rows, dense),
        "",
    ]
    (args.out / f"{args.name}.md").write_text("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=list(SETTINGS),
                    help="SETTINGS names; NAME+key=value+... changes a setting of NAME")
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.7])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="fashion_det")
    ap.add_argument("--dense", type=Path, default=None,
                    help="a finished dense run folder (default: train one in RUNS/dense)")
    ap.add_argument("--runs", type=Path, default=Path("benchmarks/runs_det_distill"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--name", default="detection_distill",
                    help="results file stem in --out (another setting keeps the default table)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("extra", nargs="*", help="further overrides for every run")
    args = ap.parse_args()
    t0 = time.time()
    extra = [*data_overrides(args.dataset, args.runs, holdout=False), *args.extra]
    dense, weights = dense_run(args, extra)
    jobs = [(v, ratio, seed, kd) for ratio in args.ratios for v in args.methods
            for seed in args.seeds for kd in (False, True)]
    rows: list[dict] = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(finetune, *job, args, weights, extra) for job in jobs]
        for future in futures:  # in submission order, so the table keeps the methods' order
            rows.append(future.result())
            write(rows, dense, args, t0)
    print((args.out / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
