"""A latency lookup table: measured milliseconds of single layers over a channel grid.

One *signature* is everything about a layer except its channel counts (conv: kernel, stride,
padding, dilation, bias, input size, depthwise or dense; linear: positions per sample, bias).
Layers sharing a signature share one grid of (c_in, c_out) points (depthwise: c only), so a
model's 20 identical 3x3 convs are measured once. The file is plain JSON (readable, diffable,
no pickled code) and records the conditions it was measured under, because a latency is only
meaningful on the device, dtype, batch and layout it was timed with.

Lookups interpolate (bi)linearly between grid points and *fail* outside the measured grid or at
an unmeasured point: a missing key silently costing 0 (as in SMCP) makes the allocator think a
layer is free, so here it is always an error naming the layer and what to do.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import platform
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunecli.cost.latency_signature import Signature
from prunecli.errors import PrunecliError

log = logging.getLogger("prunecli")

FORMAT = "prunecli-latency-table"
VERSION = 1
# conditions compared by check_conditions, in the order they are reported
CONDITION_FIELDS = ("device", "dtype", "batch_size", "channels_last", "threads", "allocator",
                    "torch", "cudnn")
_CPU_ONLY = ("threads", "allocator")


class LatencyTableError(PrunecliError):
    """A latency table that is missing, incomplete, from other conditions, or asked outside
    its grid."""


# ----------------------------------------------------------------------------- conditions
def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "processor\t: ")):
                    name = line.split(":", 1)[1].strip()
                    if name and not name.isdigit():
                        return name
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device | str) -> str:
    """A name that identifies the hardware: the GPU's, or the CPU model."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def cpu_allocator() -> str:
    """How host memory is allocated, which moves CPU latency a lot: with glibc's defaults every
    large output is a fresh mmap whose pages fault in on each call (measured here: ResNet-20 at
    batch 32 took 17 ms with ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` set, 21-34 ms
    without).
    Records a preloaded jemalloc/tcmalloc/mimalloc and any ``MALLOC_*_`` tunables."""
    libs = [Path(p).name for p in re.split(r"[:\s]+", os.environ.get("LD_PRELOAD", ""))
            if any(k in p for k in ("jemalloc", "tcmalloc", "mimalloc"))]
    tuned = sorted(f"{k}={v}" for k, v in os.environ.items()
                   if k.startswith("MALLOC_") and k.endswith("_"))
    return " ".join(libs + tuned) or "default"


def current_conditions(device: torch.device | str, dtype: str, batch_size: int,
                       channels_last: bool, threads: int | None = None) -> dict[str, Any]:
    """What a measurement made now, here, with these settings would be recorded under."""
    device = torch.device(device)
    cudnn = torch.backends.cudnn.version() if device.type == "cuda" else None
    return {"device": device_name(device), "device_type": device.type, "dtype": dtype,
            "batch_size": int(batch_size), "channels_last": bool(channels_last),
            "threads": int(threads if threads is not None else torch.get_num_threads()),
            "allocator": cpu_allocator(), "torch": torch.__version__, "cudnn": cudnn}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- grids
