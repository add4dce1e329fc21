"""Hydra launchers from the `sweeps` extra: joblib (local parallel jobs, each with its share of
the cores) and submitit_local (submitit's executor without a cluster). Skipped where the
plugins are not installed (`pip install -e ".[dev]"` installs them)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from prunecli.engine.preempt import preemption_signals

TINY = ["experiment=smoke", "trainer.epochs=1", "data.train_size=64", "data.val_size=32",
        "data.image_size=16"]


def _prunecli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "prunecli"
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def _jobs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/results.json"))


def test_joblib_runs_the_points_in_parallel_processes_with_a_share_of_the_cores(
        tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    from joblib import cpu_count

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY,
            "optim.lr=0.1,0.05", f"hydra.sweep.dir={sweep}", "resume=auto"]
    done = _prunecli(*args, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    jobs = _jobs(sweep)
    assert [j.name for j in jobs] == ["0", "1"]
    assert len(json.loads((sweep / "summary.json").read_text())) == 2
    threads = {int(re.search(r"(\d+) CPU threads", (j / "train.log").read_text()).group(1))
               for j in jobs}
    assert threads == {max(1, cpu_count() // 2)}  # not torch's default of every core each
    # the sweep relaunched (after a crash, a requeue): its finished points are skipped
    before = {j.name: (j / "last.pt").stat().st_mtime_ns for j in jobs}
    again = _prunecli(*args, cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("finished before") == 2
    assert {j.name: (j / "last.pt").stat().st_mtime_ns for j in jobs} == before


def test_submitit_local_runs_a_two_point_sweep(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    done = _prunecli("train", "-m", "hydra/launcher=submitit_local",
                     "hydra.launcher.timeout_min=10", *TINY, "optim.lr=0.1,0.05",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path,
                     env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert [j.name for j in _jobs(sweep)] == ["0", "1"]
    assert len(json.loads((sweep / "summary.json").read_text())) == 2
    assert list(sweep.glob(".submitit/*/*_log.out"))  # submitit ran them as its jobs


def test_inside_a_submitit_job_its_preemption_signal_is_caught_too(monkeypatch) -> None:
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    assert signal.SIGUSR2 not in preemption_signals()
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert preemption_signals() == [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2]
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "SIGHUP")
    assert signal.SIGHUP in preemption_signals()


def test_two_processes_of_a_slurm_step_train_as_one_ddp_run_without_torchrun(
        tmp_path: Path) -> None:
    """What `srun --ntasks=2 prunecli train ...` starts: two processes that only have SLURM's
    variables. They must find each other, agree on one run folder and train one DDP run."""
    exe = Path(sys.executable).parent / "prunecli"
    base = {k: v for k, v in os.environ.items()
            if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                         "TORCHELASTIC_RUN_ID")}
    slurm = {"SLURM_JOB_ID": str(40000 + os.getpid() % 20000), "SLURM_STEP_ID": "0",
             "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NUM_NODES": "1",
             "SLURM_STEP_NODELIST": "localhost", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([str(exe), "train", *TINY, "trainer.device=cpu"], cwd=tmp_path,
                              env={**base, **slurm, "SLURM_PROCID": str(r),
                                   "SLURM_LOCALID": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    runs = list((tmp_path / "outputs" / "train").iterdir())
    assert [r.name for r in runs] == [f"slurm{slurm['SLURM_JOB_ID']}.0"]  # one folder for both
    results = json.loads((runs[0] / "results.json").read_text())
    assert results["world_size"] == 2
    epochs = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()
              if '"kind": "epoch"' in line]
    assert epochs[-1]["val_samples"] == 32  # every validation image once over the two ranks
