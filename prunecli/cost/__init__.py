"""Cost models by name: the cost of a model for any kept-channel counts per group (MACs,
parameters, memory), evaluated in microseconds so allocators can call them thousands of times;
plus independent whole-model counters (``count_macs`` runs torch's FLOP counter)."""

from prunecli.cost.counting import count_macs, count_params
from prunecli.cost.layers import group_macs, layer_macs
from prunecli.cost.model import COSTS, CostModel, build_cost_model

__all__ = ["COSTS", "CostModel", "build_cost_model", "count_macs", "count_params", "group_macs",
           "layer_macs"]
