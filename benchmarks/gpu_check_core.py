"""What benchmarks/gpu_check.py is made of: its two profiles, a check's record, and the
runner that starts ``prunecli`` subprocesses under a time budget."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
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
    detect: list[str]  # check 7's data sizes: the embedded detection demo (ssd_tiny, 2 epochs)
    detect_steps: int  # its optimizer steps (train_size / batch_size * 2 epochs)


GPU = Profile(
    model=["model=resnet50"],
    data=["data=fake", "data.image_size=224", "data.num_classes=1000", "data.train_size=7680",
          "data.val_size=256", "data.batch_size=64"],
    epochs=2, steps_per_epoch=120,
    lut=["model=resnet50", "batch_size=64", "dtype=fp16", "channels_last=true", "step=256",
         "warmup=2", "repeats=5", "rounds=1", "check_repeats=10"],
    bench_batches=[1, 64, 256], bench_extra=[], compile_batches=[64],
    mask={"name": "resnet50", "source": "torchvision", "classes": 1000, "size": 224, "batch": 64,
          "steps": 30, "warmup": 3, "precision": "bf16"},
    detect=["data.train_size=2048", "data.val_size=256", "data.batch_size=64"], detect_steps=64)
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
          "steps": 5, "warmup": 1, "precision": "fp32"},
    detect=["data.train_size=32", "data.val_size=16", "data.batch_size=8"], detect_steps=8)


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
        if run.rc != 0:  # the end of both streams: a warning on stderr can hide where it stopped
            tails = [[ln.strip() for ln in text.splitlines() if ln.strip()][-3:]
                     for text in (out, err)]
            run.error = (run.error or f"exit {run.rc} | ") + " | ".join(tails[0] + tails[1])
        path = run_dir / (result_file or "results.json")
        if run.rc == 0 and path.is_file():
            run.results = json.loads(path.read_text())
        elif run.rc == 0:
            run.error = f"exit 0 but no {path.name}"
        return run


def train_cmd(p: Profile, device: str, extra: list[str], run_dir: Path,
              setup: list[str] | None = None, epochs: int | None = None) -> list[str]:
    """``setup`` replaces the profile's model and data (check 7's detector)."""
    workers = 0 if device == "cpu" else max(2, (os.cpu_count() or 8) // 4 - 1)
    return [*(setup if setup is not None else [*p.model, *p.data]),
            f"data.num_workers={workers}", f"trainer.device={device}",
            f"trainer.epochs={epochs or p.epochs}", "trainer.channels_last=true",
            "trainer.progress=false",
            f"trainer.threads={1 if device == 'cpu' else 2}", "optim.lr=0.01", "cost.ratio=0.5",
            *extra, f"hydra.run.dir={run_dir}"]


def save_teacher(p: Profile, path: Path, detector: bool = False) -> Path:
    """A freshly built model of the profile (``detector``: the demo's ssd_tiny for its 10
    classes), saved as a state_dict to serve as ``model.weights`` (and so as the distillation
    teacher) of the slim_when_final run or of check 7."""
    from prunecli.models import build_model

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if detector:
        model = build_model({"name": "ssd_tiny"}, num_classes=10, in_chans=3)
    else:
        model = build_model({"name": p.mask["name"], "source": p.mask["source"]},
                            num_classes=p.mask["classes"], in_chans=3)
    torch.save(model.state_dict(), path)
    return path


def budget_ok(r: dict[str, Any]) -> bool:
    return abs(r["cost_kept"] - r["cost_target"]) <= 0.01


