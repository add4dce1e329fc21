"""One command that exercises prunecli's CUDA paths and writes what happened.

    python benchmarks/gpu_check.py                          # on a machine with a GPU (<8 min)
    python benchmarks/gpu_check.py --device cpu --tiny      # the same checks, small, on the CPU

Run from the repository root (``--out`` defaults to benchmarks/results, ``--runs`` to the
git-ignored benchmarks/runs_gpu). ``--tiny`` is ResNet-20 at 32x32 for 12 steps: fp16 rows are
skipped (fp16 needs CUDA), DDP uses gloo with 2 processes, the lut and mask timings run in fp32
(bf16 autocast is ~10x slower on a CPU without AMX) and the compile bench is skipped.

No CUDA path had ever run when this was written, so every check is a real ``prunecli``
subprocess (``python -m prunecli ...``; results read from its ``results.json`` / ``bench.json``)
except the mask-overhead timing, which uses the library API in this process:

1. the six methods on ResNet-50 at 224 (fake data), fp16 and bf16, channels_last, cost.ratio=0.5:
   budget met (|cost_kept - target| <= 0.01), slim exact (``slim_max_diff`` < 1e-3), wall time;
2. ``method.slim_when_final=true`` (taylor) with distillation (``distill.enabled=true``, the
   teacher an untrained copy saved as ``model.weights``: the teacher's CUDA path and timing, not
   its accuracy): the swap happened (``slimmed_at_step``), budget met, teacher time reported;
3. ``torchrun --standalone`` with 1 process (2 when there are 2 GPUs, or on the CPU with gloo);
4. ``prunecli lut`` on a coarse grid with ``check=true``: the table's error on slimmed models;
5. ``prunecli bench`` dense vs a 50%-MACs slim.pt from check 1 (fp16, bf16, channels_last, one
   ``compile=true``): measured speed-up against MACs speed-up;
6. peak memory and step time of masked vs plain training (the cost of the channel masks).

A failing check never stops the others: its error (the end of stderr) is recorded. The training
runs of checks 1-3 run ``--jobs`` at a time (they share the GPU, so their wall times are not
single-run figures); lut, bench and the mask timing run alone. A command that would start
after ``--budget`` seconds fails as "not run", and one still running then is stopped. Writes
``gpu.md`` and ``gpu.json`` to ``--out``; the exit status is 1 if any check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

METHODS = ("taylor", "slimming", "halp", "smcp", "gator", "chex")
PASS, FAIL, SKIP = "pass", "FAIL", "skipped"


@dataclass
class Profile:
    """Sizes of one mode: ResNet-50 at 224 on a GPU, or ResNet-20 at 32 on the CPU (--tiny)."""

    model: list[str]
    data: list[str]
    epochs: int
    steps_per_epoch: int
    lut: list[str]
    bench_batches: list[int]
    bench_extra: list[str]
    compile_batches: list[int] | None  # None: the compile check is skipped
    mask: dict[str, Any]


GPU = Profile(
    model=["model=resnet50"],
    data=["data=fake", "data.image_size=224", "data.num_classes=1000", "data.train_size=7680",
          "data.val_size=256", "data.batch_size=64"],
    epochs=2, steps_per_epoch=120,
    lut=["model=resnet50", "batch_size=64", "dtype=fp16", "channels_last=true", "step=256",
         "warmup=2", "repeats=5", "rounds=1", "check_repeats=10"],
    bench_batches=[1, 64, 256], bench_extra=[], compile_batches=[64],
    mask={"name": "resnet50", "source": "torchvision", "classes": 1000, "size": 224, "batch": 64,
          "steps": 30, "warmup": 3, "precision": "bf16"})
TINY = Profile(
    model=["model=resnet20"],
    data=["data=fake", "data.image_size=32", "data.num_classes=10", "data.train_size=32",
          "data.val_size=16", "data.batch_size=8"],
    epochs=3, steps_per_epoch=4,
    lut=["model=resnet20", "input_size=[3,32,32]", "num_classes=10", "batch_size=8",
         "dtype=fp32", "step=32", "warmup=1", "repeats=3", "rounds=1", "check_repeats=5",
         "threads=1"],
    bench_batches=[1, 8], bench_extra=["warmup=3", "repeats=10", "threads=1"],
    compile_batches=None,
    mask={"name": "resnet20", "source": "prunecli", "classes": 10, "size": 32, "batch": 16,
          "steps": 5, "warmup": 1, "precision": "fp32"})


def schedule(method: str, total: int) -> list[str]:
    """Each method's pruning squeezed into the first half of a ``total``-step run, as
    benchmarks/methods.py (SCHEDULES) and tests/test_slim_training.py (METHODS) do; the rest
    fine-tunes, so masks are final (and slim_when_final can swap) well before the end."""
    every = max(1, total // 24)
    return {
        "taylor": [f"method.prune_every={every}", "method.remove_per_step=0",
                   "method.finish_at=0.5"],
        "slimming": ["method.sparsity=1e-4", "method.prune_at=0.5"],
        "halp": [f"method.prune_every={every}",
                 f"method.prune_steps={max(2, min(10, int(0.4 * total) // every))}",
                 "method.group_size=4"],
        "smcp": ["method.warmup_epochs=0.1", "method.ramp_epochs=0.4",
                 "method.cooldown_epochs=0.5", f"method.prune_every={every}"],
        "gator": ["method.gate_init_prob=0.6", "method.criteria_weight=5",
                  f"method.sync_every={every}", "method.gate_epochs=0.5"],
        "chex": ["method.update_every=0.1", "method.t_max=0.5"],
    }[method]


@dataclass
class Run:
    """One finished subprocess: its command line, exit status, time and what it wrote."""

    cmd: list[str]
    rc: int | None = None
    seconds: float = 0.0
    error: str | None = None
    results: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)  # logged warnings: a bug may pass rc 0

    @property
    def line(self) -> str:
        short = {sys.executable: "python", str(Path(sys.executable).parent / "torchrun"):
                 "torchrun"}
        return shlex.join([short.get(c, c) for c in self.cmd])


@dataclass
class Check:
    num: int
    title: str
    columns: list[tuple[str, str, str]]  # header, row key, format spec
    rows: list[dict[str, Any]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    status: str = PASS

    def add(self, run: Run, row: dict[str, Any], ok: bool, label: str) -> None:
        """A row for ``run``: pass if it exited 0, wrote results and ``ok`` holds."""
        self.commands.append(run.line)
        self.warned(run, label)
        good = run.rc == 0 and run.results is not None and ok
        row["status"] = PASS if good else FAIL
        if not good:
            self.errors.append(f"{label}: {run.error or 'ran, but the criteria were not met'}")
        self.rows.append(row)

    def warned(self, run: Run, label: str) -> None:
        self.notes.extend(f"{label} warned: {w}" for w in run.warnings)

    def merge(self, other: Check) -> Check:
        """One report section from two parts of the same check (bench, then bench compile)."""
        self.columns = self.columns or other.columns
        for name in ("rows", "commands", "errors", "notes"):
            getattr(self, name).extend(getattr(other, name))
        return self

    def finish(self) -> Check:
        states = {r.get("status", PASS) for r in self.rows} or {FAIL}
        self.status = FAIL if self.errors or FAIL in states else \
            SKIP if states == {SKIP} else PASS
        return self


class Runner:
    """Runs prunecli subprocesses under a per-command timeout and an overall time budget."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.t0 = args, time.monotonic()
        threads = "1" if args.device == "cpu" else "2"
        self.env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1",
                    "COLUMNS": "160"}

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.t0)

    def __call__(self, cmd: list[str], run_dir: Path, result_file: str | None = None) -> Run:
        run = Run(cmd)
        timeout = min(self.args.timeout, self.left())
        if timeout < 5:
            run.error = "not run: the time budget (--budget) was spent"
            return run
        shutil.rmtree(run_dir, ignore_errors=True)
        t = time.monotonic()
        # own session: a timeout kills torchrun's workers too, and nothing else
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            run.error = f"timed out after {timeout:.0f} s | "
        run.rc, run.seconds = proc.returncode, round(time.monotonic() - t, 1)
        lines = [ln.strip() for ln in (out + "\n" + err).splitlines()]
        run.warnings = list(dict.fromkeys(ln[:300] for ln in lines if "WARNING" in ln
                                          or "Warning:" in ln))[:3]
        if run.rc != 0:
            tail = [ln.strip() for ln in (err.strip() or out.strip()).splitlines() if ln.strip()]
            run.error = (run.error or f"exit {run.rc} | ") + " | ".join(tail[-6:])
        path = run_dir / (result_file or "results.json")
        if run.rc == 0 and path.is_file():
            run.results = json.loads(path.read_text())
        elif run.rc == 0:
            run.error = f"exit 0 but no {path.name}"
        return run


