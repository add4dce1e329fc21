"""Attention heads pruned whole: q, k and v rows and the projection's input columns of a head go
together, slimming rewrites the head count, the MACs cost model charges attention's matmuls per
head, and heads that cannot follow pruning stay whole with the reason."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from prunecli.cost.counting import count_macs
from prunecli.cost.model import build_cost_model
from prunecli.structure import load_slim, random_keep, slim, trace_structure
from tests import structure_nets as nets
from tests.conftest import read_results
from tests.test_structure import X, _group_of, _net, assert_exact


def _counts(structure, keep) -> dict[int, int]:
    return {g: len(k) for g, k in structure.normalise_keep(keep).items()}


def test_heads_are_pruning_units_and_slimming_rewrites_the_head_count() -> None:
    model = _net(nets.MultiHead)
    structure = trace_structure(model, X)
    fused, split = _group_of(structure, "attn1.qkv"), _group_of(structure, "attn2.q")
    assert (fused.size, fused.unit, fused.prunable) == (2, 4, True)  # 2 heads of 4 channels
    assert (split.size, split.unit, split.prunable) == (3, 2, True)  # q and kv: one group
    assert not fused.droppable and not split.droppable  # some head always stays
    assert split.producers == ["attn2.q", "attn2.kv"] and split.consumers == ["attn2.proj"]
    qkv = structure.roles["attn1.qkv"]
    assert [(s.offset, s.length, s.spatial) for s in qkv.out_segments] == [
        (0, 2, 4), (8, 2, 4), (16, 2, 4)]  # q, k and v rows: 2 heads each
    assert {(a.module, a.attr, a.unit) for a in structure.size_attrs} == {
        ("attn1", "num_heads", 4), ("attn1", "attn_dim", 1), ("attn2", "num_heads", 2)}
    keep = {fused.id: torch.tensor([1]), split.id: torch.tensor([0, 2])}
    small = assert_exact(model, keep)
    a1, a2 = small.attn1, small.attn2
    assert (a1.num_heads, a1.attn_dim, a1.qkv.out_features, a1.proj.in_features) == (1, 4, 12, 4)
    assert (a2.num_heads, a2.q.out_features, a2.kv.out_features, a2.proj.in_features) == (
        2, 4, 8, 4)
    # the kept head's rows: q, k and v of head 1 of attn1
    rows = torch.cat([torch.arange(4, 8), torch.arange(12, 16), torch.arange(20, 24)])
    assert torch.equal(a1.qkv.weight, model.attn1.qkv.weight[rows])
    # attention's matmuls are charged per kept head: the cost model equals the counter
    cost = build_cost_model("macs", model, structure, X[:1])
    assert cost.cost(_counts(structure, keep)) == pytest.approx(count_macs(small, X[:1]))
    assert structure.op_macs[fused.id] == 16 * 16 * (4 + 4)  # q.k and attn.v for one head


def test_heads_that_cannot_follow_pruning_stay_whole_with_the_reason() -> None:
    structure = trace_structure(_net(nets.HeadsLeftWhole), X)
    biased, literal = _group_of(structure, "bias_qkv"), _group_of(structure, "literal_qkv")
    assert not biased.prunable and "per-head tensor of unknown origin" in biased.reason
    assert not literal.prunable and "attention head count 2 not held by one attribute" in \
        literal.reason
    assert _group_of(structure, "fc1").prunable  # the rest of the net is still pruned


def test_cpu_attention_counts_as_macs() -> None:
    """torch's FLOP counter knows only the CUDA attention kernels; prunecli counts the CPU one
    too, or a ViT's attention would be free in every MACs figure on a CPU."""

    class Attend(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = x.reshape(1, 2, 5, 3)  # 2 heads, 5 tokens, 3 channels a head
            return F.scaled_dot_product_attention(q, q, q)

    assert count_macs(Attend(), torch.randn(1, 30)) == 2 * 5 * 5 * (3 + 3)


@pytest.mark.parametrize("fused", [True, False])
def test_vit_heads_slim_exactly_and_cost_what_they_count(fused: bool) -> None:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5,
                              img_size=32, patch_size=8, depth=2).eval()
    for m in model.modules():  # timm's SDPA path and its matmul path
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    structure = trace_structure(model, x)
    heads = [g for g in structure.prunable_groups if g.key.endswith("attn.qkv")]
    assert [(g.size, g.unit) for g in heads] == [(3, 64), (3, 64)]
    keep = random_keep(structure, 0.5, torch.Generator().manual_seed(1))
    small = assert_exact(model, keep, x)
    with torch.no_grad():
        assert (model(x) - small(x)).abs().max() / model(x).abs().max() > 1e-3  # not void
    for block, dense in zip(small.blocks, model.blocks, strict=True):
        kept = len(keep[structure.group(f"{_prefix(dense, model)}.attn.qkv").id])
        assert block.attn.num_heads == kept and block.attn.attn_dim == 64 * kept
    cost = build_cost_model("macs", model, structure, x[:1])
    assert cost.cost(_counts(structure, keep)) == pytest.approx(count_macs(small, x[:1]))


