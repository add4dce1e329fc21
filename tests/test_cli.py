"""The command line as a user runs it: in-process for speed, and through the installed console
script (another working directory, torchrun, a real kill + resume) where that matters."""

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

from prunecli.cli import find_command, main
from tests.conftest import console_script, read_results, torchrun_train

SMOKE = ["experiment=smoke", "trainer.epochs=1", "data.train_size=64", "data.val_size=32",
         "data.image_size=16"]


def test_find_command_skips_flag_values() -> None:
    assert find_command(["train", "a=1"]) == 0
    assert find_command(["-m", "train", "a=1"]) == 1
    assert find_command(["--cfg", "job", "train"]) == 2
    assert find_command(["-cd", "train", "eval"]) == 2  # 'train' is the -cd folder here
    assert find_command(["a=1", "train"]) is None


def test_an_error_from_a_data_worker_is_its_own_line() -> None:
    from prunecli.commands.common import one_line_message
    from prunecli.errors import DataError

    worker = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback "
                       "(most recent call last):\n  File \"x.py\", line 1\n"
                       "prunecli.errors.DataError: a.jpg is 4x3 pixels but b.json says 3x4")
    assert one_line_message(worker) == "a.jpg is 4x3 pixels but b.json says 3x4"
    assert one_line_message(DataError("plain: message")) == "plain: message"


def test_usage_and_unknown_command(capsys) -> None:
    with pytest.raises(SystemExit) as ok:
        main([])
    assert ok.value.code == 0 and "train" in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:
        main(["trian"])
    assert bad.value.code == 2 and "'trian' is not a command" in capsys.readouterr().err


def test_train_then_eval_in_process(run_cli, tmp_path: Path) -> None:
    run = run_cli("train", *SMOKE)
    results = read_results(run)
    assert results["epochs"] == 1 and results["top1"] is not None
    assert results["macs"] > 0 and results["params"] > 0
    assert (run / "last.pt").is_file()
    assert "top-1 %" in (run / "results.txt").read_text()
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in epochs if r["kind"] != "train"] == ["epoch", "results"]

    ev = run_cli("eval", f"ckpt={run}", run_dir=tmp_path / "eval")
    evaluated = read_results(ev)
    assert evaluated["top1"] == pytest.approx(results["top1"])
    assert evaluated["model"] == "resnet20" and evaluated["data"] == "fake"
    # eval adds each class's top-1: the images of each add up to the set, the weighted mean
    # of the per-class top-1 is the top-1
    rows = evaluated["per_class"]
    assert sum(r["images"] for r in rows.values()) == evaluated["samples"] == 32
    weighted = sum(r["top-1 %"] * r["images"] for r in rows.values() if r["images"]) / 32
    assert weighted == pytest.approx(evaluated["top1"])
    assert "top-1 %" in (ev / "results.txt").read_text().split("┏")[-1]  # the per-class table

    # the same weights through the model config (model.weights accepts a training checkpoint)
    ev2 = run_cli("eval", "data=fake", "data.val_size=32", "data.image_size=16",
                  f"model.weights={run / 'last.pt'}", run_dir=tmp_path / "eval2")
    assert read_results(ev2)["top1"] == pytest.approx(results["top1"])


def test_eval_of_a_run_on_another_dataset(run_cli, tmp_path: Path, capsys) -> None:
    """`data=NAME` was dropped for the run's own dataset (a fake-data run 'evaluated on
    fashion_mnist' gave its fake-data score); a dataset whose images or classes do not fit the
    model is a one-line error naming the key that fixes it."""
    run = run_cli("train", *SMOKE)  # fake: 3 channels, 10 classes
    with pytest.raises(SystemExit) as err:
        run_cli("eval", f"ckpt={run}", "data=fashion_mnist", run_dir=tmp_path / "e1")
    assert err.value.code == 2
    assert "gives 1-channel images; set data.channels=3" in capsys.readouterr().err
    ev = run_cli("eval", f"ckpt={run}", "data=fashion_mnist", "data.channels=3",
                 "data.image_size=16", "data.val_size=100", run_dir=tmp_path / "e2")
    evaluated = read_results(ev)
    assert evaluated["data"] == "fashion_mnist" and evaluated["samples"] == 100
    with pytest.raises(SystemExit):
        run_cli("eval", f"ckpt={run}", "data=fake", "data.num_classes=5", "data.image_size=16",
                run_dir=tmp_path / "e3")
    assert "holds a model of 10 classes but data=fake has 5" in capsys.readouterr().err


