"""Detectors' channel structure: what prunecli finds prunable in each registered detector's core,
whether slimming it is exact, how long tracing, slimming and solving a budget take, and what
Torch-Pruning does with the same core.

Run on demand (not a test)::

    python benchmarks/detection_structure.py [--models ssd300_resnet50,retinanet_resnet50_fpn]
        [--threads 2] [--repeats 3] [--no-tp] [--out benchmarks/results]

For each detector (random init, 20 classes as Pascal VOC, one image at its input size):

* **structure** -- groups, prunable groups, their share of the core's channels and of its MACs
  (layers reading or writing a prunable group), and the most common reasons groups stay whole;
* **exactness** -- a random keep-set removing 30% of every prunable group is applied as masks on
  the core and by slimming a copy of the whole detector; the slimmed detector's core must give
  the masked core's head maps (``max|masked - slimmed| / max|masked| <= 1e-4``), and pruning must
  change them (norm affines and constant-initialised biases drawn at random, BN statistics
  re-estimated: see ``coverage_models.excite``), or the check proves nothing;
* **speed** -- trace, slim (deep copy of the detector included) and solving a 50%-MACs budget
  with L1 scores and the knapsack (``allocate_to_budget``): medians of ``--repeats``;
* **Torch-Pruning** (1.6.1, when installed) on the same core: ``BasePruner``, L1 magnitude,
  ratio 0.3, the convs that make the core's outputs (final class/box convs; Faster R-CNN's FPN
  outputs) in ``ignored_layers``; its time is deep copy + dependency
  graph + step; success is no exception and output maps of the dense shapes; MACs after. Run
  once more with only the final class/box convs ignored (*heads only*), as Torch-Pruning's
  detection examples do, to show what a user who names just the heads gets.

Writes ``detection_structure.md`` and ``.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coverage import (  # noqa: E402
    describe_structure,
    prunable_mac_share,
    rel_diff,
    time_limit,
)
from coverage_models import (  # noqa: E402
    KEEP_RATIO,
    MIN_CHANGE,
    TOLERANCE,
    ModelSpec,
    excite,
    first_line,
    quiet,
    timed,
)
from coverage_report import cpu_name, now, versions  # noqa: E402

OWN = ("ssd_tiny", "ssd300_resnet50", "ssd512_resnet50")
TORCHVISION = (
    "ssd300_vgg16", "ssdlite320_mobilenet_v3_large", "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn", "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn")
NUM_CLASSES = 20
BUDGET = 0.5  # share of the core's MACs kept by the timed solve
TIMEOUT_S = 300  # per attempt: a hang is reported, not waited for


@dataclass
class Row:
    name: str
    source: str
    size: int = 0
    status: str = "not run"
    groups: int = 0
    prunable_groups: int = 0
    prunable_share: float | None = None
    prunable_macs: float | None = None
    macs: float | None = None
    macs_after: float | None = None
    max_rel_diff: float | None = None
    output_change: float | None = None
    trace_s: float | None = None
    slim_s: float | None = None
    solve_s: float | None = None
    solve_kept: float | None = None
    unknown_ops: list[str] = field(default_factory=list)
    top_reasons: list[tuple[str, int]] = field(default_factory=list)
    tp_status: str = "not run"
    tp_s: float | None = None
    tp_macs_after: float | None = None
    tp_heads_status: str = "not run"  # with only the final class/box convs ignored


def model_cfg(name: str) -> dict[str, Any]:
    if name in OWN:
        return {"name": name, "source": "prunecli"}
    return {"name": name, "source": "torchvision_det"}


def build(name: str) -> tuple[nn.Module, torch.Tensor, int]:
    """The detector with every channel made to matter, and one normalised input for its core."""
    from prunecli.models import build_model
    from prunecli.models.detection import native_input_size

    cfg = model_cfg(name)
    size = int(native_input_size(cfg) or 512)
    torch.manual_seed(0)
    det = build_model(cfg, num_classes=NUM_CLASSES).eval()
    excite(det.core, ModelSpec(name, "prunecli", size=size))
    det.eval()
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    return det, det.normalise(image), size


def flat(maps: Any) -> torch.Tensor:
    return torch.cat([m.float().flatten() for m in maps])


@torch.no_grad()
def prunecli_attempt(det: nn.Module, x: torch.Tensor) -> tuple[Any, dict, nn.Module, float,
                                                               float, float, float]:
    """trace -> random keep -> slim a copy of the detector; and a 50% MACs solve."""
    from prunecli.allocate import allocate_to_budget
    from prunecli.cost import build_cost_model
    from prunecli.structure import l1_scores, random_keep, slim, trace_structure

    structure, trace_s = timed(lambda: trace_structure(det.core, x))
    keep = random_keep(structure, keep_ratio=KEEP_RATIO, generator=torch.Generator().manual_seed(0))
    small, slim_s = timed(lambda: slim(det, structure, keep))

    def solve() -> Any:
        scores = {g: v.numpy() for g, v in l1_scores(det.core, structure).items()}
        cost = build_cost_model("macs", det.core, structure, x)
        return allocate_to_budget(cost, scores, 1.0 - BUDGET)

    result, solve_s = timed(solve)
    return structure, keep, small, trace_s, slim_s, solve_s, float(result.ratio)


@torch.no_grad()
def check_exact(row: Row, det: nn.Module, structure: Any, keep: dict, small: nn.Module,
                x: torch.Tensor) -> None:
    from prunecli.cost import count_macs
    from prunecli.structure import ChannelMasker

    full = flat(det.core(x))
    masker = ChannelMasker(det.core, structure)
    masker.set_keep(keep)
    masked = flat(det.core(x))
    masker.remove()
    slimmed = flat(small.core(x))
    row.max_rel_diff = rel_diff(masked, slimmed)
    row.output_change = rel_diff(full, slimmed)
    row.macs_after = count_macs(small.core, x)
    if not row.max_rel_diff <= TOLERANCE:
        row.status = "mismatch"
    elif not row.output_change >= MIN_CHANGE:
        row.status = "void: pruning did not change the output"


@torch.no_grad()
def output_convs(core: nn.Module, x: torch.Tensor) -> list[str]:
    """The convs whose outputs become the core's outputs: the final class/box convs (the
    core's ``final_convs``), and for Faster R-CNN also the FPN's output convs (their maps go on
    to the RoI heads outside the core). Each output is traced to the innermost module that
    returned it and holds a conv (a conv, or a conv-norm block), and that module's last conv."""
    made: dict[int, tuple[Any, list[str]]] = {}  # id -> (weak reference, producers)
    modules = dict(core.named_modules())

    def note(name: str, out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            return
        ref, names = made.get(id(out), (None, []))
        if ref is None or ref() is not out:  # a new tensor (a freed one's id may come back)
            made[id(out)] = (weakref.ref(out), [name])
        else:
            names.append(name)

    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: note(n, out))
             for n, m in modules.items() if n]
    try:
        outputs = core(x)
    finally:
        for h in hooks:
            h.remove()
    found = set(core.final_convs)
    for t in outputs:
        ref, names = made.get(id(t), (None, []))
        if ref is None or ref() is not t:  # made by a function, not a module (a max-pool)
            continue
        for name in names:  # innermost first: hooks fire as modules return
            convs = [n for n, m in modules[name].named_modules() if isinstance(m, nn.Conv2d)]
            if convs:
                found.add(f"{name}.{convs[-1]}" if convs[-1] else name)
                break
    return sorted(found)


