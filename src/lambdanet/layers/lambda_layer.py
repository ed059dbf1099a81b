"""Lambda layer: Bello, "LambdaNetworks: Modeling Long-Range Interactions Without Attention", ICLR 2021,
arXiv:2102.08602, Sec. 3 (equations 1-2, Figures 3, 5 and 8).

Axis legend: b batch | h heads (queries) | k query/key depth |k| | v value depth |v| = dim_out / h
             u intra-depth |u| | n query positions | m context positions | hh ww spatial

Shape: (b, dim, hh, ww) -> (b, dim_out, ceil(hh / stride), ceil(ww / stride))
"""

from __future__ import annotations

from lambdanet.layers.core import _LambdaNd

__all__ = ["LambdaLayer"]


class LambdaLayer(_LambdaNd):
    """Multi-query lambda layer with content and relative position lambdas (2-D).

    Queries, keys and values come from one bias-free 1x1 projection; queries and values are batch-normalised, keys
    are softmax-normalised over the context positions separately for every key channel and intra-depth slice.
    The |h| queries of a position share one lambda (multi-query), so the value depth is ``dim_out // heads`` and the
    output channels are ordered (head, value), as in the paper's ``reshape([b, n, h, v] -> [b, n, d])``.

    Position lambdas use learned relative embeddings: a local scope of side ``scope`` (the lambda convolution; any
    input size) or, with ``scope=None``, global relative embeddings over a fixed ``feat_size`` map. Either way the
    position term is translation equivariant.

    Args:
        dim: input channels d.
        dim_out: output channels (default ``dim``); must be divisible by ``heads``.
        dim_k: query/key depth |k|.
        heads: number of queries |h| sharing each lambda.
        dim_u: intra-depth |u|.
        scope: odd side of the local scope of position lambdas; ``None`` for global relative embeddings.
        feat_size: (H, W) of the input, required when ``scope=None``.
        content: compute the content lambda (False reproduces the paper's position-only ablation).
        position: compute position lambdas (False reproduces the content-only ablation).
        stride: 1, or 2 for a 3x3 average pool with stride 2 (padding 1) after the layer, as the paper downsamples;
            or a per-axis tuple of 1s and 2s.
        position_bias: add a learned per-key constant to the position lambdas. Not in the paper; only for
            compatibility with implementations built on a biased Conv3d (lambda-networks, d-li14).
        algorithm: ``"auto"`` (fastest exact algorithm for the input shape, see ``docs/algorithms.md``) or one of
            :data:`lambdanet.layers.ALGORITHMS` (``"einsum"``, ``"logits"``, ``"blocked"``, ``"conv"``, ``"fft"``).
            All give the same result up to rounding.
        pos_embed: a :class:`RelativePositionEmbedding` to share with other layers instead of owning one.

    Raises:
        ValueError: for inconsistent arguments (see the messages); TypeError for non-bool flags, and in forward for
            non-floating inputs or a dtype other than the parameters' outside autocast.

    Note:
        Projections are initialised as in App. E.1 (fan-in normal: std d^-1/2 for keys and values, (|k| d)^-1/2
        for queries, the attention scaling absorbed into the projection); embeddings are unit normal.
        Under autocast or with float16/bfloat16 inputs the lambdas are computed and accumulated in float32 and the
        output is cast back; a float16 output saturates at +-65504 (the output grows with the square of the
        activation scale and would overflow long before a convolution's). An empty batch gives an empty output.
        The layer computes in channels-last memory (faster on CPU, see ``docs/algorithms.md``) and returns the
        input's memory format: contiguous for a contiguous input, channels-last for a channels-last input.
    """

    ndim = 2
