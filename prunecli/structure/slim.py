"""Physically remove channels: a smaller model of the same classes. Only a dropped group (all
its channels removed, see :mod:`prunecli.structure.dropped`) puts prunecli's stand-in modules in
place of the layers it empties."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from prunecli.errors import PrunecliError
from prunecli.structure.dropped import ConstantChannels, EmptyChannels
from prunecli.structure.masks import strip_all_masks
from prunecli.structure.structure import ChannelStructure, KeepSpec
from prunecli.structure.types import ModuleRole, Segment


def _input_index(segments: tuple[Segment, ...], keep: dict[int, torch.Tensor]
                 ) -> torch.Tensor | None:
    """Kept positions along a module's input axis, or None when nothing is removed there."""
    if not any(s.group in keep for s in segments):
        return None
    parts = []
    for s in segments:
        if s.group in keep:
            base = keep[s.group] * s.spatial + s.offset
            parts.append((base[:, None] + torch.arange(s.spatial)).flatten())
        else:
            parts.append(torch.arange(s.offset, s.offset + s.length * s.spatial))
    return torch.cat(parts)


def output_index(role: ModuleRole, keep: dict[int, torch.Tensor]) -> torch.Tensor | None:
    """Kept output channels of a producer (each segment of its output: a group's channels, a
    unit spanning ``spatial`` outputs), or None when it keeps everything."""
    return _input_index(role.out_segments, keep)


def _kept_width(segments: tuple[Segment, ...], keep: dict[int, torch.Tensor]) -> int:
    return sum((len(keep[s.group]) if s.group in keep else s.length) * s.spatial
               for s in segments)


# state-dict name -> the (dim, index) slices that made it from the dense tensor, in order; a
# ``(SCALED, factor)`` entry: the slice was then multiplied by ``factor`` (a GRN's weight)
SliceLog = dict[str, list[tuple[int, torch.Tensor]]]
SCALED = -1


def _take(module: nn.Module, attr: str, index: torch.Tensor, dim: int,
          log: SliceLog | None = None, name: str = "") -> None:
    """Replace ``module.attr`` (parameter or buffer) by its slice along ``dim``."""
    old = getattr(module, attr, None)
    if old is None:
        return
    if log is not None:
        log.setdefault(f"{name}.{attr}" if name else attr, []).append((dim, index.cpu()))
    new = old.detach().index_select(dim, index.to(old.device)).clone()
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        setattr(module, attr, new)


_SIZE_ATTRS = {"conv": ("in_channels", "out_channels"), "linear": ("in_features", "out_features")}


def _slim_module(module: nn.Module, kind: str, in_idx: torch.Tensor | None,
                 out_idx: torch.Tensor | None, log: SliceLog | None = None,
                 name: str = "") -> None:
    def take(attr: str, index: torch.Tensor, dim: int) -> None:
        _take(module, attr, index, dim, log, name)

    if kind in _SIZE_ATTRS:  # conv / linear: outputs on dim 0, inputs on dim 1
        in_attr, out_attr = _SIZE_ATTRS[kind]
        if out_idx is not None:
            take("weight", out_idx, 0)
            take("bias", out_idx, 0)
            setattr(module, out_attr, len(out_idx))
        if in_idx is not None:
            take("weight", in_idx, 1)
            setattr(module, in_attr, len(in_idx))
    elif kind == "depthwise" and in_idx is not None:  # depthwise, or grouped w -> w
        width = module.in_channels // module.groups
        take("weight", in_idx, 0)
        take("bias", in_idx, 0)
        module.in_channels = module.out_channels = len(in_idx)
        module.groups = len(in_idx) // width
    elif kind == "norm" and in_idx is not None:
        width = module.num_channels // module.num_groups if isinstance(module, nn.GroupNorm) \
            else 1  # channels per GN group: whole GN groups go
        for attr in ("weight", "bias", "running_mean", "running_var"):
            take(attr, in_idx, 0)
        if hasattr(module, "num_features"):
            module.num_features = len(in_idx)
        if isinstance(module, nn.GroupNorm):
            module.num_channels, module.num_groups = len(in_idx), len(in_idx) // width
    elif kind == "prelu" and in_idx is not None:
        take("weight", in_idx, 0)
        module.num_parameters = len(in_idx)
    elif kind == "grn" and in_idx is not None:
        # the mean over C channels (removed ones zeroed) becomes a mean over the kept C':
        # x_g / (S/C + eps) == (C/C') * x_g / (S/C' + eps * C/C')
        factor = module.weight.numel() / len(in_idx)
        take("weight", in_idx, 0)
        take("bias", in_idx, 0)
        with torch.no_grad():
            module.weight.mul_(factor)
        module.eps = module.eps * factor
        if log is not None:
            log[f"{name}.weight" if name else "weight"].append(
                (SCALED, torch.tensor(factor, dtype=torch.float64)))


def _stand_in(module: nn.Module, role: ModuleRole, idx: dict[int, torch.Tensor],
              dropped: set[int]) -> nn.Module | None:
    """What replaces a layer that a dropped group leaves with nothing to do, or None."""
    reads_only_dropped = bool(role.in_segments) and all(
        s.group in dropped for s in role.in_segments)
    if role.kind in ("conv", "linear"):
        if role.out_segments and all(s.group in dropped for s in role.out_segments):
            return EmptyChannels(module)
        if reads_only_dropped:
            return ConstantChannels(module, output_index(role, idx))
    elif reads_only_dropped:
        return EmptyChannels(module) if role.kind == "depthwise" else nn.Identity()
    return None