def test_eval_warns_when_the_datasets_classes_are_not_the_models(run_cli, tmp_path: Path) -> None:
    """Same class count, other names: the scores would be read by position, silently."""
    from tests.test_data import write_imagefolder

    same = write_imagefolder(tmp_path / "a")
    other = write_imagefolder(tmp_path / "b", classes=("cat", "cow", "fox"))
    run = run_cli("train", "data=imagefolder", f"data.root={same}", "data.image_size=16",
                  "trainer.epochs=2", "data.batch_size=3", "method=taylor", "cost.ratio=0.5",
                  "method.prune_every=1")
    for ckpt in (run, run / "slim.pt"):
        ev = run_cli("eval", f"ckpt={ckpt}", f"data.root={other}", run_dir=tmp_path / "ev")
        log = (ev / "eval.log").read_text()
        assert "the model's classes are not data=imagefolder's (label: model / data: 1: dog / " \
               "cow)" in log
        ev = run_cli("eval", f"ckpt={ckpt}", run_dir=tmp_path / "ev2")
        assert "classes are not" not in (ev / "eval.log").read_text()


def test_a_new_run_refuses_a_folder_that_holds_a_run(run_cli, capsys) -> None:
    """The same command run twice into one hydra.run.dir replaced the first run's last.pt and
    results and appended its records to the first run's metrics.jsonl, silently."""
    run = run_cli("train", *SMOKE)
    checkpoint, log = (run / "last.pt").read_bytes(), (run / "metrics.jsonl").read_text()
    with pytest.raises(SystemExit) as err:
        run_cli("train", *SMOKE, "trainer.epochs=2")
    assert err.value.code == 2
    assert "already holds a run (last.pt); continue it with resume=auto" in capsys.readouterr().err
    assert (run / "last.pt").read_bytes() == checkpoint
    assert (run / "metrics.jsonl").read_text() == log
    # resuming a run into a folder that holds a different run is refused the same way
    other = run_cli("train", *SMOKE, run_dir=run.parent / "other")
    other_checkpoint = (other / "last.pt").read_bytes()
    with pytest.raises(SystemExit):
        run_cli("train", f"resume={run}", "trainer.epochs=2", run_dir=other)
    assert "holds another run (last.pt) than the one resumed" in capsys.readouterr().err
    assert (other / "last.pt").read_bytes() == other_checkpoint
    run_cli("train", f"resume={run}", "trainer.epochs=2", run_dir=run)  # its own folder: fine
    run_cli("train", f"resume={run}", "trainer.epochs=2", run_dir=run.parent / "empty")
    # what an attempt that crashed before its first checkpoint leaves: the new log starts empty
    (run / "last.pt").unlink()
    run_cli("train", *SMOKE)
    kinds = [json.loads(line)["kind"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [k for k in kinds if k != "train"] == ["epoch", "results"]


def test_user_experiment_folder(run_cli, tmp_path: Path) -> None:
    folder = tmp_path / "mine" / "experiment"
    folder.mkdir(parents=True)
    (folder / "tiny.yaml").write_text("# @package _global_\ndefaults:\n  - override /data: fake\n"
                                      "trainer:\n  epochs: 1\n  progress: false\n")
    run = run_cli("train", "-cd", str(tmp_path / "mine"), "experiment=tiny",
                  "data.train_size=32", "data.val_size=16", "data.image_size=16")
    assert read_results(run)["data"] == "fake"


def test_multirun_sweep_writes_one_folder_and_a_summary(run_cli) -> None:
    sweep = run_cli("train", "-m", *SMOKE, "optim.lr=0.1,0.05")
    assert (sweep / "0" / "results.json").is_file() and (sweep / "1" / "results.json").is_file()
    rows = json.loads((sweep / "summary.json").read_text())
    assert [r["overrides"] for r in rows] == ["optim.lr=0.1", "optim.lr=0.05"]


def test_list_shows_every_registry(run_cli, capsys) -> None:
    run_cli("list")
    out = capsys.readouterr().out
    for name in ("resnet20", "mobilenet_v1", "fashion_mnist", "imagenet", "none", "macs"):
        assert name in out


def test_missing_data_folder_is_one_clear_line(run_cli, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no_such_folder"
    with pytest.raises(SystemExit) as err:
        run_cli("train", "data=imagefolder", f"data.root={missing}")
    assert err.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()
    assert len(message) == 1 and str(missing) in message[0]


def test_a_value_out_of_range_is_one_clear_line(run_cli, capsys) -> None:
    """data.batch_size=0 was a traceback from torch's DataLoader, optim.lr=-1 one from SGD."""
    for override in ("data.batch_size=0", "optim.lr=-1"):
        with pytest.raises(SystemExit) as err:
            run_cli("train", *SMOKE, override)
        assert err.value.code == 2
        message = capsys.readouterr().err.strip().splitlines()
        assert len(message) == 1 and message[0].startswith(f"prunecli: error: {override}")


@pytest.mark.parametrize("command,overrides,message", [
    ("train", ["trainer.epochz=3"], "unknown config key 'trainer.epochz' (did you mean "
                                    "trainer.epochs?); valid keys of trainer: "),
    ("train", ["-m", "trainer.epochz=1,2"], "'trainer.epochz' (did you mean trainer.epochs?)"),
    ("train", ["lr=0.05"], "unknown config key 'lr' (did you mean optim.lr?)"),
    ("train", ["batch_size=8"], "'batch_size' (did you mean data.batch_size?)"),
    ("train", ["method=taylor", "method.sparsity=0.5"],
     "(method.sparsity is a key of method=chex, method=slimming)"),
    ("train", ["method=chex", "method.sparsty=0.5"], "(did you mean method.sparsity?)"),
    ("bench", ["repeatz=3"], "unknown config key 'repeatz' (did you mean repeats?)"),
    ("eval", ["data.roots=/x"], "unknown config key 'data.roots' (did you mean data.root?)"),
])
def test_a_misspelt_key_is_one_line_naming_the_key_meant(
    run_cli, capsys, command: str, overrides: list[str], message: str
) -> None:
    """Hydra's own error for these is five lines advising `+key=value`, with no suggestion."""
    with pytest.raises(SystemExit) as err:
        run_cli(command, *overrides)
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunecli: error: ") and message in lines[0]


def test_keys_the_precheck_cannot_judge_are_left_to_hydra(run_cli) -> None:
    """Group choices, Hydra's keys, ``+`` keys and keys below a free-form field pass the
    pre-check untouched (a real key runs; a wrong one under model.kwargs is Hydra's error)."""
    from omegaconf import OmegaConf

    from prunecli.cli import misspelt_key

    ok = ["model=resnet32", "experiment=smoke", "hydra/launcher=basic", "hydra.job.chdir=false",
          "+model.kwargs.width=2", "model.kwargs.width=2", "method.sparsity=0.5", "seed=3",
          "method=foo", "method.foo=1", "~trainer.threads", "data.class_names=[a,b]",
          "cost.ratio=0.3,0.5"]
    assert misspelt_key("train", ok) is None
    assert misspelt_key("train", ["-cd", "my_configs", "mykey=1"]) is None  # the user's own
    run = run_cli("train", *SMOKE, "seed=3", "trainer.epochs=1")
    assert OmegaConf.load(run / ".hydra" / "config.yaml").seed == 3


def test_a_sweep_over_methods_takes_the_keys_they_share(run_cli, capsys) -> None:
    """Hydra composes a multirun's first config with method=none, so any method.KEY beside
    method=a,b failed ("Key 'max_prune_per_group' not in 'NoneConfig'")."""
    from omegaconf import OmegaConf

    sweep = run_cli("train", "-m", *SMOKE, "method=taylor,chex", "cost.ratio=0.5",
                    "method.max_prune_per_group=0.5")
    for job, name in (("0", "taylor"), ("1", "chex")):
        cfg = OmegaConf.load(sweep / job / ".hydra" / "config.yaml")
        assert cfg.method.name == name and cfg.method.max_prune_per_group == 0.5
        assert read_results(sweep / job)["cost_kept"] <= 0.5
    for key, message in (("method.prune_every=3", "method.prune_every is not a key of "
                          "method=chex, which this sweep also runs"),
                         ("method.prune_evry=3", "(did you mean method.prune_every?)")):
        with pytest.raises(SystemExit) as err:
            run_cli("train", "-m", *SMOKE, "method=choice(taylor,chex)", "cost.ratio=0.5", key)
        lines = capsys.readouterr().err.strip().splitlines()
        assert err.value.code == 2 and len(lines) == 1
        assert message in lines[0]


def test_a_failing_job_does_not_stop_the_sweep(run_cli, capsys, tmp_path: Path) -> None:
    """One job's error (here a budget out of range, in the method's setup) ended the whole
    sweep, and the later points never ran; now it ends that job, with its message in the job's
    error.txt and the summary, and the command exits with status 1 once the others are done."""
    with pytest.raises(SystemExit) as err:
        run_cli("train", "-m", *SMOKE, "method=taylor", "cost.ratio=0.5,1.5,0.7")
    assert err.value.code == 1
    sweep = tmp_path / "run"  # run_cli's folder
    assert read_results(sweep / "0")["cost_kept"] <= 0.5
    assert read_results(sweep / "2")["cost_kept"] <= 0.3  # the job after the failed one ran
    assert (sweep / "1" / "error.txt").read_text().startswith("cost.ratio=1.5 must be in")
    summary = json.loads((sweep / "summary.json").read_text())
    assert [r["job"] for r in summary] == ["0", "2", "1"] and "error" in summary[2]
    out = capsys.readouterr()
    said = " ".join(out.err.split())
    assert "prunecli: error in job 1 (" in said and "cost.ratio=1.5" in said
    assert "cost.ratio=1.5 must be in [0, 1)" in said
    shown = " ".join(out.out.split())
    assert "1 of 3 jobs failed: job 1 (" in shown and "sweep: 2 runs" in shown
    # a report of the sweep says which point is missing, and why
    run_cli("report", f"runs={sweep}", f"out={tmp_path / 'report'}", run_dir=tmp_path / "rep")
    report = " ".join((tmp_path / "report" / "report.md").read_text().split())
    assert f"Job {sweep / '1'} (" in report and "failed and is not in the table: " \
        "cost.ratio=1.5 must be in [0, 1)" in report


def test_an_unforeseen_error_ends_only_its_sweep_job_with_its_traceback(
        run_cli, capsys, monkeypatch, tmp_path: Path) -> None:
    """A bug (an error that is not a PrunecliError) in one point of an overnight sweep ended the
    whole sweep; now it ends that job, its traceback kept in the job's folder and on stderr. Out
    of a sweep it still raises with its traceback."""
    from prunecli.engine.trainer import Trainer

    fit = Trainer.fit

    def fit_failing_at_half(self, *args, **kwargs):
        if self.cfg.cost.ratio == 0.5:
            raise IndexError("list index out of range\nsecond line")
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", fit_failing_at_half)
    with pytest.raises(SystemExit) as err:
        run_cli("train", "-m", *SMOKE, "method=taylor", "cost.ratio=0.5,0.7")
    assert err.value.code == 1
    sweep = tmp_path / "run"
    assert read_results(sweep / "1")["cost_kept"] <= 0.3  # the job after the failed one ran
    error = (sweep / "0" / "error.txt").read_text()
    assert error.startswith("IndexError: list index out of range (an error prunecli does not "
                            f"foresee: its traceback is in {sweep / '0' / 'traceback.txt'}")
    assert error.count("\n") == 1  # one line
    trace = (sweep / "0" / "traceback.txt").read_text()
    assert "Traceback (most recent call last)" in trace and "fit_failing_at_half" in trace
    said = capsys.readouterr()
    assert "fit_failing_at_half" in said.err and "prunecli: error in job 0 (" in said.err
    assert "1 of 2 jobs failed: job 0 (" in " ".join(said.out.split())
    with pytest.raises(SystemExit) as err:  # Hydra's exit for an error, with the traceback
        run_cli("train", *SMOKE, "method=taylor", "cost.ratio=0.5", run_dir=tmp_path / "one")
    assert err.value.code == 1 and "IndexError: list index out of range" in capsys.readouterr().err
    assert not (tmp_path / "one" / "error.txt").exists()


def test_out_of_memory_is_one_line_naming_what_to_lower(run_cli, capsys, monkeypatch) -> None:
    """CUDA's OutOfMemoryError (and the CPU allocator's error, and DataLoader workers out of
    shared memory) was torch's traceback; the fix is a setting, so it is said in one line.
    Other errors keep their traceback."""
    from prunecli.engine.trainer import Trainer

    def train_raising(error: Exception) -> tuple[int, str]:
        def fit(*args, **kwargs):
            raise error

        monkeypatch.setattr(Trainer, "fit", fit)
        with pytest.raises(SystemExit) as err:
            run_cli("train", *SMOKE)
        return err.value.code, capsys.readouterr().err

    code, said = train_raising(torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB "
        "of which 1.20 GiB is free.\nIncluding non-PyTorch memory, ..."))
    assert code == 2 and said.strip().splitlines() == [
        "prunecli: error: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 "
        "has a total capacity of 79.10 GiB of which 1.20 GiB is free): lower data.batch_size "
        "(trainer.grad_accum=N keeps the global batch) or use trainer.precision=bf16; the last "
        "checkpoint is kept: resume=RUN continues"]
    code, said = train_raising(RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
        "memory: you tried to allocate 10000000000000 bytes."))
    assert code == 2 and "out of memory (DefaultCPUAllocator: can't allocate memory: you tried " \
        "to allocate 10000000000000 bytes): lower data.batch_size" in said
    code, said = train_raising(RuntimeError(  # torch's words when Docker's /dev/shm is too small
        "DataLoader worker (pid 1234) is killed by signal: Bus error. It is possible that "
        "dataloader's workers are out of shared memory. Please try to raise your shared memory "
        "limit."))
    assert code == 2 and "ran out of shared memory (/dev/shm): run the container with " \
        "--shm-size=8g or --ipc=host, or set data.num_workers=0" in said
    code, said = train_raising(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert code == 1 and "Traceback" in said and "shapes cannot be multiplied" in said  # Hydra's
    assert "out of memory" not in said


def test_a_device_error_names_the_commands_own_key(run_cli, capsys, monkeypatch) -> None:
    """bench and lut call it `device`; the message said `trainer.device`. (CUDA is hidden, so
    a GPU machine runs the same check.)"""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for command, key in (("bench", "device"), ("lut", "device"), ("train", "trainer.device")):
        args = ("model=resnet20", "input_size=[3,16,16]") if command != "train" else SMOKE
        with pytest.raises(SystemExit):
            run_cli(command, *args, f"{key}=cuda")
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err == (f"prunecli: error: {key}=cuda but CUDA is not available here; use "
                       f"{key}=cpu or {key}=auto")


def test_unknown_key_added_with_plus_is_refused(run_cli, capsys) -> None:
    with pytest.raises(SystemExit):
        run_cli("train", *SMOKE, "+trainer.epochz=2")
    assert "did you mean trainer.epochs" in capsys.readouterr().err


# ------------------------------------------------------------ the installed console script
def test_console_script_from_another_directory(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = console_script("train", *SMOKE, f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_results(out)["epochs"] == 1
    assert "outputs:" in proc.stdout

    typo = console_script("train", "trainer.epochz=3", cwd=tmp_path)
    assert typo.returncode != 0 and "epochz" in typo.stderr + typo.stdout


def test_shell_completion(tmp_path: Path) -> None:
    install = console_script("-sc", "install=bash", cwd=tmp_path)
    assert install.returncode == 0
    assert "hydra_bash_completion prunecli\n" in install.stdout + "\n"
    query = console_script("-sc", "query=bash", cwd=tmp_path,
                           env={"COMP_LINE": "prunecli train method=n"})
    assert query.stdout.split() == ["method=none"]


def test_torchrun_two_processes_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    proc = torchrun_train(*SMOKE, "trainer.epochs=2", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(out)
    assert results["world_size"] == 2 and results["epochs"] == 2
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]  # rank 0 alone writes
    assert epochs[-1]["val_samples"] == 32  # every validation image counted once over 2 ranks
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2


def test_killed_run_resumes_to_the_end(tmp_path: Path) -> None:
    """SIGKILL a real run after its second checkpoint, then resume it from the run folder."""
    out = tmp_path / "run"
    exe = Path(sys.executable).parent / "prunecli"
    args = [*SMOKE, "trainer.epochs=12", "trainer.deterministic=true"]
    proc = subprocess.Popen([str(exe), "train", *args, f"hydra.run.dir={out}"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        # epoch 3 is logged after epoch 2's checkpoint was written
        if metrics.is_file() and metrics.read_text().count('"kind": "epoch"') >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = torch.load(out / "last.pt", weights_only=True)["epoch"]
    assert 2 <= done < 12, "the run must be killed part-way"
    # resumed as the README says, nothing else typed: the run's 12 epochs (not the default),
    # its data and settings come from the checkpoint
    resumed = console_script("train", f"resume={out}", f"hydra.run.dir={tmp_path / 'r'}",
                             cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert read_results(tmp_path / "r")["epochs"] == 12
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=True)["epoch"] == 12