def _prefix(block: nn.Module, model: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is block)


def test_heads_inside_pieces_cost_per_image() -> None:
    """MobileViT is traced piecewise, its transformers on patches folded into the batch: their
    layers and attention are charged per image (they were a quarter of it)."""
    torch.manual_seed(0)
    model = timm.create_model("mobilevit_xxs", pretrained=False, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    structure = trace_structure(model, x)
    assert any(g.prunable and g.unit > 1 and "attn.qkv" in g.key for g in structure.groups)
    keep = random_keep(structure, 0.5, torch.Generator().manual_seed(0))
    small = slim(model, structure, keep)
    cost = build_cost_model("macs", model, structure, x[:1])
    assert cost.cost(_counts(structure, keep)) == pytest.approx(count_macs(small, x[:1]))


def test_a_run_prunes_vit_heads_from_the_cli(run_cli) -> None:
    run = run_cli("train", "experiment=smoke", "data.train_size=32", "data.val_size=16",
                  "data.batch_size=16", "data.image_size=32", "trainer.progress=false",
                  "trainer.epochs=2", "model=timm", "model.name=vit_tiny_patch16_224",
                  "+model.kwargs.depth=2", "+model.kwargs.patch_size=8",
                  "+model.kwargs.img_size=32", "method=taylor",
                  "cost.ratio=0.5", "method.prune_every=1", "method.remove_per_step=0.2")
    r = read_results(run)
    assert 0.45 <= r["cost_kept"] <= 0.5 + 1e-9
    assert r["slim_top1"] == r["top1"] and r["slim_max_diff"] < 1e-4
    loaded = load_slim(run / "slim.pt")  # rebuilt from the registry and the keep-sets alone
    assert sum(p.numel() for p in loaded.model.parameters()) == r["params"]
    heads = [b.attn.num_heads for b in loaded.model.blocks]
    widths = {w["group"]: w["kept"] for w in r["widths"]}  # in channels: 64 a head
    assert heads == [widths[f"blocks.{i}.attn.qkv"] // 64 for i in range(2)]
    assert sum(heads) < 6  # some heads went


def test_a_model_built_for_another_input_size_is_a_one_line_error(run_cli, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        run_cli("train", "experiment=smoke", "data.train_size=16", "data.val_size=16",
                "data.image_size=32", "model=timm", "model.name=vit_tiny_patch16_224",
                "+model.kwargs.depth=1")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "+model.kwargs.img_size=32" in err[0]


def test_a_size_is_held_only_by_the_attribute_the_code_reads() -> None:
    """A head count written as 2 in the code, in a module whose ``attn_dim`` happens to be 2:
    matched by value alone, slimming would rewrite ``attn_dim`` and the slim model's reshape
    would fail. Re-tracing the module with ``attn_dim`` changed shows the reshape does not read
    it, so the heads stay whole."""

    class Fooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn_dim = 2
            self.patch = nn.Conv2d(3, 4, 2, stride=2)
            self.qkv = nn.Linear(4, 6)
            self.proj = nn.Linear(2, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.patch(x).flatten(2).transpose(1, 2)
            b, n, _ = t.shape
            q, k, v = self.qkv(t).reshape(b, n, 3, 2, 1).permute(2, 0, 3, 1, 4).unbind(0)
            y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
            return self.proj(y.reshape(b, n, self.attn_dim)).mean(1)

    group = _group_of(trace_structure(Fooled(), X), "qkv")
    assert not group.prunable
    assert "attention head count 2 not held by one attribute of Fooled" in group.reason
