"""Prune a trained model with a short fine-tune, with and without distillation from it.

Run on demand (not a test; about 1.5 minutes per run on this project's 2-core CPU)::

    python benchmarks/distill_finetune.py [--methods taylor smcp] [--ratios 0.5 0.7]
                                          [--epochs 4] [--lr 0.02] [--train-size 5000]
                                          [--dataset fashion|digits] [--holdout] [--reuse]

The setting most users are in: a model already trained (the dense demo model of
``benchmarks/methods.py``: ResNet-20, 5 epochs on the 20,000 training images of the embedded
Fashion-MNIST subset), pruned to 50% and 30% of its MACs in a fine-tune far shorter than the
papers' schedules: 4 epochs over the first 5,000 training images (160 steps), lr 0.02, every
method's pruning over by half of it (``SCHEDULES``). Each method runs twice from
the same weights: plain, and with ``distill.enabled=true`` (the dense model as teacher,
``distill.alpha`` / ``distill.temperature`` at their defaults, 0.5 and 4: not tuned on these
images). SMCP also runs with the paper's schedule (fractions of a 90-epoch run, re-solves every
80 steps) to show what a short run does to it, and as ``experiments/smcp_finetune.yaml`` sets
it for short fine-tunes (half the run left to recover, hard masks); Network Slimming likewise as
``slimming_finetune`` (``experiments/slimming_finetune.yaml``: no group below half its width,
the cut at a quarter of the run) and CHEX as ``chex_finetune`` (``experiments/chex_finetune.yaml``:
no group below half its width).

``--dataset digits`` runs the same comparison on scikit-learn's 8x8 digits (a dense ResNet-20
trained 30 epochs on 1,000 of them, 797 for testing; ``digits_folder.py``), a dataset none of
these settings was chosen on.

Reports top-1 on the 4,000 test images with and without distillation, the change from dense,
MACs kept, the teacher's share of the training time and wall time. Writes
``distill_finetune.md`` / ``.json`` to ``--out``; runs go to ``--runs`` (``--reuse`` skips
finished runs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_folder import write_digits  # noqa: E402
from methods import parse_variant, run_one  # noqa: E402

# 40 optimizer steps per epoch (5,000 images at batch 128); 4 epochs = 160 steps; pruning over
# by half of them.
SCHEDULES: dict[str, list[str]] = {
    "none": [],
    "taylor": ["method.prune_every=4", "method.remove_per_step=0.03", "method.finish_at=0.5"],
    "slimming": ["method.sparsity=1e-4", "method.prune_at=0.5"],
    "halp": ["method.prune_every=4", "method.prune_steps=20", "method.group_size=4"],
    "smcp": ["method.warmup_epochs=0.05", "method.ramp_epochs=0.45",
             "method.cooldown_epochs=0.5", "method.prune_every=4"],
    "smcp_paper": ["method.prune_every=80"],  # the published fractions and re-solve interval
    # experiments/smcp_finetune.yaml: half the run left to recover, hard masks
    "smcp_finetune": ["method.mask=hard", "method.warmup_epochs=0.05", "method.ramp_epochs=0.45",
                      "method.cooldown_epochs=0.5"],
    # experiments/slimming_finetune.yaml: no group below half its width, the cut at a quarter
    "slimming_finetune": ["method.sparsity=1e-4", "method.prune_at=0.25",
                          "method.max_prune_per_group=0.5"],
    "gator": ["method.gate_epochs=0.5"],
    "chex": ["method.update_every=0.1", "method.t_max=0.5"],
    # experiments/chex_finetune.yaml: the same, no group below half its width
    "chex_finetune": ["method.update_every=0.1", "method.t_max=0.5",
                      "method.max_prune_per_group=0.5"],
}


def dense_model(runs: Path, reuse: bool, extra: list[str], epochs: int = 5) -> tuple[dict, Path]:
    """The trained dense demo model (as ``benchmarks/methods.py`` trains it) and its weights."""
    r = run_one("none", 0.0, epochs, runs, reuse, extra)
    weights = runs / "dense" / "dense_weights.pt"
    if not weights.is_file():
        state = torch.load(runs / "dense" / "last.pt", map_location="cpu", weights_only=True)
        torch.save(state["model"], weights)
    return r, weights


def scaled(schedule: list[str], train_size: int) -> list[str]:
    """``SCHEDULES`` for ``train_size`` images: step counts grow with the steps per epoch.

    The schedules are written for 5,000 images (40 steps per epoch); with more images each
    pruning event comes as many times later, so pruning still ends at the same point of the run.
    """
    factor = max(1, round(train_size / 5000))
    out = []
    for item in schedule:
        key, value = item.split("=", 1)
        out.append(f"{key}={int(value) * factor}" if key == "method.prune_every" else item)
    return out


def finetune(method: str, ratio: float, distill: bool, args: argparse.Namespace,
             weights: Path) -> dict:
    base, schedule, folder = parse_variant(method, SCHEDULES)
    name = base.split("_")[0]  # smcp_paper and the *_finetune entries: variants
    if base != "smcp_paper":  # smcp_paper keeps the published interval
        schedule = scaled(schedule, args.train_size)
    schedules = {name: schedule}
    runs = args.runs / ("distill" if distill else "plain") / folder
    extra = [f"model.weights={weights}", f"optim.lr={args.lr}", "optim.warmup_epochs=0",
             f"data.train_size={args.train_size}",
             *(["distill.enabled=true"] if distill else []), *args.extra]
    r = run_one(name, ratio, args.epochs, runs, args.reuse, extra, schedules)
    return {**r, "variant": method, "distilled": distill, "ratio": ratio}


def table(rows: list[dict], dense: dict) -> str:
    head = ("| method | MACs kept (target) | top-1 plain | top-1 distilled | vs dense plain | "
            "vs dense distilled | distillation gain | teacher share of train time | "
            "wall s plain / distilled |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    pairs: dict[tuple[str, float], dict[bool, dict]] = {}
    for r in rows:
        pairs.setdefault((r["variant"], r["ratio"]), {})[r["distilled"]] = r
    for (variant, ratio), p in pairs.items():
        plain, kd = p.get(False), p.get(True)
        if kd is None and plain is not None and "error" not in plain:  # --plain-only
            lines.append(
                f"| {variant} | {100 * plain['cost_kept']:.1f}% ({100 * (1 - ratio):.0f}%) | "
                f"{plain['top1']:.2f} | | {plain['top1'] - dense['top1']:+.2f} | | | | "
                f"{plain['wall_time_s']:.0f} / |")
            continue
        if plain is None or kd is None or "error" in plain or "error" in kd:
            err = (plain or {}).get("error") or (kd or {}).get("error") or "missing"
            lines.append(f"| {variant} {ratio:g} | failed: {err} |" + " |" * 7)
            continue
        share = (kd.get("distill") or {}).get("teacher_share_of_train_time")
        lines.append(
            f"| {variant} | {100 * kd['cost_kept']:.1f}% ({100 * (1 - ratio):.0f}%) | "
            f"{plain['top1']:.2f} | {kd['top1']:.2f} | {plain['top1'] - dense['top1']:+.2f} | "
            f"{kd['top1'] - dense['top1']:+.2f} | {kd['top1'] - plain['top1']:+.2f} | "
            f"{'' if share is None else f'{100 * share:.0f}%'} | "
            f"{plain['wall_time_s']:.0f} / {kd['wall_time_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=[m for m in SCHEDULES if m != "none"],
                    help="SCHEDULES names; NAME+key=value+... changes a setting of NAME")
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.7])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--train-size", type=int, default=None,
                    help="fine-tune images (default: 5000 on fashion, all 1000 on digits)")
    ap.add_argument("--dataset", choices=["fashion", "digits"], default="fashion",
                    help="fashion: the embedded Fashion-MNIST subset; digits: scikit-learn's "
                         "8x8 digits (1,000 train / 797 test images, benchmarks/digits_folder.py),"
                         " a dataset the settings were not chosen on")
    ap.add_argument("--dense-epochs", type=int, default=None,
                    help="epochs of the dense model (default: 5 on fashion, 30 on digits)")
    ap.add_argument("--runs", type=Path, default=Path("benchmarks/runs_distill"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--name", default="distill_finetune",
                    help="results file stem in --out (another setting keeps the default table)")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--holdout", action="store_true",
                    help="for choosing settings: the dense model and every fine-tune score on "
                         "2,000 held-out training images (data.val_split=holdout), which the "
                         "dense model does not train on; the test images stay unseen")
    ap.add_argument("--plain-only", action="store_true", help="no distilled runs")
    ap.add_argument("extra", nargs="*", help="further overrides for every fine-tune run")
    args = ap.parse_args()
    t0 = time.time()
    data = ["data.val_split=holdout"] if args.holdout else []
    if args.dataset == "digits":
        if args.holdout:
            raise SystemExit("--holdout is for choosing settings on fashion; digits only checks")
        data = write_digits(args.runs / "digits_data")
    args.train_size = args.train_size or (1000 if args.dataset == "digits" else 5000)
    args.dense_epochs = args.dense_epochs or (30 if args.dataset == "digits" else 5)
    args.extra = [*data, *args.extra]
    dense, weights = dense_model(args.runs, args.reuse, data, args.dense_epochs)
    rows: list[dict] = []
    for ratio in args.ratios:
        for method in args.methods:
            for distill in (False,) if args.plain_only else (False, True):
                rows.append(finetune(method, ratio, distill, args, weights))
                write(rows, dense, args, t0)
    print((args.out / f"{args.name}.md").read_text())


def write(rows: list[dict], dense: dict, args: argparse.Namespace, t0: float) -> None:
    """The table so far (rewritten after every run, so a long call can be read while it runs)."""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(
        json.dumps({"dense": dense, "runs": rows}, indent=2) + "\n")
    trained_on = ("scikit-learn's 8x8 digits (`benchmarks/digits_folder.py`, 1,000 training "
                  "images, batch 25, read as `data=imagefolder`)" if args.dataset == "digits"
                  else "the embedded Fashion-MNIST subset")
    scored_on = ("the 797 test digits" if args.dataset == "digits" else
                 "the 2,000 held-out training images, `data.val_split=holdout`; the dense "
                 "model trains on the other 18,000" if args.holdout else "the 4,000 test images")
    md = [
        "# Short fine-tunes of a trained model, with and without distillation",
        "",
        f"`python benchmarks/distill_finetune.py {' '.join(sys.argv[1:])}` ({dt.date.today()}, "
        f"{platform.processor() or 'CPU'}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{time.time() - t0:.0f} s for this call; the fine-tunes' own wall times sum to "
        f"{sum(r.get('wall_time_s', 0) for r in rows):.0f} s).",
        "",
        f"The dense model (ResNet-20, {args.dense_epochs} epochs on {trained_on}, "
        f"top-1 {dense['top1']:.2f}% on {scored_on}) pruned in a {args.epochs}-epoch "
        f"fine-tune on the first {args.train_size} training images at lr {args.lr:g} (cosine, "
        "no warm-up), budgets in MACs; every method's "
        "pruning is over by half of the fine-tune (`SCHEDULES`, step counts scaled by "
        f"{max(1, round(args.train_size / 5000))}), except `smcp_paper` (SMCP's "
        "published fractions of a 90-epoch run, re-solve every 80 steps) and `smcp_finetune` "
        "(`experiments/smcp_finetune.yaml`: 5% / 45% / 50%, hard masks) and "
        "`slimming_finetune` (`experiments/slimming_finetune.yaml`: cap 0.5, cut at 25%); "
        "`chex_finetune` is CHEX's schedule with a cap of 0.5 (`experiments/chex_finetune.yaml`). "
        "Distilled: "
        "`distill.enabled=true`, the dense "
        "model as teacher, alpha 0.5, T 4 (defaults, not tuned). Extra overrides: "
        f"`{' '.join(args.extra) or 'none'}`.",
        "",
        table(rows, dense),
        "",
    ]
    (args.out / f"{args.name}.md").write_text("\n".join(md))


if __name__ == "__main__":
    main()
