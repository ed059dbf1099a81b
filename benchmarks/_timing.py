"""Timing and memory helpers shared by the benchmark scripts: a re-export of :mod:`lambdanet.bench.timing`."""

from __future__ import annotations

from lambdanet.bench.timing import forward_backward, median_ms, saved_for_backward_mib

__all__ = ["forward_backward", "median_ms", "saved_for_backward_mib"]
