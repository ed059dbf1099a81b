"""A slow, obviously correct float64 lambda layer, written from the paper's equations with explicit sums.

Equation 1: lambda_n = sum_m (softmax_m(k)_m + e_nm) v_m^T, summed over the intra-depth u as well (App. B.4).
Equation 2: y_n = lambda_n^T q_n, for each of the |h| queries of position n (multi-query, Sec. 3.2).
e_nm = R[m - n + c] when the offset m - n lies inside the kernel (local scope or global relative table), else 0.

It reuses only the parameters of a :class:`lambdanet.LambdaLayer` or :class:`lambdanet.LambdaLayer3d`, never their
code paths, so a bug in any of the layers' algorithms shows up as a mismatch here. ``DEVICES`` parametrises tests
over "cpu" and "cuda" (marked ``cuda``, skipped without a GPU: ``pytest -m cuda`` runs the GPU half).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pytest
import torch
from torch import Tensor

from lambdanet import LambdaLayer, LambdaLayer3d

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")]),
]


def _batch_norm(x: Tensor, bn: torch.nn.modules.batchnorm._BatchNorm) -> Tensor:
    """Batch norm over (batch, S..) per channel, written out (biased variance in training, as PyTorch)."""
    axes = (0, *range(2, x.dim()))
    shape = (1, -1, *[1] * (x.dim() - 2))
    if bn.training:
        mean = x.mean(dim=axes, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=axes, keepdim=True)
    else:
        mean, var = bn.running_mean.to(x.dtype).view(shape), bn.running_var.to(x.dtype).view(shape)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)


def _avg_pool_3_s2(y: Tensor, strides: tuple[int, ...]) -> Tensor:
    """Average pool of width 3, stride 2, zero padding 1 along the axes with stride 2, divisor 3 per such axis
    (PyTorch's count_include_pad=True)."""
    spatial = y.shape[2:]
    out_size = [(s + 1) // 2 if st == 2 else s for s, st in zip(spatial, strides)]
    out = y.new_zeros(*y.shape[:2], *out_size)
    windows = [(-1, 0, 1) if st == 2 else (0,) for st in strides]
    for o in itertools.product(*[range(s) for s in out_size]):
        acc = y.new_zeros(y.shape[:2])
        for d in itertools.product(*windows):
            p = [st * oi + di for oi, di, st in zip(o, d, strides)]
            if all(0 <= pi < s for pi, s in zip(p, spatial)):
                acc = acc + y[(slice(None), slice(None), *p)]
        out[(slice(None), slice(None), *o)] = acc / math.prod(len(w) for w in windows)
    return out


def reference_forward(layer: LambdaLayer | LambdaLayer3d, x: Tensor) -> Tensor:
    """Output of a 2-D or 3-D ``layer`` on ``x`` (b, dim, S..) from its parameters, explicit loops over positions."""
    b, spatial = x.shape[0], tuple(x.shape[2:])
    heads, dk, du, dv = layer.heads, layer.dim_k, layer.dim_u, layer.dim_v
    proj = torch.einsum("oc,bc...->bo...", layer.qkv.weight.flatten(1), x)
    nq, nk, _ = layer.splits
    q = _batch_norm(proj[:, :nq], layer.norm_q).reshape(b, heads, dk, *spatial)  # channels (h k)
    keys = proj[:, nq : nq + nk]  # channels (u k)
    v = _batch_norm(proj[:, nq + nk :], layer.norm_v).reshape(b, du, dv, *spatial)  # channels (u v)

    positions = list(itertools.product(*[range(s) for s in spatial]))
    if layer.content:
        keys = keys.reshape(b, du, dk, -1)
        keys = torch.exp(keys - keys.max(dim=-1, keepdim=True).values)
        keys = (keys / keys.sum(dim=-1, keepdim=True)).reshape(b, du, dk, *spatial)
    if layer.pos is not None:
        table = layer.pos.weight  # (k, u, K..)
        centre = [side // 2 for side in table.shape[2:]]

    y = x.new_zeros(b, heads, dv, *spatial)
    at = lambda t, p: t[(slice(None), slice(None), slice(None), *p)]  # noqa: E731
    for pn in positions:
        lam = x.new_zeros(b, dk, dv)
        for pm in positions:
            coeff = x.new_zeros(b, du, dk)
            if layer.content:
                coeff = coeff + at(keys, pm)
            if layer.pos is not None:
                t = [m - n + c for n, m, c in zip(pn, pm, centre)]
                if all(0 <= ti < side for ti, side in zip(t, table.shape[2:])):
                    coeff = coeff + table[(slice(None), slice(None), *t)].T[None]  # (1, u, k)
            # lambda_n += sum_u coeff[u, k] v_m[u, v]^T
            lam = lam + torch.einsum("buk,buv->bkv", coeff, at(v, pm))
        if layer.pos is not None and layer.pos.bias is not None:
            lam = lam + layer.pos.bias[None, :, None]
        y[(slice(None), slice(None), slice(None), *pn)] = torch.einsum("bkv,bhk->bhv", lam, at(q, pn))
    y = y.reshape(b, heads * dv, *spatial)
    strides = (layer.stride,) * len(spatial) if isinstance(layer.stride, int) else tuple(layer.stride)
    return _avg_pool_3_s2(y, strides) if max(strides) == 2 else y


def randomise_state(layer: LambdaLayer | LambdaLayer3d) -> None:
    """Non-trivial batch-norm affine parameters, running statistics and position bias, so the reference tests see
    every term (fresh norms are the identity in eval mode)."""
    with torch.no_grad():
        for bn in (layer.norm_q, layer.norm_v):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
        if layer.pos is not None and layer.pos.bias is not None:
            layer.pos.bias.normal_()


def relative_error(actual: Tensor, expected: Tensor) -> float:
    actual, expected = actual.detach(), expected.detach()
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-300))


def assert_matches(
    layer: torch.nn.Module, x: Tensor, ref: Tensor, grad_out: Tensor, want: Sequence[Tensor], tol: float
) -> None:
    """``layer(x)`` equals the reference output ``ref`` and its gradients (input first, then the parameters in
    order) equal ``want`` for the output gradient ``grad_out``, each to relative error ``tol``; ``x`` may live on
    another device than the reference."""
    out = layer(x)
    assert out.shape == ref.shape
    assert relative_error(out.cpu(), ref) < tol
    got = torch.autograd.grad(out, [x, *layer.parameters()], grad_out.to(x.device))
    names = ["x"] + [n for n, _ in layer.named_parameters()]
    for name, g, w in zip(names, got, want):
        assert relative_error(g.cpu(), w) < tol, f"gradient of {name}"
