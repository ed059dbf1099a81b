"""``blocked``: position logits per block of queries against the block's halo of values (local scopes).

Axis legend: b batch | h heads | k query/key depth | v value depth | u intra-depth | S.. spatial axes

Shape: q (b, S.., h, k), v (b, S.., u, v), weight (k, u, K..) -> y (b, S.., h, v)

Linear in n, content fused; the chunked autograd function lives in :mod:`lambdanet.layers.blocked`.
"""

from __future__ import annotations

import math

from lambdanet.layers.algorithms._base import PositionAlgorithm, Problem
from lambdanet.layers.blocked import block_size, blocked_output

#: ``auto`` picks ``blocked`` for kernel radii (r // 2) up to this ...
MAX_HALF = 5
#: ... and, for value depths of at least ``WIDE_MIN_DIM_V``, up to this radius.
WIDE_MAX_HALF = 11
WIDE_MIN_DIM_V = 64


#: In 3-D the halo grows as (B + 2c)^3: ``blocked`` wins up to this many kernel taps (3x3x3) only.
MAX_TAPS_3D = 27


def cost(p: Problem, device: str) -> float | None:
    if len(p.spatial) == 3:
        return 2.0 if math.prod(p.kernel) <= MAX_TAPS_3D else None
    half = max(k // 2 for k in p.kernel)  # the largest kernel radius over the axes
    return 2.0 if half <= MAX_HALF or (half <= WIDE_MAX_HALF and p.dim_v >= WIDE_MIN_DIM_V) else None


def saved_floats(p: Problem) -> dict[str, int]:
    """Logits and halos are recomputed chunk by chunk in backward: only zero-padded copies of the normalised
    queries (when the map is not whole blocks) and values are kept beyond the common terms."""
    blocks = [block_size(k // 2) for k in p.kernel]
    whole = [-(-s // bs) * bs for s, bs in zip(p.spatial, blocks)]
    terms = {}
    if whole != list(p.spatial):
        terms["queries padded to whole blocks, extra (b h k (n' - n))"] = (
            p.batch * p.heads * p.dim_k * (math.prod(whole) - p.n)
        )
    padded = math.prod(w + 2 * (k // 2) for w, k in zip(whole, p.kernel))
    terms["values padded by the scope, extra (b u v (P - n))"] = p.batch * p.dim_u * p.dim_v * (padded - p.n)
    return terms


ALGORITHM = PositionAlgorithm("blocked", blocked_output, cost=cost, saved_floats=saved_floats)
