"""The report's figures, drawn to files with matplotlib (never a window): metric against a cost
with each method's Pareto front, the kept channel widths of pruned runs, and training curves
with the pruning events. Inputs are plain numbers, so the figures are testable without runs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works on a headless server and in tests
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from prunecli.reporting.history import Curves  # noqa: E402

MARKERS = "osD^vPX<>ph"
DENSE_COLOR = "0.35"
DPI = 120


@dataclass
class Point:
    """One run in a trade-off plot."""

    method: str
    x: float  # cost: % of dense MACs, or ms
    y: float  # metric


@dataclass
class Star:
    """The dense model in a trade-off plot."""

    x: float
    y: float
    label: str


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points that no other point beats (as low a cost and as high a metric,
    one of them strictly), ordered by cost. Of identical points the first is kept; points with
    a NaN are never on the front."""
    valid = [i for i, (x, y) in enumerate(points) if math.isfinite(x) and math.isfinite(y)]
    front: list[int] = []
    best = -math.inf
    for i in sorted(valid, key=lambda i: (points[i][0], -points[i][1], i)):
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def method_styles(methods: Sequence[str]) -> dict[str, tuple[str, str]]:
    """A fixed colour and marker per method, the same in every figure of a report."""
    palette = plt.get_cmap("tab10").colors
    names = [m for m in dict.fromkeys(methods) if m != "none"]
    styles = {m: (matplotlib.colors.to_hex(palette[i % 10]), MARKERS[i % len(MARKERS)])
              for i, m in enumerate(names)}
    styles["none"] = (DENSE_COLOR, "*")
    return styles


def _save(fig: Figure, path: Path) -> Path:
    try:
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_tradeoff(points: Sequence[Point], stars: Sequence[Star],
                  styles: dict[str, tuple[str, str]], *, x_label: str, y_label: str, title: str,
                  path: Path) -> Path:
    """Metric (up is better) against a cost (left is better): one marker and colour per
    method, its Pareto front as a step line, the dense model as a star."""
    fig, ax = plt.subplots(figsize=(8, 5.2))
    for method in dict.fromkeys(p.method for p in points):
        mine = [p for p in points if p.method == method]
        color, marker = styles[method]
        if method == "none":
            continue  # drawn as stars below
        ax.scatter([p.x for p in mine], [p.y for p in mine], s=46, color=color, marker=marker,
                   label=method, zorder=3, edgecolors="white", linewidths=0.6)
        front = [mine[i] for i in pareto_front([(p.x, p.y) for p in mine])]
        if len(front) > 1:
            ax.step([p.x for p in front], [p.y for p in front], where="post", color=color,
                    alpha=0.55, linewidth=1.4, zorder=2)
    for i, star in enumerate(stars):
        ax.scatter([star.x], [star.y], s=220, marker="*", color="gold", edgecolors="black",
                   linewidths=0.8, zorder=4, label=star.label if i == 0 else None)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", title="method", title_fontsize=8)
    return _save(fig, path)


@dataclass
class ArchPanel:
    """One pruned run's widths, in network order."""

    label: str
    groups: list[str]
    size: list[int]  # dense width
    kept: list[int]


