"""``conv``: the lambda convolution (paper Sec. 3.4) as an ordinary 1-, 2- or 3-D convolution.

Axis legend: b batch | k query/key depth | v value depth | u intra-depth | n positions | S.. spatial axes

Shape: q (b, S.., h, k), v (b, S.., u, v), weight (k, u, K..) -> y (b, S.., h, v)

The value depth is folded into the batch: ``conv(v as (b v, u, S..), weight)`` gives ``lambda_p`` as (b v, k, S..).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lambdanet.layers.algorithms._base import PositionAlgorithm, Problem, lambdas_output, lambdas_saved_floats

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def lambda_p(v: Tensor, weight: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """(b, u, v, n) values -> (b, k, v, n) position lambdas."""
    b, u, dv, _ = v.shape
    x = v.transpose(1, 2).reshape(b * dv, u, *spatial)  # (b v) u S..
    out = _CONV[len(spatial)](x, weight, padding=tuple(s // 2 for s in weight.shape[2:]))  # (b v) k S..
    return out.reshape(b, dv, weight.shape[0], -1).transpose(1, 2)  # b k v n


def output(q: Tensor, v: Tensor, weight: Tensor, lam_c: Tensor | None = None) -> Tensor:
    return lambdas_output(q, lam_c, lambda vc: lambda_p(vc, weight, tuple(q.shape[1:-2])), v)


def cost(p: Problem, device: str) -> float | None:
    """Never picked: on CPU every measured shape has a faster algorithm (1-D and 2-D: ``logits``, ``blocked``,
    ``fft``; 3-D: ``blocked``, ``unfold``, and ``fft`` with global context even on small volumes)."""
    return None


ALGORITHM = PositionAlgorithm("conv", output, cost=cost, saved_floats=lambdas_saved_floats)
