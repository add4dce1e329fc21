"""`prunecli slim`, `inspect` and `eval` on a masked training checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from prunecli.engine.checkpoint import load_checkpoint, save_atomic
from prunecli.structure import ChannelMasker, load_slim, random_keep
from prunecli.structure.from_checkpoint import load_masked_model
from tests.conftest import read_results

SMOKE = ["experiment=smoke", "trainer.epochs=1", "data.train_size=64", "data.val_size=32",
         "data.image_size=16"]


def _masked_checkpoint(run: Path) -> tuple[Path, dict]:
    """Mask a trained run's model as a pruning method would, and save it as a checkpoint."""
    loaded = load_masked_model(run)
    keep = random_keep(loaded.structure, 0.5, torch.Generator().manual_seed(0))
    ChannelMasker(loaded.model, loaded.structure).set_keep(keep)
    ckpt = load_checkpoint(run / "last.pt")
    ckpt["model"] = loaded.model.state_dict()
    out = run / "masked" / "last.pt"
    save_atomic(ckpt, out)
    return out, keep


def test_slim_inspect_and_eval_of_a_masked_run(run_cli, tmp_path: Path, capsys) -> None:
    run = run_cli("train", *SMOKE)
    masked_ckpt, keep = _masked_checkpoint(run)

    run_cli("slim", f"ckpt={masked_ckpt.parent}", run_dir=tmp_path / "slim_run")
    out = capsys.readouterr().out
    assert "MACs" in out and "max relative difference" in out
    small = load_slim(masked_ckpt.parent / "slim.pt")
    masked = load_masked_model(masked_ckpt)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(small.model(x), masked.model(x), atol=1e-5)
    assert sum(p.numel() for p in small.model.parameters()) < sum(
        p.numel() for n, p in masked.model.named_parameters())

    run_cli("inspect", f"ckpt={masked_ckpt}", run_dir=tmp_path / "inspect")
    table = capsys.readouterr().out
    some = next(iter(keep.values()))
    assert f"{len(some)}/" in table  # kept/size shown for pruned groups
    run_cli("inspect", f"ckpt={masked_ckpt.parent / 'slim.pt'}", run_dir=tmp_path / "inspect2")
    slim_table = capsys.readouterr().out
    assert slim_table.split("channel groups of")[1].split("\n", 1)[1] == \
        table.split("channel groups of")[1].split("\n", 1)[1]  # same rows, same kept MACs
    assert "M kept (" in " ".join(slim_table.split())

    ev_masked = read_results(run_cli("eval", f"ckpt={masked_ckpt}", run_dir=tmp_path / "e1"))
    ev_slim = read_results(run_cli("eval", f"ckpt={masked_ckpt.parent / 'slim.pt'}",
                                   run_dir=tmp_path / "e2"))
    assert abs(ev_masked["top1"] - ev_slim["top1"]) < 1e-6
    # the masked model costs what its kept channels cost: its slim model's MACs and params
    assert ev_slim["macs"] == ev_masked["macs"] < ev_masked["dense_macs"]
    assert ev_slim["params"] == ev_masked["params"] < ev_masked["dense_params"]


def test_slim_of_an_unmasked_run_says_there_is_nothing_to_do(run_cli, capsys) -> None:
    import pytest

    run = run_cli("train", *SMOKE)
    with pytest.raises(SystemExit) as err:
        run_cli("slim", f"ckpt={run}")
    assert err.value.code == 2 and "nothing to slim" in capsys.readouterr().err


def test_inspect_a_registry_model(run_cli, capsys) -> None:
    run_cli("inspect", "model=mobilenet_v1", "input_size=[3,64,64]", "num_classes=10",
            "ignore=[fc]")
    out = capsys.readouterr().out
    assert "excluded by the user (fc)" in out and "groups" in out


def test_export_command(run_cli, tmp_path: Path) -> None:
    run = run_cli("train", *SMOKE)
    masked_ckpt, _ = _masked_checkpoint(run)
    run_cli("slim", f"ckpt={masked_ckpt}", run_dir=tmp_path / "s")
    slim_file = masked_ckpt.parent / "slim.pt"
    run_cli("export", f"ckpt={slim_file}", "format=torchscript", run_dir=tmp_path / "x1")
    ts = torch.jit.load(str(slim_file.with_suffix(".ts")))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(ts(x), load_slim(slim_file).model(x), atol=1e-5)
    run_cli("export", f"ckpt={slim_file}", "format=onnx", run_dir=tmp_path / "x2")
    assert slim_file.with_suffix(".onnx").stat().st_size > 1000


def test_inspect_names_the_droppable_groups(run_cli, capsys) -> None:
    run_cli("inspect", "model=resnet20", "input_size=[3,32,32]", "num_classes=10")
    out = capsys.readouterr().out
    assert "9 droppable whole" in out and out.count("droppable") >= 10


def test_a_run_reloads_without_its_starting_weights(run_cli, tmp_path: Path) -> None:
    """A run started from model.weights (a path relative to where it trained, or a download
    for model.pretrained) reloads from its checkpoint alone: eval, slim, inspect, export and
    bench read the run elsewhere, or after the starting file is gone."""
    run = run_cli("train", *SMOKE)
    ckpt = load_checkpoint(run / "last.pt")
    ckpt["config"]["model"]["weights"] = "gone/dense_weights.pt"  # as if trained elsewhere
    save_atomic(ckpt, run / "last.pt")
    loaded = load_masked_model(run)
    state = loaded.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ckpt["model"].items())
    assert loaded.model_config["weights"] == "gone/dense_weights.pt"  # reported as trained
    results = read_results(run_cli("eval", f"ckpt={run}", run_dir=tmp_path / "eval"))
    assert results["top1"] >= 0.0


def test_relative_paths_are_saved_absolute(run_cli, tmp_path: Path, monkeypatch) -> None:
    """data.root and model.weights typed relative to where the run was launched: the run
    reads the same from any other folder (eval of its checkpoint, its slim file's data)."""
    from tests.test_data import write_imagefolder

    work = tmp_path / "work"
    write_imagefolder(work / "ds")
    monkeypatch.chdir(work)
    data = ("experiment=smoke", "data=imagefolder", "data.root=ds", "data.image_size=16",
            "trainer.epochs=1")
    start = run_cli("train", *data, run_dir=tmp_path / "start")
    run = run_cli("train", *data, "model.weights=../start/last.pt", run_dir=tmp_path / "run")
    config = load_checkpoint(run / "last.pt")["config"]
    assert config["data"]["root"] == str((work / "ds").resolve())
    assert config["model"]["weights"] == str((start / "last.pt").resolve())
    monkeypatch.chdir(tmp_path)  # somewhere the relative paths mean nothing
    results = read_results(run_cli("eval", f"ckpt={run}", run_dir=tmp_path / "eval"))
    assert results["samples"] == 9 and results["top1"] == read_results(run)["top1"]
