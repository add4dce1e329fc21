"""The run's log: pruning events and kept widths for the report, TensorBoard scalars beside
metrics.jsonl, and the data-loader worker default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunecli.config.store import data_workers
from prunecli.engine.run_log import RunLog
from prunecli.engine.trainer import Trainer
from prunecli.errors import ConfigError
from tests.test_engine import make_cfg


def test_a_pruning_run_logs_its_events_and_widths_to_jsonl_and_tensorboard(tmp_path: Path
                                                                            ) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    results = Trainer(make_cfg("method=taylor", "method.prune_every=2", "cost.ratio=0.5",
                               "trainer.log_every=1",
                               "logger=tensorboard"), run).fit()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    prunes = [r for r in records if r["kind"] == "prune"]
    assert len(prunes) == results["prune_events"] > 1
    assert prunes[-1]["cost_kept"] == pytest.approx(results["cost_kept"])
    assert all(a["step"] < b["step"] for a, b in zip(prunes, prunes[1:], strict=False))
    assert all(r["step"] > 0 for r in records if r["kind"] == "epoch")
    widths = results["widths"]
    assert sum(w["kept"] for w in widths) == results["channels_kept"]
    assert sum(w["size"] for w in widths) == results["channels_prunable"]
    assert all(0 <= w["kept"] <= w["size"] for w in widths)

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train_step/loss", "train_step/lr", "train/loss", "val/top1",
            "pruning/cost_kept", "pruning/channels_kept"} <= tags
    tb_costs = [(e.step, e.value) for e in events.Scalars("pruning/cost_kept")]
    assert tb_costs == [(p["step"], pytest.approx(p["cost_kept"])) for p in prunes]
    tb_val = [e.value for e in events.Scalars("val/top1")]
    assert tb_val[-1] == pytest.approx(results["top1"])


def test_without_tensorboard_the_logger_says_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        RunLog(tmp_path, "tensorboard")
    with pytest.raises(ConfigError, match="logger=csv is not one of"):
        RunLog(tmp_path, "csv")


def test_loader_workers_are_capped_by_the_cores_of_each_rank(monkeypatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert data_workers(8) == 8
    assert data_workers(32) == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 8 ranks on the node share the 16 cores
    assert data_workers(8) == 2
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)
    assert data_workers(4) == 1
