"""What a position algorithm is, and the pieces several algorithms share (relative kernels, lambda application).

Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602, Sec. 3.3-3.4 and App. B.

Axis legend: b batch | h heads | k query/key depth | v value depth | u intra-depth | n query positions
             m context positions | t kernel offsets | S.. spatial axes | K.. kernel sides

Shape: q (b, S.., h, k), v (b, S.., u, v), weight (k, u, K..), lam_c (b, k, v) -> y (b, S.., h, v)

``lambda_p[n] = sum_m E[n, m] v[m]``, ``E[n, m] = weight[:, :, m - n + c]`` (c = kernel // 2, 0 outside the kernel);
every algorithm computes ``y[n] = (lambda_c + lambda_p[n])^T q_n`` with the contract above (any strides, the kernel
cropped by :func:`crop_kernel`, ``lam_c`` optional).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PositionAlgorithm", "Problem", "add_content", "apply_lambdas", "crop_kernel", "relative_embeddings"]


@dataclass(frozen=True)
class Problem:
    """One layer application as the cost rules and memory models see it (``kernel`` is cropped to the map)."""

    batch: int
    spatial: tuple[int, ...]
    kernel: tuple[int, ...]
    heads: int = 4
    dim_k: int = 16
    dim_v: int = 16
    dim_u: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel", tuple(min(k, 2 * s - 1) for k, s in zip(self.kernel, self.spatial)))

    @property
    def n(self) -> int:
        return math.prod(self.spatial)


@dataclass(frozen=True)
class PositionAlgorithm:
    """A registered position algorithm: ``name`` (the ``algorithm=`` value); ``output(q, v, weight, lam_c=None)``
    with the contract above; ``cost(problem, device_type)``, the ``auto`` rule's preference (lower wins; None: never
    picked there); ``saved_floats(problem)``, the floats it keeps for backward beyond what every algorithm keeps
    (the memory model of ``lambdanet bench memory``); ``dims``, the numbers of spatial axes it serves;
    ``available(device)``, whether it runs there (a compiled kernel may not)."""

    name: str
    output: Callable[..., Tensor]
    cost: Callable[[Problem, str], float | None]
    saved_floats: Callable[[Problem], dict[str, int]]
    dims: tuple[int, ...] = (1, 2, 3)
    available: Callable[[torch.device], bool] = field(default=lambda device: True)


def crop_kernel(weight: Tensor, spatial: Sequence[int]) -> Tensor:
    """Drop kernel offsets that no (n, m) pair of a map of size ``spatial`` can reach (exact, only faster).

    An axis of size ``S`` has offsets ``m - n`` in ``[-(S - 1), S - 1]``, so a kernel side larger than ``2S - 1``
    is cropped to its centre. Symbolic sizes (export with dynamic shapes) keep the full kernel, which gives the same
    result and keeps convolution padding static.
    """
    if not all(isinstance(s, int) for s in spatial):
        return weight
    slices: list[slice] = [slice(None), slice(None)]
    for side, size in zip(weight.shape[2:], spatial):
        c, keep = side // 2, min(side // 2, size - 1)
        slices.append(slice(c - keep, c + keep + 1))
    return weight[tuple(slices)]


def relative_embeddings(weight: Tensor, spatial: Sequence[int]) -> Tensor:
    """Materialise ``E`` (k, u, n, m) from a relative kernel: ``E[:, :, n, m] = weight[..., m - n + c]`` or 0.

    This is the paper's "global einsum with the embeddings masked outside the local scope". Its memory is
    Θ(k u n m), independent of the batch size. Built without index tensors: the kernel is zero-padded to every
    offset the map holds, then each axis is skewed (:func:`skew_last`), so the backward pass is plain copies.
    """
    x = full_kernel(weight, spatial)
    k, u, n = *x.shape[:2], math.prod(spatial)
    x = x.reshape(k, u, *[1] * len(spatial), *x.shape[2:])  # k u 1.. t..: every n axis broadcast
    return skew_axes(x, "k u", spatial, "").reshape(k, u, n, n)  # k u n m


def skew_axes(x: Tensor, lead: str, spatial: Sequence[int], middle: str) -> Tensor:
    """Offsets to context positions on every spatial axis: x (lead.., n.., middle.., t..), with n axes of size S
    or 1 (broadcast) and offset axes of side 2S - 1 -> (lead.., n.., middle.., m..), ``out[n, m] = x[n, m - n + S - 1]``
    per axis (:func:`skew_last`, one axis at a time: slices and reshapes only)."""
    ndim = len(spatial)
    labels = [*lead.split(), *[f"n{d}" for d in range(ndim)], *middle.split(), *[f"t{d}" for d in range(ndim)]]
    for d, size in enumerate(spatial):
        last = (labels.index(f"n{d}"), labels.index(f"t{d}"))
        order = [i for i in range(len(labels)) if i not in last] + list(last)
        x = x.permute(order)
        x = skew_last(x.expand(*x.shape[:-2], size, x.shape[-1]).contiguous(), size)
        labels = [labels[i] for i in order]
        labels[-1] = f"m{d}"
    final = [*lead.split(), *[f"n{d}" for d in range(ndim)], *middle.split(), *[f"m{d}" for d in range(ndim)]]
    return x.permute([labels.index(name) for name in final])


def skew_last(x: Tensor, size: int) -> Tensor:
    """Relative to absolute on the last two axes: (..., n, 2S - 1) -> (..., n, m), out[n, m] = x[n, m - n + S - 1].

    Row n of the result starts (S - 1) - n entries into row n of ``x``; in the flattened (n, t) block that is the
    constant row stride 2S - 2, so the whole shift is one slice and two reshapes (no gather, no index tensors).
    """
    if size == 1:
        return x
    *lead, n, t = x.shape
    flat = x.reshape(*lead, n * t)
    return flat[..., size - 1 : size - 1 + n * (t - 1)].reshape(*lead, n, t - 1)[..., :size]


def full_kernel(weight: Tensor, spatial: Sequence[int]) -> Tensor:
    """Zero-pad a (cropped) kernel to every offset a map holds: side 2S - 1 per axis (zeros = out of scope)."""
    weight = crop_kernel(weight, spatial)
    pads: list[int] = []
    for size, side in zip(reversed(spatial), reversed(weight.shape[2:])):
        pads += [size - 1 - side // 2] * 2
    return F.pad(weight, pads)


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


def lambdas_output(q: Tensor, lam_c: Tensor | None, lam_p: Callable[[Tensor], Tensor], v: Tensor) -> Tensor:
    """Output of the algorithms that build position lambdas (b, k, v, n): ``lam_p`` maps (b, u, v, n) values to
    them; queries are applied along n, where contiguous (b, h, k, n) copies keep the product vectorised."""
    b, h, k = q.shape[0], q.shape[-2], q.shape[-1]
    spatial, (u, dv) = q.shape[1:-2], v.shape[-2:]
    n = math.prod(spatial)
    qc = q.reshape(b, n, h, k).permute(0, 2, 3, 1).contiguous()  # b h k n
    y = apply_lambdas(qc, lam_p(v.reshape(b, n, u, dv).permute(0, 2, 3, 1).contiguous()))  # b h v n
    if lam_c is not None:
        y = y + torch.einsum("bhkn,bkv->bhvn", qc, lam_c)
    return y.permute(0, 3, 1, 2).reshape(b, *spatial, h, dv)


def lambdas_saved_floats(p: Problem) -> dict[str, int]:
    """What :func:`lambdas_output` keeps for backward: the (b, h, k, n) and (b, u, v, n) copies and the lambdas."""
    return {
        "(b, h, k, n) and (b, u, v, n) copies of q, v": p.batch * (p.heads * p.dim_k + p.dim_u * p.dim_v) * p.n,
        "position lambdas (b k v n)": p.batch * p.dim_k * p.dim_v * p.n,
    }


def add_content(y: Tensor | None, q: Tensor, lam_c: Tensor | None) -> Tensor:
    """``y + q^T lam_c`` for positions-first y (b, S.., h, v) (y None: content only): one batched matrix product
    in eager mode; traced graphs avoid merging (n h) (shape guards on symbolic sizes)."""
    if lam_c is None:
        assert y is not None
        return y
    b, h, k, dv = q.shape[0], q.shape[-2], q.shape[-1], lam_c.shape[-1]
    shape = (*q.shape[:-1], dv)
    if torch.compiler.is_compiling() or torch.jit.is_scripting():
        n = math.prod(q.shape[1:-2])
        y_c = torch.einsum("bnhk,bkv->bnhv", q.reshape(b, n, h, k), lam_c)
        return y_c.view(shape) if y is None else (y.reshape(b, n, h, dv) + y_c).view(shape)
    queries = q.reshape(b, -1, k)
    return (torch.bmm(queries, lam_c) if y is None else torch.baddbmm(y.reshape(b, -1, dv), queries, lam_c)).view(shape)
