"""``prunecli eval baseline=``: a model beside another (typically its dense parent) on the same
images, class by class, the classes that lost most first."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from prunecli.reporting.baseline import merge_per_class
from tests.conftest import read_results

SMOKE = ["experiment=smoke", "data.train_size=64", "data.val_size=48", "data.image_size=16",
         "trainer.threads=1"]


def test_per_class_rows_are_merged_and_ordered_by_their_loss() -> None:
    pruned = {"cat": {"AP": 50.0, "objects": 4}, "dog": {"AP": 20.0, "objects": 3},
              "cow": {"AP": math.nan, "objects": 0}, "ant": {"AP": 70.0, "objects": 2}}
    dense = {"cat": {"AP": 55.0}, "dog": {"AP": 40.0}, "cow": {"AP": math.nan},
             "ant": {"AP": 60.0}}
    rows = merge_per_class(pruned, dense, "map")
    assert list(rows) == ["dog", "cat", "ant", "cow"]  # -20, -5, +10, then no objects
    assert rows["dog"] == {"AP": 20.0, "objects": 3, "AP baseline": 40.0, "change": -20.0}
    assert rows["ant"]["change"] == 10.0 and math.isnan(rows["cow"]["change"])
    # VOC07 runs compare VOC07 AP, classifiers top-1; a class the baseline lacks has no change
    voc = merge_per_class({"a": {"AP": 1.0, "VOC07 AP": 9.0}}, {"a": {"VOC07 AP": 10.0}},
                          "voc07_map")
    assert voc["a"]["change"] == -1.0 and voc["a"]["VOC07 AP baseline"] == 10.0
    top1 = merge_per_class({"a": {"top-1 %": 80.0, "images": 5}}, {}, "top1")
    assert math.isnan(top1["a"]["change"])


def test_eval_against_the_dense_model(run_cli, tmp_path: Path) -> None:
    dense = run_cli("train", *SMOKE, "trainer.epochs=2", run_dir=tmp_path / "dense")
    pruned = run_cli("train", *SMOKE, "trainer.epochs=1", f"model.weights={dense}",
                     "method=taylor", "cost.ratio=0.5", "method.prune_every=2",
                     run_dir=tmp_path / "pruned")
    alone = read_results(run_cli("eval", f"ckpt={dense}", run_dir=tmp_path / "e_dense"))
    own = read_results(run_cli("eval", f"ckpt={pruned}", run_dir=tmp_path / "e_pruned"))
    both = run_cli("eval", f"ckpt={pruned}", f"baseline={dense}", run_dir=tmp_path / "e_both")
    got = read_results(both)
    # a masked run costs what its kept channels cost (it said dense MACs before)
    trained = read_results(pruned)
    assert own["macs"] == trained["macs"] < own["dense_macs"] == alone["macs"]
    assert own["params"] == trained["params"] < own["dense_params"] == alone["params"]
    # the model's own figures are unchanged; the baseline's are those of its own evaluation
    assert got["top1"] == pytest.approx(own["top1"]) and got["macs"] == own["macs"]
    assert got["baseline"]["top1"] == pytest.approx(alone["top1"])
    assert got["baseline"]["macs"] == alone["macs"] == got["dense_macs"] > got["macs"]
    assert got["change"] == pytest.approx(own["top1"] - alone["top1"])
    rows = got["per_class"]
    assert set(rows) == set(own["per_class"])
    for name, row in rows.items():
        assert row["top-1 %"] == pytest.approx(own["per_class"][name]["top-1 %"])
        assert row["top-1 % baseline"] == pytest.approx(alone["per_class"][name]["top-1 %"])
        assert row["change"] == pytest.approx(row["top-1 %"] - row["top-1 % baseline"])
    changes = [r["change"] for r in rows.values()]
    assert changes == sorted(changes)
    text = (both / "results.txt").read_text()
    assert "baseline top-1 % (change)" in text and "largest loss against the baseline" in text
    assert "MACs kept" in text

    # a model against itself: no change anywhere
    same = read_results(run_cli("eval", f"ckpt={dense}", f"baseline={dense}",
                                run_dir=tmp_path / "e_same"))
    assert same["change"] == 0 and all(r["change"] == 0 for r in same["per_class"].values()
                                       if r["images"])


def test_a_baseline_of_other_classes_is_refused(run_cli, tmp_path: Path, capsys) -> None:
    ten = run_cli("train", *SMOKE, "trainer.epochs=1", run_dir=tmp_path / "ten")
    five = run_cli("train", *SMOKE, "trainer.epochs=1", "data.num_classes=5",
                   run_dir=tmp_path / "five")
    with pytest.raises(SystemExit) as err:
        run_cli("eval", f"ckpt={ten}", f"baseline={five}", run_dir=tmp_path / "e")
    assert err.value.code == 2
    assert f"{five} holds a model of 5 classes but data=fake has 10" in capsys.readouterr().err


def test_the_terminal_gets_the_first_class_rows_and_the_file_all() -> None:
    """ImageNet's 1000 per-class rows flooded the terminal; results.txt keeps every row."""
    from prunecli.report import CLASS_ROWS_SHOWN, per_class_table

    rows = {f"class {i}": {"top-1 %": float(i), "images": 5} for i in range(1000)}
    shown = per_class_table(rows, limit=CLASS_ROWS_SHOWN)
    assert shown.row_count == CLASS_ROWS_SHOWN
    assert shown.caption == f"{1000 - CLASS_ROWS_SHOWN} more classes in results.txt and " \
        "results.json"
    assert per_class_table(rows).row_count == 1000
    assert per_class_table(dict(list(rows.items())[:3]), limit=CLASS_ROWS_SHOWN).caption is None
