"""Choice of the fastest exact algorithm for the position lambdas of a given shape.

Axis legend: b batch | h heads | k query/key depth | v value depth | u intra-depth | n positions | t kernel offsets

Shape: none (pure function of the layer configuration and the input shape)

The rule is derived from measurements (``benchmarks/algorithm_sweep.py``, results in ``docs/algorithms.md``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from lambdanet.layers.lambda_ops import fft_size

__all__ = ["choose_algorithm", "estimated_cost"]


def _pairs(size: int, side: int) -> int:
    c = min(side // 2, size - 1)
    return sum(min(size - 1, i + c) - max(0, i - c) + 1 for i in range(size))


def estimated_cost(
    algorithm: str,
    *,
    batch: int,
    spatial: Sequence[int],
    kernel: Sequence[int],
    dim_k: int,
    dim_v: int,
    dim_u: int,
    heads: int,
) -> float:
    """Multiply-accumulates (forward) of the position path of ``algorithm``, counting the zeros it computes."""
    b, k, v, u, h = batch, dim_k, dim_v, dim_u, heads
    n = math.prod(spatial)
    taps = math.prod(min(side, 2 * s - 1) for s, side in zip(spatial, kernel))
    apply = b * h * n * k * v
    if algorithm == "einsum":
        return b * n * n * k * v * u + apply
    if algorithm == "logits":
        return b * h * u * n * n * (k + v)
    if algorithm == "conv":
        return b * v * n * k * u * taps + apply
    if algorithm == "fft":
        sizes = [fft_size(s, min(side // 2, s - 1)) for s, side in zip(spatial, kernel)]
        points = math.prod(sizes)
        transform = points * math.log2(max(points, 2)) * 2.5
        return b * u * v * transform + b * k * v * transform + 4 * b * k * v * u * points / 2 + apply
    raise ValueError(f"unknown algorithm={algorithm!r}")


@functools.lru_cache(maxsize=4096)
def _choose(
    batch: int,
    spatial: tuple[int, ...],
    kernel: tuple[int, ...],
    dim_k: int,
    dim_v: int,
    dim_u: int,
    heads: int,
) -> str:
    dims = {"batch": batch, "spatial": spatial, "kernel": kernel, "dim_k": dim_k, "dim_v": dim_v}
    costs = {a: estimated_cost(a, **dims, dim_u=dim_u, heads=heads) for a in ("einsum", "logits", "conv", "fft")}
    return min(costs, key=costs.__getitem__)


@torch.compiler.assume_constant_result
def choose_algorithm(
    *,
    batch: int,
    spatial: Sequence[int],
    kernel: Sequence[int],
    dim_k: int,
    dim_v: int,
    dim_u: int,
    heads: int,
) -> str:
    """Name of the algorithm expected to be fastest for this shape (see the module docstring)."""
    dims = {"batch": batch, "spatial": spatial, "kernel": kernel, "dim_k": dim_k, "dim_v": dim_v}
    costs = {a: estimated_cost(a, **dims, dim_u=dim_u, heads=heads) for a in ("einsum", "logits", "conv", "fft")}
    return min(costs, key=costs.__getitem__)