def _short(name: str, limit: int = 26) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def plot_architecture(panels: Sequence[ArchPanel], title: str, path: Path) -> Path:
    """Dense (light) and kept (dark) width of every channel group, one panel per run; runs of
    the same groups share the x axis, labelled below (every k-th group when there are many)."""
    same = all(p.groups == panels[0].groups for p in panels)
    n = max(len(p.groups) for p in panels)
    step = max(1, math.ceil(n / 48))
    width = min(18.0, max(8.0, 0.16 * n + 3))
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 1.8 * len(panels) + 1.6),
                             sharex=same, squeeze=False, layout="constrained")
    for k, (ax, panel) in enumerate(zip(axes[:, 0], panels, strict=True)):
        idx = list(range(len(panel.groups)))
        ax.bar(idx, panel.size, width=0.8, color="#c6d4e8", label="dense width")
        ax.bar(idx, panel.kept, width=0.8, color="#1f4e79", label="kept width")
        kept, total = sum(panel.kept), sum(panel.size)
        ax.set_title(f"{panel.label}: {kept}/{total} channels kept "
                     f"({100 * kept / max(1, total):.0f} %)", fontsize=9, loc="left")
        ax.set_ylabel("channels", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
        ax.set_xlim(-0.7, n - 0.3)
        if not same or k == len(panels) - 1:
            ticks = idx[::step]
            ax.set_xticks(ticks)
            ax.set_xticklabels([_short(panel.groups[i]) for i in ticks], rotation=90,
                               fontsize=7)
        if k == 0:
            ax.legend(fontsize=7, loc="upper left", ncols=2)
    label = "channel group (network order"
    label += f"; one name every {step} groups)" if step > 1 else ")"
    axes[-1, 0].set_xlabel(label)
    fig.suptitle(title)
    return _save(fig, path)


@dataclass
class CurveRun:
    """One run in the training-curve figure."""

    label: str
    curves: Curves
    target: float | None = None  # cost budget (fraction), dotted in the cost panel
    dense: bool = False  # drawn as the grey dashed reference


def _rug(ax: plt.Axes, steps: Sequence[float], color: str) -> None:
    """Pruning events as triangles on the bottom edge of a panel."""
    if steps:
        ax.plot(steps, [0.0] * len(steps), linestyle="none", marker="^", markersize=5,
                color=color, alpha=0.8, transform=ax.get_xaxis_transform(), clip_on=False)


def plot_curves(runs: Sequence[CurveRun], *, metric_label: str, cost_label: str, title: str,
                path: Path) -> Path:
    """Three panels on one step axis: training loss, validation metric, cost kept; the pruning
    events as triangles on the step axis of every panel."""
    fig, (loss_ax, val_ax, cost_ax) = plt.subplots(3, 1, figsize=(9, 8.5), sharex=True,
                                                   layout="constrained")
    palette = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20").colors
    colour, any_events = 0, False
    for run in runs:
        c = run.curves
        if run.dense:
            color, style, width = DENSE_COLOR, "--", 1.2
        else:
            color, style, width = palette[colour % len(palette)], "-", 1.4
            colour += 1
        events = [s for s, _ in c.prune]
        if c.loss:
            loss_ax.plot(*zip(*c.loss, strict=True), style, color=color, linewidth=width,
                         label=run.label)
        if c.val:
            val_ax.plot(*zip(*c.val, strict=True), style, color=color, linewidth=width,
                        marker=".", label=None if c.loss else run.label)
        for ax in (loss_ax, val_ax):
            _rug(ax, events, color)
        if run.dense:
            continue
        if c.prune:  # full cost until the first event, then each event's kept share
            any_events = True
            xs = [0.0, *events, max(c.last_step or events[-1], events[-1])]
            ys = [100.0, *(100 * v for _, v in c.prune), 100 * c.prune[-1][1]]
            cost_ax.step(xs, ys, where="post", color=color, linewidth=width)
            cost_ax.plot(events, [100 * v for _, v in c.prune], "^", color=color,
                         markersize=5)
        if run.target is not None:
            cost_ax.axhline(100 * run.target, color=color, linestyle=":", linewidth=1)
    loss_ax.set_ylabel("training loss")
    val_ax.set_ylabel(f"validation {metric_label}")
    cost_ax.set_ylabel(f"{cost_label} kept (% of dense)")
    cost_ax.set_ylim(0, 105)
    cost_ax.set_xlabel("optimizer step")
    if not any_events:
        cost_ax.text(0.5, 0.8, "no pruning events in metrics.jsonl (runs made before they "
                     "were logged); dotted: the targets", ha="center", va="center",
                     transform=cost_ax.transAxes, backgroundcolor="white", color="0.4")
    for ax in (loss_ax, val_ax, cost_ax):
        ax.grid(alpha=0.3)
    handles = [h for ax in (loss_ax, val_ax) for h in ax.get_legend_handles_labels()[0]]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)),
                   fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
