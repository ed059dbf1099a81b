"""Functional core of the lambda layer: the content lambda and the one dispatch point of the position algorithms.

Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602, Sec. 3 and App. B. Everything here works on flattened
positions plus a ``spatial`` shape, so the 1-D, 2-D and 3-D layers share it; the algorithms themselves are
plug-ins registered in :mod:`lambdanet.layers.algorithms` (one module each).

Axis legend: b batch | h heads (queries) | k query/key depth |k| | v value depth |v| | u intra-depth |u|
             n query positions | m context positions | S.. spatial axes

Shape: q (b, S.., h, k), v (b, S.., u, v), lam_c (b, k, v), weight (k, u, *kernel) -> y (b, h v, S..)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lambdanet.layers.algorithms import ALGORITHMS, REGISTRY
from lambdanet.layers.algorithms._base import add_content, apply_lambdas, crop_kernel, relative_embeddings

__all__ = ["ALGORITHMS", "apply_lambdas", "content_lambda", "contiguous_grad", "crop_kernel", "lambda_output"]
__all__ += ["position_output", "relative_embeddings"]


def content_lambda(keys: Tensor, v: Tensor) -> Tensor:
    """Content lambda ``sum_{m,u} softmax_m(keys) v^T``: keys (b, u, k, m) already normalised over m, values
    (b, u, v, m) -> (b, k, v), shared by every query position."""
    return torch.einsum("bukm,buvm->bkv", keys, v)


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


def _positions_output(
    q: Tensor, v: Tensor, lam_c: Tensor | None, weight: Tensor | None, spatial: Sequence[int], algorithm: str, bias
) -> Tensor:
    """(b, S.., h, v) output of the algorithm named ``algorithm`` (see :func:`lambda_output`)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r} is not one of {ALGORITHMS}")
    b, h, dv = q.shape[0], q.shape[-2], v.shape[-1]
    if b * math.prod(spatial) == 0:  # empty batch or map: an empty output that stays part of the graph
        zero = 0 * (q.sum() + v.sum() + (0 if weight is None else weight.sum()))
        return q.new_zeros(b, *spatial, h, dv) + zero
    if weight is None:
        if lam_c is None:
            raise ValueError("lambda_output needs a content lambda, a position kernel or both")
        return add_content(None, q, lam_c)
    y = REGISTRY[algorithm].output(q, v, crop_kernel(weight, spatial), lam_c)
    return y if bias is None else y + (q @ bias)[..., None]


def position_output(
    q: Tensor, v: Tensor, weight: Tensor, spatial: Sequence[int], algorithm: str, bias: Tensor | None = None
) -> Tensor:
    """Position output ``y_p[n] = lambda_p[n]^T q_n``: q (b, h, k, n), v (b, u, v, m) with m = n = prod(spatial),
    weight (k, u, *kernel) -> (b, h, v, n) (the 1-D layer's layout). ``bias``: see :func:`lambda_output`."""
    b, n = q.shape[0], math.prod(spatial)
    qp = q.permute(0, 3, 1, 2).reshape(b, *spatial, *q.shape[1:3])
    vp = v.permute(0, 3, 1, 2).reshape(b, *spatial, *v.shape[1:3])
    y = _positions_output(qp, vp, None, weight, spatial, algorithm, bias)  # b S.. h v
    return y.reshape(b, n, *y.shape[-2:]).permute(0, 2, 3, 1)


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
        bias: optional (k,) constant added to every position lambda entry (compatibility with implementations
            built on a biased Conv3d; not in the paper).
        memory_format: memory format of the returned map (channels-last for positions-first memory).

    Returns:
        (b, h v, S..) output map, channels ordered (head, value).
    """
    b, h, dv, n = q.shape[0], q.shape[-2], v.shape[-1], math.prod(spatial)
    y = _positions_output(q, v, lam_c, weight, spatial, algorithm, bias)  # b S.. h v
    y = y.reshape(b, n, h * dv).transpose(1, 2)
    if torch.compiler.is_compiling():  # a copy, so that viewing symbolic sizes raises no layout guards
        y = y.contiguous()
    y = y.reshape(b, h * dv, *spatial)
    return y.contiguous(memory_format=memory_format)
