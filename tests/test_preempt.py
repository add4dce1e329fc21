"""Preemption and automatic resume: a signal ends the run after the current step with its
checkpoint written and exit status 75; ``resume=auto`` continues it (or skips a finished run)
and ends exactly where an unbroken run ends. Also SLURM's environment for DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prunecli.engine.preempt import EXIT_PREEMPTED, Preempted, PreemptionWatch
from prunecli.engine.slurm import adopt_slurm_environment, first_host, run_id
from prunecli.engine.trainer import Trainer
from tests.test_engine import make_cfg

COMMON = ("trainer.epochs=2", "trainer.deterministic=true", "data.augment=true",
          "optim.warmup_epochs=1")


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_the_watch_catches_a_signal_hands_over_and_restores_handlers() -> None:
    seen = []
    before = signal.signal(signal.SIGUSR1, lambda s, f: seen.append(s))
    try:
        with PreemptionWatch() as watch:
            assert not watch.requested()
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.01)  # the handler runs in the main thread between bytecodes
            assert watch.requested() and watch.signum == signal.SIGUSR1
            assert seen == []  # ours caught it; the earlier handler only after the checkpoint
            watch.hand_over()
            assert seen == [signal.SIGUSR1]
        assert signal.getsignal(signal.SIGUSR1) is not watch._catch  # put back
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)
        assert seen == [signal.SIGUSR1, signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_sigterm_mid_epoch_then_resume_auto_is_the_unbroken_run(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """Mid-pruning too: Taylor's accumulated scores and masks continue as they were."""
    args = (*COMMON, "method=taylor", "cost.ratio=0.4")
    full = Trainer(make_cfg(*args), tmp_path / "full").fit()
    step_of_signal = 8  # 6 steps per epoch: 2 batches into epoch 2 (of 2)
    original = Trainer._optimizer_step

    def step_then_signal(self: Trainer) -> None:
        original(self)
        if self.ctx.step == step_of_signal:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, at a known step

    monkeypatch.setattr(Trainer, "_optimizer_step", step_then_signal)
    run = tmp_path / "run"
    with pytest.raises(Preempted, match="resume=auto"):
        Trainer(make_cfg(*args, "resume=auto"), run).fit()
    monkeypatch.setattr(Trainer, "_optimizer_step", original)
    state = torch.load(run / "last.pt", weights_only=True)
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (1, 2, 8)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run put it back

    resumed = Trainer(make_cfg(*args, "resume=auto"), run).fit()  # the same command again
    _same_weights(tmp_path / "full", run)
    assert resumed[resumed["metric"]] == full[full["metric"]]
    # the interrupted epoch reports the whole epoch's training loss, as the unbroken run did
    assert [e["train_loss"] for e in _records(run, "epoch")] == \
        [e["train_loss"] for e in _records(tmp_path / "full", "epoch")]
    assert len(_records(run, "preempted")) == 1
    assert resumed["cost_kept"] == full["cost_kept"]
    assert [e["step"] for e in _records(run, "prune")] == \
        [e["step"] for e in _records(tmp_path / "full", "prune")]


def test_ctrl_c_writes_the_checkpoint_and_the_run_continues(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C was a KeyboardInterrupt traceback that lost every step since the last epoch's
    checkpoint; now it stops like a preemption (exit status 130), and a second one at once.
    Python's own SIGINT handler is put in place first: a test run in the background of a
    non-interactive shell (CI) starts with SIGINT ignored, which the watch leaves alone."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_run(tmp_path, monkeypatch)
    finally:
        signal.signal(signal.SIGINT, before)


def _ctrl_c_run(tmp_path: Path, monkeypatch) -> None:
    args = (*COMMON, "method=taylor", "cost.ratio=0.4")
    Trainer(make_cfg(*args), tmp_path / "full").fit()
    original = Trainer._optimizer_step

    def step_then_ctrl_c(self: Trainer) -> None:
        original(self)
        if self.ctx.step == 8:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Trainer, "_optimizer_step", step_then_ctrl_c)
    run = tmp_path / "run"
    with pytest.raises(Preempted, match="interrupted at step 8") as stop:
        Trainer(make_cfg(*args, "resume=auto"), run).fit()
    monkeypatch.setattr(Trainer, "_optimizer_step", original)
    assert stop.value.exit_code == 130
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 8
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    Trainer(make_cfg(*args, "resume=auto"), run).fit()
    _same_weights(tmp_path / "full", run)

    watch = PreemptionWatch()
    with watch, pytest.raises(KeyboardInterrupt):  # twice: at once
        os.kill(os.getpid(), signal.SIGINT)
        assert watch.interrupted
        os.kill(os.getpid(), signal.SIGINT)


