"""Timing and memory measurement for the benchmarks of Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602
(Table 4: memory against self-attention; Table 13: throughput).

What each memory number means (columns of ``lambdanet bench``):

- ``saved_mib``: bytes of the distinct tensor storages autograd keeps for the backward pass of one forward call
  (:func:`saved_for_backward_mib`, through ``torch.autograd.graph.saved_tensors_hooks``). This is the memory that
  the paper's Table 4 counts (activations kept for training), exact and device independent.
- ``peak_mib``: on CPU, the peak of live tensor bytes created during forward + backward (:class:`LiveBytes`, a
  ``TorchDispatchMode`` that adds the storage of every operator output and subtracts it when the last tensor seen
  on that storage is freed); inputs and parameters that exist before the call are not counted. On CUDA,
  ``torch.cuda.max_memory_allocated`` minus the memory allocated before the call (:func:`peak_mib`).

Times are medians of wall-clock time after warm-up (:func:`median_ms`); on CUDA every timed call ends with
``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import statistics
import time
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = [
    "LiveBytes",
    "forward_backward",
    "median_ms",
    "peak_mib",
    "saved_for_backward_mib",
    "synchronize",
]


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work (no-op on CPU), so that wall-clock time covers the computation."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(
    fn: Callable[[], object],
    *,
    reps: int = 20,
    warmup: int = 3,
    budget_s: float = 20.0,
    device: torch.device | str | None = None,
) -> float:
    """Median wall-clock milliseconds of ``fn`` after ``warmup`` calls; fewer repetitions when a call is slow.

    At least 3 timed calls run; after that, timing stops at ``reps`` calls or once ``budget_s`` seconds are spent.
    With a CUDA ``device`` every call is followed by ``torch.cuda.synchronize``.
    """
    if reps < 1 or warmup < 0:
        raise ValueError(f"reps={reps} must be >= 1 and warmup={warmup} >= 0")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < reps and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
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


class LiveBytes(TorchDispatchMode):
    """Peak bytes of live tensor storages created under this mode (CPU peak memory; see the module docstring).

    Every operator output's storage is counted once when first seen and released when the last tensor seen on it
    is garbage collected (PyTorch keeps a tensor's Python object alive as long as autograd holds the tensor).
    Storages created outside any operator (the pre-existing inputs and parameters) are not counted. Attributes
    ``peak`` and ``live`` are in bytes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, int] = {}  # storage data_ptr -> number of live tensors seen on it
        self._size: dict[int, int] = {}

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            self.live -= self._size.pop(key)
            del self._refs[key]

    def _track(self, t: torch.Tensor) -> None:
        if t.device.type == "meta" or t.is_sparse:
            return
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key == 0:
            return
        if key not in self._refs:
            self._refs[key] = 0
            self._size[key] = storage.nbytes()
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self._refs[key] += 1
        weakref.finalize(t, self._release, key)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


def peak_mib(fn: Callable[[], object], device: torch.device | str | None = None) -> float:
    """Peak MiB allocated by ``fn()`` above what was allocated before it (CUDA allocator, else :class:`LiveBytes`).

    The result of ``fn`` is dropped before returning. On CPU the measurement slows ``fn`` down (every operator
    goes through Python); never time a call that is being measured.
    """
    if device is not None and torch.device(device).type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del out
        return peak / 2**20
    mode = LiveBytes()
    with mode:
        out = fn()
    del out
    return mode.peak / 2**20