def tp_attempt(det: nn.Module, x: torch.Tensor, shapes: list[tuple[int, ...]],
               ignored: list[str]) -> tuple[str, float | None, float | None]:
    """Torch-Pruning on a copy of the core with the convs ``ignored`` left whole."""
    import torch_pruning as tp

    from prunecli.cost import count_macs

    def run() -> nn.Module:
        core = copy.deepcopy(det.core)
        modules = dict(core.named_modules())
        pruner = tp.pruner.BasePruner(
            core, x, importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=1 - KEEP_RATIO, ignored_layers=[modules[n] for n in ignored])
        pruner.step()
        return core

    try:
        with time_limit(TIMEOUT_S):
            core, seconds = timed(run)
        with torch.no_grad():
            got = [tuple(m.shape) for m in core(x)]
        if len(got) != len(shapes):
            return f"bad output: {len(got)} output maps, not {len(shapes)}", seconds, None
        wrong = [(i, a, b) for i, (a, b) in enumerate(zip(got, shapes, strict=True)) if a != b]
        if wrong:
            return (f"bad output: {len(wrong)} of {len(shapes)} output maps change shape (output "
                    f"{wrong[0][0]}: {wrong[0][1]} != {wrong[0][2]})"), seconds, None
        return "ok", seconds, count_macs(core, x)
    except TimeoutError:
        return f"hang (>{TIMEOUT_S} s)", None, None
    except Exception as exc:  # noqa: BLE001 - a failure is a result here
        return f"error: {first_line(exc)}", None, None


