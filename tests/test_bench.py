"""`prunecli bench` and the timing helper (behaviour only: no timing thresholds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from prunecli.bench import prepare, time_interleaved
from prunecli.errors import ConfigError
from prunecli.models import build_model
from prunecli.structure import random_keep, save_slim, slim, trace_structure


def test_time_interleaved_reports_every_model() -> None:
    models = {"a": nn.Conv2d(3, 4, 3), "b": nn.Conv2d(3, 8, 3)}
    runners = {k: prepare(m, torch.device("cpu"), "fp32", True, False) for k, m in models.items()}
    out = time_interleaved(runners, (3, 16, 16), batch=2, device=torch.device("cpu"),
                           channels_last=True, warmup=1, repeats=5)
    assert set(out) == {"a", "b"}
    for t in out.values():
        assert t.samples == 5 and 0 < t.median_ms <= t.p90_ms and t.throughput > 0


def test_fp16_on_cpu_is_refused() -> None:
    with pytest.raises(ConfigError, match="bf16"):
        prepare(nn.Conv2d(3, 4, 3), torch.device("cpu"), "fp16", False, False)


def test_bench_command_on_a_slim_file(run_cli, tmp_path: Path) -> None:
    cfg = {"name": "resnet20", "source": "prunecli"}
    model = build_model(cfg, num_classes=10, in_chans=3).eval()
    x = torch.randn(1, 3, 32, 32)
    s = trace_structure(model, x)
    keep = random_keep(s, 0.5, torch.Generator().manual_seed(0))
    path = save_slim(tmp_path / "slim.pt", slim(model, s, keep), s, keep, cfg, 10, 3)
    out = run_cli("bench", f"ckpt={path}", "batch_sizes=[1,2]", "warmup=1", "repeats=3",
                  "dtype=bf16", run_dir=tmp_path / "bench")
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert [(r["batch"], r["model"]) for r in rows] == [
        (1, "dense"), (1, "slim"), (2, "dense"), (2, "slim")]
    slim_row = rows[1]
    assert slim_row["macs"] < rows[0]["macs"] and slim_row["macs_speedup"] > 1
    assert rows[0]["speedup"] == 1.0
    assert (out / "bench.txt").read_text().count("slim") >= 2