def train_cmd(p: Profile, device: str, extra: list[str], run_dir: Path) -> list[str]:
    workers = 0 if device == "cpu" else max(2, (os.cpu_count() or 8) // 4 - 1)
    return [*p.model, *p.data, f"data.num_workers={workers}", f"trainer.device={device}",
            f"trainer.epochs={p.epochs}", "trainer.channels_last=true", "trainer.progress=false",
            f"trainer.threads={1 if device == 'cpu' else 2}", "optim.lr=0.01", "cost.ratio=0.5",
            *extra, f"hydra.run.dir={run_dir}"]


def save_teacher(p: Profile, path: Path) -> Path:
    """A freshly built model of the profile, saved as a state_dict to serve as ``model.weights``
    (and so as the distillation teacher) of the slim_when_final run."""
    from prunecli.models import build_model

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model({"name": p.mask["name"], "source": p.mask["source"]},
                        num_classes=p.mask["classes"], in_chans=3)
    torch.save(model.state_dict(), path)
    return path


def budget_ok(r: dict[str, Any]) -> bool:
    return abs(r["cost_kept"] - r["cost_target"]) <= 0.01


def training_checks(p: Profile, args: argparse.Namespace, run: Runner) -> list[Check]:
    """Checks 1-3: every training subprocess goes into one pool of ``--jobs`` workers."""
    total = p.epochs * p.steps_per_epoch
    precisions = ("fp16", "bf16")
    main_prec = "fp16" if args.device == "cuda" else "bf16"
    py = [sys.executable, "-m", "prunecli", "train"]
    jobs: dict[str, tuple[list[str], Path]] = {}
    later: dict[str, tuple[list[str], Path]] = {}  # the other precision: last, if time is short
    for prec in precisions:
        for m in METHODS:
            if prec == "fp16" and args.device == "cpu":
                continue
            d = args.runs / f"{m}_{prec}"
            (jobs if prec == main_prec else later)[f"{m}_{prec}"] = (py + train_cmd(
                p, args.device, [f"method={m}", f"trainer.precision={prec}",
                                 *schedule(m, total)], d), d)
    d = args.runs / "taylor_swf"
    teacher = save_teacher(p, args.runs / "teacher.pt")
    jobs["swf"] = (py + train_cmd(p, args.device, [
        "method=taylor", f"trainer.precision={main_prec}", "method.slim_when_final=true",
        "distill.enabled=true", f"model.weights={teacher}", *schedule("taylor", total)], d), d)
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    nprocs = [1, 2] if args.device == "cpu" or gpus >= 2 else [1]
    torchrun = Path(sys.executable).parent / "torchrun"
    launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m",
                                                          "torch.distributed.run"]
    for n in nprocs:
        d = args.runs / f"ddp_{n}"
        jobs[f"ddp_{n}"] = (launcher + ["--standalone", f"--nproc_per_node={n}", "-m",
                                        "prunecli", "train"] + train_cmd(
            p, args.device, ["method=taylor", f"trainer.precision={main_prec}",
                             *schedule("taylor", total)], d), d)
    jobs.update(later)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {k: pool.submit(run, cmd, d) for k, (cmd, d) in jobs.items()}
        runs = {k: f.result() for k, f in futures.items()}

    c1 = Check(1, f"Six methods, {total} steps, cost.ratio=0.5, channels_last", [
        ("method", "name", ""), ("precision", "precision", ""), ("status", "status", ""),
        ("cost kept", "cost_kept", ".4f"), ("target", "cost_target", ".2f"),
        ("slim_max_diff", "slim_max_diff", ".2e"), ("MACs kept", "macs_kept", ".3f"),
        ("prune events", "prune_events", ""), ("top-1", "top1", ".2f"),
        ("slim top-1", "slim_top1", ".2f"), ("train s", "train_time_s", ".1f"),
        ("wall s", "wall_time_s", ".1f"), ("process s", "process_s", ".1f")])
    for m in METHODS:
        for prec in precisions:
            row: dict[str, Any] = {"name": m, "precision": prec}
            if f"{m}_{prec}" not in runs:
                c1.rows.append({**row, "status": SKIP, "note": "fp16 needs CUDA: skipped on CPU"})
                continue
            r = runs[f"{m}_{prec}"]
            res, row["process_s"] = r.results or {}, r.seconds
            if res:
                row.update({k: res.get(k) for k in ("cost_kept", "cost_target", "slim_max_diff",
                                                    "prune_events", "top1", "slim_top1",
                                                    "train_time_s", "wall_time_s", "slim_model")})
                row["macs_kept"] = res["macs"] / res["dense_macs"]
            c1.add(r, row, bool(res) and budget_ok(res) and res.get("slim_max_diff") is not None
                   and res["slim_max_diff"] < 1e-3 and bool(res.get("slim_model")),
                   f"{m} {prec}")
    c1.notes.append("slim_max_diff is what the trainer reports (prunecli/methods/base.py "
                    "_check_equal): max|masked - slim| / max|masked| of the logits in eval mode, "
                    "fp32 weights and no autocast (on CUDA with cuDNN's TF32 default), whatever "
                    "trainer.precision was; the run itself fails above 1e-3.")
    if args.jobs > 1:
        c1.notes.append(f"{args.jobs} training runs shared the device at a time: wall times "
                        "are not single-run figures.")

    c2 = Check(2, "method.slim_when_final=true (taylor), distilled", [
        ("method", "name", ""), ("precision", "precision", ""), ("status", "status", ""),
        ("slimmed at step", "slimmed_at_step", ""), ("of steps", "steps", ""),
        ("cost kept", "cost_kept", ".4f"), ("slim_max_diff", "slim_max_diff", ".2e"),
        ("teacher ms/batch", "teacher_ms", ".1f"), ("teacher share", "teacher_share", ".3f"),
        ("train s", "train_time_s", ".1f"), ("masked run train s", "masked_train_s", ".1f")])
    r, res = runs["swf"], runs["swf"].results or {}
    masked = runs.get(f"taylor_{main_prec}")
    kd = res.get("distill") or {}
    row = {"name": "taylor", "precision": main_prec, "steps": total,
           **{k: res.get(k) for k in ("slimmed_at_step", "cost_kept", "slim_max_diff",
                                      "train_time_s")},
           "teacher_ms": kd.get("teacher_ms_per_batch"),
           "teacher_share": kd.get("teacher_share_of_train_time"),
           "masked_train_s": (masked.results or {}).get("train_time_s") if masked else None}
    c2.add(r, row, bool(res) and res.get("slimmed_at_step") is not None and budget_ok(res)
           and (kd.get("teacher_ms_per_batch") or 0) > 0, "taylor slim_when_final distilled")
    c2.notes.append("The masked run trains without a teacher: its time is not the swap's saving "
                    "alone (the distilled run also runs a teacher forward per batch).")

    c3 = Check(3, "torchrun --standalone (DDP)", [
        ("processes", "nproc", ""), ("backend", "backend", ""), ("status", "status", ""),
        ("world_size", "world_size", ""), ("device", "device", ""),
        ("cost kept", "cost_kept", ".4f"), ("wall s", "wall_time_s", ".1f")])
    for n in nprocs:
        r, res = runs[f"ddp_{n}"], runs[f"ddp_{n}"].results or {}
        backend = "none (1 process)" if n == 1 else ("nccl" if args.device == "cuda" else "gloo")
        c3.add(r, {"name": f"nproc {n}", "nproc": n, "backend": backend,
                   **{k: res.get(k) for k in ("world_size", "device", "cost_kept",
                                              "wall_time_s")}},
               bool(res) and res.get("world_size") == n and budget_ok(res), f"nproc {n}")
    c3.notes.append("With one process WORLD_SIZE=1 and prunecli/engine/distributed.py "
                    "init_distributed creates no process group: nccl is exercised only with 2+ "
                    "GPUs (one GPU cannot host two nccl ranks).")
    if args.device == "cuda" and gpus < 2:
        c3.notes.append(f"{gpus} GPU(s) here: the 2-process nccl run was not possible.")
    return [c1.finish(), c2.finish(), c3.finish()]


