"""Choice of the fastest exact algorithm for the position lambdas of a given shape.

Axis legend: b batch | h heads | k query/key depth | v value depth | u intra-depth | n positions | t kernel offsets

Shape: none (a pure function of the layer configuration and the input shape)

All five algorithms of :mod:`lambdanet.layers.lambda_ops` compute the same sums; they differ in work and memory:

==========  ====================================================  =============================
algorithm   work (forward multiply-accumulates)                   extra memory
==========  ====================================================  =============================
einsum      b n m k v u (paper, Fig. 3; zeros included)           k u n m + b n k v
logits      b h n u T (k + v), T = prod(2 S - 1)                   b h n u T
blocked     b h n u (k + v) L^D / B^D, L = B + 2 (r // 2)         b h n u L^D / B^D
conv        b v u n k r^D + apply b h n k v                        b n k v
fft         (b u v + b k v) P log P + b k v u P                   b k v P, P = prod(S + r // 2)
==========  ====================================================  =============================

The rule below comes from ``benchmarks/algorithm_sweep.py`` (CPU, forward + backward; results and the command in
``docs/algorithms.md``): ``logits`` wins whenever its relative-offset table is not much larger than the scope
(small maps, or scopes that cover most of the map: LambdaResNet's c4 and c5 stages) and fits in memory; ``blocked``
wins for small scopes on larger maps (CIFAR-sized maps, 3x3 to 11x11 scopes); ``fft`` wins for large scopes on large
maps and for global context on large maps, where it is the only algorithm below O(n^2). The paper's ``einsum`` and
the ``conv`` lambda convolution are exact alternatives that never won a measured shape on CPU.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

__all__ = ["LOGITS_MAX_ELEMENTS", "choose_algorithm"]

#: Largest (b h n u T) logits table the rule lets ``logits`` build (floats): 2^25 = 128 MiB in float32.
LOGITS_MAX_ELEMENTS = 1 << 25
#: ``logits`` pays for every offset of the full (2S - 1)^D table; it is chosen while that is at most this many
#: times the offsets inside the scope.
LOGITS_MAX_WASTE = 3.0
#: Largest scope radius (r // 2) for which ``blocked`` beats ``fft``.
BLOCKED_MAX_HALF = 5


@functools.lru_cache(maxsize=4096)
def _choose(batch: int, spatial: tuple[int, ...], kernel: tuple[int, ...], dim_u: int, heads: int) -> str:
    n = math.prod(spatial)
    offsets = math.prod(2 * s - 1 for s in spatial)
    taps = math.prod(min(side, 2 * s - 1) for s, side in zip(spatial, kernel))
    if offsets <= LOGITS_MAX_WASTE * taps and batch * heads * n * dim_u * offsets <= LOGITS_MAX_ELEMENTS:
        return "logits"
    half = max(min(side // 2, s - 1) for s, side in zip(spatial, kernel))
    if half <= BLOCKED_MAX_HALF:
        return "blocked"
    return "fft"


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
    """Name of the algorithm expected to be fastest for this shape (see the module docstring).

    A pure function of static shapes: ``torch.compile`` and ``torch.export`` treat its result as a constant.
    ``dim_k`` and ``dim_v`` are accepted for future rules; the measured winners did not depend on them.
    """
    del dim_k, dim_v
    return _choose(int(batch), tuple(int(s) for s in spatial), tuple(int(s) for s in kernel), int(dim_u), int(heads))
