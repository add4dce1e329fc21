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
6. peak memory and step time of masked vs plain training (the cost of the channel masks);
7. the detection demo's ssd_tiny pruned by Taylor to 50% with distillation (boxes and class
   scores' KD measured; an untrained teacher), in the run's precision and channels_last: budget
   met, slim exact, mAP and the distillation terms finite.

A failing check never stops the others: its error (the end of stderr) is recorded. The training
runs of checks 1-3 and 7 run ``--jobs`` at a time (they share the GPU, so their wall times are not
single-run figures); lut, bench and the mask timing run alone. A command that would start
after ``--budget`` seconds fails as "not run", and one still running then is stopped. Writes
``gpu.md`` and ``gpu.json`` to ``--out``; the exit status is 1 if any check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check_checks import bench_check, lut_check, mask_check, training_checks  # noqa: E402
from gpu_check_core import FAIL, GPU, PASS, TINY, Check, Runner  # noqa: E402


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
    guarded((1, 2, 3, 7), "training runs (checks 1-3, 7)",
            lambda: training_checks(profile, args, run))
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
