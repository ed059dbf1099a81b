"""Timing and memory helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_ms(fn: Callable[[], object], *, reps: int = 20, warmup: int = 3, budget_s: float = 20.0) -> float:
    """Median wall-clock milliseconds of ``fn`` after ``warmup`` calls; fewer repetitions when a call is slow."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < reps and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def saved_for_backward_mib(fn: Callable[[], torch.Tensor]) -> float:
    """MiB of distinct tensor storages that autograd saves for the backward pass of ``fn()``.

    Shared storages (views of one tensor) count once; parameters count too, which is negligible here.
    """
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values()) / 2**20


def forward_backward(module: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """A closure running forward and backward with a fixed random output gradient (as in training)."""
    grad = torch.randn_like(module(x))

    def run() -> None:
        module(x).backward(grad)

    return run
