"""The tracer fuzzer's first hundred nets (benchmarks/fuzz_structure.py runs thousands): every
random net slims exactly or is left whole with reasons; never a wrong model, crash or hang."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fuzz_structure as fuzz  # noqa: E402


def test_a_hundred_random_nets_slim_exactly_or_stay_whole_with_reasons(caplog) -> None:
    outcomes = {seed: fuzz.check(seed) for seed in range(100)}
    bad = {s: o for s, o in outcomes.items() if o[0] not in ("exact", "whole")}
    assert not bad
    kinds = [o for o, _ in outcomes.values()]
    assert kinds.count("exact") >= 50  # the generator makes prunable nets, not only refusals


def test_the_same_seed_builds_the_same_net() -> None:
    a, b = fuzz.RandomNet(7), fuzz.RandomNet(7)
    assert a.program == b.program and str(a) == str(b)


def test_a_wrong_slim_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check is not void: a slim that keeps other channels than the masks is reported."""
    real = fuzz.slim

    def shifted(model, structure, keep):
        return real(model, structure, {g: (idx + 1) % structure.groups[g].size
                                       for g, idx in keep.items()})

    monkeypatch.setattr(fuzz, "slim", shifted)
    outcomes = [fuzz.check(seed)[0] for seed in range(20)]
    assert "wrong" in outcomes
