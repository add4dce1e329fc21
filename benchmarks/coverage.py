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
import datetime as dt
import gc
import json
import logging
import multiprocessing as mp
import platform
import re
import signal
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
from torch import nn

KEEP_RATIO = 0.7  # 30% of the channels of every prunable group are removed
TOLERANCE = 1e-4  # max |masked - slimmed| / max |masked|
MIN_CHANGE = 1e-3  # below this, pruning did not change the output: the check proved nothing
REPEATS = 3  # timed runs per model (median reported)
TP_TIMEOUT_S = 120.0
PRUNECLI_TIMEOUT_S = 120  # per trace + slim: a hang is reported, not waited for
TP_START_TIMEOUT_S = 600.0  # worker start: imports + building the model


@dataclass(frozen=True)
class ModelSpec:
    """One benchmark model: where it comes from and what it is fed."""

    name: str
    source: str  # "torchvision", "timm" or "prunecli"
    num_classes: int = 1000
    size: int = 224
    kind: str = "cnn"  # or "transformer" (attention blocks): the target share differs

    @property
    def label(self) -> str:
        return f"{self.source}/{self.name}"


MODELS: list[ModelSpec] = [
    *(ModelSpec(n, "torchvision") for n in (
        "resnet18", "resnet50", "vgg16_bn", "mobilenet_v2", "mobilenet_v3_small", "densenet121",
        "efficientnet_b0", "regnet_y_400mf", "googlenet", "squeezenet1_1")),
    *(ModelSpec(n, "timm") for n in (
        "resnet26d", "mobilenetv3_large_100", "efficientnet_lite0", "convnext_nano", "dla34",
        "ghostnet_100", "repvgg_a0", "hrnet_w18_small", "rexnet_100", "cspresnet50")),
    *(ModelSpec(n, "prunecli", num_classes=10, size=32)
      for n in ("resnet20", "resnet56", "resnet110", "vgg16_bn")),
    ModelSpec("mobilenet_v1", "prunecli"),
    # added with the channel-axis moves (ConvNeXt, token MLPs) and the coverage-II issue
    *(ModelSpec(n, "timm") for n in (
        "convnext_tiny", "convnextv2_atto", "poolformer_s12", "mixnet_s", "resnext50_32x4d")),
    *(ModelSpec(n, "timm", kind="transformer") for n in (
        "vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224",
        "edgenext_small", "levit_128", "efficientformer_l1", "mobilevit_s")),
    *(ModelSpec(n, "torchvision") for n in (
        "convnext_tiny", "regnet_x_400mf", "resnext50_32x4d", "shufflenet_v2_x1_0")),
    *(ModelSpec(n, "torchvision", kind="transformer") for n in ("vit_b_16", "swin_t")),
    # added with space refinement (outputs made of parts, splits with sizes held by a module)
    *(ModelSpec(n, "timm") for n in ("res2net50_14w_8s", "ghostnetv2_100")),
]
CNN_TARGET, TRANSFORMER_TARGET = 0.5, 0.3  # share of MACs prunable exactly


@dataclass
class TPResult:
    """Torch-Pruning on one model."""

    status: str = "not run"  # ok / error: ... / hang (>120 s) / bad output: ...
    macs_after: int | None = None
    seconds: float | None = None
    times: list[float] = field(default_factory=list)


@dataclass
class Record:
    """prunecli on one model (plus the Torch-Pruning reference)."""

    model: str
    source: str
    input: list[int]
    kind: str = "cnn"
    measured: str = ""  # when (rows can be re-measured alone with --merge)
    status: str = "not run"  # ok / mismatch / error: first line
    groups: int | None = None
    prunable_groups: int | None = None
    prunable_share: float | None = None
    prunable_macs: float | None = None  # share of conv/linear MACs touching a prunable group
    macs_before: int | None = None
    macs_after: int | None = None
    max_rel_diff: float | None = None
    output_change: float | None = None  # unpruned vs slimmed: the check is void if ~0
    trace_s: float | None = None
    slim_s: float | None = None
    total_s: float | None = None
    times: list[tuple[float, float]] = field(default_factory=list)  # (trace, slim) per run
    unknown_ops: list[str] = field(default_factory=list)
    top_reasons: list[tuple[str, int]] = field(default_factory=list)
    tp: TPResult = field(default_factory=TPResult)


# ----------------------------------------------------------------------------- helpers
def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def quiet() -> None:
    """Silence the warnings and log lines that random-init models and tracers print."""
    warnings.filterwarnings("ignore")
    logging.getLogger("prunecli").setLevel(logging.ERROR)


