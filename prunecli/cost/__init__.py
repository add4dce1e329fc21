"""Cost models by name: the cost of a model for any kept-channel counts per group (MACs,
parameters, memory, latency from a measured table), evaluated in microseconds so allocators can
call them thousands of times; plus independent whole-model counters (``count_macs`` runs
torch's FLOP counter)."""

from prunecli.cost.counting import count_macs, count_params
from prunecli.cost.latency_model import LatencyCostModel, build_latency_cost_model
from prunecli.cost.latency_signature import Signature
from prunecli.cost.latency_table import LatencyTable, LatencyTableError
from prunecli.cost.layers import group_macs, layer_macs
from prunecli.cost.model import COSTS, CostModel, build_cost_model

__all__ = ["COSTS", "CostModel", "LatencyCostModel", "LatencyTable", "LatencyTableError",
           "Signature", "build_cost_model", "build_latency_cost_model", "count_macs",
           "count_params", "group_macs", "layer_macs"]
