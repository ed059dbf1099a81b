"""``logits``: position logits first, ``a[b, h, n, u, m] = q_n . E[n, m]``, then ``y = a @ v``.

Axis legend: b batch | h heads | k query/key depth | v value depth | u intra-depth | n query positions
             m context positions | t kernel offsets

Shape: q (b, S.., h, k), v (b, S.., u, v), weight (k, u, K..) -> y (b, S.., h, v)

The paper's sum contracted queries first: one large matrix product per sample; quadratic in n, for small maps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lambdanet.layers.algorithms._base import (
    PositionAlgorithm,
    Problem,
    add_content,
    full_kernel,
    relative_embeddings,
    skew_axes,
)

#: Largest (b h u n m) position-logits tensor ``auto`` lets ``logits`` build (floats): 2^24 = 64 MiB in float32.
MAX_ELEMENTS = 1 << 24
#: ``logits`` computes every (n, m) pair; ``auto`` picks it while that is at most this many times the in-scope pairs.
MAX_WASTE = 3.0


def position_logits(q: Tensor, weight: Tensor, spatial: Sequence[int], construction: str = "auto") -> Tensor:
    """Position logits ``a[b, h, n, u, m] = sum_k q[b, h, k, n] E[k, u, n, m]`` for (b, h, k, n) queries.

    Two exact constructions, picked by size: when the embedding tensor ``E`` (k, u, n, m) is smaller than the
    per-sample offset table, gather ``E`` once (it does not depend on the batch) and contract it with the queries
    position by position; otherwise one matrix product gives the logits of every query against every relative
    offset, ``q^T R`` (b, h, n, u, t), and a skew per spatial axis moves offset ``m - n`` to context position m.
    ``construction`` forces ``"gather"`` or ``"skew"`` (for tests).
    """
    b, h, k, n = q.shape
    u = weight.shape[1]
    if construction not in ("auto", "gather", "skew"):
        raise ValueError(f"construction={construction!r} must be 'auto', 'gather' or 'skew'")
    if construction == "auto":
        # E holds k u n m numbers, the offset table b h n u prod(2S - 1).
        construction = "gather" if k * n <= b * h * math.prod([2 * s - 1 for s in spatial]) else "skew"
    if construction == "gather":
        e = relative_embeddings(weight, spatial)  # k u n m
        a = torch.bmm(q.permute(3, 0, 1, 2).reshape(n, b * h, k), e.permute(2, 0, 1, 3).reshape(n, k, u * n))
        return a.reshape(n, b, h, u, n).permute(1, 2, 0, 3, 4)  # b h n u m
    full = full_kernel(weight, spatial)
    rel = torch.matmul(q.transpose(2, 3), full.reshape(k, -1))  # b h n (u t..)
    x = rel.reshape(b * h, *spatial, u, *full.shape[2:])
    ndim = len(spatial)
    if not (torch.compiler.is_compiling() or torch.jit.is_scripting()):
        # One strided view does every axis' skew at once: a[n.., u, m..] = x[n.., u, m - n + S - 1].
        st = x.stride()
        n_strides = [st[1 + d] - st[2 + ndim + d] for d in range(ndim)]
        m_strides = list(st[2 + ndim :])
        offset = x.storage_offset() + sum((size - 1) * st[2 + ndim + d] for d, size in enumerate(spatial))
        view = x.as_strided((b * h, *spatial, u, *spatial), (st[0], *n_strides, st[1 + ndim], *m_strides), offset)
        return view.reshape(b, h, n, u, n)  # b h n u m
    return skew_axes(x, "B", spatial, "u").reshape(b, h, n, u, n)  # b h n u m: the export-friendly form


def output(q: Tensor, v: Tensor, weight: Tensor, lam_c: Tensor | None = None) -> Tensor:
    b, h, k = q.shape[0], q.shape[-2], q.shape[-1]
    spatial, (u, dv) = q.shape[1:-2], v.shape[-2:]
    n = math.prod(spatial)
    logits = position_logits(q.reshape(b, n, h, k).permute(0, 2, 3, 1), weight, spatial)  # b h n u m
    # (b, h n, u m) @ (b, u m, v): one large matrix product per sample.
    y = torch.matmul(logits.reshape(b, h * n, u * n), v.reshape(b, n, u, dv).transpose(1, 2).reshape(b, u * n, dv))
    return add_content(y.reshape(b, h, n, dv).transpose(1, 2).reshape(b, *spatial, h, dv), q, lam_c)


def cost(p: Problem, device: str) -> float | None:
    """Small 1-D and 2-D maps whose scope covers at least a third of them, while the logits stay below
    MAX_ELEMENTS (in 3-D ``conv`` is as fast on the smallest maps and much faster on the others)."""
    if len(p.spatial) == 3:
        return None
    in_scope = min(p.n, math.prod(p.kernel))
    limit = MAX_ELEMENTS * (4 if device == "cuda" else 1)  # CUDA: a guess, not measured on a GPU yet
    small = p.n <= MAX_WASTE * in_scope and p.batch * p.heads * p.dim_u * p.n * p.n <= limit
    return 1.0 if small else None


def saved_floats(p: Problem) -> dict[str, int]:
    terms = {"position logits (b h n u m)": p.batch * p.heads * p.n * p.dim_u * p.n}
    if p.dim_k * p.n <= p.batch * p.heads * math.prod(2 * s - 1 for s in p.spatial):  # gathered E (see above)
        terms["embeddings E, permuted copy (k u n m)"] = p.dim_k * p.dim_u * p.n * p.n
    return terms


ALGORITHM = PositionAlgorithm("logits", output, cost=cost, saved_floats=saved_floats)
