"""3-D lambda layer for volumes and video: Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602, Sec. 3 (the
lambda layer on any structured input; the paper runs 2-D experiments only).

Axis legend: b batch | h heads (queries) | k query/key depth |k| | v value depth |v| = dim_out / h
             u intra-depth |u| | n query positions | m context positions | tt hh ww spatial (time, height, width)

Shape: (b, dim, tt, hh, ww) -> (b, dim_out, ceil(tt / st), ceil(hh / sh), ceil(ww / sw)) for stride (st, sh, sw)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lambdanet.layers.core import _LambdaNd, check_size
from lambdanet.layers.position import RelativePositionEmbedding

__all__ = ["LambdaLayer3d"]


class LambdaLayer3d(_LambdaNd):
    """Multi-query lambda layer with content and relative position lambdas over (T, H, W).

    The 3-D counterpart of :class:`lambdanet.LambdaLayer` (same structure, arguments and initialisation): one
    bias-free 1x1x1 projection, batch-normalised queries and values, keys softmax-normalised over all T H W context
    positions, relative position lambdas over a local (rt, rh, rw) scope or global relative embeddings.

    Args:
        dim: input channels d.
        dim_out: output channels (default ``dim``); must be divisible by ``heads``.
        dim_k: query/key depth |k|.
        heads: number of queries |h| sharing each lambda.
        dim_u: intra-depth |u|.
        scope: local scope: an odd side for every axis, or one odd side per axis, e.g. ``(3, 7, 7)``; ``None``
            for global relative embeddings over ``feat_size``.
        feat_size: (T, H, W) of the input, required when ``scope=None``.
        content: compute the content lambda.
        position: compute position lambdas.
        stride: 1, 2, or per axis, e.g. ``(1, 2, 2)``: a 3-wide average pool with stride 2 (padding 1) after the
            layer along the axes with stride 2.
        position_bias: add a learned per-key constant to the position lambdas (not in the paper).
        algorithm: ``"auto"`` or one of :data:`lambdanet.layers.ALGORITHMS` that serves three axes.
        pos_embed: a :class:`RelativePositionEmbedding` with a 3-D kernel to share with other layers.

    Raises:
        ValueError: for inconsistent arguments; TypeError for non-bool flags or non-floating inputs.

    Note:
        Computes in ``channels_last_3d`` memory and returns the input's memory format; low-precision inputs are
        handled as in :class:`lambdanet.LambdaLayer` (float32 lambdas, float16 output saturating at +-65504).
    """

    ndim = 3

    def __init__(
        self,
        dim: int,
        *,
        dim_out: int | None = None,
        dim_k: int = 16,
        heads: int = 4,
        dim_u: int = 1,
        scope: int | tuple[int, int, int] | None = 7,
        feat_size: Sequence[int] | None = None,
        content: bool = True,
        position: bool = True,
        stride: int | tuple[int, int, int] = 1,
        position_bias: bool = False,
        algorithm: str = "auto",
        pos_embed: RelativePositionEmbedding | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if scope is None and position and feat_size is None:
            raise ValueError("scope=None (global relative position embeddings) requires feat_size=(T, H, W)")
        super().__init__(
            dim,
            dim_out=dim_out,
            dim_k=dim_k,
            heads=heads,
            dim_u=dim_u,
            scope=scope,
            global_size=check_size("feat_size", feat_size, 3),
            content=content,
            position=position,
            position_bias=position_bias,
            stride=stride,
            algorithm=algorithm,
            pos_embed=pos_embed,
            device=device,
            dtype=dtype,
        )