def build(spec: ModelSpec) -> nn.Module:
    """The model with random weights (seeded), in eval mode."""
    torch.manual_seed(0)
    if spec.source == "torchvision":
        import torchvision

        model = torchvision.models.get_model(spec.name, weights=None)
    elif spec.source == "timm":
        import timm

        model = timm.create_model(spec.name, pretrained=False)
    else:
        from prunecli.models import build_model

        model = build_model({"name": spec.name, "source": "prunecli"},
                            num_classes=spec.num_classes, in_chans=3)
    excite(model, spec)
    return model.eval()


def is_norm(module: nn.Module) -> bool:
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
        return True
    weight = getattr(module, "weight", None)
    return "Norm" in type(module).__name__ and isinstance(weight, nn.Parameter)


@torch.no_grad()
def excite(model: nn.Module, spec: ModelSpec) -> None:
    """Make every channel matter to the output, so masked == slimmed is a real test.

    A fresh model in eval mode hides most channels: zero-initialised last BN gammas (timm ResNets),
    layer scales of 1e-6 (ConvNeXt) and BN running stats that do not match the activations (the
    signal fades to zero in GoogLeNet) leave the logits equal to the classifier bias whatever is
    pruned. So norm affines and constant-initialised per-channel parameters are drawn at random
    (seeded) and BN statistics are re-estimated on random inputs."""
    gen = torch.Generator().manual_seed(1)

    def draw(p: torch.Tensor, low: float, high: float) -> None:
        p.copy_(torch.rand(p.shape, generator=gen) * (high - low) + low)

    norm_params = set()
    for module in model.modules():
        if is_norm(module):
            for attr, (low, high) in (("weight", (0.5, 1.5)), ("bias", (-0.2, 0.2))):
                p = getattr(module, attr, None)
                if isinstance(p, nn.Parameter):
                    draw(p, low, high)
                    norm_params.add(id(p))
    for name, p in model.named_parameters():
        per_channel = p.numel() > 1 and max(p.shape) == p.numel()  # (C,), (C, 1, 1), (1, 1, C)
        if p.ndim >= 2 and not per_channel and not bool(p.any()):  # zero-init heads (tv ViT)
            p.normal_(0.0, 0.02, generator=gen)
        elif per_channel and id(p) not in norm_params and bool((p == p.flatten()[0]).all()):
            draw(p, -0.1, 0.1) if name.endswith("bias") else draw(p, 0.5, 1.5)
    recalibrate_bn(model, spec)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, spec: ModelSpec, batches: int = 2, batch: int = 4) -> None:
    """Re-estimate BatchNorm running statistics (cumulative average) on random inputs."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    gen = torch.Generator().manual_seed(2)
    model.train()
    for _ in range(batches):
        model(torch.randn(batch, 3, spec.size, spec.size, generator=gen))
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def example_input(spec: ModelSpec) -> torch.Tensor:
    return torch.randn(1, 3, spec.size, spec.size, generator=torch.Generator().manual_seed(0))


def output_tensor(out: Any) -> torch.Tensor:
    """The logits of a model output (a tensor, or the first tensor of a tuple/dict)."""
    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if isinstance(out, dict) else out
    return next(v for v in values if isinstance(v, torch.Tensor))


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


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall time; garbage from earlier runs is collected first, outside the
    timing (a collection of earlier traced graphs would otherwise land in a random run)."""
    gc.collect()
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# ----------------------------------------------------------------------------- prunecli
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


# ----------------------------------------------------------------------------- Torch-Pruning
def tp_once(model: nn.Module, x: torch.Tensor, classifier: str) -> tuple[nn.Module, float]:
    """Deep copy + pruner (dependency graph) + one step: Torch-Pruning's trace+slim."""
    import torch_pruning as tp

    def run() -> nn.Module:
        pruned = copy.deepcopy(model)
        head = dict(pruned.named_modules())[classifier]
        pruner = tp.pruner.BasePruner(
            pruned, x, importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=1 - KEEP_RATIO, ignored_layers=[head])
        pruner.step()
        return pruned

    return timed(run)


def tp_worker(spec: ModelSpec, threads: int, conn: Connection) -> None:
    """Worker process: build the model once, then answer each request with one attempt."""
    quiet()
    torch.set_num_threads(threads)
    from prunecli.cost import count_macs
    from prunecli.models.registry import classifier_name

    try:
        model, x = build(spec), example_input(spec)
        with torch.no_grad():
            expected = tuple(output_tensor(model(x)).shape)
        classifier = classifier_name(model)
        conn.send({"ready": True})
    except Exception as exc:  # reported, not raised
        conn.send({"ready": False, "status": f"error: build: {first_line(exc)}"})
        return
    while conn.recv():
        try:
            pruned, seconds = tp_once(model, x, classifier)
            with torch.no_grad():
                shape = tuple(output_tensor(pruned(x)).shape)
            if shape != expected:
                conn.send({"status": f"bad output: shape {shape} != {expected}"})
                continue
            conn.send({"status": "ok", "seconds": seconds, "macs": count_macs(pruned, x)})
        except Exception as exc:
            conn.send({"status": f"error: {first_line(exc)}"})


