"""The latency table (`prunecli lut`) and `cost=latency`.

Most tests replace the timing function by a known formula, so the table, the interpolation and
the cost model are checked exactly (and fast); a few time real layers (tiny) and check only
behaviour, never a timing threshold.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from prunecli.cost import build_cost_model
from prunecli.cost import latency_build as lb
from prunecli.cost.latency_build import build_table, check_table, plan_grid
from prunecli.cost.latency_layers import collect_layers, model_fingerprint
from prunecli.cost.latency_model import build_latency_cost_model
from prunecli.cost.latency_signature import Signature, signature_of
from prunecli.cost.latency_table import Grid, LatencyTable, LatencyTableError
from prunecli.errors import ConfigError
from prunecli.models import build_model
from prunecli.structure import random_keep, slim, trace_structure
from tests import structure_nets as nets

CONST = 0.5  # the fake whole-model time exceeds the fake layers' sum by this
PER_VALUE = 1e-4  # ... plus this per output value of a conv/linear (the norms, adds, ...)


# ----------------------------------------------------------------------------- helpers
def fake_ms(sig: Signature, c_in: float, c_out: float, curved: bool = False) -> float:
    """A made-up latency, bilinear in (c_in, c_out) unless ``curved`` (then a staircase-ish
    non-linear surface): with a bilinear one, interpolation is exact everywhere."""
    area = math.prod(sig.kernel) * math.prod(sig.hw) / math.prod(sig.stride) * sig.positions
    f_in = (1 + c_in) if not curved else (1 + math.sqrt(c_in) + (c_in % 8 == 0))
    if sig.kind == "depthwise":
        return 1e-3 * area * f_in
    return 1e-3 * area * f_in * (2 + (c_out if not curved else c_out ** 0.7))


def _kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, nn.Conv2d):
        if m.groups == 1:
            return "conv"
        return "depthwise" if m.in_channels == m.out_channels else None  # w -> w per group
    return None


def reference_ms(model: nn.Module, x: torch.Tensor, curved: bool = False,
                 rest: bool = False) -> float:
    """fake_ms summed over every conv/linear call of a (slimmed) model, read from the modules
    themselves (independent of the structure and the cost model); with ``rest``, plus
    CONST + PER_VALUE per output value of those calls."""
    total = [CONST if rest else 0.0]

    def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        kind = _kind(m)
        sig = signature_of(m, kind, tuple(inputs[0].shape))
        c_in = m.in_features if kind == "linear" else m.in_channels
        c_out = m.out_features if kind == "linear" else m.out_channels
        total[0] += fake_ms(sig, c_in, c_out, curved)
        if rest:
            total[0] += PER_VALUE * out.numel() / out.shape[0]

    handles = [m.register_forward_hook(hook) for m in model.modules() if _kind(m)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total[0]


@pytest.fixture
def fake_timing(monkeypatch: pytest.MonkeyPatch):
    """Replace layer and model timing by the formulas; returns the list of timed points."""
    calls: list[tuple] = []
    state = {"curved": False}

    def layer(sig, c_in, c_out, batch, device, dtype, channels_last, warmup, repeats):
        calls.append((sig.key, c_in, c_out))
        return fake_ms(sig, c_in, c_out, state["curved"])

    def whole(models, input_shape, batch, device, dtype, channels_last, warmup, repeats):
        x = torch.zeros(1, *input_shape)
        return {k: reference_ms(m, x, state["curved"], rest=True) for k, m in models.items()}

    monkeypatch.setattr(lb, "time_layer", layer)
    monkeypatch.setattr(lb, "time_models", whole)
    calls_state = type("Fake", (), {"calls": calls, "state": state})
    return calls_state


def resnet20(size: int = 16) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return build_model({"name": "resnet20"}, num_classes=10).eval(), torch.randn(1, 3, size, size)


NETS = {"resnet20": resnet20, **{cls.__name__: (lambda cls=cls: (cls().eval(),
                                                                torch.randn(1, 3, 16, 16)))
                                 for cls in (nets.Residual, nets.Concat, nets.Depthwise,
                                             nets.SqueezeExcite, nets.FlattenLinear,
                                             nets.SharedConsumer, nets.UnknownOp,
                                             nets.PyramidSharedHead, nets.GroupedConvs,
                                             nets.Ghost, nets.MixedSplits)},
        # attention over 4x4 patches of an 8x8 input (its mask is sized for 16 tokens)
        "MultiHead": lambda: (nets.MultiHead().eval(), torch.randn(1, 3, 8, 8))}


def _table_for(name: str, tmp_path: Path, curved: bool, fake_timing, step: int = 8):
    model, x = NETS[name]()
    s = trace_structure(model, x)
    fake_timing.state["curved"] = curved
    path = tmp_path / f"{name}.json"
    build_table(model, s, step=step, path=path, progress=False)
    return model, x, s, path


# ----------------------------------------------------------------------------- lookup math
def _synthetic() -> LatencyTable:
    conv = Signature("conv", (3, 3), (1, 1), (1, 1), (1, 1), False, (8, 8))
    dw = Signature("depthwise", (3, 3), (1, 1), (1, 1), (1, 1), False, (8, 8))
    g = Grid.empty(conv, [[1, 8, 16], [4, 12]])
    g.ms[:] = [[1.0, 2.0], [3.0, 7.0], [5.0, 11.0]]
    d = Grid.empty(dw, [[1, 9, 17]])
    d.ms[:] = [0.5, 1.5, 4.5]
    return LatencyTable({"device": "x", "device_type": "cpu"}, {conv.key: g, dw.key: d})


def test_lookup_is_exact_at_grid_points_and_bilinear_between() -> None:
    t = _synthetic()
    conv = next(g.signature for g in t.grids.values() if g.signature.kind == "conv")
    dw = next(g.signature for g in t.grids.values() if g.signature.kind == "depthwise")
    for i, ci in enumerate([1, 8, 16]):
        for j, co in enumerate([4, 12]):
            assert t.lookup(conv, ci, co) == t.grids[conv.key].ms[i, j]
    assert t.lookup(conv, 12, 4) == pytest.approx(4.0)  # halfway along c_in
    assert t.lookup(conv, 8, 8) == pytest.approx(5.0)  # halfway along c_out
    # a quarter of the way in both: (1-.25)(1-.25)*3 + .25*.75*5 + .75*.25*7 + .25*.25*11
    assert t.lookup(conv, 10, 6) == pytest.approx(0.5625 * 3 + 0.1875 * 5 + 0.1875 * 7
                                                  + 0.0625 * 11)
    assert t.lookup(dw, 13) == pytest.approx(3.0)
    assert t.lookup(dw, 17) == 4.5
    assert t.lookup(conv, 0, 12) == 0.0  # a layer with no channels is removed, not run


@pytest.mark.parametrize("c_in,c_out", [(17, 4), (0.5, 4), (8, 3), (8, 13), (-1, 4)])
def test_lookup_outside_the_grid_raises(c_in: float, c_out: float) -> None:
    t = _synthetic()
    conv = next(g.signature for g in t.grids.values() if g.signature.kind == "conv")
    with pytest.raises(LatencyTableError, match="outside the measured grid"):
        t.lookup(conv, c_in, c_out)


def test_unmeasured_points_and_unknown_layers_raise() -> None:
    t = _synthetic()
    conv = next(g.signature for g in t.grids.values() if g.signature.kind == "conv")
    t.grids[conv.key].ms[1, 1] = np.nan
    assert t.lookup(conv, 8, 4) == 3.0  # the missing corner has weight 0 here
    with pytest.raises(LatencyTableError, match="no measurement.*prunecli lut"):
        t.lookup(conv, 10, 6)
    other = Signature("conv", (5, 5), (1, 1), (2, 2), (1, 1), False, (8, 8))
    with pytest.raises(LatencyTableError, match="has no layer 'conv k5x5.*prunecli lut"):
        t.lookup(other, 8, 4)


# ----------------------------------------------------------------------------- real build
@pytest.fixture(scope="module")
def real_table(tmp_path_factory: pytest.TempPathFactory):
    """A real (tiny) table of resnet20 at 16x16: 87 points, 2 rounds of 3 calls, ~1-3 s."""
    model, x = resnet20()
    s = trace_structure(model, x)
    path = tmp_path_factory.mktemp("lut") / "resnet20.json"
    table = build_table(model, s, step=16, batch_size=2, warmup=1, repeats=2, rounds=2,
                        path=path, progress=False, threads=1, model_name="resnet20")
    return model, x, s, path, table


def test_real_build_saves_and_loads_with_its_conditions(real_table) -> None:
    model, x, s, path, table = real_table
    loaded = LatencyTable.load(path)
    c = loaded.conditions
    assert c["device_type"] == "cpu" and c["device"] and c["dtype"] == "fp32"
    assert c["batch_size"] == 2 and c["channels_last"] is False and c["threads"] == 1
    assert c["torch"] == torch.__version__ and "cudnn" in c and c["allocator"]
    assert loaded.meta["step"] == 16 and loaded.meta["created"] and loaded.meta["updated"]
    assert set(loaded.grids) == set(table.grids)
    for key, g in table.grids.items():
        assert [a.tolist() for a in loaded.grids[key].axes] == [a.tolist() for a in g.axes]
        assert np.allclose(loaded.grids[key].ms, g.ms, equal_nan=True, atol=1e-6)
    assert loaded.measured_points == plan_grid(collect_layers(model, s), s, 16).size
    entry = loaded.models[model_fingerprint(model, s)]
    assert entry["model"] == "resnet20" and entry["dense_ms"] > 0
    assert entry["rest_ms"] == pytest.approx(entry["dense_ms"] - entry["table_ms"])
    assert entry["rest_ms_per_activation"] >= 0 and len(entry["calibration"]) == 4
    json.loads(path.read_text())  # plain JSON
    assert not list(path.parent.glob(".*.tmp"))  # atomic writes leave no temp file


def test_real_table_through_build_cost_model(real_table) -> None:
    model, x, s, path, _ = real_table
    cm = build_cost_model("latency", model, s, x, table=str(path))
    assert cm.name == "latency" and cm.unit == "ms"
    assert cm.cost(cm.full) == cm.dense == pytest.approx(
        LatencyTable.load(path).models[model_fingerprint(model, s)]["dense_ms"], rel=1e-9)
    keep = random_keep(s, 0.5, torch.Generator().manual_seed(0))
    counts = s.keep_counts(keep)
    assert np.isfinite(cm.cost(counts)) and cm.ratio(counts) == cm.cost(counts) / cm.dense


def test_wrong_conditions_are_refused_naming_the_field(real_table, monkeypatch) -> None:
    model, x, s, path, _ = real_table
    table = LatencyTable.load(path)
    with pytest.raises(LatencyTableError, match=r"other conditions \(dtype: table 'fp32', "
                                                r"here 'bf16'; batch_size: table 2, here 8\)"):
        table.check_conditions("cpu", "bf16", 8, False)
    assert table.check_conditions("cpu", "bf16", 8, False, allow_mismatch=True) == [
        "dtype: table 'fp32', here 'bf16'", "batch_size: table 2, here 8"]
    assert table.check_conditions("cpu", "fp32", 2, False, threads=1) == []
    # a table from another device, as `cost=latency` loads it
    other = tmp = path.parent / "other_device.json"
    table.conditions["device"] = "NVIDIA TITAN V"
    table.save(tmp)
    with pytest.raises(LatencyTableError, match="device: table 'NVIDIA TITAN V'"):
        build_cost_model("latency", model, s, x, table=str(other))
    assert build_latency_cost_model(model, s, x, table=other, allow_mismatch=True).dense > 0
    assert build_cost_model("latency", model, s, x, table=str(other),
                            allow_mismatch=True).dense > 0


def test_missing_or_foreign_tables_are_clear_errors(real_table, tmp_path: Path) -> None:
    model, x, s, path, _ = real_table
    with pytest.raises(ConfigError, match="run|prunecli lut"):
        build_cost_model("latency", model, s, x)  # no cost.table
    with pytest.raises(LatencyTableError, match="no latency table at .*prunecli lut"):
        build_cost_model("latency", model, s, x, table=str(tmp_path / "nope.json"))
    bigger = torch.randn(1, 3, 32, 32)  # other input size: other signatures
    with pytest.raises(LatencyTableError, match="lacks .* layer kind.*input_size"):
        build_cost_model("latency", model, trace_structure(model, bigger), bigger,
                         table=str(path))
    table = LatencyTable.load(path)
    table.models.clear()
    table.save(tmp_path / "no_models.json")
    with pytest.raises(LatencyTableError, match="no whole-model measurement"):
        build_cost_model("latency", model, s, x, table=str(tmp_path / "no_models.json"))


def test_check_reports_prediction_errors(real_table) -> None:
    model, x, s, path, _ = real_table
    table = LatencyTable.load(path)
    rows = check_table(model, s, table, keep_ratios=(0.5,), warmup=1, repeats=3)
    assert [r["name"] for r in rows] == ["dense", "keep 50%"]
    for r in rows:
        assert np.isfinite(r["predicted_ms"]) and r["measured_ms"] > 0
        assert r["error_pct"] == pytest.approx(
            100 * (r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"])
    assert rows[1]["macs_ratio"] < 1
    assert table.models[model_fingerprint(model, s)]["check"] == rows


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("name", list(NETS))
def test_prediction_is_exact_for_a_bilinear_device(name: str, tmp_path: Path,
                                                   fake_timing) -> None:
    """With a device whose layer latency is bilinear in (c_in, c_out) and whose other ops cost
    a constant plus a time per layer output value, the model predicts a slimmed network's
    latency exactly, at counts between grid points too: c_in/c_out per layer (concat offsets,
    flatten, depthwise, shared calls), the output values and the fitted rest are right."""
    model, x, s, path = _table_for(name, tmp_path, False, fake_timing)
    cm = build_cost_model("latency", model, s, x, table=str(path))
    assert cm.dense == pytest.approx(reference_ms(model, x, rest=True), rel=1e-9)
    if any(g.prunable for g in s.groups):
        assert cm.rest == pytest.approx((CONST, PER_VALUE), rel=1e-6)
    for seed, ratio in enumerate((0.3, 0.55, 0.8)):
        keep = random_keep(s, ratio, torch.Generator().manual_seed(seed))
        predicted = cm.cost(s.keep_counts(keep))
        assert predicted == pytest.approx(reference_ms(slim(model, s, keep), x, rest=True),
                                          rel=1e-9)


@pytest.mark.parametrize("name", ["resnet20", "Concat", "Depthwise", "FlattenLinear",
                                  "GroupedConvs", "Ghost", "MixedSplits", "MultiHead"])
@pytest.mark.parametrize("side_weight", [0.0, 0.5, 1.0])
def test_group_curves_add_up_to_the_cost_at_their_point(name: str, side_weight: float,
                                                        tmp_path: Path, fake_timing) -> None:
    model, x, s, path = _table_for(name, tmp_path, True, fake_timing)
    cm = build_cost_model("latency", model, s, x, table=str(path))
    keep = random_keep(s, 0.6, torch.Generator().manual_seed(0))
    point = cm.counts_vector(s.keep_counts(keep))
    curves = cm.group_curves(point, side_weight=side_weight)
    assert set(curves) == {g.id for g in s.groups}
    for g in s.groups:
        assert len(curves[g.id]) == g.size + 1 and curves[g.id][0] == pytest.approx(0.0)
    total = sum(curves[g][int(point[g])] for g in curves) + cm.terms.const
    assert total == pytest.approx(cm.cost(point), rel=1e-9)


def test_batch_evaluation_matches_single(tmp_path: Path, fake_timing) -> None:
    model, x, s, path = _table_for("resnet20", tmp_path, True, fake_timing)
    cm = build_cost_model("latency", model, s, x, table=str(path))
    rng = np.random.default_rng(0)
    prunable = np.array([g.prunable for g in s.groups])
    xs = np.stack([np.where(prunable, np.maximum(1, (cm.full * rng.uniform(0.1, 1, cm.full.shape))
                                                 .round()), cm.full) for _ in range(32)])
    assert np.allclose(cm.cost_batch(xs), [cm.cost(v) for v in xs], rtol=1e-12)
    too_wide = cm.full.copy()
    too_wide[2] += 1
    with pytest.raises(LatencyTableError, match=r"17 channels is outside the measured grid "
                                                r"\[1, 16\] of layer1.0.conv2 \('conv k3x3"):
        cm.cost(too_wide)


def test_grid_holds_every_full_width_and_fixed_axes_only_full(tmp_path: Path, fake_timing) -> None:
    model, x, s, path = _table_for("resnet20", tmp_path, False, fake_timing, step=16)
    table = LatencyTable.load(path)
    stem = table.grids["conv k3x3 s1x1 p1x1 d1x1 nobias in16x16"]
    assert stem.axes[0].tolist() == [1, 3, 16] and stem.axes[1].tolist() == [1, 16]
    assert not np.isnan(stem.ms).any()  # every reachable point measured
    fc = table.grids["linear n1 bias"]
    assert fc.axes[0].tolist() == [1, 16, 32, 48, 64] and fc.axes[1].tolist() == [10]
    assert build_cost_model("latency", model, s, x, table=str(path)).channel_grid(5).tolist() \
        == [1, 16, 32]


# ----------------------------------------------------------------------------- resume
def test_an_interrupted_build_resumes_where_it_stopped(tmp_path: Path, fake_timing) -> None:
    model, x = resnet20()
    s = trace_structure(model, x)
    total = plan_grid(collect_layers(model, s), s, 8).size
    path = tmp_path / "lut.json"
    first = build_table(model, s, step=8, path=path, progress=False, max_points=40,
                        save_every=7)  # 3 rounds (the default) per point
    assert len(fake_timing.calls) == 3 * 40 and first.remaining == total - 40
    assert LatencyTable.load(path).measured_points == 40 and not first.models
    with pytest.raises(LatencyTableError, match="no whole-model measurement"):
        build_cost_model("latency", model, s, x, table=str(path))
    second = build_table(model, s, step=8, path=path, progress=False, rounds=1)
    assert len(fake_timing.calls) == 3 * 40 + total - 40  # only the remaining points
    assert len(set(fake_timing.calls)) == total and second.remaining == 0
    assert build_cost_model("latency", model, s, x, table=str(path)).rest == pytest.approx(
        (CONST, PER_VALUE))
    build_table(model, s, step=8, path=path, progress=False)  # complete: nothing to do
    assert len(fake_timing.calls) == 3 * 40 + total - 40


def test_resume_refuses_other_conditions_and_restarts_on_request(tmp_path: Path, fake_timing,
                                                                 monkeypatch) -> None:
    model, x = resnet20()
    s = trace_structure(model, x)
    path = tmp_path / "lut.json"
    build_table(model, s, step=16, path=path, progress=False, max_points=5)
    with pytest.raises(LatencyTableError, match="batch_size: table 1, here 4.*resume=false"):
        build_table(model, s, step=16, batch_size=4, path=path, progress=False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1000000000")
    with pytest.raises(LatencyTableError, match="allocator: table 'default', here "
                                                "'MALLOC_MMAP_THRESHOLD_=1000000000'"):
        build_table(model, s, step=16, path=path, progress=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    fresh = build_table(model, s, step=16, batch_size=4, path=path, progress=False,
                        resume=False)
    assert fresh.conditions["batch_size"] == 4 and fresh.remaining == 0
    assert LatencyTable.load(path).conditions["batch_size"] == 4


def test_a_second_model_extends_the_table(tmp_path: Path, fake_timing) -> None:
    """resnet32 shares all of resnet20's layer kinds: only its whole-model time is new."""
    path = tmp_path / "lut.json"
    r20, x = resnet20()
    build_table(r20, trace_structure(r20, x), step=16, path=path, progress=False)
    n = len(fake_timing.calls)
    r32 = build_model({"name": "resnet32"}, num_classes=10).eval()
    s32 = trace_structure(r32, x)
    build_table(r32, s32, step=16, path=path, progress=False)
    assert len(fake_timing.calls) == n and len(LatencyTable.load(path).models) == 2
    assert build_cost_model("latency", r32, s32, x, table=str(path)).dense == pytest.approx(
        reference_ms(r32, x, rest=True))


