"""``unfold``: the lambda convolution in 3-D with the kernel's last axis unfolded into input channels.

Axis legend: b batch | h heads | k query/key depth | v value depth | u intra-depth | n positions (T H W)
             K leading kernel sides | r last kernel side

Shape: q (b, T, H, W, h, k), v (b, T, H, W, u, v), weight (k, u, K, K, r), lam_c (b, k, v) -> y (b, T, H, W, h, v)

``conv`` convolves (b v, u, T, H, W) values with Conv3d(u, k, kernel); with one input channel (|u| = 1) oneDNN runs
that far below its speed on wider convolutions. Here the r values a query sees along the last axis become input
channels (a zero-padded sliding-window copy of the values, r times their size) and the kernel's last side becomes 1:
a channels-last Conv3d(u r, k, (K, K, 1)) with the same multiply-adds, 2-3x faster forward + backward on CPU. The
convolution's batch is ordered (v, b), so its output, the position lambdas (v, b n, k), is read in place by one
batched matmul over the b n positions (a (k, v) matrix per position with row stride b n k), without transposes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lambdanet.layers.algorithms._base import PositionAlgorithm, Problem, add_content


def position_lambdas(v: Tensor, weight: Tensor) -> Tensor:
    """(b, T, H, W, u, v) values -> position lambdas (v, b n, k), one Conv3d over the unfolded values."""
    b, *spatial, u, dv = v.shape
    k, r = weight.shape[0], weight.shape[-1]
    x = F.pad(v.permute(5, 0, 1, 2, 3, 4), (0, 0, r // 2, r // 2)).unfold(-2, r, 1)  # v b T H W u r
    # x[(v b), (u r), T, H, W] = v[b, T, H, W + j - r // 2, u, v] with (u j) last in memory (channels-last)
    x = x.reshape(dv * b, *spatial, u * r).contiguous().movedim(-1, 1)
    w = weight.movedim(1, -2).reshape(k, *weight.shape[2:-1], u * r).movedim(-1, 1).unsqueeze(-1)  # k (u r) K K 1
    w = w.contiguous(memory_format=torch.channels_last_3d)
    out = F.conv3d(x, w, padding=(*(s // 2 for s in weight.shape[2:-1]), 0))  # (v b) k T H W, k last in memory
    return out.movedim(1, -1).reshape(dv, -1, k)


class _PerPositionProduct(torch.autograd.Function):
    """``y[p, h, v] = sum_k q[p, h, k] lam[v, p, k]`` over the b n positions p: one batched (h, k) @ (k, v) product
    that reads the lambdas where the convolution wrote them.

    Autograd's own backward of that product returns the lambdas' gradient as (p, k, v) matrices, which reach the
    convolution's (v, p, k) layout by an element-wise transpose; here they are computed as (p, v, k) and moved as
    whole k-rows, and the incoming gradient is made dense first (the layer hands it back channels-first).
    """

    @staticmethod
    def forward(ctx, q: Tensor, lam: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(q, lam)
        return torch.bmm(q, lam.permute(1, 2, 0))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        q, lam = ctx.saved_tensors
        grad = grad.contiguous()
        grad_q = torch.bmm(grad, lam.transpose(0, 1)) if ctx.needs_input_grad[0] else None
        grad_lam = None
        if ctx.needs_input_grad[1]:
            grad_lam = torch.bmm(grad.transpose(1, 2), q).transpose(0, 1).contiguous()  # (p v k) -> (v p k)
        return grad_q, grad_lam


def output(q: Tensor, v: Tensor, weight: Tensor, lam_c: Tensor | None = None) -> Tensor:
    b, *spatial, h, k = q.shape
    lam = position_lambdas(v, weight)  # v (b n) k
    # y_n = lambda_p[n]^T q_n: one (h, k) @ (k, v) product per position, batched over (b, n)
    rows = q.reshape(-1, h, k)
    if torch.compiler.is_compiling() or torch.jit.is_scripting():
        y = torch.bmm(rows, lam.permute(1, 2, 0))
    else:
        y = _PerPositionProduct.apply(rows, lam)
    return add_content(y.reshape(b, *spatial, h, -1), q, lam_c)


def saved_floats(p: Problem) -> dict[str, int]:
    return {
        "values unfolded along the last axis (b v u r n)": p.batch * p.dim_v * p.dim_u * p.kernel[-1] * p.n,
        "position lambdas (v, b n, k), read by the batched product": p.batch * p.dim_k * p.dim_v * p.n,
    }


#: ``auto`` picks ``unfold`` in 3-D above the kernels ``blocked`` takes (27 taps, 3x3x3) and up to this many taps
#: (15x15x15, the largest measured, still faster than ``fft`` on a 16x16x16 volume).
MIN_TAPS, MAX_TAPS = 28, 3375


def cost(p: Problem, device: str) -> float | None:
    """CPU, measured (docs/algorithms.md): faster than ``conv`` and ``fft`` from 3x5x5 to 15x15x15 scopes.
    On CUDA the same rule is a guess."""
    del device
    return 2.2 if MIN_TAPS <= math.prod(p.kernel) <= MAX_TAPS else None


ALGORITHM = PositionAlgorithm("unfold", output, cost=cost, saved_floats=saved_floats, dims=(3,))