def lut_check(p: Profile, args: argparse.Namespace, run: Runner) -> Check:
    """Check 4: a coarse latency table and its prediction error on random slimmed models (the
    rows ``check_table`` stores under the table's ``models[...]["check"]``)."""
    c = Check(4, "prunecli lut (coarse grid, check=true)", [
        ("model", "name", ""), ("kept %", "keep_pct", ".0f"), ("MACs %", "macs_pct", ".1f"),
        ("predicted ms", "predicted_ms", ".3f"), ("measured ms", "measured_ms", ".3f"),
        ("error %", "error_pct", "+.1f")])
    d, table = args.runs / "lut", args.runs / "lut" / "lut.json"
    r = run([sys.executable, "-m", "prunecli", "lut", *p.lut, f"device={args.device}",
             "check=true", "resume=false", f"out={table}", f"hydra.run.dir={d}"], d, "lut.json")
    entries = [e for e in (r.results or {}).get("models", {}).values() if "check" in e]
    c.commands.append(r.line)
    c.warned(r, "lut")
    if r.rc != 0 or not entries:
        c.errors.append(r.error or "no check rows in the table file")
        return c.finish()
    e = entries[0]
    for row in e["check"]:
        c.rows.append({**row, "keep_pct": 100 * row["keep"], "macs_pct": 100 * row["macs_ratio"],
                       "status": PASS})
    from prunecli.cost.latency_table import LatencyTable

    c.notes.append(f"{LatencyTable.load(table).measured_points} grid points, {r.seconds:.0f} s "
                   "in all (table, calibration and check); slimmed models: mean |error| "
                   f"{e.get('check_mean_abs_error_pct', float('nan')):.1f} %, max "
                   f"{e.get('check_max_abs_error_pct', float('nan')):.1f} %")
    return c.finish()