def _check_geometry(name: str, new: nn.Module, structure: ChannelStructure) -> None:
    """The stand-in must reproduce the traced spatial size (a conv we cannot size is an
    error here, not a shape mismatch deep in a later forward)."""
    geometry = getattr(new, "geometry", None)
    if geometry is None or name not in structure.shapes:
        return
    in_shape, out_shape = structure.shapes[name]
    if geometry.out_size(tuple(in_shape[2:])) != tuple(out_shape[2:]):
        raise PrunecliError(f"cannot drop {name}: its output size {tuple(out_shape[2:])} does "
                            "not follow from its kernel, stride and padding; keep at least one "
                            "channel of its group (method.layer_drop=false)")


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    owner._modules[child] = new


def slim(model: nn.Module, structure: ChannelStructure, keep: KeepSpec,
         inplace: bool = False, log: SliceLog | None = None) -> nn.Module:
    """Return ``model`` with only the kept channels of each group.

    ``keep`` maps group ids or keys to kept channel indices (groups not listed keep all). A
    detector is slimmed in its core (``structure`` traced on it) and returned whole. Masks
    attached by :class:`ChannelMasker` are removed first (their keep-set is what should be
    passed here: ``masker.keep()``). The result is the same module classes with smaller layers;
    an empty keep-set (a droppable group, ``method.layer_drop``) replaces the layers it empties
    by zero-cost stand-ins that compute exactly what the masked model did.

    ``log`` (optional) receives, per state-dict name of ``model`` (a detector's, not its
    core's), the slices that made each sliced tensor from the dense one: what moves optimizer
    state to the slim model, and scatters a slim state back into dense shapes
    (:mod:`prunecli.structure.unslim`).
    """
    from prunecli.models.detection import core_of

    idx = structure.normalise_keep(keep)
    whole = model if inplace else copy.deepcopy(model)
    strip_all_masks(whole)
    model = core_of(whole)  # a detector is slimmed in its core, the structure's namespace
    if log is not None and model is not whole:
        core_log: SliceLog = {}
        _slim_core(model, structure, idx, core_log)
        log.update(_names_in_whole(whole, core_log))
    else:
        _slim_core(model, structure, idx, log)
    return whole


def _names_in_whole(whole: nn.Module, core_log: SliceLog) -> SliceLog:
    """``core_log`` with its core-relative names (``backbone.conv.weight``) renamed to the
    whole model's state-dict names (``net.backbone.conv.weight``)."""
    from prunecli.models.detection import names_in_core

    to_whole: dict[str, str] = {}
    for in_whole, in_core in names_in_core(whole).items():
        to_whole.setdefault(in_core, in_whole)
    out: SliceLog = {}
    for name, ops in core_log.items():
        module, _, attr = name.rpartition(".")
        if module not in to_whole:
            raise PrunecliError(f"slim: {name} of the core is no tensor of the whole model")
        out[f"{to_whole[module]}.{attr}" if to_whole[module] else attr] = ops
    return out


def _slim_core(model: nn.Module, structure: ChannelStructure, idx: dict[int, torch.Tensor],
               log: SliceLog | None) -> None:
    """Slim ``model`` (the traced network itself) in place."""
    modules = dict(model.named_modules())
    dropped = {g for g, i in idx.items() if i.numel() == 0}
    for role in structure.roles.values():
        if dropped:
            new = _stand_in(modules[role.name], role, idx, dropped)
            if new is not None:
                _check_geometry(role.name, new, structure)
                _replace(model, role.name, new)
                out = output_index(role, idx)
                if log is not None and getattr(new, "bias", None) is not None:
                    log[f"{role.name}.bias"] = [] if out is None else [(0, out.cpu())]
                continue
        in_idx = _input_index(role.in_segments, idx)
        out_idx = output_index(role, idx)
        if in_idx is not None or out_idx is not None:
            _slim_module(modules[role.name], role.kind, in_idx, out_idx, log, role.name)
    for p in structure.params:
        index = _input_index(p.segments, idx)
        if index is None:
            continue
        owner = modules[p.module] if p.module else model
        old = getattr(owner, p.attr)
        dim = next(d for d, n in enumerate(old.shape) if n == old.numel())
        _take(owner, p.attr, index, dim, log, p.module)
    for sa in structure.size_attrs:  # split sizes, head counts held by a module
        owner = modules[sa.module] if sa.module else model
        old = getattr(owner, sa.attr)
        widths = [_kept_width(part, idx) // sa.unit for part in sa.parts]
        setattr(owner, sa.attr, widths[0] if isinstance(old, int) else type(old)(widths))


@contextlib.contextmanager
def full_fp32_matmuls() -> Iterator[None]:
    """TF32 off for CUDA convs and matmuls (PyTorch enables it for cuDNN convs by default): its
    10-bit mantissa rounds the masked and the slimmed model differently, ~1e-3 apart, which
    would hide (or fake) a slimming error in the exactness check."""
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


@torch.no_grad()
def max_relative_difference(masked: nn.Module, small: nn.Module, x: torch.Tensor) -> float:
    """The largest ``max|a - b| / max|a|`` over the outputs of the pruned parts (a classifier's
    logits, each raw head tensor of a detector's core) on input ``x``: what "exact" is checked
    with."""
    from prunecli.models.detection import core_of

    with full_fp32_matmuls():
        outs_a, outs_b = core_of(masked)(x), core_of(small)(x)
    if isinstance(outs_a, torch.Tensor):
        outs_a, outs_b = (outs_a,), (outs_b,)
    return max(((a.float() - b.float()).abs().max() / a.float().abs().max().clamp_min(1e-12)
                ).item() for a, b in zip(outs_a, outs_b, strict=True))
