"""3-D lambda layer for volumes and video: Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602, Sec. 3 (the
lambda layer on any structured input; the paper's experiments are 2-D).

Axis legend: b batch | h heads (queries) | k query/key depth |k| | v value depth |v| = dim_out / h
             u intra-depth |u| | n query positions | m context positions | tt hh ww spatial (time, height, width)

Shape: (b, dim, tt, hh, ww) -> (b, dim_out, ceil(tt / st), ceil(hh / sh), ceil(ww / sw)) for stride (st, sh, sw)
"""

from __future__ import annotations

from typing import Any

from lambdanet.layers.core import _LambdaNd

__all__ = ["LambdaLayer3d"]


class LambdaLayer3d(_LambdaNd):
    """Multi-query lambda layer with content and relative position lambdas over (T, H, W).

    The 3-D counterpart of :class:`lambdanet.LambdaLayer`, with the same arguments, structure and initialisation
    (1x1x1 projection, BatchNorm3d, keys normalised over all T H W positions), except:

    Args:
        scope: local scope: an odd side for every axis, or one odd side per axis, e.g. ``(3, 7, 7)`` (default 7);
            ``None`` for global relative embeddings over ``feat_size``.
        feat_size: (T, H, W) of the input, required when ``scope=None``.
        stride: 1, 2, or per axis, e.g. ``(1, 2, 2)``: a 3-wide average pool with stride 2 (padding 1) after the
            layer along the axes with stride 2.
        algorithm: ``"auto"`` or an algorithm of :data:`lambdanet.layers.ALGORITHMS` that serves three axes;
            ``blocked`` handles per-axis scopes natively, ``conv`` is a 3-D convolution.
        **kwargs: the other arguments of :class:`lambdanet.LambdaLayer`.

    Note:
        Computes in ``channels_last_3d`` memory and returns the input's memory format.
    """

    ndim = 3

    def __init__(self, dim: int, *, scope: int | tuple[int, int, int] | None = 7, **kwargs: Any) -> None:
        super().__init__(dim, scope=scope, **kwargs)