class TPWorker:
    """Parent side of :func:`tp_worker`; ``attempt()`` times out after ``TP_TIMEOUT_S``."""

    def __init__(self, spec: ModelSpec, threads: int) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=tp_worker, args=(spec, threads, child), daemon=True)
        self.proc.start()
        child.close()
        reply = self._receive(TP_START_TIMEOUT_S)
        self.error = None if reply.get("ready") else reply.get("status", "error: no reply")

    def _receive(self, timeout: float) -> dict[str, Any]:
        if not self.conn.poll(timeout):
            self.close(kill=True)
            return {"status": f"hang (>{timeout:.0f} s)"}
        try:
            return self.conn.recv()
        except EOFError:
            self.proc.join(5)
            return {"status": f"error: worker died (exit code {self.proc.exitcode})"}

    def attempt(self) -> dict[str, Any]:
        self.conn.send(True)
        return self._receive(TP_TIMEOUT_S)

    def close(self, kill: bool = False) -> None:
        if self.proc.is_alive() and not kill:
            with contextlib.suppress(OSError, BrokenPipeError):
                self.conn.send(False)
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


# ----------------------------------------------------------------------------- one model
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


def tp_step(worker: TPWorker, result: TPResult) -> TPWorker | None:
    """One Torch-Pruning attempt; returns None (stop) after a failure or hang."""
    reply = worker.attempt()
    result.status = reply.get("status", "error: no reply")
    if result.status != "ok":
        result.times.clear()
        result.macs_after = None
        worker.close()
        return None
    result.times.append(reply["seconds"])
    result.macs_after = reply["macs"]
    return worker


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


# ----------------------------------------------------------------------------- report
def now() -> str:
    return dt.datetime.now().strftime("%Y-%m-%d %H:%M")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "torchvision", "timm", "torch-pruning"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def macs(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:,.1f}"


def short(text: str, width: int = 60) -> str:
    text = text.replace("op not understood: ", "op: ").replace("|", "/")
    return text if len(text) <= width else text[: width - 1] + "…"


# every model has one input group and one output group (the logits); not worth a note
EXPECTED_REASONS = {("model input", 1), ("reaches the model output", 1)}


def notes(rec: Record) -> str:
    parts = [f"unknown: {', '.join(rec.unknown_ops)}"] if rec.unknown_ops else []
    parts += [f"{short(r)} ×{n}" for r, n in rec.top_reasons if (r, n) not in EXPECTED_REASONS]
    return short("; ".join(parts), 200) if parts else ""


HEADER = ("| Model | Source | Kind | Input | Groups | Prunable | Prunable ch. | Prunable MACs "
          "| MACs M | MACs after M "
          "| Max rel diff | Output change | Trace s | Slim s | Trace+slim s | Status | TP "
          "| TP MACs after M | TP s | Not pruned because |")


def table_row(rec: Record) -> str:
    share = "-" if rec.prunable_share is None else f"{100 * rec.prunable_share:.0f}%"
    size = f"{rec.input[-1]}²"
    mac_share = "-" if rec.prunable_macs is None else f"{100 * rec.prunable_macs:.0f}%"
    cells = [rec.model, rec.source, rec.kind, size, fmt(rec.groups, "d"),
             fmt(rec.prunable_groups, "d"), share, mac_share, macs(rec.macs_before),
             macs(rec.macs_after), fmt(rec.max_rel_diff, ".1e"),
             fmt(rec.output_change, ".2f"),
             fmt(rec.trace_s, ".3f"), fmt(rec.slim_s, ".3f"), fmt(rec.total_s, ".3f"),
             short(rec.status, 80), short(rec.tp.status, 80), macs(rec.tp.macs_after),
             fmt(rec.tp.seconds, ".3f"), notes(rec)]
    return "| " + " | ".join(cells) + " |"