def measure(name: str, repeats: int, with_tp: bool) -> Row:
    from prunecli.cost import count_macs

    row = Row(name, "prunecli" if name in OWN else "torchvision")
    try:
        det, x, row.size = build(name)
        with torch.no_grad():
            shapes = [tuple(m.shape) for m in det.core(x)]
        row.macs = count_macs(det.core, x)
    except Exception as exc:  # noqa: BLE001
        row.status = f"error: build: {first_line(exc)}"
        return row
    traces, slims, solves, tps = [], [], [], []
    attempt = None
    for _ in range(repeats):  # prunecli and Torch-Pruning interleaved: the same machine load
        try:
            with time_limit(TIMEOUT_S):
                attempt = prunecli_attempt(det, x)
            traces.append(attempt[3])
            slims.append(attempt[4])
            solves.append(attempt[5])
            row.solve_kept = attempt[6]
            row.status = "ok"
        except TimeoutError:
            row.status = f"hang (>{TIMEOUT_S} s)"
            break
        except Exception as exc:  # noqa: BLE001
            row.status = f"error: {first_line(exc)}"
            break
        if with_tp and row.tp_status in ("not run", "ok"):
            row.tp_status, seconds, row.tp_macs_after = tp_attempt(
                det, x, shapes, output_convs(det.core, x))
            if seconds is not None:
                tps.append(seconds)
    if with_tp:  # as Torch-Pruning's examples do: the heads' final convs ignored, no more
        row.tp_heads_status = tp_attempt(det, x, shapes, list(det.core.final_convs))[0]
    if row.tp_status == "ok" and row.tp_macs_after and row.tp_macs_after >= 0.999 * row.macs:
        row.tp_status = "nothing pruned (MACs unchanged)"
    if attempt is not None and row.status == "ok":
        structure, keep, small = attempt[:3]
        describe_structure(row, structure)  # the coverage benchmark's: groups, share, reasons
        row.prunable_macs = prunable_mac_share(det.core, structure)
        try:
            check_exact(row, det, structure, keep, small, x)
        except Exception as exc:  # noqa: BLE001
            row.status = f"error: check: {first_line(exc)}"
    row.trace_s, row.slim_s, row.solve_s = (statistics.median(v) if v else None
                                            for v in (traces, slims, solves))
    row.tp_s = statistics.median(tps) if tps else None
    return row


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def giga(value: float | None) -> str:
    return fmt(None if value is None else value / 1e9, ".2f")


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    ok = [r for r in rows if r.status == "ok"]
    tp_ok = [r for r in rows if r.tp_status == "ok"]
    stack = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    lines = [
        "# Detectors: channel structure, exact slimming and speed", "",
        f"{meta['date']} · {stack} · {meta['threads']} CPU threads ({meta['cpu']}) · "
        f"`{meta['command']}`", "",
        f"Random init, {NUM_CLASSES} classes, one image at the detector's input size, the core "
        "(backbone, neck, heads up to the final class/box convs) traced. *Prunable ch./MACs*: "
        "share of the core's channels in prunable groups and of its conv MACs in layers that "
        "read or write one. *Max rel diff*: masked core vs the slimmed detector's core, a random "
        f"keep-set removing {1 - KEEP_RATIO:.0%} of every prunable group (pass <= {TOLERANCE:g});"
        f" *output change*: dense vs slimmed (must be >= {MIN_CHANGE:g}). *Solve*: L1 scores and "
        f"the knapsack for {BUDGET:.0%} of the core's MACs (*kept*: the share reached). Times: "
        f"medians of {meta['repeats']}, slim includes the deep copy of the whole detector. "
        "Torch-Pruning: BasePruner, L1, ratio 0.3, the convs making the core's outputs ignored "
        "(final class/box convs; Faster R-CNN's FPN outputs, which feed its RoI heads), on a "
        "copy of the "
        "same core (deep copy + dependency graph + step), interleaved with prunecli's runs. "
        "Generated by `python benchmarks/detection_structure.py`.", "",
        f"- prunecli: **{len(ok)}/{len(rows)}** detector cores slim exactly.",
    ]
    if meta["torch_pruning"]:
        heads_ok = [r for r in rows if r.tp_heads_status == "ok"]
        lines.append(f"- Torch-Pruning: {len(tp_ok)}/{len(rows)} cores pruned (MACs lower, output "
                     "maps of the dense shapes) when told every conv that makes an output; "
                     f"{len(heads_ok)}/{len(rows)} when told only the heads' final convs "
                     "(*TP, heads only*), as its examples do.")
    lines += ["", "| detector | source | input | groups | prunable | prunable ch. | prunable "
              "MACs | MACs G | after G | max rel diff | output change | trace s | slim s | "
              f"solve s ({BUDGET:.0%}) | kept | status | TP | TP s | TP after G | TP, heads only | "
              "whole because |", "|---" * 21 + "|"]
    for r in rows:
        why = "; ".join(f"{reason} ×{n}" for reason, n in r.top_reasons[:3])[:160].replace("|", "/")
        lines.append(
            f"| {r.name} | {r.source} | {r.size}² | {r.groups} | {r.prunable_groups} | "
            f"{fmt(r.prunable_share, '.0%')} | {fmt(r.prunable_macs, '.0%')} | "
            f"{giga(r.macs)} | {giga(r.macs_after)} | {fmt(r.max_rel_diff, '.1e')} | "
            f"{fmt(r.output_change, '.2f')} | "
            f"{fmt(r.trace_s, '.3f')} | {fmt(r.slim_s, '.3f')} | {fmt(r.solve_s, '.3f')} | "
            f"{fmt(r.solve_kept, '.1%')} | {r.status[:80]} | {r.tp_status[:90].replace('|', '/')}"
            f" | {fmt(r.tp_s, '.3f')} | {giga(r.tp_macs_after)} | "
            f"{r.tp_heads_status[:90].replace('|', '/')} | {why} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated detector names (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-tp", action="store_true", help="skip the Torch-Pruning reference")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--name", default="detection_structure")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.models.split(",")] if args.models else [*OWN, *TORCHVISION]
    unknown = sorted(set(names) - {*OWN, *TORCHVISION})
    if unknown:
        ap.error(f"unknown detector(s) {', '.join(unknown)}; choose from "
                 f"{', '.join((*OWN, *TORCHVISION))}")
    quiet()
    torch.set_num_threads(args.threads)
    with_tp = not args.no_tp
    if with_tp:
        try:
            import torch_pruning  # noqa: F401
        except ImportError:
            print("torch-pruning not installed (pip install torch-pruning); skipping it")
            with_tp = False
    meta = {"date": now(), "versions": versions(), "threads": args.threads, "cpu": cpu_name(),
            "repeats": args.repeats, "torch_pruning": with_tp,
            "command": " ".join(["python", *sys.argv])}
    rows = []
    for name in names:
        row = measure(name, args.repeats, with_tp)
        rows.append(row)
        print(f"{name:40s} {row.status[:40]:40s} trace {fmt(row.trace_s, '.3f')} slim "
              f"{fmt(row.slim_s, '.3f')} solve {fmt(row.solve_s, '.3f')} | TP "
              f"{row.tp_status[:50]} {fmt(row.tp_s, '.3f')}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(markdown(rows, meta))
    (args.out / f"{args.name}.json").write_text(json.dumps(
        {"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    print(f"wrote {args.out / args.name}.md and .json")


if __name__ == "__main__":
    main()