# ----------------------------------------------------------------------------- command
def test_lut_command_builds_checks_and_resumes(run_cli, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tables" / "r20.json"
    args = ["lut", "model=resnet20", "input_size=[3,16,16]", "num_classes=10", "batch_size=1",
            "device=cpu", "step=16", "warmup=1", "repeats=2", "rounds=1", "threads=1",
            f"out={out}"]
    run_cli(*args, "max_points=10", "check=false")
    assert "points left" in capsys.readouterr().out
    assert LatencyTable.load(out).measured_points == 10
    run = run_cli(*args, "check=true", "check_keep=[0.5]", "check_repeats=3",
                  run_dir=tmp_path / "run2")
    printed = capsys.readouterr().out
    table = LatencyTable.load(out)
    assert table.remaining == 0 and "predicted ms" in printed and "cost=latency" in printed
    (entry,) = table.models.values()
    assert [r["name"] for r in entry["check"]] == ["dense", "keep 50%"]
    assert (run / "lut_check.txt").is_file()


def test_lut_command_refuses_bad_settings(run_cli, capsys) -> None:
    with pytest.raises(SystemExit) as err:
        run_cli("lut", "model=resnet20", "device=cpu", "dtype=fp16")
    assert err.value.code == 2 and "fp16 is for CUDA" in capsys.readouterr().err