def summary(records: list[Record], with_tp: bool, repeats: int) -> list[str]:
    ok = sum(r.status == "ok" for r in records)
    lines = [f"- prunecli: **{ok}/{len(records)}** models slim exactly (masked == slimmed within "
             f"{TOLERANCE:g} relative, pruning changing the output)."]
    for kind, target in (("cnn", CNN_TARGET), ("transformer", TRANSFORMER_TARGET)):
        rows = [r for r in records if r.kind == kind]
        below = [f"{r.source}/{r.model} ({fmt(r.prunable_macs and 100 * r.prunable_macs, '.0f')}%)"
                 for r in rows if r.status != "ok" or (r.prunable_macs or 0) < target]
        lines.append(f"- {kind.upper() if kind == 'cnn' else 'Transformers'}: "
                     f"{len(rows) - len(below)}/{len(rows)} with at least {target:.0%} of their "
                     f"MACs prunable exactly" + (f"; below: {', '.join(below)}." if below else "."))
    none = [r.model for r in records if r.prunable_groups == 0]
    if none:
        lines.append(f"- Nothing prunable: {', '.join(none)}.")
    if with_tp:
        tp_ok = sum(r.tp.status == "ok" for r in records)
        lines.append(f"- Torch-Pruning: {tp_ok}/{len(records)} models pruned with a working "
                     "forward pass.")
    r50 = next((r for r in records if r.model == "resnet50" and r.source == "torchvision"), None)
    if r50 is not None:
        lines.append(f"- ResNet-50 trace+slim (median of {repeats}): prunecli "
                     f"{fmt(r50.total_s, '.3f')} s vs Torch-Pruning {fmt(r50.tp.seconds, '.3f')} s "
                     "(deep copy + dependency graph + step).")
    return lines


DESCRIPTION = (
    "Random init, eval mode, batch 1. A random keep-set removes {removed}% of every prunable "
    "group. *Max rel diff*: masked original vs slimmed copy, max |diff| / max |masked| (pass: "
    "<= {tol}). *Output change*: the same between the unpruned and the slimmed model; it must "
    "not be ~0 (< {change}: *void*), or the check proves nothing, so norm affines, "
    "constant-initialised per-channel parameters (zero-init last BN, layer scale) and BN "
    "statistics are randomised / re-estimated first. Times are medians of {repeats} runs, "
    "prunecli and Torch-Pruning interleaved (TP: BasePruner, L1 magnitude, ratio 0.3, "
    "classifier ignored; deep copy + dependency graph + step). *Prunable ch.*: share of all "
    "channels (logits included) in prunable groups. *Prunable MACs*: share of the conv/linear "
    "MACs in layers that read or write a prunable group (their cost shrinks with pruning). "
    "*Not pruned because*: ops prunecli did not "
    "understand and the most common reasons groups stay unpruned (the model input and the "
    "logits, unprunable in every model, are left out). Generated by "
    "`python benchmarks/coverage.py`."
)


def load_previous(path: Path) -> tuple[dict[str, Any], list[Record]]:
    """Meta and rows of an earlier ``coverage.json`` (empty if there is no such file)."""
    if not path.exists():
        return {}, []
    data = json.loads(path.read_text(encoding="utf-8"))
    records = []
    for row in data["models"]:
        tp = TPResult(**row.pop("tp"))
        records.append(Record(**row, tp=tp))
    return data["meta"], records


def merge(old: list[Record], new: list[Record]) -> list[Record]:
    """``old`` with the rows of ``new`` replacing same-model rows, in the order of MODELS."""
    rows = {(r.source, r.model): r for r in old} | {(r.source, r.model): r for r in new}
    order = [(s.source, s.name) for s in MODELS]
    return sorted(rows.values(), key=lambda r: order.index((r.source, r.model))
                  if (r.source, r.model) in order else len(order))


def write_reports(records: list[Record], meta: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    v = meta["versions"]
    when = meta["date"]
    if meta.get("remeasured"):
        when += f" (re-measured later with --merge: {', '.join(meta['remeasured'])})"
    lines = [
        "# Channel-structure coverage",
        "",
        f"{when} · torch {v['torch']} · torchvision {v['torchvision']} · timm {v['timm']}"
        f" · torch-pruning {v['torch-pruning']} · {meta['threads']} CPU threads ({meta['cpu']})",
        "",
        DESCRIPTION.format(removed=f"{100 * (1 - KEEP_RATIO):.0f}", tol=f"{TOLERANCE:g}",
                           change=f"{MIN_CHANGE:g}", repeats=meta["repeats"]),
        "",
        *summary(records, meta["torch_pruning"], meta["repeats"]),
        "",
        HEADER,
        "|" + "---|" * HEADER.count(" | ") + "---|",
        *(table_row(r) for r in records),
        "",
    ]
    (out / "coverage.md").write_text("\n".join(lines), encoding="utf-8")
    payload = {"meta": meta, "models": [asdict(r) for r in records]}
    (out / "coverage.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- main
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
