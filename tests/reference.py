"""A slow, obviously correct float64 lambda layer, written from the paper's equations with explicit sums.

Equation 1: lambda_n = sum_m (softmax_m(k)_m + e_nm) v_m^T, summed over the intra-depth u as well (App. B.4).
Equation 2: y_n = lambda_n^T q_n, for each of the |h| queries of position n (multi-query, Sec. 3.2).
e_nm = R[m - n + c] when the offset m - n lies inside the kernel (local scope or global relative table), else 0.

It reuses only the parameters of a :class:`lambdanet.LambdaLayer`, never its code paths, so a bug in any of the
layer's algorithms shows up as a mismatch here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lambdanet import LambdaLayer


def _batch_norm(x: Tensor, bn: torch.nn.BatchNorm2d) -> Tensor:
    """Batch norm over (batch, H, W) per channel, written out (biased variance in training, as PyTorch)."""
    if bn.training:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    else:
        mean = bn.running_mean.to(x.dtype)[None, :, None, None]
        var = bn.running_var.to(x.dtype)[None, :, None, None]
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]


def _avg_pool_3x3_s2(y: Tensor) -> Tensor:
    """3x3 average pool, stride 2, zero padding 1, divisor 9 (PyTorch's count_include_pad=True)."""
    b, c, hh, ww = y.shape
    out = y.new_zeros(b, c, (hh + 1) // 2, (ww + 1) // 2)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            acc = y.new_zeros(b, c)
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    yi, xj = 2 * i + di, 2 * j + dj
                    if 0 <= yi < hh and 0 <= xj < ww:
                        acc = acc + y[:, :, yi, xj]
            out[:, :, i, j] = acc / 9
    return out


def reference_forward(layer: LambdaLayer, x: Tensor) -> Tensor:
    """Output of ``layer`` on ``x`` computed from its parameters with explicit loops over positions."""
    b, _, hh, ww = x.shape
    heads, dk, du, dv = layer.heads, layer.dim_k, layer.dim_u, layer.dim_v
    w = layer.qkv.weight[:, :, 0, 0]
    proj = torch.einsum("oc,bchw->bohw", w, x)
    nq, nk, _ = layer.splits
    q = _batch_norm(proj[:, :nq], layer.norm_q)  # channels (h k)
    keys = proj[:, nq : nq + nk]  # channels (u k)
    v = _batch_norm(proj[:, nq + nk :], layer.norm_v)  # channels (u v)

    positions = [(i, j) for i in range(hh) for j in range(ww)]
    q = q.reshape(b, heads, dk, hh, ww)
    v = v.reshape(b, du, dv, hh, ww)
    if layer.content:
        keys = keys.reshape(b, du, dk, hh * ww)
        keys = torch.exp(keys - keys.max(dim=-1, keepdim=True).values)
        keys = (keys / keys.sum(dim=-1, keepdim=True)).reshape(b, du, dk, hh, ww)
    if layer.pos is not None:
        table = layer.pos.weight  # (k, u, KH, KW)
        ch, cw = table.shape[2] // 2, table.shape[3] // 2

    y = x.new_zeros(b, heads, dv, hh, ww)
    for ni, nj in positions:
        lam = x.new_zeros(b, dk, dv)
        for mi, mj in positions:
            coeff = x.new_zeros(b, du, dk)
            if layer.content:
                coeff = coeff + keys[:, :, :, mi, mj]
            if layer.pos is not None:
                ti, tj = mi - ni + ch, mj - nj + cw
                if 0 <= ti < table.shape[2] and 0 <= tj < table.shape[3]:
                    coeff = coeff + table[:, :, ti, tj].T[None]  # (1, u, k)
            # lambda_n += sum_u coeff[u, k] v_m[u, v]^T
            lam = lam + torch.einsum("buk,buv->bkv", coeff, v[:, :, :, mi, mj])
        if layer.pos is not None and layer.pos.bias is not None:
            lam = lam + layer.pos.bias[None, :, None]
        y[:, :, :, ni, nj] = torch.einsum("bkv,bhk->bhv", lam, q[:, :, :, ni, nj])
    y = y.reshape(b, heads * dv, hh, ww)
    return _avg_pool_3x3_s2(y) if layer.stride == 2 else y


def relative_error(actual: Tensor, expected: Tensor) -> float:
    actual, expected = actual.detach(), expected.detach()
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-300))