def test_resume_auto_starts_a_new_run_and_skips_a_finished_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = Trainer(make_cfg("trainer.epochs=1", "resume=auto"), run).fit()  # nothing there
    assert first["epochs"] == 1 and "skipped" not in first
    (run / "results.json").write_text(json.dumps({**first, "stopped_early": False}))
    again = Trainer(make_cfg("trainer.epochs=1", "resume=auto"), run).fit()
    assert again["skipped"] and again["top1"] == first["top1"]


def _prunecli(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "prunecli"
    return subprocess.Popen([str(exe), *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


def _signal_after_steps(proc: subprocess.Popen, run: Path, steps: int, sig: int) -> None:
    """``sig`` to the run's whole process group (as SLURM or a terminal sends it) once its
    metrics log shows ``steps`` training steps (``trainer.log_every=1``)."""
    metrics, deadline = run / "metrics.jsonl", time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count('"kind": "train"') >= steps:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, sig)


def test_a_signalled_process_group_exits_75_and_the_same_command_finishes_it(tmp_path: Path
                                                                             ) -> None:
    """As SLURM does: SIGTERM to every process of the job (data workers too), then the requeued
    job runs the same command (a finished run is skipped: tested in-process and in
    test_launchers)."""
    args = ["train", "experiment=smoke", "trainer.epochs=8", "trainer.deterministic=true",
            "data.train_size=96", "data.val_size=32", "data.image_size=16",
            "data.num_workers=1", "data.augment=false", "trainer.log_every=1", "resume=auto"]
    ref = subprocess.run([str(Path(sys.executable).parent / "prunecli"), *args[:-1],
                          f"hydra.run.dir={tmp_path / 'ref'}"],
                         cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / "run"
    proc = _prunecli(*args, f"hydra.run.dir={run}", cwd=tmp_path, start_new_session=True)
    _signal_after_steps(proc, run, 8, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    assert "resume=auto" in err and "Traceback" not in err
    assert 8 <= torch.load(run / "last.pt", weights_only=True)["step"] < 8 * 3

    again = subprocess.run([str(Path(sys.executable).parent / "prunecli"), *args,
                            f"hydra.run.dir={run}"], cwd=tmp_path, capture_output=True,
                           text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    _same_weights(tmp_path / "ref", run)


def test_ctrl_c_in_a_terminal_stops_the_run_with_its_checkpoint(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches every process of the group, data workers included: they
    leave it to the main process, which writes the checkpoint and exits 130, no traceback."""
    run = tmp_path / "run"
    # as from a terminal: SIGINT not ignored (a background test run ignores it, and a child
    # would inherit that)
    proc = _prunecli("train", "experiment=smoke", "trainer.epochs=50", "data.train_size=96",
                     "data.val_size=32", "data.image_size=16", "data.num_workers=1",
                     "trainer.log_every=1", f"hydra.run.dir={run}", cwd=tmp_path,
                     start_new_session=True,
                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _signal_after_steps(proc, run, 8, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted at step" in err and "Traceback" not in err
    assert torch.load(run / "last.pt", weights_only=True)["step"] >= 8


def test_a_run_with_persistent_data_workers_exits(tmp_path: Path) -> None:
    """The workers ignore SIGTERM (above), and multiprocessing's exit handler stops daemonic
    children with SIGTERM and joins them: before WorkerLoader, every run with persistent
    workers (data.num_workers > 0, not deterministic) hung after writing its results."""
    args = ["train", "experiment=smoke", "trainer.epochs=2", "data.train_size=64",
            "data.val_size=32", "data.image_size=16", "data.num_workers=2",
            f"hydra.run.dir={tmp_path / 'run'}"]
    try:
        done = subprocess.run([str(Path(sys.executable).parent / "prunecli"), *args],
                              cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=180)
    except subprocess.TimeoutExpired:
        finished = (tmp_path / "run" / "results.json").is_file()
        pytest.fail(f"prunecli train did not exit in 180 s (results written: {finished})")
    assert done.returncode == 0, done.stderr[-2000:]


# ---------------------------------------------------------------- SLURM
def test_a_multi_task_slurm_step_sets_what_torchrun_would() -> None:
    env = {"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
           "SLURM_STEP_NUM_NODES": "2", "SLURM_JOB_ID": "123456",
           "SLURM_STEP_NODELIST": "gpu[07-08]"}
    assert adopt_slurm_environment(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == \
        ("5", "8", "1", "4")
    assert env["MASTER_ADDR"] == "gpu07" and env["MASTER_PORT"] == str(20000 + 123456 % 40000)
    # torchrun inside SLURM, a batch script (no step) and a one-task step are left alone
    assert not adopt_slurm_environment({**env, "RANK": "0"})
    assert not adopt_slurm_environment({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"})
    assert not adopt_slurm_environment({"SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"})


def test_first_host_of_slurm_node_lists() -> None:
    assert first_host("node1") == "node1"
    assert first_host("gpu[03-05,9],cpu1") == "gpu03"
    assert first_host("a-[12,14]") == "a-12"
    assert first_host("x1,x2") == "x1"


def test_run_folder_id_is_shared_by_the_ranks_of_a_slurm_step(monkeypatch) -> None:
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_STEP_ID", "2")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    assert run_id("%Y") == "slurm77.2"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert run_id("%Y") == "abc"
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # one process: the time, as before
    assert run_id("%Y") == time.strftime("%Y")


def test_runs_in_one_process_leave_no_data_worker_behind(run_cli, tmp_path: Path) -> None:
    """A notebook or a test session runs several trainings in one process: each run stops its
    persistent workers when its loop ends, instead of leaving them to garbage collection
    (a worker left behind, ignoring SIGTERM, held the interpreter's exit forever)."""
    import multiprocessing

    from torch.utils.data._utils.worker import _worker_loop

    for i in range(2):
        run_cli("train", "experiment=smoke", "trainer.epochs=2", "data.train_size=64",
                "data.val_size=32", "data.image_size=16", "data.num_workers=2",
                run_dir=tmp_path / f"run{i}")
        workers = [p for p in multiprocessing.active_children()
                   if getattr(p, "_target", None) is _worker_loop]
        assert workers == []


STRAY_WORKER = """
import torch
from prunecli.engine import loaders
from prunecli.engine.preempt import ignore_preemption_signals
data = torch.utils.data.TensorDataset(torch.arange(64.0))
loader = loaders.WorkerLoader(data, batch_size=4, num_workers=2,
                              worker_init_fn=ignore_preemption_signals)
it = iter(loader)
next(it)
loaders._LIVE_ITERATORS.discard(it)  # as if it had slipped the record: its workers run on
print("started", flush=True)
"""


def test_a_stray_data_worker_does_not_hold_the_exit(tmp_path: Path) -> None:
    """The exit handler's last resort: DataLoader workers still alive are killed (they ignore
    SIGTERM, which is all multiprocessing's own handler sends before joining them)."""
    try:
        done = subprocess.run([sys.executable, "-c", STRAY_WORKER], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("a process with a stray DataLoader worker did not exit in 60 s")
    assert done.returncode == 0 and "started" in done.stdout, done.stderr[-2000:]
