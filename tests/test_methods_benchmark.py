"""benchmarks/methods.py with distillation: the dense run is the teacher, so it gets no
``distill.*`` override, and the pruned runs learn from it unless another teacher is named."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from methods import split_distill  # noqa: E402


def test_distill_overrides_go_to_the_pruned_runs_with_the_dense_run_as_teacher() -> None:
    dense, pruned = split_distill(
        ["trainer.threads=1", "distill.enabled=true", "distill.alpha=0.7"], Path("r/dense"))
    assert dense == ["trainer.threads=1"]
    assert pruned == ["trainer.threads=1", "distill.enabled=true", "distill.alpha=0.7",
                      "distill.teacher=r/dense"]


def test_a_named_teacher_is_kept_and_plain_runs_are_unchanged() -> None:
    extra = ["distill.enabled=True", "+distill.teacher=t.pt"]
    assert split_distill(extra, Path("r/dense")) == ([], extra)
    assert split_distill(["a=1"], Path("r/dense")) == (["a=1"], ["a=1"])
