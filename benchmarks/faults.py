"""Faults, counted: kill -9, a DDP rank dying, bad files. Each trial survives or loses data.

    python benchmarks/faults.py [--kills 24] [--seed 0] [--out benchmarks/results]

- **kill -9**: a deterministic pruning run of the embedded demo (every method in turn) is
  killed at a random moment (half of the trials the moment a checkpoint's temp file appears,
  i.e. inside a checkpoint write), then continued exactly as the README says
  (``prunecli train resume=RUN``, nothing else typed; a run killed before its first checkpoint
  is started again). Survived: ``last.pt`` was readable whenever it existed, and the resumed run
  ended with weights identical to an unbroken run of the same command.
- **a DDP rank dies** (torchrun, 2 CPU processes, gloo): one worker is SIGKILLed mid-run; the
  launcher must end within a bounded time (no hang) and the run resume from its checkpoint.
- **disk full / write error** (simulated in this process: ``torch.save`` fails half-way with
  ENOSPC at a random checkpoint, or the rename is refused as in a read-only folder): one line,
  exit 2, the previous ``last.pt`` readable and unchanged, no temp file left.
- **NaN loss** mid-pruning (simulated in this process at a random step): one line, exit 2,
  ``last.pt`` is the last good epoch's, its weights and method scores finite.
- **bad files**: a latency table of another model, a checkpoint of another model as
  ``model.weights=``, a slim file with missing keys, a truncated checkpoint: each must be one
  line naming the file (exit status 2), never a traceback.

Writes ``faults.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SMALL = ["experiment=smoke", "data.train_size=96", "data.val_size=32", "data.batch_size=16",
         "data.image_size=16", "trainer.epochs=4", "trainer.deterministic=true",
         "optim.lr=0.01", "trainer.progress=false", "trainer.threads=1"]
# 6 optimizer steps an epoch: every method has finished pruning by the end of epoch 2
METHODS = {
    "taylor": ["method=taylor", "cost.ratio=0.5", "method.prune_every=2",
               "method.remove_per_step=0.1"],
    "slimming": ["method=slimming", "cost.ratio=0.4", "method.sparsity=1e-3"],
    "halp": ["method=halp", "cost.ratio=0.5", "method.prune_every=2", "method.prune_steps=4",
             "method.group_size=4"],
    "smcp": ["method=smcp", "cost.ratio=0.5", "method.warmup_epochs=0.2",
             "method.ramp_epochs=1", "method.cooldown_epochs=2", "method.prune_every=2"],
    "gator": ["method=gator", "cost.ratio=0.5", "method.gate_init_prob=0.6",
              "method.criteria_weight=5", "method.sync_every=2", "method.gate_epochs=1.5"],
    "chex": ["method=chex", "cost.ratio=0.5", "method.update_every=0.125", "method.t_max=0.5"],
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def prunecli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prunecli", *args], capture_output=True,
                          text=True, timeout=timeout, env=ENV)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", weights_only=True)["model"]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _readable(path: Path) -> bool:
    from prunecli.engine.checkpoint import load_checkpoint

    try:
        load_checkpoint(path)
        return True
    except Exception:  # noqa: BLE001  (any failure to read is the finding)
        return False


def kill_trial(method: str, reference: dict[str, torch.Tensor], work: Path, rng: random.Random,
               in_write: bool, wall: float) -> tuple[bool, str]:
    """``wall``: the unbroken run's seconds; a random kill falls anywhere in it, a kill in a
    write waits for the 1st-4th checkpoint temp file."""
    run = work / "run"
    args = ["train", *SMALL, *METHODS[method], f"hydra.run.dir={run}"]
    proc = subprocess.Popen([sys.executable, "-m", "prunecli", *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + (120 if in_write else rng.uniform(0.3, 1.05) * wall)
    nth, seen = rng.randint(1, 4), set()
    unreadable = 0
    while time.time() < deadline and proc.poll() is None:
        if in_write and run.is_dir():
            seen |= {p.name for p in run.iterdir() if p.name.endswith(".tmp")}
            if len(seen) >= nth:
                break  # the nth checkpoint is being written right now
        time.sleep(0.001 if in_write else 0.05)
    finished = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    last = run / "last.pt"
    if last.exists() and not _readable(last):
        unreadable += 1
    when = "finished before the kill" if finished else (
        f"killed after epoch {torch.load(last, weights_only=True)['epoch']}"
        if last.exists() and not unreadable else "killed before the first checkpoint")
    if last.exists():
        again = prunecli("train", f"resume={run}", f"hydra.run.dir={work / 'resumed'}")
        end = work / "resumed"
    else:
        again = prunecli(*args)
        end = run
    if again.returncode != 0:
        return False, f"{when}; the continuation failed: {again.stderr.strip()[-200:]}"
    if not (end / "last.pt").exists():  # it had already trained every epoch: nothing to add
        end = run
    ok = not unreadable and same(weights(end), reference)
    return ok, when + ("" if ok else "; weights differ from the unbroken run"
                       if not unreadable else "; last.pt unreadable")


def rank_death_trial(work: Path) -> tuple[bool, str]:
    out = work / "ddp"
    args = ["--standalone", "--nproc_per_node=2", "-m", "prunecli", "train", *SMALL,
            "trainer.epochs=30", "method=taylor", "cost.ratio=0.5", f"hydra.run.dir={out}"]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    proc = subprocess.Popen([torchrun, *args], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "last.pt").exists():
        time.sleep(0.1)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    pids = [int(p) for p in workers.stdout.split()]
    if not pids:
        proc.kill()
        return False, "no worker process found"
    t0 = time.time()
    os.kill(pids[-1], signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        return False, "the launcher hung for 120 s after a rank died"
    waited = time.time() - t0
    resumed = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "prunecli",
                              "train", f"resume={out}", "trainer.epochs=4",
                              f"hydra.run.dir={work / 'ddp_resumed'}"], env=ENV,
                             capture_output=True, text=True, timeout=300)
    ok = proc.returncode != 0 and resumed.returncode == 0
    return ok, (f"launcher exited {proc.returncode} {waited:.1f} s after the kill; resume "
                f"exit {resumed.returncode}")


def in_process(*args: str) -> tuple[int, list[str]]:
    """``prunecli ARGS`` in this process (so a fault can be patched in): exit code, stderr."""
    import contextlib
    import io

    from hydra.core.global_hydra import GlobalHydra

    from prunecli import cli

    err, argv = io.StringIO(), sys.argv
    sys.argv = ["prunecli", *args]
    GlobalHydra.instance().clear()
    try:
        with contextlib.redirect_stderr(err):
            cli.main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = argv
    return code, [line for line in err.getvalue().splitlines() if line.strip()]


def _patched(obj: object, name: str, value: object):
    import contextlib

    @contextlib.contextmanager
    def patch():
        old = getattr(obj, name)
        setattr(obj, name, value)
        try:
            yield
        finally:
            setattr(obj, name, old)
    return patch()


def write_fault_trial(work: Path, nth: int, rename: bool) -> tuple[bool, str]:
    """The ``nth`` checkpoint write of a taylor run fails (half a file, ENOSPC) or its rename
    is refused (EACCES)."""
    import errno

    from prunecli.engine import checkpoint as ckpt_io

    run, real_save, real_replace, writes = work / "run", torch.save, os.replace, {"n": 0}

    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and "optimizer" in obj:
            writes["n"] += 1
            if writes["n"] == nth and not rename:
                f.write(b"half a checkpoint")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    def replace(src, dst):
        if writes["n"] == nth and rename:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_replace(src, dst)

    with _patched(torch, "save", save), _patched(ckpt_io.os, "replace", replace):
        code, err = in_process("train", *SMALL, *METHODS["taylor"], f"hydra.run.dir={run}")
    last = run / "last.pt"
    epoch = torch.load(last, weights_only=True)["epoch"] if last.exists() else 0
    tmp = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    ok = code == 2 and len(err) == 1 and epoch == nth - 1 and not tmp
    return ok, f"exit {code}, last.pt epoch {epoch}, temp files {len(tmp)}: {err[-1][:120]}"


def nan_trial(work: Path, call: int) -> tuple[bool, str]:
    """The training loss is NaN at forward call ``call`` of a taylor run (6 per epoch)."""
    from prunecli.tasks.classification import ClassificationTask

    real, calls, run = ClassificationTask.loss, {"n": 0}, work / "run"

    def loss(self, model, inputs, targets):
        value, out = real(self, model, inputs, targets)
        calls["n"] += 1
        return (value * float("nan") if calls["n"] == call else value), out

    with _patched(ClassificationTask, "loss", loss):
        code, err = in_process("train", *SMALL, *METHODS["taylor"], "trainer.log_every=1",
                               f"hydra.run.dir={run}")
    good_epoch = (call - 1) // 6
    last = run / "last.pt"
    state = torch.load(last, weights_only=True) if last.exists() else None
    epoch = state["epoch"] if state else 0
    tensors = [] if state is None else [*state["model"].values(), *_tensors(state["method"])]
    finite = all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())
    ok = code == 2 and len(err) == 1 and "nan" in err[0] and epoch == good_epoch and finite
    return ok, f"NaN at step {call}: exit {code}, last.pt epoch {epoch}, finite {finite}"


def _tensors(obj: object) -> list[torch.Tensor]:
    if torch.is_tensor(obj):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _tensors(v)]
    return []


def bad_file_trials(work: Path) -> list[tuple[str, bool, str]]:
    """(what, one clear line, the line)."""
    base = work / "base"
    done = prunecli("train", *SMALL, "trainer.epochs=1", "method=taylor", "cost.ratio=0.5",
                    f"hydra.run.dir={base}")
    assert done.returncode == 0, done.stderr[-500:]
    other = work / "other"
    prunecli("train", *SMALL, "trainer.epochs=1", "model=resnet32", f"hydra.run.dir={other}")
    table = work / "lut.json"
    prunecli("lut", "model=resnet20", "input_size=[3,16,16]", "num_classes=10", "step=64",
             "repeats=1", "rounds=1", "warmup=1", "check=false", "threads=1", f"out={table}",
             f"hydra.run.dir={work / 'lut'}")
    missing = work / "missing_keys.pt"
    state = torch.load(base / "slim.pt", weights_only=True)
    state["state_dict"] = dict(list(state["state_dict"].items())[: len(state["state_dict"]) // 2])
    torch.save(state, missing)
    truncated = work / "truncated.pt"
    truncated.write_bytes((base / "last.pt").read_bytes()[:5000])
    cases = {
        "latency table of another model": ["train", *SMALL, "trainer.epochs=1",
                                           "model=cifar_vgg11_bn", "method=halp", "cost=latency",
                                           f"cost.table={table}", "cost.ratio=0.3"],
        "checkpoint of another model as model.weights=": [
            "train", *SMALL, "trainer.epochs=1", f"model.weights={other / 'last.pt'}"],
        "slim file with missing keys": ["eval", f"ckpt={missing}"],
        "truncated checkpoint (resume=)": ["train", f"resume={truncated}"],
        "truncated checkpoint (eval)": ["eval", f"ckpt={truncated}"],
    }
    rows = []
    for what, args in cases.items():
        res = prunecli(*args, f"hydra.run.dir={work / 'bad'}")
        lines = res.stderr.strip().splitlines()
        one = res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr
        rows.append((what, one, lines[-1][:160] if lines else "(no message)"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    t0 = time.time()
    lines = ["# Faults, counted", "",
             f"`python benchmarks/faults.py --kills {args.kills} --seed {args.seed}` "
             f"({dt.date.today()}, torch {torch.__version__}).", ""]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        references, walls = {}, {}
        for method in METHODS:
            ref = work / f"ref_{method}"
            start = time.time()
            res = prunecli("train", *SMALL, *METHODS[method], f"hydra.run.dir={ref}")
            walls[method] = time.time() - start
            assert res.returncode == 0, res.stderr[-800:]
            references[method] = weights(ref)
        kills = []
        for k in range(args.kills):
            method = list(METHODS)[k % len(METHODS)]
            trial = work / f"kill_{k}"
            ok, detail = kill_trial(method, references[method], trial, rng, k % 2 == 1,
                                    walls[method])
            kills.append((method, k % 2 == 1, ok, detail))
            print(f"kill {k} {method}: {'survived' if ok else 'LOST'} ({detail})", flush=True)
        ddp_ok, ddp_detail = rank_death_trial(work)
        print(f"rank death: {ddp_ok} ({ddp_detail})", flush=True)
        writes = [(f"{'rename refused' if k % 2 else 'ENOSPC'} at write {1 + k // 2}",
                   *write_fault_trial(work / f"write_{k}", 1 + k // 2, bool(k % 2)))
                  for k in range(6)]
        nans = [nan_trial(work / f"nan_{k}", rng.randint(2, 22)) for k in range(4)]
        bad = bad_file_trials(work)
    lines += ["| fault | trials | survived | data lost |", "|---|---:|---:|---:|",
              f"| kill -9 at a random moment | {sum(1 for k in kills if not k[1])} | "
              f"{sum(1 for k in kills if not k[1] and k[2])} | "
              f"{sum(1 for k in kills if not k[1] and not k[2])} |",
              f"| kill -9 inside a checkpoint write | {sum(1 for k in kills if k[1])} | "
              f"{sum(1 for k in kills if k[1] and k[2])} | "
              f"{sum(1 for k in kills if k[1] and not k[2])} |",
              f"| a DDP rank killed (torchrun, 2 CPU processes) | 1 | {int(ddp_ok)} | "
              f"{int(not ddp_ok)} |",
              f"| checkpoint write fails (ENOSPC / rename refused) | {len(writes)} | "
              f"{sum(ok for _, ok, _ in writes)} | {sum(not ok for _, ok, _ in writes)} |",
              f"| NaN loss mid-pruning | {len(nans)} | {sum(ok for ok, _ in nans)} | "
              f"{sum(not ok for ok, _ in nans)} |", "",
              "| kill trial | method | in a write | survived | what happened |",
              "|---:|---|---|---|---|",
              *[f"| {i} | {m} | {w} | {ok} | {d} |" for i, (m, w, ok, d) in enumerate(kills)],
              "", f"DDP: {ddp_detail}.", "",
              "| write fault | survived | what happened |", "|---|---|---|",
              *[f"| {w} | {ok} | {d} |" for w, ok, d in writes], "",
              *[f"- {d} ({'survived' if ok else 'LOST'})" for ok, d in nans], "",
              "| bad file | one line, exit 2 | the line |", "|---|---|---|",
              *[f"| {w} | {ok} | {line} |" for w, ok, line in bad], "",
              f"{time.time() - t0:.0f} s in all."]
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faults.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
