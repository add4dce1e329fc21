"""Hostile files: a checkpoint or slim file crafted to run code when unpickled is refused by
every command that reads one, with one line naming the file, and the code never runs; a file
whose config names something outside the registries builds nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import read_results

SMOKE = ("experiment=smoke", "data.train_size=64", "data.val_size=32", "data.image_size=16",
         "trainer.epochs=1", "trainer.progress=false")


class _Payload:
    """Unpickling this calls ``exec``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real pruning run (last.pt, slim.pt) to poison copies of."""
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from prunecli import cli

    out = tmp_path_factory.mktemp("genuine") / "run"
    argv = sys.argv
    sys.argv = ["prunecli", "train", *SMOKE, "method=taylor", "cost.ratio=0.5",
                f"hydra.run.dir={out}"]
    try:
        GlobalHydra.instance().clear()
        cli.main()
    finally:
        sys.argv = argv
    assert read_results(out)["slim_model"]
    return out


def _poisoned(source: Path, target: Path, marker: Path) -> Path:
    """``source``'s content plus a code-running object, as torch.save writes it."""
    state = torch.load(source, weights_only=True)
    state["note"] = _Payload(marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
    return target


READERS = {
    "eval last.pt": ("eval", "ckpt={last}"),
    "eval slim.pt": ("eval", "ckpt={slim}"),
    "slim": ("slim", "ckpt={last}"),
    "bench": ("bench", "ckpt={slim}", "repeats=1", "warmup=1", "batch_sizes=[1]"),
    "export": ("export", "ckpt={slim}"),
    "inspect": ("inspect", "ckpt={last}"),
    "train resume=": ("train", "resume={last}"),
    "train model.weights=": ("train", *SMOKE, "model.weights={last}"),
}


@pytest.mark.parametrize("reader", list(READERS))
def test_a_code_running_pickle_is_refused_by_every_reader(run_cli, genuine: Path, tmp_path: Path,
                                                          capsys, reader: str) -> None:
    marker = tmp_path / "code_ran"
    last = _poisoned(genuine / "last.pt", tmp_path / "bad" / "last.pt", marker)
    slim = _poisoned(genuine / "slim.pt", tmp_path / "bad" / "slim.pt", marker)
    args = [a.format(last=last, slim=slim) for a in READERS[reader]]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(*args, run_dir=tmp_path / "out")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "refused" in err[0] and "exec" in err[0] and str(tmp_path / "bad") in err[0]
    assert not marker.exists()


def test_the_genuine_files_are_read(run_cli, genuine: Path, tmp_path: Path) -> None:
    """The same readers accept the files the hostile ones were made from (the refusal above is
    of the payload, not of the files)."""
    ev = run_cli("eval", f"ckpt={genuine / 'slim.pt'}", run_dir=tmp_path / "eval")
    assert read_results(ev)["top1"] == pytest.approx(read_results(genuine)["slim_top1"])


@pytest.mark.parametrize("name", ["os.system", "builtins.exec"])
@pytest.mark.parametrize("target", [False, True])
def test_a_config_naming_code_builds_nothing(run_cli, genuine: Path, tmp_path: Path, capsys,
                                             name: str, target: bool) -> None:
    """A slim file whose model config names a callable (as a model name or a Hydra
    ``_target_``) is one error: nothing is looked up outside the model registry."""
    state = torch.load(genuine / "slim.pt", weights_only=True)
    config = dict(state["model_config"])
    if target:
        config["_target_"] = name
        config["_args_"] = ["echo owned"]
    else:
        config["name"] = name
    state["model_config"] = config
    bad = tmp_path / "named.pt"
    torch.save(state, bad)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli("eval", f"ckpt={bad}", run_dir=tmp_path / "out")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err


def test_a_slim_file_with_missing_keys_names_them(genuine: Path, tmp_path: Path) -> None:
    from prunecli.errors import CheckpointError
    from prunecli.structure import load_slim

    state = torch.load(genuine / "slim.pt", weights_only=True)
    dropped = sorted(state["state_dict"])[:2]
    for k in dropped:
        del state["state_dict"][k]
    bad = tmp_path / "incomplete.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError) as info:
        load_slim(bad)
    assert str(bad) in str(info.value) and "2 missing key(s)" in str(info.value)
    assert dropped[0] in str(info.value)