def bench_check(p: Profile, args: argparse.Namespace, run: Runner, slim_pt: str | None,
                compiled: bool) -> Check:
    """Check 5: dense vs the slim model per dtype and batch (``compiled``: the one
    torch.compile run, kept apart so that it goes last: it is the slowest and least vital)."""
    c = Check(5, "prunecli bench: dense vs 50%-MACs slim (channels_last)", [
        ("dtype", "dtype", ""), ("compile", "compile", ""), ("batch", "batch", ""),
        ("model", "model", ""), ("median ms", "median_ms", ".3f"),
        ("img/s", "images_per_s", ".0f"), ("speed-up", "speedup", ".2f"),
        ("MACs speed-up", "macs_speedup", ".2f"), ("delivered", "delivered", ".0%"),
        ("status", "status", "")])
    if slim_pt is None:
        c.errors.append("no slim.pt from check 1 met its budget")
        return c.finish()
    variants = [(dt_, False, p.bench_batches) for dt_ in ("fp16", "bf16")]
    if compiled:
        variants = [("fp16" if args.device == "cuda" else "bf16", True, p.compile_batches)]
    else:
        c.notes.append(f"slim model: {slim_pt}")
    for dtype, comp, batches in variants:
        base = {"dtype": dtype, "compile": comp, "name": f"{dtype}{' compile' if comp else ''}"}
        if (dtype == "fp16" and args.device == "cpu") or batches is None:
            why = "fp16 needs CUDA" if dtype == "fp16" else "torch.compile takes ~45 s " \
                "on 2 CPU cores"
            c.rows.append({**base, "status": SKIP, "model": f"skipped on CPU: {why}"})
            continue
        d = args.runs / f"bench_{dtype}{'_compile' if comp else ''}"
        r = run([sys.executable, "-m", "prunecli", "bench", f"ckpt={slim_pt}",
                 f"device={args.device}", f"dtype={dtype}", "channels_last=true",
                 f"compile={str(comp).lower()}", f"batch_sizes=[{','.join(map(str, batches))}]",
                 *p.bench_extra, f"hydra.run.dir={d}"], d, "bench.json")
        rows = (r.results or {}).get("rows", [])
        seen = {(x["batch"], x["model"]) for x in rows}
        ok = r.rc == 0 and all((b, m) in seen for b in batches for m in ("dense", "slim"))
        c.commands.append(r.line)
        c.warned(r, f"bench {base['name']}")
        for x in rows or [{}]:
            c.rows.append({**base, **x, "status": PASS if ok else FAIL})
        if not ok:
            c.errors.append(f"{base['name']}: {r.error or 'rows missing in bench.json'}")
    return c.finish()


