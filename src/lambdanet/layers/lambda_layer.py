"""Lambda layer: Bello, "LambdaNetworks: Modeling Long-Range Interactions Without Attention", ICLR 2021,
arXiv:2102.08602, Sec. 3 (equations 1-2, Figures 3, 5 and 8).

Axis legend: b batch | h heads (queries) | k query/key depth |k| | v value depth |v| = dim_out / h
             u intra-depth |u| | n query positions | m context positions | hh ww spatial

Shape: (b, dim, hh, ww) -> (b, dim_out, ceil(hh / stride), ceil(ww / stride))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lambdanet.layers._common import check_lambda_args, compute_dtype, float32_island, init_qkv_
from lambdanet.layers.algorithms import choose_algorithm
from lambdanet.layers.lambda_ops import content_lambda, contiguous_grad, crop_kernel, lambda_output
from lambdanet.layers.position import RelativePositionEmbedding

__all__ = ["LambdaLayer"]


class LambdaLayer(nn.Module):
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
        stride: 1, or 2 for a 3x3 average pool with stride 2 (padding 1) after the layer, as the paper downsamples.
        position_bias: add a learned per-key constant to the position lambdas. Not in the paper; only for
            compatibility with implementations built on a biased Conv3d (lambda-networks, d-li14).
        algorithm: ``"auto"`` (fastest exact algorithm for the input shape, see ``docs/algorithms.md``) or one of
            ``"einsum"``, ``"logits"``, ``"blocked"``, ``"conv"``, ``"fft"``. All give the same result up to
            rounding.
        pos_embed: a :class:`RelativePositionEmbedding` to share with other layers instead of owning one.

    Raises:
        ValueError: for inconsistent arguments (see the messages).

    Note:
        Projections are initialised as in App. E.1 (fan-in normal: std d^-1/2 for keys and values, (|k| d)^-1/2
        for queries, the attention scaling absorbed into the projection); embeddings are unit normal.
        Under autocast or with float16/bfloat16 inputs the lambdas are computed and accumulated in float32 and the
        output is cast back, so large activations do not overflow.
        The layer computes in channels-last memory (faster on CPU, see ``docs/algorithms.md``) and returns the
        input's memory format: contiguous for a contiguous input, channels-last for a channels-last input.
    """

    def __init__(
        self,
        dim: int,
        *,
        dim_out: int | None = None,
        dim_k: int = 16,
        heads: int = 4,
        dim_u: int = 1,
        scope: int | None = 23,
        feat_size: Sequence[int] | None = None,
        content: bool = True,
        position: bool = True,
        stride: int = 1,
        position_bias: bool = False,
        algorithm: str = "auto",
        pos_embed: RelativePositionEmbedding | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dim, dim_out, dim_k, heads, dim_u = check_lambda_args(
            dim=dim,
            dim_out=dim_out,
            dim_k=dim_k,
            heads=heads,
            dim_u=dim_u,
            scope=scope,
            content=content,
            position=position,
            algorithm=algorithm,
        )
        if stride not in (1, 2):
            raise ValueError(f"stride={stride!r} must be 1 or 2 (2 = 3x3 average pool with stride 2 after the layer)")
        if feat_size is not None:
            feat_size = tuple(int(s) for s in feat_size)
            if len(feat_size) != 2 or min(feat_size) < 1:
                raise ValueError(f"feat_size={feat_size!r} must be (H, W) with positive sides")
        if scope is None and position and feat_size is None:
            raise ValueError("scope=None (global relative position embeddings) requires feat_size=(H, W)")

        self.dim, self.dim_out, self.dim_k, self.heads, self.dim_u = dim, dim_out, dim_k, heads, dim_u
        self.dim_v = dim_out // heads
        self.scope, self.feat_size = scope, feat_size
        self.content, self.position, self.stride = content, position, stride
        self.algorithm = algorithm

        factory = {"device": device, "dtype": dtype}
        # One fused projection: channels ordered (h k) queries | (u k) keys | (u v) values.
        self.splits = (heads * dim_k, dim_u * dim_k if content else 0, dim_u * self.dim_v)
        self.qkv = nn.Conv2d(dim, sum(self.splits), 1, bias=False, **factory)
        self.norm_q = nn.BatchNorm2d(heads * dim_k, **factory)
        self.norm_v = nn.BatchNorm2d(dim_u * self.dim_v, **factory)
        self.pos: RelativePositionEmbedding | None = None
        if position:
            kernel = (scope, scope) if scope is not None else tuple(2 * s - 1 for s in feat_size)  # type: ignore[union-attr]
            if pos_embed is None:
                pos_embed = RelativePositionEmbedding(dim_k, kernel, dim_u=dim_u, bias=position_bias, **factory)
            elif (pos_embed.dim_k, pos_embed.dim_u, pos_embed.kernel) != (dim_k, dim_u, kernel):
                raise ValueError(
                    f"pos_embed has (dim_k, dim_u, kernel)={(pos_embed.dim_k, pos_embed.dim_u, pos_embed.kernel)}, "
                    f"expected {(dim_k, dim_u, kernel)}"
                )
            self.pos = pos_embed
        self.pool = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fan-in normal initialisation of App. E.1 (queries scaled by an extra |k|^-1/2)."""
        init_qkv_(self.qkv.weight, self.splits[0], self.dim_k, self.dim)
        self.norm_q.reset_parameters()
        self.norm_v.reset_parameters()
        if self.pos is not None:
            self.pos.reset_parameters()

    # ----------------------------------------------------------------------------------------------- checks
    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"input must be a 4-D tensor (batch, dim, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.dim:
            raise ValueError(f"input has {x.shape[1]} channels (shape {tuple(x.shape)}), expected dim={self.dim}")
        if self.scope is None and self.position and tuple(x.shape[-2:]) != self.feat_size:
            raise ValueError(
                f"input spatial size {tuple(x.shape[-2:])} differs from feat_size={self.feat_size}; global relative "
                "position embeddings need a fixed size (use a local scope for variable sizes)"
            )

    def resolve_algorithm(self, batch: int, spatial: Sequence[int]) -> str:
        """The position algorithm used for an input of this batch size and spatial shape."""
        if self.algorithm != "auto":
            return self.algorithm
        kernel = self.pos.kernel if self.pos is not None else (1, 1)
        return choose_algorithm(
            batch=batch,
            spatial=tuple(spatial),
            kernel=kernel,
            dim_k=self.dim_k,
            dim_v=self.dim_v,
            dim_u=self.dim_u,
            heads=self.heads,
        )

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        b, _, hh, ww = x.shape
        n, heads, dim_k, dim_u, dim_v = hh * ww, self.heads, self.dim_k, self.dim_u, self.dim_v
        # Channels-last inside: every later step works on rows of (b, hh, ww) positions, and on CPU the 1x1
        # projection's backward is several times faster in that layout (docs/benchmarks.md).
        qkv = self.qkv(x.contiguous(memory_format=torch.channels_last))
        q, k, v = torch.split(qkv, self.splits, dim=1)
        q = contiguous_grad(self.norm_q(q.contiguous(memory_format=torch.channels_last)), torch.channels_last)
        v = contiguous_grad(self.norm_v(v.contiguous(memory_format=torch.channels_last)), torch.channels_last)

        out_dtype = q.dtype
        compute = compute_dtype(out_dtype)
        keep_channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        with float32_island(x.device):
            q = q.to(compute).permute(0, 2, 3, 1).reshape(b, hh, ww, heads, dim_k)
            v = v.to(compute).permute(0, 2, 3, 1).reshape(b, hh, ww, dim_u, dim_v)
            lam_c = weight = bias = None
            if self.content:
                keys = k.to(compute).permute(0, 2, 3, 1).reshape(b, n, dim_u, dim_k).softmax(dim=1)
                lam_c = content_lambda(keys.permute(0, 2, 3, 1), v.reshape(b, n, dim_u, dim_v).permute(0, 2, 3, 1))
            if self.pos is not None:
                weight, bias = self.pos()
                weight, bias = weight.to(compute), None if bias is None else bias.to(compute)
            y = lambda_output(
                q,
                v,
                lam_c,
                weight,
                (hh, ww),
                self.resolve_algorithm(b, (hh, ww)),
                bias=bias,
                memory_format=torch.channels_last if keep_channels_last else torch.contiguous_format,
            )
        y = y.to(out_dtype)
        return self.pool(y)

    # ----------------------------------------------------------------------------------------------- accounting
    def macs(self, hh: int, ww: int) -> dict[str, int]:
        """Multiply-accumulates of one sample at input size (hh, ww), by part, in the paper's convention.

        The position term counts only in-scope (n, m) pairs: the paper does "not count zeroed out flops when
        computing positional lambdas with the einsum implementation". Normalisations, the softmax and the
        average pool are not counted (as ``torch.utils.flop_counter`` does not count them either).
        """
        n = hh * ww
        k, v, u, h = self.dim_k, self.dim_v, self.dim_u, self.heads
        parts = {"projection": n * self.dim * sum(self.splits), "content": 0, "position": 0}
        if self.content:
            parts["content"] = n * k * v * u + n * h * k * v  # lambda_c, then applying it
        if self.pos is not None:
            kernel = crop_kernel(self.pos.weight[:1, :1], (hh, ww)).shape[2:]
            pairs = math.prod(_pairs_in_scope(s, side) for s, side in zip((hh, ww), kernel))
            parts["position"] = pairs * k * v * u + n * h * k * v
        return parts

    def extra_repr(self) -> str:
        ctx = f"scope={self.scope}" if self.scope is not None else f"feat_size={self.feat_size}"
        return (
            f"dim={self.dim}, dim_out={self.dim_out}, dim_k={self.dim_k}, heads={self.heads}, dim_u={self.dim_u}, "
            f"{ctx}, content={self.content}, position={self.position}, stride={self.stride}, "
            f"algorithm={self.algorithm!r}"
        )


def _pairs_in_scope(size: int, side: int) -> int:
    """Number of (n, m) pairs along one axis of length ``size`` whose offset lies inside a kernel of ``side``."""
    c = side // 2
    return sum(min(size - 1, i + c) - max(0, i - c) + 1 for i in range(size))
