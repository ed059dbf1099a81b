"""``fft``: the lambda convolution through real FFTs, O(n log n) whatever the scope.

Axis legend: b batch | k query/key depth | v value depth | u intra-depth | n positions | f frequencies

Shape: q (b, S.., h, k), v (b, S.., u, v), weight (k, u, K..) -> y (b, S.., h, v)

The only algorithm below O(n^2) for global relative embeddings on large maps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lambdanet.layers.algorithms._base import PositionAlgorithm, Problem, lambdas_output, lambdas_saved_floats


def fft_size(size: int, half_kernel: int) -> int:
    """Smallest FFT length >= ``size + half_kernel`` with only factors 2, 3, 5 (no circular aliasing)."""
    target = size + half_kernel
    best = 1 << (target - 1).bit_length()
    p2 = 1
    while p2 < 2 * target:
        p3 = p2
        while p3 < 2 * target:
            p5 = p3
            while p5 < 2 * target:
                if target <= p5 < best:
                    best = p5
                p5 *= 5
            p3 *= 3
        p2 *= 2
    return best


def lambda_p(v: Tensor, weight: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """(b, u, v, n) values -> (b, k, v, n) position lambdas."""
    b, u, dv, _ = v.shape
    k, ndim, kernel = weight.shape[0], len(spatial), weight.shape[2:]
    half = [s // 2 for s in kernel]
    sizes = [fft_size(s, c) for s, c in zip(spatial, half)]
    dims = tuple(range(-ndim, 0))
    # lambda_p[n] = sum_m v[m] w[m - n + c] is a convolution of v with the flipped kernel g[t] = w[c - t]; g's tap
    # t in [-c, c] sits at index t mod L, and L >= S + c keeps the circular convolution exact for n, m < S.
    g = F.pad(weight.flip(dims), [p for s, L in zip(reversed(kernel), reversed(sizes)) for p in (0, L - s)])
    g_f = torch.fft.rfftn(torch.roll(g, shifts=[-c for c in half], dims=dims), dim=dims).flatten(2)  # k u f
    v_f = torch.fft.rfftn(v.reshape(b, u, dv, *spatial), s=sizes, dim=dims).flatten(3)  # b u v f
    # b k v f; for u = 1 a broadcast product is cheaper than einsum's batched matmul
    prod = v_f[:, 0, None] * g_f[None, :, 0, None] if u == 1 else torch.einsum("buvf,kuf->bkvf", v_f, g_f)
    out = torch.fft.irfftn(prod.unflatten(3, (*sizes[:-1], sizes[-1] // 2 + 1)), s=sizes, dim=dims)
    return out[(..., *[slice(0, s) for s in spatial])].reshape(b, k, dv, -1)  # b k v n


def output(q: Tensor, v: Tensor, weight: Tensor, lam_c: Tensor | None = None) -> Tensor:
    return lambdas_output(q, lam_c, lambda vc: lambda_p(vc, weight, tuple(q.shape[1:-2])), v)


def saved_floats(p: Problem) -> dict[str, int]:
    sizes = [fft_size(s, k // 2) for s, k in zip(p.spatial, p.kernel)]
    freqs = math.prod(sizes[:-1]) * (sizes[-1] // 2 + 1)
    return {
        **lambdas_saved_floats(p),
        "value spectrum (b u v P, complex)": 2 * p.batch * p.dim_u * p.dim_v * freqs,
        "kernel spectrum (k u P, complex)": 2 * p.dim_k * p.dim_u * freqs,
    }


ALGORITHM = PositionAlgorithm("fft", output, cost=lambda p, device: 3.0, saved_floats=saved_floats)
