"""Latency and throughput measurement of dense and slimmed models."""

from prunecli.bench.timing import Timing, prepare, time_interleaved

__all__ = ["Timing", "prepare", "time_interleaved"]
