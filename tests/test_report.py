"""``prunecli report``: tables and figures of many runs, from hand-written run folders (nothing
is trained here)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from prunecli.errors import ConfigError
from prunecli.reporting import build_report
from prunecli.reporting.figures import pareto_front
from prunecli.reporting.history import read_curves, steps_per_epoch

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GROUPS = ["stem", "layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.1.conv1"]
SIZES = [16, 16, 16, 32, 32]


def make_run(path: Path, method: str = "none", target: float | None = None, top1: float = 90.0,
             *, task: str = "classification", widths: bool = True, bench_ms: float | None = None,
             overrides: list[str] | None = None, truncated: bool = False,
             dense_top1: float | None = None, epoch_steps: bool = True) -> Path:
    """A finished run folder as `prunecli train` leaves it (results, metrics, overrides)."""
    path.mkdir(parents=True)
    dense = method == "none"
    kept = 1.0 if dense else target
    metric = "top1" if task == "classification" else "map"
    results = {"model": "resnet20", "data": "fashion_mnist", "method": method, "task": task,
               "metric": metric, metric: top1, "top5": 99.0, "epochs": 3,
               "macs": 40e6 * kept, "params": 270e3 * kept, "dense_macs": 40e6,
               "dense_params": 270e3, "train_time_s": 50.0, "wall_time_s": 60.0,
               f"dense_{metric}": dense_top1, "map_large": float("nan")}
    if not dense:
        results.update(cost="macs", cost_target=target, cost_kept=target - 0.001,
                       prune_events=2)
        if widths:
            results["widths"] = [{"group": g, "size": s, "kept": max(1, round(s * target))}
                                 for g, s in zip(GROUPS, SIZES, strict=True)]
    (path / "results.json").write_text(json.dumps(results, indent=2))  # NaN as Python writes it
    lines = []
    for epoch in (1, 2, 3):  # 10 steps per epoch, a train record every 5 steps
        for step in (10 * epoch - 5, 10 * epoch):
            lines.append({"kind": "train", "epoch": epoch, "step": step, "loss": 2.0 / step,
                          "lr": 0.1, "time": step * 0.1})
        if not dense and epoch < 3:  # at the epoch's last step; a 0-based epoch, as logged
            lines.append({"kind": "prune", "step": 10 * epoch, "epoch": epoch - 1,
                          "cost_kept": 1 - (1 - target) * epoch / 2, "channels_kept": 100,
                          "time": epoch})
        lines.append({"kind": "epoch", "epoch": epoch, "train_loss": 1.0 / epoch,
                      f"val_{metric}": top1 - 3 + epoch, "lr": 0.1, "epoch_time": 1.0,
                      "time": epoch, **({"step": 10 * epoch} if epoch_steps else {})})
    lines.append({"kind": "results", **results})
    text = "".join(json.dumps(r) + "\n" for r in lines)
    if truncated:
        text += '{"kind": "train", "epoch": 3, "st'
    (path / "metrics.jsonl").write_text(text)
    if overrides is not None:
        (path / ".hydra").mkdir()
        (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if bench_ms is not None:
        rows = [{"batch": b, "model": name, "macs": 1, "params": 1, "median_ms": ms * b,
                 "p90_ms": ms * b * 1.1, "images_per_s": 1000 / ms, "speedup": 12.0 / ms}
                for b in (8, 1) for name, ms in (("dense", 12.0), ("slim", bench_ms))]
        (path / "bench.json").write_text(json.dumps({"meta": {"device": "cpu", "threads": 2},
                                                     "rows": rows}))
    return path


def make_sweep(root: Path, bench: bool = True) -> Path:
    """Dense + 2 methods x 2 budgets, as one Hydra sweep folder."""
    common = ["trainer.epochs=3", "model=resnet20"]
    make_run(root / "0", "none", top1=90.0, overrides=["method=none", *common],
             bench_ms=12.0 if bench else None)
    make_run(root / "1", "taylor", 0.5, 88.0, overrides=["method=taylor", "cost.ratio=0.5",
                                                         *common],
             bench_ms=7.0 if bench else None, truncated=True, epoch_steps=False)
    make_run(root / "2", "taylor", 0.3, 85.5, overrides=["method=taylor", "cost.ratio=0.3",
                                                         *common])
    make_run(root / "3", "halp", 0.5, 89.25, overrides=["method=halp", "cost.ratio=0.5", *common],
             bench_ms=6.5 if bench else None)
    make_run(root / "10", "halp", 0.3, 86.0, overrides=["method=halp", "cost.ratio=0.3",
                                                        *common], widths=False)
    return root


def table_lines(markdown: str) -> dict[str, list[str]]:
    """report.md's table rows by job."""
    rows = [line.split("|")[1:-1] for line in markdown.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in rows[0]]
    return {cells[0].strip(): dict(zip(header, (c.strip() for c in cells), strict=True))
            for cells in rows[1:]}


