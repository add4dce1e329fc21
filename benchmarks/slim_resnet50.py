"""Write a slimmed torchvision ResNet-50 at a MACs budget, for `prunecli bench` (random weights:
speed does not depend on them). L1 scores, knapsack allocation with widths rounded to 8.

    python benchmarks/slim_resnet50.py --ratio 0.5 --out /tmp/r50_half.pt
    prunecli bench ckpt=/tmp/r50_half.pt batch_sizes=[1,32] repeats=10
"""

from __future__ import annotations

import argparse

import torch
import torchvision

from prunecli.allocate import allocate_to_budget
from prunecli.cost import build_cost_model, count_macs
from prunecli.structure import l1_scores, save_slim, slim, trace_structure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of MACs to remove")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--out", default="resnet50_slim.pt")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(1, 3, 224, 224)
    structure = trace_structure(model, x, ignore=["conv1", "fc"])
    scores = {g: v.numpy() for g, v in l1_scores(model, structure).items()}
    result = allocate_to_budget(build_cost_model("macs", model, structure, x), scores,
                                args.ratio, round_to=args.round_to)
    small = slim(model, structure, result.keep)
    save_slim(args.out, small, structure, result.keep,
              {"name": "resnet50", "source": "torchvision"}, 1000, 3)
    print(f"{args.out}: {count_macs(small, x) / 1e9:.3f} G MACs "
          f"({100 * result.ratio:.1f}% of {result.dense / 1e9:.3f} G)")


if __name__ == "__main__":
    main()
