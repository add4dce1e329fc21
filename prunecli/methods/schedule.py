"""Pruning schedules: when masks change and what cost each step aims at."""

from __future__ import annotations

from prunecli.errors import ConfigError


def geometric_target(start: float, end: float, step: int, steps: int) -> float:
    """HALP's schedule: ``start^(1 - t/T) * end^(t/T)`` -- equal *relative* cuts per step, so
    early steps (when the network is large) remove more in absolute terms."""
    if steps <= 0 or step >= steps:
        return end
    t = step / steps
    return start ** (1.0 - t) * end ** t


def removal_count(spec: float, total: int) -> int:
    """``spec`` channels per pruning step: a fraction of ``total`` when below 1, a count
    otherwise (at least 1)."""
    n = spec * total if spec < 1 else spec
    return max(1, int(round(n)))


def span_steps(value: float, epochs: int, steps_per_epoch: int) -> int:
    """A schedule length in optimizer steps: ``value`` < 1 is a fraction of training, otherwise
    a number of epochs (the ``optim.milestones`` rule)."""
    value = float(value)
    if value < 0:
        raise ConfigError(f"schedule lengths must be >= 0 (got {value})")
    total = epochs * steps_per_epoch
    return int(round(value * total if value < 1 else value * steps_per_epoch))


def spread_steps(start: int, finish: int, steps: int) -> tuple[int, int]:
    """``(steps, every)``: ``steps`` pruning steps spread evenly over optimizer steps
    ``(start, finish]``, one every ``every`` steps; a window shorter than ``steps`` gets one step
    per optimizer step instead, so a short run still lands on its budget (like Taylor's
    ``remove_per_step=0``, which spreads its removal over the steps left before ``finish_at``)."""
    window = finish - start
    if window < 1:
        raise ConfigError(f"the pruning window (steps {start} to {finish}) is empty; lower "
                          "method.start_epoch or raise method.finish_at")
    steps = max(1, min(int(steps), window))
    return steps, window // steps
