"""The checks of benchmarks/gpu_check.py: training runs (checks 1-3 and the detector, 7), lut
(4), bench (5) and the channel masks' overhead (6)."""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from gpu_check_core import (
    FAIL,
    METHODS,
    PASS,
    SKIP,
    Check,
    Profile,
    Runner,
    budget_ok,
    save_teacher,
    schedule,
    train_cmd,
)


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
    d = args.runs / "detector"
    det_teacher = save_teacher(p, args.runs / "det_teacher.pt", detector=True)
    jobs["det"] = (py + train_cmd(p, args.device, [
        "method=taylor", f"trainer.precision={main_prec}", "distill.enabled=true",
        f"model.weights={det_teacher}", *schedule("taylor", p.detect_steps)], d,
        setup=["experiment=detect_demo", *p.detect], epochs=2), d)
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
    det_eval = eval_against_run(args, run, jobs["det"][1], main_prec) if runs["det"].results \
        else None
    return [c1.finish(), c2.finish(), c3.finish(),
            detector_check(runs["det"], jobs["det"][1], main_prec, det_eval)]


def eval_against_run(args: argparse.Namespace, run: Runner, det_dir: Path, precision: str
                     ) -> Any:
    """``prunecli eval`` of check 7's slim.pt with its own (masked) run as ``baseline=``: both
    evaluated on the GPU in the run's precision; slimming is exact, so the change is ~0."""
    d = args.runs / "detector_eval"
    return run([sys.executable, "-m", "prunecli", "eval", f"ckpt={det_dir / 'slim.pt'}",
                f"baseline={det_dir}", f"trainer.device={args.device}",
                f"trainer.precision={precision}", "trainer.channels_last=true",
                "data.num_workers=0", f"hydra.run.dir={d}"], d)


def detector_check(r: Any, run_dir: Path, precision: str, evaluated: Any = None) -> Check:
    """Check 7: the detection demo's ssd_tiny pruned by Taylor to 50% of the core's MACs with
    box and class-score distillation, in the run's precision and channels_last: budget met,
    slim exact, mAP and both distillation terms finite; then ``prunecli eval`` of its slim.pt
    with the run as ``baseline=`` (``evaluated``): the change within 0.5 mAP points."""
    c = Check(7, "Detector (ssd_tiny, detection demo): taylor 50%, distilled, channels_last", [
        ("precision", "precision", ""), ("status", "status", ""),
        ("cost kept", "cost_kept", ".4f"), ("slim_max_diff", "slim_max_diff", ".2e"),
        ("mAP", "map", ".2f"), ("slim mAP", "slim_map", ".2f"), ("kd", "kd", ".4f"),
        ("box kd", "kd_box", ".4f"), ("teacher ms/batch", "teacher_ms", ".1f"),
        ("wall s", "wall_time_s", ".1f")])
    res = r.results or {}
    epochs = []
    with contextlib.suppress(OSError):
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        epochs = [e for e in map(json.loads, lines) if e.get("kind") == "epoch"]
    last = epochs[-1] if epochs else {}
    row = {"name": "ssd_tiny", "precision": precision,
           **{k: res.get(k) for k in ("cost_kept", "slim_max_diff", "map", "slim_map",
                                      "wall_time_s")},
           "kd": last.get("train_kd"), "kd_box": last.get("train_kd_box"),
           "teacher_ms": (res.get("distill") or {}).get("teacher_ms_per_batch")}
    finite = all(isinstance(row[k], float) and math.isfinite(row[k])
                 for k in ("map", "kd", "kd_box"))
    c.add(r, row, bool(res) and budget_ok(res) and finite and row["kd_box"] > 0
          and res.get("slim_max_diff") is not None and res["slim_max_diff"] < 1e-3,
          f"detector {precision}")
    if evaluated is not None:
        ev = evaluated.results or {}
        change = ev.get("change")
        c.add(evaluated, {"name": "eval slim.pt baseline=run", "precision": precision,
                          "status": "", "map": ev.get("map"), "slim_map": (ev.get("baseline")
                                                                           or {}).get("map"),
                          "wall_time_s": ev.get("wall_time_s")},
              isinstance(change, float) and abs(change) <= 0.5, "eval baseline=")
        c.notes.append(f"eval of slim.pt against its run (baseline=): change {change} mAP "
                       "(mAP column: slim.pt, slim mAP column: the run's masked model)")
    c.notes.append("The teacher is an untrained ssd_tiny (model.weights): this checks the "
                   "detection path (torchvision's losses, box distillation, slimming) in the "
                   "run's precision, not accuracy.")
    return c.finish()


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