def mask_check(p: Profile, device: str) -> Check:
    """Check 6: in-process, plain vs masked (random 50% keep) training steps, interleaved;
    CUDA events and peak allocated memory on a GPU, perf_counter on the CPU."""
    from prunecli.models import build_model
    from prunecli.structure import ChannelMasker, random_keep, trace_structure

    m = p.mask
    c = Check(6, f"Channel masks: {m['name']} training step, plain vs masked "
                 f"(batch {m['batch']}, {m['precision']}, channels_last)", [
        ("model", "name", ""), ("median step ms", "median_ms", ".2f"),
        ("min step ms", "min_ms", ".2f"), ("time vs plain", "time_ratio", ".3f"),
        ("peak step MiB", "peak_mib", ".0f"), ("memory vs plain", "mem_ratio", ".3f"),
        ("param MiB", "param_mib", ".1f"), ("status", "status", "")])
    dev, cuda = torch.device(device), device == "cuda"
    fmt = torch.channels_last
    torch.manual_seed(0)
    plain = build_model({"name": m["name"], "source": m["source"]}, num_classes=m["classes"],
                        in_chans=3).to(dev, memory_format=fmt).train()
    masked = copy.deepcopy(plain)
    shape = (3, m["size"], m["size"])
    structure = trace_structure(masked, torch.randn(1, *shape, device=dev))
    masker = ChannelMasker(masked, structure)
    masker.set_keep(random_keep(structure, 0.5, torch.Generator().manual_seed(0)))
    on = sum(not mask.full for mask in masker.masks.values())
    x = torch.randn(m["batch"], *shape, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, m["classes"], (m["batch"],), device=dev)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(m["precision"])

    def stepper(model: torch.nn.Module) -> Callable[[], None]:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step() -> None:
            with torch.autocast(dev.type, dtype=amp) if amp else contextlib.nullcontext():
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    steps = {"plain": stepper(plain), "masked": stepper(masked)}
    times: dict[str, list[float]] = {k: [] for k in steps}
    bench_flag = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cuda  # as the trainer runs on CUDA
    peaks: dict[str, int] = dict.fromkeys(steps, 0)
    for i in range(m["warmup"] + m["steps"]):
        for name in (list(steps) if i % 2 == 0 else list(steps)[::-1]):  # ABBA order
            if cuda:
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                before = torch.cuda.memory_allocated(dev)
                start, end = torch.cuda.Event(enable_timing=True), \
                    torch.cuda.Event(enable_timing=True)
                start.record()
                steps[name]()
                end.record()
                end.synchronize()
                ms = start.elapsed_time(end)
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(dev) - before)
            else:
                t0 = time.perf_counter()
                steps[name]()
                ms = 1000 * (time.perf_counter() - t0)
            if i >= m["warmup"]:
                times[name].append(ms)
    torch.backends.cudnn.benchmark = bench_flag
    for name, model in (("plain", plain), ("masked", masked)):
        med = statistics.median(times[name])
        c.rows.append({
            "name": name, "median_ms": med, "min_ms": min(times[name]),
            "time_ratio": med / statistics.median(times["plain"]),
            "peak_mib": peaks[name] / 2**20 if cuda else "n/a",
            "mem_ratio": peaks[name] / max(1, peaks["plain"]) if cuda else "n/a",
            "param_mib": sum(t.numel() * t.element_size() for t in model.parameters()) / 2**20,
            "status": PASS if on and math.isfinite(med) else FAIL})
    if not on:
        c.errors.append("no layer was masked: the random keep-set left every mask full")
    c.notes.append(f"{on} of {len(masker.masks)} consumer layers masked (random 50% keep); "
                   f"{m['steps']} timed steps each after {m['warmup']} warm-up, interleaved; "
                   + ("CUDA events; peak step MiB = max_memory_allocated during a step minus "
                      "what was allocated before it (activations, gradients, masked weights)."
                      if cuda else "perf_counter on the CPU; memory n/a."))
    del plain, masked, steps
    if cuda:
        torch.cuda.empty_cache()
    return c.finish()


