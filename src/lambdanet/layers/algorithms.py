"""Choice of the fastest exact algorithm for the position lambdas of a given shape.

Axis legend: b batch | h heads | k query/key depth | v value depth | u intra-depth | n positions | t kernel offsets

Shape: none (a pure function of the layer configuration and the input shape)

All five algorithms of :mod:`lambdanet.layers.lambda_ops` compute the same sums; they differ in work and memory:

==========  ====================================================  =============================
algorithm   work (forward multiply-accumulates)                   extra memory
==========  ====================================================  =============================
einsum      b n m k v u (paper, Fig. 3; zeros included)           k u n m + b n k v
logits      b h n u m (k + v)                                      b h n u m (+ k u n m, batch-free)
blocked     b h n u (k + v) L^D / B^D, L = B + 2 (r // 2)         one chunk of Z; padded q and v
conv        b v u n k r^D + apply b h n k v                        b n k v
fft         (b u v + b k v) P log P + b k v u P                   b k v P, P = prod(S + r // 2)
==========  ====================================================  =============================

The rule below comes from ``benchmarks/algorithm_sweep.py`` (CPU, forward + backward; results and the command in
``docs/algorithms.md``): ``logits`` wins when the map is small enough that the scope covers at least a third of it
(LambdaResNet's c4 and c5 stages with 23x23 scopes, global context on small maps) and its (b, h, n, m) logits are
not too large; ``blocked`` wins for small scopes (up to 11x11) on larger maps, and up to 23x23 when the value depth
is 64 or more; ``fft`` wins for the other large scopes on large maps and for global context on large maps, where it
is the only algorithm below O(n^2). The paper's ``einsum`` and the ``conv`` lambda convolution are exact
alternatives that never won a measured shape on CPU.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

__all__ = ["choose_algorithm"]

#: Largest (b h u n m) position-logits tensor the rule lets ``logits`` build (floats): 2^24 = 64 MiB in float32.
LOGITS_MAX_ELEMENTS = 1 << 24
#: ``logits`` computes every (n, m) pair; it is chosen while that is at most this many times the in-scope pairs.
LOGITS_MAX_WASTE = 3.0
#: ``blocked`` beats ``fft`` for scope radii (r // 2) up to this ...
BLOCKED_MAX_HALF = 5
#: ... and, for value depths of at least ``BLOCKED_WIDE_MIN_DIM_V``, up to this radius.
BLOCKED_WIDE_MAX_HALF = 11
BLOCKED_WIDE_MIN_DIM_V = 64


@functools.lru_cache(maxsize=4096)
def _choose(batch: int, spatial: tuple[int, ...], kernel: tuple[int, ...], dim_v: int, dim_u: int, heads: int) -> str:
    n = math.prod(spatial)
    in_scope = min(n, math.prod([min(side, 2 * s - 1) for s, side in zip(spatial, kernel)]))
    if n <= LOGITS_MAX_WASTE * in_scope and batch * heads * dim_u * n * n <= LOGITS_MAX_ELEMENTS:
        return "logits"
    half = max(min(side // 2, s - 1) for s, side in zip(spatial, kernel))
    if half <= BLOCKED_MAX_HALF or (half <= BLOCKED_WIDE_MAX_HALF and dim_v >= BLOCKED_WIDE_MIN_DIM_V):
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
    ``dim_k`` is accepted for future rules; the measured winners did not depend on it.
    """
    del dim_k
    spatial, kernel = tuple(int(s) for s in spatial), tuple(int(s) for s in kernel)
    return _choose(int(batch), spatial, kernel, int(dim_v), int(dim_u), int(heads))