@dataclass
class Grid:
    """Measured ms of one signature: ``ms[i, j]`` at ``(axes[0][i], axes[1][j])``; NaN =
    not measured (yet)."""

    signature: Signature
    axes: tuple[np.ndarray, ...]
    ms: np.ndarray

    @classmethod
    def empty(cls, signature: Signature, axes: Sequence[Iterable[int]]) -> Grid:
        ax = tuple(np.unique(np.asarray(list(a), dtype=np.int64)) for a in axes)
        return cls(signature, ax, np.full(tuple(len(a) for a in ax), np.nan))

    def merged(self, axes: Sequence[Iterable[int]]) -> Grid:
        """This grid on the union of its axes and ``axes``, measured values kept."""
        new = Grid.empty(self.signature, [np.union1d(a, list(b)) for a, b in
                                          zip(self.axes, axes, strict=True)])
        idx = tuple(np.searchsorted(n, a) for n, a in zip(new.axes, self.axes, strict=True))
        new.ms[np.ix_(*idx)] = self.ms
        return new

    def index(self, point: Sequence[int]) -> tuple[int, ...]:
        out = []
        for a, c in zip(self.axes, point, strict=True):
            i = int(np.searchsorted(a, c))
            if i >= len(a) or a[i] != c:
                raise LatencyTableError(f"{c} channels is not a grid point of "
                                        f"'{self.signature.key}'")
            out.append(i)
        return tuple(out)

    def get(self, point: Sequence[int]) -> float:
        return float(self.ms[self.index(point)])

    def set(self, point: Sequence[int], ms: float) -> None:
        self.ms[self.index(point)] = ms

    def to_json(self) -> dict[str, Any]:
        ms = [None if math.isnan(v) else float(v) for v in self.ms.ravel()]
        shaped: Any = np.array(ms, dtype=object).reshape(self.ms.shape).tolist()
        return {"signature": self.signature.to_dict(), "axes": [a.tolist() for a in self.axes],
                "ms": shaped}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Grid:
        sig = Signature.from_dict(d["signature"])
        axes = tuple(np.asarray(a, dtype=np.int64) for a in d["axes"])
        flat = [np.nan if v is None else float(v) for v in np.array(d["ms"], dtype=object).ravel()]
        return cls(sig, axes, np.array(flat, dtype=np.float64).reshape(
            tuple(len(a) for a in axes)))


def interpolate(axes: Sequence[np.ndarray], ms: np.ndarray, coords: Sequence[np.ndarray],
                what: str = "") -> np.ndarray:
    """(Bi)linear interpolation of ``ms`` at ``coords`` (arrays of equal shape, one per axis).

    A coordinate equal to 0 gives 0 ms (a layer with no channels is removed, not run); a
    coordinate outside ``[axis[0], axis[-1]]`` or needing an unmeasured point raises.
    """
    coords = [np.asarray(c, dtype=np.float64) for c in coords]
    empty = np.zeros(coords[0].shape, dtype=bool)
    for c in coords:
        empty |= c == 0
    idx, frac = [], []
    for a, c in zip(axes, coords, strict=True):
        bad = ~empty & ((c < a[0]) | (c > a[-1]))
        if bad.any():
            raise LatencyTableError(
                f"{_first(c[bad])} channels is outside the measured grid [{a[0]}, {a[-1]}] of "
                f"{what or 'a layer'}; rebuild the table for this model with `prunecli lut`")
        cc = np.where(empty, a[0], c)
        if len(a) == 1:
            idx.append(np.zeros(cc.shape, dtype=np.int64))
            frac.append(np.zeros(cc.shape))
            continue
        i = np.clip(np.searchsorted(a, cc, side="right") - 1, 0, len(a) - 2)
        idx.append(i)
        frac.append((cc - a[i]) / (a[i + 1] - a[i]))
    total = np.zeros(coords[0].shape)
    for corner in np.ndindex(*(2,) * len(axes)):
        w = np.ones(coords[0].shape)
        pos = []
        for d, (i, t) in enumerate(zip(idx, frac, strict=True)):
            w = w * (t if corner[d] else 1.0 - t)
            pos.append(np.minimum(i + corner[d], len(axes[d]) - 1))
        v = ms[tuple(pos)]
        need = (w > 0) & ~empty
        if np.isnan(v[need]).any():
            raise LatencyTableError(
                f"the table has no measurement near {_first(coords[0][need & np.isnan(v)])} "
                f"channels of {what or 'a layer'}; finish it with `prunecli lut` (it resumes)")
        total += np.where(need, w * np.nan_to_num(v), 0.0)
    return total


def _first(values: np.ndarray) -> str:
    v = float(values.ravel()[0])
    return str(int(v)) if v.is_integer() else f"{v:g}"


