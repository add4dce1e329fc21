"""Loading local weights into a built model: a state_dict file (or a training checkpoint, or a
slimmed run's checkpoint scattered back to dense shapes), read with ``weights_only=True``, with
DDP/torch.compile prefixes removed, checked against the model with one-line errors, and adapted
when taken as pretrained weights (a classifier for another class count is left fresh)."""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunecli.errors import CheckpointError
from prunecli.models.registry import classifier_name, one_line

# Wrappers whose prefix a saved state_dict may carry: DDP and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 5


def _read(path: str | Path) -> Any:
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(
            f"model weights file '{path}' does not exist; check model.weights=PATH "
            "(a file saved with torch.save)."
        )
    if p.is_dir():  # a run folder, as ckpt= and resume= take it: its last checkpoint
        if not (p / "last.pt").is_file():
            raise CheckpointError(f"model weights '{path}' is a folder without a run's last.pt; "
                                  "pass the .pt file itself.")
        p = p / "last.pt"
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            from prunecli.engine.checkpoint import refused_global

            raise CheckpointError(
                f"model weights '{path}' hold pickled Python objects, not only tensors "
                f"({refused_global(exc)}; a pickled model?): refused, loading them could run "
                "code; save model.state_dict() with torch.save instead."
            ) from None
        raise CheckpointError(_corrupt_message(path, exc)) from exc
    except Exception as exc:  # any failure to deserialise is a bad file, not a prunecli bug
        raise CheckpointError(_corrupt_message(path, exc)) from exc


def _corrupt_message(path: str | Path, exc: BaseException) -> str:
    return (
        f"could not read model weights '{path}' ({one_line(exc, 120)}); the file is corrupt, "
        "truncated or not saved with torch.save: re-save or re-download it."
    )


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def extract_state_dict(obj: Any, path: str | Path = "<weights>") -> dict[str, torch.Tensor]:
    """The state_dict inside a loaded file: raw, or under ``model`` / ``state_dict`` (checkpoints),
    with DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes removed."""
    if not _is_state_dict(obj) and isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        keys = ", ".join(map(str, list(obj)[:_MAX_LISTED])) if isinstance(obj, Mapping) else ""
        found = f"a dict with keys {keys}" if keys else type(obj).__name__
        raise CheckpointError(
            f"model weights '{path}' hold no state_dict (found {found}); expected "
            "torch.save(model.state_dict()) or a checkpoint with a 'model' or 'state_dict' entry."
        )
    state = dict(obj)
    if any(".parametrizations.weight." in k for k in state):  # a pruning run's masked weights
        from prunecli.structure.masked_state import split_masked_state_dict

        state, _ = split_masked_state_dict(state)  # dense weights; the masks are dropped
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _under(key: str, module_name: str | None) -> bool:
    return module_name is not None and key.startswith(module_name + ".")


def _listed(keys: list[str]) -> str:
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _adapt_as_pretrained(
    model: nn.Module, state: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Pretrained weights for another class count / channel count: drop the head, adapt conv 1.

    Returns the adapted state and the model keys allowed to stay freshly initialised.
    """
    from prunecli.models.external import adapt_input_conv, first_conv

    own = model.state_dict()
    head = classifier_name(model)
    fresh = {k for k in own if _under(k, head) and k in state and state[k].shape != own[k].shape}
    state = {k: v for k, v in state.items() if k not in fresh}
    found = first_conv(model)
    if found is not None:
        key = f"{found[0]}.weight"
        w = state.get(key)
        want = own[key].shape
        if (
            w is not None
            and w.dim() == 4
            and w.shape[1] != want[1]
            and (w.shape[0], w.shape[2:]) == (want[0], want[2:])
        ):
            state[key] = adapt_input_conv(want[1], w)
    return state, fresh


def check_compatible(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | Path = "<weights>",
    allowed_missing: Iterable[str] = (),
) -> None:
    """Raise a one-line :class:`CheckpointError` unless ``state`` fits ``model`` exactly."""
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        head = classifier_name(model)
        k = mismatched[0]
        saved, wanted = tuple(state[k].shape), tuple(own[k].shape)
        if all(_under(m, head) for m in mismatched):
            n_saved = state[f"{head}.weight"].shape[0] if f"{head}.weight" in state else saved[0]
            raise CheckpointError(
                f"model weights '{path}' have a classifier head ('{head}') for {n_saved} classes "
                f"but the model has {wanted[0]} ({k}: {saved} in the file vs {wanted}); use "
                "weights trained on this dataset, or add model.pretrained=true to load them "
                "with a fresh classifier."
            )
        raise CheckpointError(
            f"model weights '{path}' do not fit the model: '{k}' has shape {saved} in the file "
            f"but {wanted} in the model; were they saved from another model or model.kwargs?"
        )
    allowed = set(allowed_missing)
    missing = [k for k in own if k not in state and k not in allowed]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_listed(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
        raise CheckpointError(
            f"model weights '{path}' do not match the model ({'; '.join(parts)}); "
            "were they saved from another model?"
        )


def load_weights(model: nn.Module, path: str | Path, *, as_pretrained: bool = False) -> None:
    """Load a local weights file into ``model`` in place, checking every key and shape first."""
    raw = _read(path)
    if isinstance(raw, Mapping) and raw.get("slimmed") and "data_info" in raw:
        # a run that fine-tuned its slimmed model: its weights scattered back to dense shapes
        from prunecli.structure.unslim import dense_from_slimmed_checkpoint

        state = dense_from_slimmed_checkpoint(model, raw)
    else:
        state = extract_state_dict(raw, path)
    fresh: set[str] = set()
    if as_pretrained:
        state, fresh = _adapt_as_pretrained(model, state)
    check_compatible(model, state, path, allowed_missing=fresh)
    try:
        model.load_state_dict(state, strict=not fresh)
    except RuntimeError as exc:  # dtype quirks the shape check cannot see
        raise CheckpointError(f"could not load model weights '{path}': {one_line(exc)}") from exc




__all__ = ["check_compatible", "extract_state_dict", "load_weights"]
