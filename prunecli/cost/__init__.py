"""Cost models by name. This first version measures whole models (MACs by counting the
operations of one forward pass, parameters by counting); the per-channel-group cost models that
solvers call thousands of times build on the channel structure."""

from prunecli.cost.counting import COSTS, count_macs, count_params, measure_cost
from prunecli.cost.layers import group_macs, layer_macs

__all__ = ["COSTS", "count_macs", "count_params", "group_macs", "layer_macs", "measure_cost"]
