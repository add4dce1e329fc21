"""``benchmarks/gpu_check.py --device cpu --tiny``: the GPU check script's own CPU rehearsal.

No CUDA path can run here, so this keeps the script itself working (every prunecli command it
calls, its overrides, its report) for the day a GPU is lent: one subprocess; its training runs
go two at a time, one thread each, so the rehearsal uses both cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
METHODS = {"taylor", "slimming", "halp", "smcp", "gator", "chex"}


def test_tiny_cpu_run_passes_every_check(tmp_path: Path) -> None:
    out, runs = tmp_path / "out", tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out),
         "--runs", str(runs), "--jobs", "2"], capture_output=True, text=True, timeout=600,
        cwd=SCRIPT.parents[1], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "gpu.md").is_file() and (out / "gpu.json").is_file()
    report = json.loads((out / "gpu.json").read_text())
    checks = {c["num"]: c for c in report["checks"]}
    assert sorted(checks) == [1, 2, 3, 4, 5, 6, 7] and report["passed"]
    for c in checks.values():
        assert c["status"] in ("pass", "skipped"), (c["num"], c["errors"])
        assert all(r["status"] in ("pass", "skipped") for r in c["rows"]), c["num"]
        assert not c["errors"], c["errors"]
    trained = [r for r in checks[1]["rows"] if r["status"] == "pass"]
    assert {r["name"] for r in trained} == METHODS  # each method ran (bf16) and met its budget
    assert all(abs(r["cost_kept"] - r["cost_target"]) <= 0.01 for r in trained)
    assert checks[2]["rows"][0]["slimmed_at_step"] is not None
    assert checks[2]["rows"][0]["teacher_ms"] > 0  # the swap run distilled
    assert {r["world_size"] for r in checks[3]["rows"]} == {1, 2}
    assert any(r["name"] != "dense" for r in checks[4]["rows"])  # lut check on slimmed models
    assert any(r.get("model") == "slim" for r in checks[5]["rows"])
    assert checks[7]["rows"][0]["kd_box"] > 0  # the detector distilled its boxes
    # eval of its slim.pt against its own run (baseline=): exact slimming, the same mAP
    assert [r["name"] for r in checks[7]["rows"]] == ["ssd_tiny", "eval slim.pt baseline=run"]
    assert abs(checks[7]["rows"][1]["map"] - checks[7]["rows"][1]["slim_map"]) <= 0.05
    md = (out / "gpu.md").read_text()
    assert all(f"| {m} |" in md for m in METHODS) and "7/7 checks passed" in md
