"""Functional core of the lambda layer: content and position lambdas, N-d, several exact algorithms.

Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602, Sec. 3 and App. B. Everything here works on flattened
positions plus a ``spatial`` shape, so the 1-D, 2-D and 3-D layers share it.

Axis legend: b batch | h heads (queries) | k query/key depth |k| | v value depth |v| | u intra-depth |u|
             n query positions | m context positions | f frequencies (FFT) | t kernel offsets

Shape: q (b, h, k, n), keys (b, u, k, m), v (b, u, v, m), weight (k, u, *kernel) -> y (b, h, v, n)

Position lambdas are relative: ``lambda_p[n] = sum_m E[n, m] v[m]`` with ``E[n, m] = weight[:, :, m - n + c]`` where
``c = kernel // 2`` (per axis) and ``E[n, m] = 0`` when ``m - n`` falls outside the kernel. A local scope ``r`` is a
kernel of side ``r``; global relative embeddings for a map of side ``S`` are a kernel of side ``2S - 1``. Every
algorithm below computes exactly this sum:

- ``einsum``: the paper's Figure 3/5: gather ``E`` (n, m, k, u) from the kernel (zeros outside the scope), then
  ``lambda_p = einsum('nmku,buvm->bnkv')``. Memory Θ(nmk) independent of the batch.
- ``logits``: the same einsum contracted in the other order, queries first: position logits
  ``a = einsum('bhkn,nmku->bhunm')`` then ``y = einsum('bhunm,buvm->bhvn')``. Cheaper when h(k + v) < kv.
- ``conv``: the lambda convolution (Sec. 3.4) as an ordinary N-d convolution with the value depth folded into the
  batch: ``conv(v as (b v, u, *spatial), weight)`` gives ``lambda_p`` as (b v, k, *spatial). Linear in n.
- ``fft``: the same convolution through real FFTs: O(n log n) whatever the scope, exact up to rounding. Global
  relative embeddings become cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ALGORITHMS",
    "content_lambda",
    "crop_kernel",
    "fft_size",
    "position_lambdas",
    "position_output",
    "relative_embeddings",
]

ALGORITHMS = ("einsum", "logits", "conv", "fft")

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def content_lambda(keys: Tensor, v: Tensor) -> Tensor:
    """Content lambda ``sum_{m,u} softmax_m(keys) v^T``.

    Args:
        keys: (b, u, k, m) normalised keys (softmax over m already applied).
        v: (b, u, v, m) values.

    Returns:
        (b, k, v) lambda shared by every query position.
    """
    return torch.einsum("bukm,buvm->bkv", keys, v)


def crop_kernel(weight: Tensor, spatial: Sequence[int]) -> Tensor:
    """Drop kernel offsets that no (n, m) pair of a map of size ``spatial`` can reach (exact, only faster).

    An axis of size ``S`` has offsets ``m - n`` in ``[-(S - 1), S - 1]``, so a kernel side larger than ``2S - 1``
    is cropped to its centre.
    """
    kernel = weight.shape[2:]
    slices: list[slice] = [slice(None), slice(None)]
    for side, size in zip(kernel, spatial):
        c = side // 2
        keep = min(c, size - 1)
        slices.append(slice(c - keep, c + keep + 1))
    return weight[tuple(slices)]


def _relative_index(spatial: Sequence[int], kernel: Sequence[int], device: torch.device) -> tuple[Tensor, Tensor]:
    """Flat kernel index ``idx[n, m]`` of offset ``m - n`` and its validity mask (offset inside the kernel)."""
    idx = torch.zeros((), dtype=torch.long, device=device)
    valid = torch.ones((), dtype=torch.bool, device=device)
    ndim = len(spatial)
    for d, (size, side) in enumerate(zip(spatial, kernel)):
        pos = torch.arange(size, device=device)
        rel = pos[None, :] - pos[:, None] + side // 2  # (n_d, m_d): m_d - n_d + c_d
        ok = (rel >= 0) & (rel < side)
        # Place axis d's (n_d, m_d) on dims d and ndim + d of a (n_1..n_D, m_1..m_D) grid.
        shape = [1] * (2 * ndim)
        shape[d], shape[ndim + d] = size, size
        idx = idx * side + rel.clamp(0, side - 1).reshape(shape)
        valid = valid & ok.reshape(shape)
    n = math.prod(spatial)
    return idx.reshape(n, n), valid.reshape(n, n)


def relative_embeddings(weight: Tensor, spatial: Sequence[int]) -> Tensor:
    """Materialise ``E`` (k, u, n, m) from a relative kernel: ``E[:, :, n, m] = weight[..., m - n + c]`` or 0.

    This is the paper's "global einsum with the embeddings masked outside the local scope". Its memory is
    Θ(k u n m), independent of the batch size.
    """
    weight = crop_kernel(weight, spatial)
    k, u = weight.shape[:2]
    idx, valid = _relative_index(spatial, weight.shape[2:], weight.device)
    flat = weight.reshape(k, u, -1)
    return flat[:, :, idx] * valid.to(weight.dtype)  # k u n m


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


def _lambda_p_conv(v: Tensor, weight: Tensor, spatial: Sequence[int]) -> Tensor:
    b, u, dv, _ = v.shape
    ndim = len(spatial)
    x = v.transpose(1, 2).reshape(b * dv, u, *spatial)  # (b v) u *spatial
    out = _CONV[ndim](x, weight, padding=tuple(s // 2 for s in weight.shape[2:]))  # (b v) k *spatial
    return out.reshape(b, dv, weight.shape[0], -1)  # b v k n


def _lambda_p_fft(v: Tensor, weight: Tensor, spatial: Sequence[int]) -> Tensor:
    b, u, dv, _ = v.shape
    k = weight.shape[0]
    ndim = len(spatial)
    kernel = weight.shape[2:]
    half = [s // 2 for s in kernel]
    sizes = [fft_size(s, c) for s, c in zip(spatial, half)]
    dims = tuple(range(-ndim, 0))
    # Kernel offset t = i - c goes to index t mod L: circular correlation equals the linear one for n, m < S.
    r = F.pad(weight, [p for s, L in zip(reversed(kernel), reversed(sizes)) for p in (0, L - s)])
    r = torch.roll(r, shifts=[-c for c in half], dims=dims)
    v_f = torch.fft.rfftn(v.reshape(b, u, dv, *spatial), s=sizes, dim=dims).flatten(3)  # b u v f
    r_f = torch.fft.rfftn(r, s=sizes, dim=dims).conj().flatten(2)  # k u f
    if u == 1:
        prod = v_f[:, 0, None] * r_f[None, :, 0, None]  # b k v f
    else:
        prod = torch.einsum("buvf,kuf->bkvf", v_f, r_f)
    spectrum = prod.reshape(b, k, dv, *sizes[:-1], sizes[-1] // 2 + 1)
    out = torch.fft.irfftn(spectrum, s=sizes, dim=dims)
    out = out[(..., *[slice(0, s) for s in spatial])]  # b k v *spatial
    return out.reshape(b, k, dv, -1).transpose(1, 2)  # b v k n


def position_lambdas(v: Tensor, weight: Tensor, spatial: Sequence[int], algorithm: str = "conv") -> Tensor:
    """Position lambdas ``lambda_p`` as (b, n, k, v) (paper layout) for ``algorithm`` in einsum/conv/fft."""
    weight = crop_kernel(weight, spatial)
    if algorithm == "einsum":
        e = relative_embeddings(weight, spatial)
        return torch.einsum("kunm,buvm->bnkv", e, v)
    if algorithm == "conv":
        return _lambda_p_conv(v, weight, spatial).permute(0, 3, 2, 1)
    if algorithm == "fft":
        return _lambda_p_fft(v, weight, spatial).permute(0, 3, 2, 1)
    raise ValueError(f"algorithm={algorithm!r} does not build position lambdas; expected 'einsum', 'conv' or 'fft'")


def position_output(
    q: Tensor,
    v: Tensor,
    weight: Tensor,
    spatial: Sequence[int],
    algorithm: str,
    lambda_c: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor:
    """Apply position lambdas (and optionally the content lambda) to the queries.

    Args:
        q: (b, h, k, n) queries.
        v: (b, u, v, m) values, with m = n = prod(spatial).
        weight: (k, u, *kernel) relative position kernel.
        spatial: the map's size, e.g. (H, W).
        algorithm: one of :data:`ALGORITHMS`.
        lambda_c: optional (b, k, v) content lambda, added to every position lambda before it meets the queries.
        bias: optional (k,) constant added to every position lambda entry (compatibility with biased Conv3d
            implementations; not in the paper).

    Returns:
        (b, h, v, n) output.
    """
    weight = crop_kernel(weight, spatial)
    if algorithm == "logits":
        e = relative_embeddings(weight, spatial)
        logits = torch.einsum("bhkn,kunm->bhunm", q, e)
        y = torch.einsum("bhunm,buvm->bhvn", logits, v)
        if lambda_c is not None:
            y = y + torch.einsum("bhkn,bkv->bhvn", q, lambda_c)
    else:
        if algorithm == "einsum":
            lam = torch.einsum("kunm,buvm->bnkv", relative_embeddings(weight, spatial), v)
            pattern = "bhkn,bnkv->bhvn"
        elif algorithm == "conv":
            lam = _lambda_p_conv(v, weight, spatial)  # b v k n
            pattern = "bhkn,bvkn->bhvn"
        elif algorithm == "fft":
            lam = _lambda_p_fft(v, weight, spatial)  # b v k n
            pattern = "bhkn,bvkn->bhvn"
        else:
            raise ValueError(f"algorithm={algorithm!r} is not one of {ALGORITHMS}")
        if lambda_c is not None:
            lam = lam + (lambda_c[:, None] if algorithm == "einsum" else lambda_c.transpose(1, 2)[..., None])
        y = torch.einsum(pattern, q, lam)
    if bias is not None:
        y = y + torch.einsum("bhkn,k->bhn", q, bias)[:, :, None]
    return y
