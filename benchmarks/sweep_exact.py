"""Exactness sweep over models the coverage benchmark does not name (a held-back-style check).

Run on demand (not a test)::

    python benchmarks/sweep_exact.py [--models timm/vit_small_patch16_224,...] [--out DIR]

Each model is built with random weights, its norms and per-channel constants drawn at random
(``coverage.excite``), traced, 30% of every prunable group removed at random, slimmed, and the
slim model compared with the masked one on one input (``coverage.masked_vs_slim``). The table
gives exact / wrong / error, how much pruning changed the output (a check that changed nothing
proves nothing), the MACs kept (torch's counter on the slim model), the share of conv/linear MACs
prunable, the attention heads found prunable and the most common reasons channels stay whole.
No timing: it runs beside other work. Writes ``sweep_exact.md``/``.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coverage import (  # noqa: E402
    MIN_CHANGE,
    TOLERANCE,
    ModelSpec,
    excite,
    first_line,
    generic,
    masked_vs_slim,
    prunable_mac_share,
    prunecli_once,
    quiet,
    time_limit,
)

# (source/name, input size, constructor arguments): families beside the benchmark's own, at
# small inputs where the model allows it (fixed-size models get their own size)
MODELS: list[tuple[str, int, dict]] = [
    ("timm/vit_small_patch16_224", 64, {"img_size": 64, "depth": 4}),
    ("timm/deit3_small_patch16_224", 64, {"img_size": 64, "depth": 4}),
    ("timm/vit_base_patch32_clip_224", 64, {"img_size": 64, "depth": 2}),
    ("timm/mobilevitv2_050", 64, {}),
    ("timm/mobilevit_xs", 64, {}),
    ("timm/pvt_v2_b0", 64, {}),
    ("timm/twins_pcpvt_small", 64, {}),
    ("timm/cait_xxs24_224", 64, {"img_size": 64}),
    ("timm/pit_ti_224", 224, {}),
    ("timm/eva02_tiny_patch14_224", 56, {"img_size": 56}),
    ("timm/beit_base_patch16_224", 64, {"img_size": 64, "depth": 2}),
    ("timm/swinv2_cr_tiny_ns_224", 224, {}),
    ("timm/maxvit_tiny_rw_224", 224, {}),
    ("timm/coatnet_0_rw_224", 224, {}),
    ("timm/efficientvit_b0", 64, {}),
    ("timm/fastvit_t8", 64, {}),
    ("timm/nest_tiny", 224, {}),
    ("timm/xcit_nano_12_p16_224", 64, {"img_size": 64}),
    ("timm/convit_tiny", 224, {}),
    ("timm/tnt_s_patch16_224", 224, {}),
    ("timm/crossvit_tiny_240", 240, {}),
    ("timm/poolformerv2_s12", 64, {}),
    ("timm/repvit_m1", 64, {}),
    ("timm/hgnetv2_b0", 64, {}),
    ("timm/resnest14d", 64, {}),
    ("timm/regnety_002", 64, {}),
    ("timm/selecsls42b", 64, {}),
    ("timm/inception_next_tiny", 64, {}),
    ("torchvision/vit_b_32", 224, {}),
    ("torchvision/maxvit_t", 224, {}),
    ("torchvision/swin_v2_t", 64, {}),
    ("torchvision/mobilenet_v3_large", 64, {}),
]


def build(label: str, size: int, kwargs: dict) -> torch.nn.Module:
    source, name = label.split("/", 1)
    torch.manual_seed(0)
    if source == "timm":
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    else:
        import torchvision

        model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
    excite(model, ModelSpec(name, source, 10, size))
    return model.eval()


def sweep_one(label: str, size: int, kwargs: dict) -> dict:
    from prunecli.cost.counting import count_macs

    row: dict = {"model": label, "input": size, "kwargs": kwargs}
    t0 = time.time()
    try:
        with time_limit(300):
            model = build(label, size, kwargs)
            x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
            run = prunecli_once(model, x)
            diff, change = masked_vs_slim(model, run, x)
            s = run.structure
            heads = [g for g in s.prunable_groups if any(
                a.attr == "num_heads" and any(seg.group == g.id for p in a.parts for seg in p)
                for a in s.size_attrs)]
            row.update(
                status="exact" if diff <= TOLERANCE else "WRONG", rel_diff=diff, change=change,
                macs_kept=count_macs(run.small, x) / count_macs(model, x),
                prunable_macs=prunable_mac_share(model, s), head_groups=len(heads),
                heads=sum(g.size for g in heads),
                reasons=Counter(generic(r) for g in s.groups for r in g.reasons).most_common(2))
    except Exception as exc:  # noqa: BLE001 - a model that fails is a row, not the end
        row.update(status="error", error=first_line(exc))
    row["seconds"] = round(time.time() - t0, 1)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| model | input | result | rel diff | output change | MACs kept | prunable MACs "
             "| heads prunable (groups) | most common reasons left whole |",
             "|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["status"] == "error":
            lines.append(f"| {r['model']} | {r['input']} | error: {r['error'][:90]} |"
                         + " |" * 6)
            continue
        void = " (void)" if r["change"] < MIN_CHANGE else ""
        reasons = "; ".join(f"{text[:60]} ({n})" for text, n in r["reasons"])
        lines.append(
            f"| {r['model']} | {r['input']} | {r['status']}{void} | {r['rel_diff']:.1e} | "
            f"{r['change']:.2f} | {100 * r['macs_kept']:.0f}% | {100 * r['prunable_macs']:.0f}% | "
            f"{r['heads']} ({r['head_groups']}) | {reasons} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated source/name (default: the list above)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    quiet()
    torch.set_num_threads(args.threads)
    wanted = args.models.split(",") if args.models else None
    specs = [m for m in MODELS if wanted is None or m[0] in wanted]
    rows = []
    for label, size, kwargs in specs:
        rows.append(sweep_one(label, size, kwargs))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    counts = Counter(r["status"] for r in rows)
    text = "\n".join([
        "# Exactness sweep over models the coverage benchmark does not name", "",
        f"`python benchmarks/sweep_exact.py` ({dt.date.today()}, torch {torch.__version__}): "
        f"{len(rows)} models, " + ", ".join(f"{n} {k}" for k, n in counts.most_common()) + ".",
        "Random weights with norms and per-channel constants drawn at random; 30% of every "
        "prunable group removed at random; slim vs masked on one input (tolerance "
        f"{TOLERANCE:g}); 'output change': how much pruning moved the output (below "
        f"{MIN_CHANGE:g} the check would be void).", "", table(rows), ""])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep_exact.md").write_text(text)
    (args.out / "sweep_exact.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    print(text)


if __name__ == "__main__":
    main()
