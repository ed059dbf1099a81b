"""``unfold``: the lambda convolution with the kernel's last axis unfolded into input channels.

Axis legend: b batch | k query/key depth | v value depth | u intra-depth | n positions | S.. spatial axes
             r last kernel side

Shape: q (b, S.., h, k), v (b, S.., u, v), weight (k, u, K.., r) -> y (b, S.., h, v)

``conv`` convolves (b v, u, S..) values with Conv3d(u, k, kernel): with one input channel (|u| = 1) oneDNN runs it
far below the speed it reaches on wider convolutions. Here the r values a query sees along the last axis become
input channels (a zero-padded sliding-window copy of the values, r times their size) and the kernel's last side
becomes 1: Conv(u r, k, (K.., 1)) in channels-last memory, the same multiply-adds as ``conv``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lambdanet.layers.algorithms._base import PositionAlgorithm, Problem, lambdas_output

def lambda_p(v: Tensor, weight: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """(b, u, v, n) values -> (b, k, v, n) position lambdas."""
    b, u, dv, _ = v.shape
    k, r = weight.shape[0], weight.shape[-1]
    x = F.pad(v.transpose(1, 2).reshape(b * dv, u, *spatial), (r // 2, r // 2)).unfold(-1, r, 1)  # (b v) u S.. r
    # channels (u r) last in memory: x[(b v), S.., (u r)] = v[b, u, v, S.. + j - r // 2] along the last axis
    x = x.movedim(1, -2).reshape(b * dv, *spatial, u * r).movedim(-1, 1)
    w = weight.movedim(1, -2).reshape(k, *weight.shape[2:-1], u * r).movedim(-1, 1).unsqueeze(-1)  # k (u r) K.. 1
    w = w.contiguous(memory_format=torch.channels_last_3d)
    out = F.conv3d(x, w, padding=(*(s // 2 for s in weight.shape[2:-1]), 0))  # (b v) k S.., k last in memory
    return out.unflatten(0, (b, dv)).flatten(3).transpose(1, 2).contiguous()  # b k v n


def output(q: Tensor, v: Tensor, weight: Tensor, lam_c: Tensor | None = None) -> Tensor:
    return lambdas_output(q, lam_c, lambda vc: lambda_p(vc, weight, tuple(q.shape[1:-2])), v)


def saved_floats(p: Problem) -> dict[str, int]:
    return {
        "(b, h, k, n) and (b, u, v, n) copies of q, v": p.batch * (p.heads * p.dim_k + p.dim_u * p.dim_v) * p.n,
        "values unfolded along the last axis (b v u r n)": p.batch * p.dim_v * p.dim_u * p.kernel[-1] * p.n,
        "position lambdas (b k v n)": p.batch * p.dim_k * p.dim_v * p.n,
    }


def cost(p: Problem, device: str) -> float | None:
    del p, device
    return None


ALGORITHM = PositionAlgorithm("unfold", output, cost=cost, saved_floats=saved_floats, dims=(3,))
