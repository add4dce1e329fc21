"""Which classes pruning cost: every slimmed detector of a ``detection_methods.py`` run folder
evaluated against its dense detector on the same test images (``prunecli eval ckpt=METHOD/slim.pt
baseline=dense``), each class's AP change side by side.

Run on demand after ``detection_methods.py`` (about 20 s per method)::

    python benchmarks/detection_methods.py trainer.threads=1 --ratios 0.5 --runs RUNS
    python benchmarks/detection_per_class.py --runs RUNS [--ratio 0.5] [--name NAME]

Writes ``NAME.md`` and ``.json`` (default ``detection_per_class_50``) to ``--out`` (default
``benchmarks/results``). The whole-set change of each method is its eval's; the per-class rows
are ordered by their mean change over the methods, the class that lost most first.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np


def evaluate(run: Path, dense: Path, out: Path) -> dict:
    """``prunecli eval`` of ``run``'s slimmed detector against ``dense``; its results.json."""
    cmd = [sys.executable, "-m", "prunecli", "eval", f"ckpt={run / 'slim.pt'}",
           f"baseline={dense}", "trainer.threads=1", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads((out / "results.json").read_text())


def table(results: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Markdown rows: one per class (its dense AP, objects, and each method's AP change), the
    largest mean loss first, then the whole set's mAP change."""
    methods = list(results)
    first = results[methods[0]]["per_class"]
    names = list(first)
    change = np.array([[results[m]["per_class"][n]["change"] for m in methods] for n in names])
    order = np.argsort(np.nanmean(change, axis=1))
    header = ["class", "objects", "dense AP"] + methods + ["mean"]
    rows = []
    for i in order:
        n = names[i]
        rows.append([n, str(first[n]["objects"]), f"{first[n]['AP baseline']:.1f}",
                     *(f"{c:+.1f}" for c in change[i]), f"{np.nanmean(change[i]):+.1f}"])
    whole = [results[m]["change"] for m in methods]
    rows.append(["**all (mAP)**", str(sum(first[n]["objects"] for n in names)),
                 f"{results[methods[0]]['baseline']['map']:.1f}",
                 *(f"**{c:+.1f}**" for c in whole), f"**{np.mean(whole):+.1f}**"])
    return header, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--ratio", default="0.5")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    dense = args.runs / "dense"
    runs = sorted(p for p in args.runs.glob(f"*_{args.ratio}") if (p / "slim.pt").is_file())
    if not runs:
        raise SystemExit(f"no */slim.pt of cost.ratio={args.ratio} under {args.runs}")
    results = {}
    for run in runs:
        method = run.name[: -len(args.ratio) - 1]
        results[method] = evaluate(run, dense, run / "eval_vs_dense")
        print(f"{method}: mAP change {results[method]['change']:+.2f}", flush=True)
    header, rows = table(results)
    kept = 100 * (1 - float(args.ratio))
    lines = [f"# Which classes pruning cost: each method at {kept:.0f}% of the MACs against "
             "the dense detector", "",
             f"{dt.date.today()}, `python benchmarks/detection_per_class.py --runs RUNS "
             f"--ratio {args.ratio}` on the runs of `detection_methods.py` (the embedded "
             "detection demo, ssd_tiny, 8 epochs, the 1,000 test scenes). Each cell is a "
             "class's COCO AP@[.5:.95] change from the dense detector, from `prunecli eval "
             "ckpt=METHOD/slim.pt baseline=dense`; rows by mean change, the largest loss first.",
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    name = args.name or f"detection_per_class_{round(kept)}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"{name}.json").write_text(json.dumps(
        {m: {"change": r["change"], "map": r["map"], "baseline_map": r["baseline"]["map"],
             "per_class": r["per_class"]} for m, r in results.items()}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
