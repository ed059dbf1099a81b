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
- ``logits``: the same sum contracted queries first: position logits ``a[b, h, n, u, m] = q_n . E[n, m]``, then
  ``y = a @ v``, one large matrix product per sample. Cheaper than ``einsum`` whenever h (k + v) < k v.
- ``blocked``: ``logits`` restricted to blocks of queries and their halos, for local scopes on larger maps: one
  embedding pattern serves every block, so a block's output is one matrix product. Linear in n; implemented in
  :mod:`lambdanet.layers.blocked` (channels-last layout, chunked autograd function).
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

from lambdanet.layers.blocked import blocked_output

__all__ = [
    "ALGORITHMS",
    "content_lambda",
    "contiguous_grad",
    "crop_kernel",
    "fft_size",
    "lambda_output",
    "position_lambdas",
    "position_output",
    "relative_embeddings",
]

ALGORITHMS = ("einsum", "logits", "blocked", "conv", "fft")

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
    is cropped to its centre. Symbolic sizes (export with dynamic shapes) keep the full kernel, which gives the same
    result and keeps convolution padding static.
    """
    if not all(isinstance(s, int) for s in spatial):
        return weight
    kernel = weight.shape[2:]
    slices: list[slice] = [slice(None), slice(None)]
    for side, size in zip(kernel, spatial):
        c = side // 2
        keep = min(c, size - 1)
        slices.append(slice(c - keep, c + keep + 1))
    return weight[tuple(slices)]


def relative_embeddings(weight: Tensor, spatial: Sequence[int]) -> Tensor:
    """Materialise ``E`` (k, u, n, m) from a relative kernel: ``E[:, :, n, m] = weight[..., m - n + c]`` or 0.

    This is the paper's "global einsum with the embeddings masked outside the local scope". Its memory is
    Θ(k u n m), independent of the batch size. Built without index tensors: the kernel is zero-padded to every
    offset the map holds, then each axis is skewed (:func:`_skew_last`), so the backward pass is plain copies.
    """
    x = _full_kernel(weight, spatial)
    k, u = x.shape[:2]
    ndim = len(spatial)
    labels = ["k", "u", *[f"t{d}" for d in range(ndim)]]
    for d, size in enumerate(spatial):
        i = labels.index(f"t{d}")
        order = [*[j for j in range(len(labels)) if j != i], i]
        x = x.permute(order)
        labels = [*[labels[j] for j in order][:-1], f"n{d}", f"m{d}"]
        x = _skew_last(x.unsqueeze(-2).expand(*x.shape[:-1], size, x.shape[-1]).contiguous(), size)
    final = ["k", "u", *[f"n{d}" for d in range(ndim)], *[f"m{d}" for d in range(ndim)]]
    n = math.prod(spatial)
    return x.permute([labels.index(name) for name in final]).reshape(k, u, n, n)  # k u n m


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
    return out.reshape(b, dv, weight.shape[0], -1).transpose(1, 2)  # b k v n


def _lambda_p_fft(v: Tensor, weight: Tensor, spatial: Sequence[int]) -> Tensor:
    b, u, dv, _ = v.shape
    k = weight.shape[0]
    ndim = len(spatial)
    kernel = weight.shape[2:]
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
    out = out[(..., *[slice(0, s) for s in spatial])]  # b k v *spatial
    return out.reshape(b, k, dv, -1)  # b k v n


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a gradient contiguous in a given memory format.

    Works around a PyTorch CPU bug (seen in 2.13): ``BatchNorm2d`` backward returns a wrong input gradient when the
    incoming gradient's strides do not match the input's memory format (e.g. a channels-last gradient for a
    contiguous input and a batch of one). Some algorithms hand back gradients with arbitrary strides;
    ``tests/test_layer.py::test_batchnorm_gradient_workaround`` pins both the bug and the workaround.
    """

    @staticmethod
    def forward(ctx, x: Tensor, memory_format: torch.memory_format) -> Tensor:  # type: ignore[override]
        ctx.memory_format = memory_format
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad.contiguous(memory_format=ctx.memory_format), None


