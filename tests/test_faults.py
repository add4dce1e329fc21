"""Small versions of benchmarks/faults.py's trials: a kill -9 inside a checkpoint write, and a
DDP rank killed under torchrun (the launcher ends, no hang; the run resumes)."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import faults  # noqa: E402


def test_kill_inside_a_checkpoint_write_then_resume_ends_as_an_unbroken_run(tmp_path: Path
                                                                             ) -> None:
    ref = tmp_path / "ref"
    start = time.time()
    done = faults.prunecli("train", *faults.SMALL, *faults.METHODS["taylor"],
                           f"hydra.run.dir={ref}")
    assert done.returncode == 0, done.stderr[-1000:]
    ok, detail = faults.kill_trial("taylor", faults.weights(ref), tmp_path / "kill",
                                   random.Random(3), True, time.time() - start)
    assert ok, detail


def test_a_killed_ddp_rank_ends_the_launcher_and_the_run_resumes(tmp_path: Path) -> None:
    ok, detail = faults.rank_death_trial(tmp_path)
    assert ok, detail
