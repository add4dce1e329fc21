"""`prunecli bench runs=DIR`: every run of a sweep timed against one dense reference in one
process (behaviour only: no timing thresholds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import read_results

TINY = ("experiment=smoke", "trainer.epochs=1", "data.train_size=64", "data.val_size=16",
        "data.batch_size=16", "data.image_size=16")
BENCH = ("batch_sizes=[1]", "repeats=3", "warmup=1")


def _bench_json(run: Path) -> list[dict]:
    return json.loads((run / "bench.json").read_text())["rows"]


def test_bench_runs_times_every_run_of_a_sweep(run_cli, tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "sweep"
    dense = run_cli("train", *TINY, run_dir=sweep / "dense")
    halp = run_cli("train", *TINY, "method=halp", "cost.ratio=0.5", run_dir=sweep / "halp")
    # a pruned run without slim.pt: its masked last.pt is slimmed for the bench
    masked = run_cli("train", *TINY, "method=halp", "cost.ratio=0.3", "method.save_slim=false",
                     run_dir=sweep / "nested" / "masked")
    assert not (masked / "slim.pt").exists()
    capsys.readouterr()

    out = run_cli("bench", f"runs={sweep}", *BENCH, run_dir=tmp_path / "bench")
    assert "bench_runs.json" in capsys.readouterr().out
    assert [(r["batch"], r["model"]) for r in _bench_json(dense)] == [(1, "dense")]
    for run in (halp, masked):
        rows = _bench_json(run)
        assert [(r["batch"], r["model"]) for r in rows] == [(1, "dense"), (1, "slim")]
        assert rows[1]["macs"] == read_results(run)["macs"] < rows[0]["macs"]
        assert rows[0]["macs"] == read_results(run)["dense_macs"] and rows[0]["speedup"] == 1.0
    assert _bench_json(dense)[0]["macs"] == read_results(dense)["macs"]

    sweep_rows = json.loads((out / "bench_runs.json").read_text())["rows"]
    assert [(r["method"], r["model"]) for r in sweep_rows] == [
        ("dense (reference)", "dense"), ("none", "dense"), ("halp", "slim"), ("halp", "slim")]
    assert sweep_rows[2]["run"] == str(halp.resolve())
    assert all(r["median_ms"] > 0 and r["speedup"] > 0 for r in sweep_rows)
    text = (out / "bench_runs.txt").read_text()
    assert "sweep/nested/masked" in text and "speed-up b1" in text

    # another input size is another model: one reference cannot serve both
    run_cli("train", *TINY, "data.image_size=20", run_dir=tmp_path / "other" / "dense20")
    with pytest.raises(SystemExit) as err:
        run_cli("bench", f"runs=[{sweep},{tmp_path / 'other'}]", *BENCH,
                run_dir=tmp_path / "bench2")
    lines = capsys.readouterr().err.strip().splitlines()
    assert err.value.code == 2 and len(lines) == 1 and "mixes models" in lines[-1]


def test_bench_runs_user_errors(run_cli, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.json").write_text("{}")  # an eval folder: results, no model
    with pytest.raises(SystemExit) as err:
        run_cli("bench", f"runs={empty}", *BENCH)
    assert err.value.code == 2 and f"no runs in {empty}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        run_cli("bench", f"runs={empty}", f"ckpt={empty}/slim.pt", *BENCH)
    assert err.value.code == 2 and "not both" in capsys.readouterr().err