def environment(args: argparse.Namespace) -> dict[str, Any]:
    env: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "cpus": os.cpu_count(),
        "platform": platform.platform(), "device": args.device, "tiny": args.tiny,
        "command": shlex.join(["python", *sys.argv])}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        env["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, timeout=10).stdout.strip()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(),
                   gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}")
        with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
    return env


def _fmt(v: Any, spec: str) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and spec:
        return format(v, spec)
    return str(v).replace("|", "/")


def markdown(checks: list[Check], env: dict[str, Any], seconds: float) -> str:
    n_ok = sum(c.status == PASS for c in checks)
    gpu = f"{env.get('gpu')} x{env.get('gpus')} ({env.get('gpu_memory_gib')} GiB, sm " \
          f"{env.get('capability')}, driver {env.get('driver', '?')})" if "gpu" in env else "none"
    out = [f"# prunecli GPU check ({'CPU tiny mode' if env['tiny'] else env['device']})", "",
           f"`{env['command']}` · {env['date']} · git {env.get('git', '?')} · "
           f"{seconds:.0f} s in all · **{n_ok}/{len(checks)} checks passed**", "",
           f"- torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, Python "
           f"{env['python']}, {env['cpus']} CPUs, {env['platform']}", f"- GPU: {gpu}", ""]
    for c in sorted(checks, key=lambda c: c.num):
        out += [f"## {c.num}. {c.title}: {c.status}", ""]
        if c.rows:
            out.append("| " + " | ".join(h for h, _, _ in c.columns) + " |")
            out.append("|---" * len(c.columns) + "|")
            for r in c.rows:
                out.append("| " + " | ".join(_fmt(r.get(k), f) for _, k, f in c.columns) + " |")
            out.append("")
        notes = c.notes + [r["note"] for r in c.rows if r.get("note")]
        out += [f"- {n}" for n in dict.fromkeys(notes)]
        out += [f"- error: {e}" for e in dict.fromkeys(c.errors)]
        if c.commands:
            out += ["", "```", *c.commands, "```"]
        out.append("")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--tiny", action="store_true", help="ResNet-20 at 32x32, a few steps")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--runs", type=Path, default=Path("benchmarks/runs_gpu"))
    ap.add_argument("--timeout", type=float, default=300, help="seconds per subprocess")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds after which no new check starts (default 460; tiny 600)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="training runs at a time (default 3 on CUDA, 1 on the CPU)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False (use --device cpu --tiny)")
    args.budget = args.budget or (600 if args.tiny else 460)
    args.jobs = args.jobs or (3 if args.device == "cuda" else 1)
    args.runs = args.runs.resolve()
    profile = TINY if args.tiny else GPU
    run = Runner(args)
    env = environment(args)
    checks: list[Check] = []

    def guarded(nums: tuple[int, ...], title: str, fn: Callable[[], Check | list[Check]]
                ) -> None:
        """A check that raises is recorded as failed (each of ``nums``); the others go on."""
        before = len(checks)
        try:
            got = fn()
            checks.extend(got if isinstance(got, list) else [got])
        except Exception as e:  # noqa: BLE001 - any failure is a result here
            checks.extend(Check(n, title, [], errors=[f"{type(e).__name__}: {e}"]).finish()
                          for n in nums)
        print(f"[{time.monotonic() - run.t0:5.0f} s] {title}: "
              f"{', '.join(c.status for c in checks[before:])}", flush=True)

    guarded((6,), "channel masks", lambda: mask_check(profile, args.device))
    if args.device == "cuda":  # hand the memory to the training subprocesses, even after a fail
        torch.cuda.empty_cache()
    guarded((1, 2, 3), "training runs (checks 1-3)", lambda: training_checks(profile, args, run))
    slim_pt = None
    main_prec = "fp16" if args.device == "cuda" else "bf16"
    c1 = next((c for c in checks if c.num == 1 and c.rows), None)
    if c1 is not None:
        good = sorted((r for r in c1.rows if r["status"] == PASS),
                      key=lambda r: (r["name"] != "taylor", r["precision"] != main_prec))
        slim_pt = good[0]["slim_model"] if good else None
    guarded((5,), "bench", lambda: bench_check(profile, args, run, slim_pt, False))
    guarded((4,), "lut", lambda: lut_check(profile, args, run))
    guarded((5,), "bench compile", lambda: bench_check(profile, args, run, slim_pt, True))
    fives = [c for c in checks if c.num == 5]
    checks = [c for c in checks if c.num != 5] + [fives[0].merge(fives[1]).finish()]
    seconds = time.monotonic() - run.t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.md").write_text(markdown(checks, env, seconds))
    payload = {"environment": env, "seconds": round(seconds, 1),
               "passed": all(c.status != FAIL for c in checks),
               "checks": [asdict(c) for c in sorted(checks, key=lambda c: c.num)]}
    (args.out / "gpu.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print(f"wrote {args.out / 'gpu.md'} and gpu.json: "
          f"{'all passed' if payload['passed'] else 'FAILED'} in {seconds:.0f} s", flush=True)
    return 0 if payload["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
