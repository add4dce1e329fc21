"""Torch-Pruning, the coverage benchmark's reference: one worker process per model, so that a
hang is cut off (``TP_TIMEOUT_S``) instead of stopping the benchmark."""

from __future__ import annotations

import contextlib
import copy
import multiprocessing as mp
from multiprocessing.connection import Connection
from typing import Any

import torch
from coverage_models import (
    KEEP_RATIO,
    ModelSpec,
    build,
    example_input,
    first_line,
    output_tensor,
    quiet,
    timed,
)
from coverage_report import TPResult
from torch import nn

TP_TIMEOUT_S = 120.0
TP_START_TIMEOUT_S = 600.0  # worker start: imports + building the model


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