def contiguous_grad(x: Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
    """``x`` unchanged; its gradient is made contiguous in ``memory_format`` on the way back."""
    if not x.requires_grad or torch.compiler.is_compiling() or torch.jit.is_scripting():
        return x
    return _ContiguousGrad.apply(x, memory_format)


class _ApplyLambdas(torch.autograd.Function):
    """``y[b, h, v, n] = sum_k q[b, h, k, n] lambda[b, k, v, n]``: a tiny matrix product at every position.

    Batched matmul over b * n positions of (h x k) @ (k x v) matrices is slow on CPU; fused multiply-adds over
    whole slices (vectorised along n) are several times faster, forward and backward.
    """

    @staticmethod
    def forward(ctx, q: Tensor, lam: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(q, lam)
        b, h, k, n = q.shape
        y = q.new_zeros(b, h, lam.shape[2], n)
        for i in range(k):
            y.addcmul_(q[:, :, i, None, :], lam[:, None, i])
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        q, lam = ctx.saved_tensors
        h = q.shape[1]
        grad_q = grad_lam = None
        if ctx.needs_input_grad[0]:
            grad_q = torch.stack([(lam * grad[:, j, None]).sum(2) for j in range(h)], dim=1)
        if ctx.needs_input_grad[1]:
            grad_lam = torch.zeros_like(lam)
            for j in range(h):
                grad_lam.addcmul_(q[:, j, :, None, :], grad[:, j, None])
        return grad_q, grad_lam


def apply_lambdas(q: Tensor, lam: Tensor) -> Tensor:
    """Apply per-position lambdas (b, k, v, n) to queries (b, h, k, n): (b, h, v, n)."""
    if torch.jit.is_scripting() or torch.compiler.is_compiling():
        return torch.einsum("bhkn,bkvn->bhvn", q, lam)
    return _ApplyLambdas.apply(q, lam)


def position_lambdas(v: Tensor, weight: Tensor, spatial: Sequence[int], algorithm: str = "conv") -> Tensor:
    """Position lambdas as (b, k, v, n) for ``algorithm`` in einsum/conv/fft (``logits`` never forms them)."""
    weight = crop_kernel(weight, spatial)
    if algorithm == "einsum":
        return torch.einsum("kunm,buvm->bkvn", relative_embeddings(weight, spatial), v)
    if algorithm == "conv":
        return _lambda_p_conv(v, weight, spatial)
    if algorithm == "fft":
        return _lambda_p_fft(v, weight, spatial)
    raise ValueError(f"algorithm={algorithm!r} does not build position lambdas; expected 'einsum', 'conv' or 'fft'")


def _skew_last(x: Tensor, size: int) -> Tensor:
    """Relative to absolute on the last two axes: (..., n, 2S - 1) -> (..., n, m), out[n, m] = x[n, m - n + S - 1].

    Row n of the result starts (S - 1) - n entries into row n of ``x``; in the flattened (n, t) block that is the
    constant row stride 2S - 2, so the whole shift is one slice and two reshapes (no gather, no index tensors).
    """
    if size == 1:
        return x
    *lead, n, t = x.shape
    flat = x.reshape(*lead, n * t)
    return flat[..., size - 1 : size - 1 + n * (t - 1)].reshape(*lead, n, t - 1)[..., :size]


def _full_kernel(weight: Tensor, spatial: Sequence[int]) -> Tensor:
    """Zero-pad a (cropped) kernel to every offset a map holds: side 2S - 1 per axis (zeros = out of scope)."""
    weight = crop_kernel(weight, spatial)
    pads: list[int] = []
    for size, side in zip(reversed(spatial), reversed(weight.shape[2:])):
        p = size - 1 - side // 2
        pads += [p, p]
    return F.pad(weight, pads)


def position_logits(q: Tensor, weight: Tensor, spatial: Sequence[int], construction: str = "auto") -> Tensor:
    """Position logits ``a[b, h, n, u, m] = sum_k q[b, h, k, n] E[k, u, n, m]``.

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
    full = _full_kernel(weight, spatial)
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
    # Export-friendly form of the same skew (slices and reshapes only), one axis at a time.
    labels = ["B", *[f"n{d}" for d in range(ndim)], "u", *[f"t{d}" for d in range(ndim)]]
    for d, size in enumerate(spatial):
        last = (labels.index(f"n{d}"), labels.index(f"t{d}"))
        order = [i for i in range(len(labels)) if i not in last] + list(last)
        x = _skew_last(x.permute(order).contiguous(), size)
        labels = [labels[i] for i in order]
        labels[-1] = f"m{d}"
    final = ["B", *[f"n{d}" for d in range(ndim)], "u", *[f"m{d}" for d in range(ndim)]]
    x = x.permute([labels.index(name) for name in final])
    return x.reshape(b, h, n, u, n)  # b h n u m


def _blocked_channels_last(
    q: Tensor, v: Tensor, weight: Tensor, spatial: Sequence[int], bias: Tensor | None, lam_c: Tensor | None = None
) -> Tensor:
    """``blocked`` on (b, S.., h, k) queries and (b, S.., u, v) values, compatibility bias included: (b, S.., h, v)."""
    y = blocked_output(q, v, crop_kernel(weight, spatial), lam_c)
    return y if bias is None else y + (q @ bias)[..., None]


def position_output(
    q: Tensor,
    v: Tensor,
    weight: Tensor,
    spatial: Sequence[int],
    algorithm: str,
    bias: Tensor | None = None,
    *,
    channels_last: bool = False,
) -> Tensor:
    """Position output ``y_p[n] = lambda_p[n]^T q_n`` for every query position.

    Args:
        q: (b, h, k, n) queries, or (b, S.., h, k) with ``channels_last``.
        v: (b, u, v, m) values, with m = n = prod(spatial), or (b, S.., u, v) with ``channels_last``.
        weight: (k, u, *kernel) relative position kernel.
        spatial: the map's size, e.g. (H, W).
        algorithm: one of :data:`ALGORITHMS`.
        bias: optional (k,) constant added to every position lambda entry (compatibility with biased Conv3d
            implementations; not in the paper).
        channels_last: positions first, channels last, for inputs and output (the 2-D layer's layout).

    Returns:
        (b, h, v, n) output, or (b, S.., h, v) with ``channels_last``.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r} is not one of {ALGORITHMS}")
    b, n = q.shape[0], math.prod(spatial)
    if algorithm == "blocked":  # works in the channels-last layout
        if not channels_last:
            q = q.permute(0, 3, 1, 2).reshape(b, *spatial, *q.shape[1:3])
            v = v.permute(0, 3, 1, 2).reshape(b, *spatial, *v.shape[1:3])
        y = _blocked_channels_last(q, v, weight, spatial, bias)  # b S.. h v
        if not channels_last:
            y = y.reshape(b, n, *y.shape[-2:]).permute(0, 2, 3, 1)
        return y
    if channels_last:  # the other algorithms work in the (b, h, k, n) layout
        q = q.reshape(b, n, *q.shape[-2:]).permute(0, 2, 3, 1)
        v = v.reshape(b, n, *v.shape[-2:]).permute(0, 2, 3, 1)
    if algorithm == "logits":
        logits = position_logits(q, weight, spatial)  # b h n u m
        _, h, _, u, m = logits.shape
        # (b, h n, u m) @ (b, u m, v): one large matrix product per sample.
        y = torch.matmul(logits.reshape(b, h * n, u * m), v.transpose(2, 3).reshape(b, u * m, -1))  # b (h n) v
        y = y.reshape(b, h, n, -1).transpose(2, 3)
    else:
        y = apply_lambdas(q, position_lambdas(v, weight, spatial, algorithm))
    if bias is not None:
        y = y + torch.einsum("bhkn,k->bhn", q, bias)[:, :, None]
    if channels_last:
        y = y.permute(0, 3, 1, 2).reshape(b, *spatial, y.shape[1], y.shape[2])
    return y


def lambda_output(
    q: Tensor,
    v: Tensor,
    lam_c: Tensor | None,
    weight: Tensor | None,
    spatial: Sequence[int],
    algorithm: str,
    *,
    bias: Tensor | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Tensor:
    """The lambda layer's output ``y_n = (lambda_c + lambda_p[n])^T q_n`` as a (b, h v, S..) map.

    Args:
        q: (b, S.., h, k) queries, positions first (any strides).
        v: (b, S.., u, v) values, positions first (any strides).
        lam_c: (b, k, v) content lambda, or None (position-only layer).
        weight: (k, u, *kernel) relative position kernel, or None (content-only layer).
        spatial: the map's size.
        algorithm: position algorithm, one of :data:`ALGORITHMS`.
        bias: optional (k,) compatibility bias of the position lambdas (see :func:`position_output`).
        memory_format: memory format of the returned map (``torch.channels_last`` for 2-D positions-first memory).

    Returns:
        (b, h v, S..) output map, channels ordered (head, value).
    """
    b, h, k, dv = q.shape[0], q.shape[-2], q.shape[-1], v.shape[-1]
    n = math.prod(spatial)
    if weight is not None and algorithm == "blocked":  # content fused into the blocked pass
        y = _blocked_channels_last(q, v, weight, spatial, bias, lam_c)
    elif weight is not None and algorithm in ("einsum", "conv", "fft"):
        # These apply per-position lambdas along n: contiguous (b, h, k, n) queries keep that vectorised.
        u = v.shape[-2]
        q = q.reshape(b, n, h, k).permute(0, 2, 3, 1).contiguous()
        v = v.reshape(b, n, u, dv).permute(0, 2, 3, 1).contiguous()
        y = position_output(q, v, weight, spatial, algorithm, bias=bias)  # b h v n
        if lam_c is not None:
            y = y + torch.einsum("bhkn,bkv->bhvn", q, lam_c)
        return y.reshape(b, h * dv, *spatial).contiguous(memory_format=memory_format)
    elif lam_c is None or torch.compiler.is_compiling() or torch.jit.is_scripting():
        # Traced graphs avoid splitting (n h) back into positions: shape guards on symbolic sizes.
        y = None if weight is None else position_output(q, v, weight, spatial, algorithm, bias=bias, channels_last=True)
        if lam_c is not None:
            y_c = torch.einsum("bnhk,bkv->bnhv", q.reshape(b, n, h, k), lam_c)
            y = y_c if y is None else y.reshape(b, n, h, dv) + y_c
        if y is None:
            raise ValueError("lambda_output needs a content lambda, a position kernel or both")
    else:  # one matrix product applies the content lambda and adds the position output
        queries = q.reshape(b, n * h, k)
        if weight is None:
            y = torch.bmm(queries, lam_c)
        else:
            y_p = position_output(q, v, weight, spatial, algorithm, bias=bias, channels_last=True)
            y = torch.baddbmm(y_p.reshape(b, n * h, dv), queries, lam_c)
    y = y.reshape(b, n, h * dv).transpose(1, 2).reshape(b, h * dv, *spatial)
    return y.contiguous(memory_format=memory_format)
