"""Channel structure: trace a CNN into coupled channel groups, mask them, slim exactly, and save
and load slimmed models without pickled code.

    structure = trace_structure(model, torch.randn(1, 3, 224, 224), ignore=["conv1", "fc"])
    keep = top_k_keep(l1_scores(model, structure), keep_ratio=0.7, round_to=8)
    masker = ChannelMasker(model, structure); masker.set_keep(keep)   # same shapes, masked
    small = slim(model, structure, keep)                               # fewer channels
    save_slim("small.pt", small, structure, keep, model_config, num_classes, in_chans)
    small = load_slim("small.pt").model
"""

from prunecli.structure.export import export_onnx, export_torchscript
from prunecli.structure.io import SlimModel, load_slim, save_slim
from prunecli.structure.keep import kept_count, l1_scores, random_keep, top_k_keep
from prunecli.structure.masked_state import has_masks, keep_from_masks, split_masked_state_dict
from prunecli.structure.masks import ChannelMasker, InputChannelMask, strip_all_masks
from prunecli.structure.slim import slim
from prunecli.structure.structure import ChannelStructure, KeepError, trace_structure
from prunecli.structure.trace import TraceError
from prunecli.structure.types import ChannelGroup, ModuleRole, ParamSlice, Segment

__all__ = [
    "ChannelGroup", "ChannelMasker", "ChannelStructure", "InputChannelMask", "KeepError",
    "ModuleRole", "ParamSlice", "Segment", "SlimModel", "TraceError", "export_onnx",
    "export_torchscript", "has_masks", "keep_from_masks", "kept_count", "l1_scores",
    "load_slim", "random_keep", "save_slim",
    "slim", "split_masked_state_dict", "strip_all_masks", "top_k_keep", "trace_structure",
]