# ----------------------------------------------------------------------------- the table
@dataclass
class LatencyTable:
    """Grids per signature, the conditions they were measured under, and per-model
    whole-network measurements (``models``: fingerprint -> dict) for the constant term."""

    conditions: dict[str, Any]
    grids: dict[str, Grid] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    remaining: int = 0  # points the last build_table left unmeasured (max_points); not saved

    # ------------------------------------------------------------------ lookup
    def grid(self, signature: Signature | str) -> Grid:
        key = signature if isinstance(signature, str) else signature.key
        if key not in self.grids:
            raise LatencyTableError(
                f"the latency table{self._where()} has no layer '{key}'; build it for this "
                "model and input size with `prunecli lut model=... input_size=[C,H,W]`")
        return self.grids[key]

    def lookup(self, signature: Signature | str, c_in: float, c_out: float | None = None
               ) -> float:
        """Milliseconds of one call at ``c_in`` -> ``c_out`` channels (depthwise: ``c_in``
        only), interpolated; raises outside the measured grid."""
        g = self.grid(signature)
        coords = [np.asarray([c_in], dtype=np.float64)]
        if g.signature.ndim == 2:
            if c_out is None:
                raise LatencyTableError(f"'{g.signature.key}' needs c_in and c_out")
            coords.append(np.asarray([c_out], dtype=np.float64))
        return float(interpolate(g.axes, g.ms, coords, f"'{g.signature.key}'")[0])

    # ------------------------------------------------------------------ conditions
    def mismatches(self, expected: Mapping[str, Any]) -> list[str]:
        """'field: table X, here Y' for every given field that differs (None = not checked);
        threads and the allocator only count on the CPU, cuDNN only on CUDA."""
        out = []
        cpu = self.conditions.get("device_type", "cpu") == "cpu"
        for name in CONDITION_FIELDS:
            if expected.get(name) is None or (name in _CPU_ONLY and not cpu) or (
                    name == "cudnn" and cpu):
                continue
            have = self.conditions.get(name)
            if have != expected[name]:
                out.append(f"{name}: table {have!r}, here {expected[name]!r}")
        return out

    def check_conditions(self, device: torch.device | str | None, dtype: str | None,
                         batch: int | None, channels_last: bool | None,
                         allow_mismatch: bool = False, threads: int | None = None,
                         software: bool = True) -> list[str]:
        """Refuse (one line naming the fields) a table measured under other conditions than
        these; ``None`` skips a field. ``software`` also compares the torch/cuDNN versions of
        this process. With ``allow_mismatch`` the differences are only logged (and returned)."""
        expected: dict[str, Any] = {"dtype": dtype, "batch_size": batch,
                                    "channels_last": channels_last, "threads": threads}
        if device is not None:
            expected["device"] = device_name(device)
            if software:
                expected["torch"] = torch.__version__
                if torch.device(device).type == "cuda":
                    expected["cudnn"] = torch.backends.cudnn.version()
        found = self.mismatches(expected)
        if found and not allow_mismatch:
            raise LatencyTableError(
                f"latency table{self._where()} was measured under other conditions ("
                f"{'; '.join(found)}); rebuild it here with `prunecli lut`, or allow it "
                "anyway (cost.allow_mismatch=true, or allow_mismatch=True in Python)")
        if found:
            log.warning("using latency table%s despite: %s", self._where(), "; ".join(found))
        return found

    def _where(self) -> str:
        return f" {self.path}" if self.path else ""

    # ------------------------------------------------------------------ files
    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "conditions": self.conditions,
                "meta": self.meta, "models": self.models,
                "grids": {k: g.to_json() for k, g in sorted(self.grids.items())}}

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write atomically (temp file + rename): a killed build never leaves a torn file."""
        target = Path(path or self.path or "latency_table.json")
        target.parent.mkdir(parents=True, exist_ok=True)
        self.meta["updated"] = _now()
        self.meta.setdefault("created", self.meta["updated"])
        text = json.dumps(self.to_json(), indent=1) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.path = target
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyTable:
        p = Path(path)
        if not p.is_file():
            raise LatencyTableError(f"no latency table at {p}; measure one with `prunecli lut "
                                    f"model=... out={p}`")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LatencyTableError(f"{p} is not a readable latency table ({exc})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise LatencyTableError(f"{p} is not a prunecli latency table")
        if d.get("version", 0) > VERSION:
            raise LatencyTableError(f"{p} was written by a newer prunecli (table version "
                                    f"{d['version']}); upgrade prunecli")
        grids = {k: Grid.from_json(g) for k, g in d.get("grids", {}).items()}
        return cls(dict(d["conditions"]), grids, dict(d.get("models", {})),
                   dict(d.get("meta", {})), p)

    @property
    def measured_points(self) -> int:
        return int(sum(np.count_nonzero(~np.isnan(g.ms)) for g in self.grids.values()))