def assert_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    height, width = imread(path).shape[:2]
    assert height > 200 and width > 300, (path, height, width)


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory: pytest.TempPathFactory):
    root = make_sweep(tmp_path_factory.mktemp("runs") / "sweep")
    return root, build_report([root], root / "report")


def test_pareto_front_keeps_only_undominated_points():
    points = [(30, 85.0), (50, 88.0), (40, 84.0), (50, 87.0), (100, 90.0), (30, 85.0),
              (20, math.nan), (60, 88.0), (25, 80.0)]
    # (40, 84) and (50, 87) are beaten by cheaper or better points, (60, 88) by (50, 88),
    # the repeat of (30, 85) adds nothing, NaN is never on the front
    assert pareto_front(points) == [8, 0, 1, 4]
    assert pareto_front([]) == []


def test_steps_per_epoch_from_train_records():
    assert steps_per_epoch([(1, 5), (1, 10), (2, 15), (2, 20)]) == 10
    # logged every 50 steps with 39 steps per epoch: a little low, never below the records
    assert 37 <= steps_per_epoch([(2, 50), (3, 100), (4, 150)]) <= 39
    assert steps_per_epoch([]) is None


def test_epoch_steps_inferred_from_pruning_events_without_train_records(tmp_path: Path):
    """An older short run: no train records (fewer steps than log_every), epoch records
    without their step; pruning events (0-based epoch) still place the epochs."""
    lines = [{"kind": "prune", "step": 4, "epoch": 0, "cost_kept": 0.8},
             {"kind": "epoch", "epoch": 1, "train_loss": 1.0, "val_top1": 50.0},
             {"kind": "prune", "step": 14, "epoch": 1, "cost_kept": 0.5},
             {"kind": "epoch", "epoch": 2, "train_loss": 0.5, "val_top1": 60.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    curves = read_curves(tmp_path, "top1", epochs=2)
    assert curves is not None and curves.steps_per_epoch == 7  # 4 in epoch 1, 14 in epoch 2
    assert curves.val == [(7.0, 50.0), (14.0, 60.0)] and curves.loss == [(7.0, 1.0), (14.0, 0.5)]
    assert curves.last_step == 14 and not curves.val_unplaced


def test_report_table_has_every_run_with_its_change_from_dense(sweep_report):
    root, report = sweep_report
    text = report.markdown.read_text()
    table = table_lines(text)
    assert set(table) == {"0", "1", "2", "3", "10"}
    assert table["0"]["Δ vs dense"] == "ref"
    assert table["1"]["Δ vs dense"] == "-2.00"
    assert table["3"]["Δ vs dense"] == "-0.75"
    assert table["10"]["Δ vs dense"] == "-4.00"
    assert table["2"]["top-1 %"] == "85.50" and table["2"]["budget"] == "macs 30 %"
    assert table["3"]["MACs (% dense)"] == "20 M (50 %)"
    # only the overrides that differ between jobs
    assert table["3"]["overrides"] == "method=halp cost.ratio=0.5"
    assert "trainer.epochs" not in text
    # latency of the slim model at the smallest batch, speed-up from bench.json
    assert table["3"]["latency ms (batch 1)"] == "6.50" and table["3"]["speed-up"] == "1.85x"
    assert table["0"]["latency ms (batch 1)"] == "12.00"
    assert table["2"]["latency ms (batch 1)"] == "-"
    # sorted: dense, then methods, lighter budget first
    assert list(table) == ["0", "3", "10", "1", "2"]
    data = json.loads(report.json.read_text())
    assert len(data["rows"]) == 5 and data["metric"] == "top1"
    assert {r["job"]: r["delta"] for r in data["rows"]}["1"] == pytest.approx(-2.0)


def test_report_figures_are_valid_pngs_linked_from_the_markdown(sweep_report):
    root, report = sweep_report
    names = {f.path.name for f in report.figures}
    assert {"pareto_macs.png", "pareto_latency.png", "architecture.png", "curves.png"} <= names
    text = report.markdown.read_text()
    for fig in report.figures:
        assert_png(fig.path)
        assert f"]({fig.path.name})" in text
    # run 10 has no widths: left out of the architecture figure, with a note
    assert "No architecture figure for 10" in text


def test_truncated_metrics_line_is_skipped(sweep_report):
    root, report = sweep_report
    curves = read_curves(root / "1", "top1")
    assert curves is not None and curves.skipped_lines == 1
    assert curves.steps_per_epoch == 10
    assert curves.val == [(10.0, 88.0 - 2), (20.0, 88.0 - 1), (30.0, 88.0)]
    assert curves.prune == [(10.0, 0.75), (20.0, 0.5)]
    assert "1: 1 unreadable line(s) of metrics.jsonl skipped" in report.markdown.read_text()


def test_without_bench_no_latency_figure(tmp_path: Path):
    root = make_sweep(tmp_path / "sweep", bench=False)
    report = build_report([root], tmp_path / "out", metric="top5", architecture=["2"])
    assert not list((tmp_path / "out").glob("pareto_latency*"))
    text = report.markdown.read_text()
    assert "latency ms" not in text and "`prunecli bench runs=DIR`" in text
    assert (tmp_path / "out" / "architecture.png").is_file()
    assert "| top-5 % |" in text and table_lines(text)["2"]["Δ vs dense"] == "+0.00"
    with pytest.raises(ConfigError, match="metric=map: no run has a value for it; .*top1"):
        build_report([root], tmp_path / "out", metric="map")


def test_nested_folders_and_several_paths(tmp_path: Path):
    make_run(tmp_path / "a" / "deep" / "sweep" / "0", "taylor", 0.5, 80.0, dense_top1=84.0)
    make_run(tmp_path / "a" / "deep" / "sweep" / "1", "taylor", 0.3, 78.0, dense_top1=84.0)
    single = make_run(tmp_path / "b" / "halp_run", "halp", 0.5, 81.0, dense_top1=84.0)
    (tmp_path / "a" / "notes").mkdir()  # folders without runs next to them are fine
    report = build_report([tmp_path / "a", single / "results.json"], tmp_path / "out",
                          fmt="png")
    table = table_lines(report.markdown.read_text())
    assert set(table) == {"a/deep/sweep/0", "a/deep/sweep/1", "b/halp_run"}
    # no dense run: the runs' own dense_top1 (the pretrained start) is the reference
    assert table["b/halp_run"]["Δ vs dense"] == "-3.00"
    assert "dense_top1 (the pretrained start)" in report.markdown.read_text()


def test_mixed_tasks_empty_folder_and_missing_path_are_config_errors(tmp_path: Path):
    make_run(tmp_path / "mixed" / "cls", "none")
    make_run(tmp_path / "mixed" / "det", "none", task="detection", top1=40.0)
    with pytest.raises(ConfigError, match="classification.*detection.*separately"):
        build_report([tmp_path / "mixed"], tmp_path / "out")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"no runs in .*empty.*results\.json"):
        build_report([tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(ConfigError, match="does not exist"):
        build_report([tmp_path / "nowhere"], tmp_path / "out")
    with pytest.raises(ConfigError, match="architecture: no run 'nope'"):
        build_report([tmp_path / "mixed" / "cls"], tmp_path / "out", architecture=["nope"])


def test_cli_error_is_one_line(run_cli, tmp_path: Path, capsys: pytest.CaptureFixture):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        run_cli("report", f"runs={tmp_path / 'empty'}")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prunecli: error: no runs in") and "\n" not in err


def test_cli_end_to_end(tmp_path: Path):
    root = make_sweep(tmp_path / "sweep", bench=False)
    proc = subprocess.run([sys.executable, "-m", "prunecli", "report", f"runs=[{root}]",
                           f"hydra.run.dir={tmp_path / 'hydra'}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = root / "report" / "report.md"  # one folder given: the report goes inside it
    assert report.is_file() and "| 10 |" in report.read_text()
    assert str(report.resolve()) in proc.stdout.replace("\n", "")


def test_a_channel_target_is_the_budget_of_a_run_without_a_cost_budget(tmp_path: Path):
    """CHEX by method.sparsity (slimming by method.channel_ratio) has no MACs target: its row
    says the channel target, not "macs 100 %"."""
    make_run(tmp_path / "0", "none", top1=90.0)
    run = make_run(tmp_path / "1", "chex", 0.2, 85.0)
    results = json.loads((run / "results.json").read_text())
    results.update(cost_target=None, channels_target=0.5, channels_kept=224,
                   channels_prunable=448)
    (run / "results.json").write_text(json.dumps(results))
    make_run(tmp_path / "2", "taylor", 0.5, 88.0)
    table = table_lines(build_report([tmp_path], tmp_path / "out").markdown.read_text())
    assert table["1"]["budget"] == "channels 50 %" and table["2"]["budget"] == "macs 50 %"
