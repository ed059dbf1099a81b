"""Weights of ``lambda_networks.LambdaLayer`` (lucidrains/lambda-networks, PyPI ``lambda-networks`` 0.4.0).

Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602, Sec. 3. :func:`from_lucidrains` builds a lambdanet
:class:`~lambdanet.layers.LambdaLayer` that computes the same function as a given ``lambda_networks.LambdaLayer``;
``tests/test_interop.py`` checks equal outputs in train and eval mode for local and global layers.

Axis legend: k query/key depth |k| | u intra-depth |u| | h heads | v value depth | r local scope | n map side
"""

from __future__ import annotations

import torch
from torch import nn

from lambdanet.layers import LambdaLayer

__all__ = ["from_lucidrains"]


def _copy_norm(dst: nn.BatchNorm2d, src: nn.BatchNorm2d) -> None:
    dst.load_state_dict(src.state_dict())
    dst.eps, dst.momentum = src.eps, src.momentum
    dst.affine, dst.track_running_stats = src.affine, src.track_running_stats


def from_lucidrains(layer: nn.Module) -> LambdaLayer:
    """Build a :class:`~lambdanet.layers.LambdaLayer` with the weights of a ``lambda_networks.LambdaLayer``.

    The mapping: ``to_q``, ``to_k`` and ``to_v`` (bias-free 1x1 convolutions) are stacked into our fused ``qkv``
    (channels (h k) | (u k) | (u v), the order of their outputs); ``norm_q`` and ``norm_v`` are copied with their
    running statistics, ``eps`` and ``momentum``. Local layers (``r`` given): the ``pos_conv`` Conv3d kernel
    (k, u, 1, r, r) becomes ``pos.weight`` (k, u, r, r) with ``scope=r``, its bias ``pos.bias``
    (``position_bias=True``). Global layers (``n`` given): ``rel_pos_emb`` (2n-1, 2n-1, k, u), indexed by the
    offset ``m - n + (n - 1)``, becomes ``pos.weight`` (k, u, 2n-1, 2n-1) with ``scope=None``,
    ``feat_size=(n, n)``. The new layer is on the source's device and dtype and in its train/eval mode.

    Where ``lambda_networks`` 0.4.0 differs from the paper (and what the converted layer therefore does):

    - Local position lambdas come from ``nn.Conv3d(u, k, (1, r, r))`` with its default bias: a learned constant is
      added to every position lambda entry. The paper's lambda convolution has no bias; the converted layer keeps
      it (``position_bias=True``) to compute the same function.
    - Global relative embeddings need a square input of exactly ``n x n`` (non-square or smaller inputs fail in
      its einsum); the converted layer has ``feat_size=(n, n)`` and raises a clear error for other sizes.
    - No downsampling: the paper's "3x3 average-pooling with stride 2 after the lambda layers" is not part of the
      layer, so the converted layer has ``stride=1``.
    - It materialises the (n^2, n^2, k, u) global embedding on every call (memory, not a difference in the
      function); the converted layer picks an exact, cheaper algorithm.

    Args:
        layer: a ``lambda_networks.LambdaLayer`` (any ``dim_k``, ``heads``, ``dim_u``, local or global).

    Returns:
        The equivalent lambdanet layer.

    Raises:
        ValueError: ``layer`` is not a ``lambda_networks.LambdaLayer`` (lacks its attributes).
    """
    needed = ("to_q", "to_k", "to_v", "norm_q", "norm_v", "heads", "u", "local_contexts")
    lacking = [a for a in needed if not hasattr(layer, a)]
    if lacking:
        raise ValueError(
            f"layer={type(layer).__name__} is not a lambda_networks.LambdaLayer (it lacks {', '.join(lacking)})"
        )
    heads, dim_u = int(layer.heads), int(layer.u)
    to_q, to_k, to_v = layer.to_q, layer.to_k, layer.to_v
    dim, dim_k = to_q.in_channels, to_q.out_channels // heads
    dim_out = heads * (to_v.out_channels // dim_u)
    weight = to_q.weight
    factory = {"device": weight.device, "dtype": weight.dtype}
    if layer.local_contexts:
        conv = layer.pos_conv
        scope, feat_size = int(conv.kernel_size[1]), None
        position_bias = conv.bias is not None
    else:
        side = layer.rel_pos_emb.shape[0]
        scope, feat_size, position_bias = None, ((side + 1) // 2, (side + 1) // 2), False
    out = LambdaLayer(
        dim,
        dim_out=dim_out,
        dim_k=dim_k,
        heads=heads,
        dim_u=dim_u,
        scope=scope,
        feat_size=feat_size,
        position_bias=position_bias,
        **factory,
    )
    with torch.no_grad():
        out.qkv.weight.copy_(torch.cat([to_q.weight, to_k.weight, to_v.weight], dim=0))
        _copy_norm(out.norm_q, layer.norm_q)
        _copy_norm(out.norm_v, layer.norm_v)
        pos = out.pos
        if pos is None:  # lambda_networks always has position lambdas, so LambdaLayer(position=True) builds one
            raise RuntimeError("the converted layer has no position embedding")
        if layer.local_contexts:
            pos.weight.copy_(layer.pos_conv.weight.squeeze(2))  # k u 1 r r -> k u r r
            if pos.bias is not None:
                pos.bias.copy_(layer.pos_conv.bias)
        else:
            pos.weight.copy_(layer.rel_pos_emb.permute(2, 3, 0, 1))  # (2n-1) (2n-1) k u -> k u (2n-1) (2n-1)
    return out.train(layer.training)
