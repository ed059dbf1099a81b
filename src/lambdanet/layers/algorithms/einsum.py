"""``einsum``: the paper's Figure 3/5 implementation of the position lambdas.

Axis legend: b batch | k query/key depth | v value depth | u intra-depth | n query positions | m context positions

Shape: q (b, S.., h, k), v (b, S.., u, v), weight (k, u, K..) -> y (b, S.., h, v)

Gathers ``E`` (k, u, n, m) (zeros outside the scope), then ``lambda_p = einsum('kunm,buvm->bkvn')``; memory Θ(k u n m).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lambdanet.layers.algorithms._base import (
    PositionAlgorithm,
    Problem,
    lambdas_output,
    lambdas_saved_floats,
    relative_embeddings,
)


def output(q: Tensor, v: Tensor, weight: Tensor, lam_c: Tensor | None = None) -> Tensor:
    spatial = q.shape[1:-2]
    return lambdas_output(
        q, lam_c, lambda vc: torch.einsum("kunm,buvm->bkvn", relative_embeddings(weight, spatial), vc), v
    )


def saved_floats(p: Problem) -> dict[str, int]:
    return {**lambdas_saved_floats(p), "embeddings E (k u n m)": p.dim_k * p.dim_u * p.n * p.n}


ALGORITHM = PositionAlgorithm("einsum", output, cost=lambda p, device: None, saved_floats=saved_floats)
