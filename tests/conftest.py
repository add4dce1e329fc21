"""Shared test helpers: run the CLI in-process (fast) or as the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

THREADS = max(1, min(2, os.cpu_count() or 1))
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _same_threads_for_every_test():
    """A run with ``trainer.threads=1`` sets torch's thread count for the whole process; put it
    back, so a test's numbers do not depend on which tests ran before it (CHEX's SVDs did)."""
    yield
    torch.set_num_threads(THREADS)


@pytest.fixture
def run_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``run_cli("train", "experiment=smoke", ...)`` -> the run dir; raises SystemExit on a
    user error like the real command does."""
    from hydra.core.global_hydra import GlobalHydra

    from prunecli import cli

    def run(*args: str, run_dir: Path | None = None) -> Path:
        out = run_dir or tmp_path / "run"
        argv = [*args]
        if "-m" not in argv and "--multirun" not in argv:
            argv.append(f"hydra.run.dir={out}")
        else:
            argv.append(f"hydra.sweep.dir={out}")
        monkeypatch.setattr(sys, "argv", ["prunecli", *argv])
        GlobalHydra.instance().clear()
        cli.main()
        return out

    return run


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory: pytest.TempPathFactory):
    """``shared_run("train", ...)`` -> the run dir of that command, run once per test module:
    for tests that only read a run (its files, or as a checkpoint for another command) and
    would otherwise each train the same run again."""
    from hydra.core.global_hydra import GlobalHydra

    from prunecli import cli

    done: dict[tuple[str, ...], Path] = {}

    def run(*args: str) -> Path:
        if args not in done:
            out = tmp_path_factory.mktemp("shared_run")
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(sys, "argv", ["prunecli", *args, f"hydra.run.dir={out}"])
                GlobalHydra.instance().clear()
                cli.main()
            torch.set_num_threads(THREADS)
            done[args] = out
        return done[args]

    return run


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def console_script(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300
                   ) -> subprocess.CompletedProcess:
    """The installed ``prunecli`` script next to this interpreter, run from ``cwd``."""
    exe = Path(sys.executable).parent / "prunecli"
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([str(exe), *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def torchrun_train(*args: str, cwd: Path, nproc: int = 2, timeout: int = 300
                   ) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=N -m prunecli train ARGS`` on the CPU."""
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", f"--nproc_per_node={nproc}", "-m", "prunecli",
           "train", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def pruner_steps(pruner, optimizer, loss_of, steps: int) -> None:
    """``steps`` optimizer steps of the README's own-loop example: ``loss_of()`` is the task
    loss (the pruner's extra loss is added here), the pruner's hooks around each step."""
    for _ in range(steps):
        loss = loss_of() + pruner.extra_loss(None, None)
        loss.backward()
        pruner.before_step()
        optimizer.step()
        optimizer.zero_grad()
        pruner.after_step()
