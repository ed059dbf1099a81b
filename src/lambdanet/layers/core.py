"""The N-d lambda layer core behind :class:`LambdaLayer1d`, the 2-D and 3-D layers :class:`LambdaLayer` and
:class:`LambdaLayer3d`, and their :class:`RelativePositionEmbedding`.

Bello, "LambdaNetworks: Modeling Long-Range Interactions Without Attention", ICLR 2021, arXiv:2102.08602, Sec. 3
(equations 1-2, Figures 3, 5 and 8) and App. E.1. As ``torch.nn``'s ``_ConvNd``,
:class:`_LambdaNd` holds checks, projection, norms, the N-d relative embedding, the content lambda, the float32
island, ``reset_parameters``, ``resolve_algorithm``, ``macs`` and the channels-first forward; :func:`lambda_output` is
the one dispatch point of the position algorithms (plug-ins registered in :mod:`lambdanet.layers.algorithms`).

Axis legend: b batch | h heads (queries) | k query/key depth |k| | v value depth |v| = dim_out / h
             u intra-depth |u| | n query positions | m context positions | S.. spatial axes: hh ww or tt hh ww

Shape: (b, dim, S..) -> (b, dim_out, ceil(S / stride)..) for the 2-D and 3-D layers
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lambdanet.layers._common import check_flag, check_positive_int, compute_dtype, float32_island
from lambdanet.layers.algorithms import ALGORITHMS, REGISTRY, choose_algorithm
from lambdanet.layers.algorithms._base import add_content, crop_kernel

__all__ = ["LambdaLayer", "LambdaLayer3d", "RelativePositionEmbedding", "cast_output", "check_sides", "lambda_output"]

_NORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_PROJECTIONS = {2: nn.Conv2d, 3: nn.Conv3d}
_POOLS = {2: nn.AvgPool2d, 3: nn.AvgPool3d}
_PADS = {2: nn.ConstantPad2d, 3: nn.ConstantPad3d}
_MEMORY_FORMATS = {2: torch.channels_last, 3: torch.channels_last_3d}
_AXES = {1: "(N,)", 2: "(H, W)", 3: "(T, H, W)"}


def check_sides(
    name: str, value: object, ndim: int, ok: Callable[[int], bool], expected: str
) -> tuple[int, ...] | None:
    """One int for every axis, or a sequence of ``ndim`` ints, each passing ``ok``; None passes through."""
    if value is None:
        return None
    sides = (value,) * ndim if isinstance(value, int) else tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(sides) != ndim or not all(isinstance(s, int) and not isinstance(s, bool) and ok(s) for s in sides):
        raise ValueError(f"{name}={value!r} must be {expected}")
    return sides


class RelativePositionEmbedding(nn.Module):
    """Learned relative position embeddings ``R`` indexed by the offset ``m - n`` (paper Sec. 3.3-3.4).

    The learned tensor R of the paper (|r| x |k| per intra-depth slice) laid out as a convolution kernel, which the
    lambda convolution uses as is. One module may be passed to several lambda layers to share embeddings across
    layers (App. A: "share position embeddings across layers" to save memory).

    Args:
        dim_k: query/key depth |k|.
        kernel: kernel side per spatial axis: ``(r, r)`` for a local scope r, ``(2H - 1, 2W - 1)`` for global
            context over an H x W map. Sides must be odd so that offset 0 sits in the centre.
        dim_u: intra-depth |u|.
        bias: add a learned constant per key channel to every position lambda (not in the paper; for compatibility
            with implementations built on a biased Conv3d).

    Shape: weight (dim_k, dim_u, *kernel), bias (dim_k,)
    """

    def __init__(
        self,
        dim_k: int,
        kernel: Sequence[int],
        *,
        dim_u: int = 1,
        bias: bool = False,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kernel = tuple(int(s) for s in kernel)
        if not kernel or any(s < 1 or s % 2 == 0 for s in kernel):
            raise ValueError(f"kernel={kernel} must be a non-empty tuple of odd positive sides")
        self.dim_k, self.dim_u, self.kernel = dim_k, dim_u, kernel
        self.weight = nn.Parameter(torch.empty(dim_k, dim_u, *kernel, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(dim_k, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Paper, App. E.1: "initialized at random using the unit normal distribution".
        nn.init.normal_(self.weight, mean=0.0, std=1.0)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self) -> tuple[Tensor, Tensor | None]:
        return self.weight, self.bias

    def extra_repr(self) -> str:
        return f"dim_k={self.dim_k}, dim_u={self.dim_u}, kernel={self.kernel}, bias={self.bias is not None}"


class _LambdaNd(nn.Module):
    """Multi-query lambda layer over ``ndim`` spatial axes; :class:`lambdanet.LambdaLayer` documents the arguments.

    Subclasses set ``ndim``; the 1-D layer passes ``feat_size=(max_length,)`` and replaces projection and forward.
    """

    ndim = 2

    def __init__(
        self,
        dim: int,
        *,
        dim_out: int | None = None,
        dim_k: int = 16,
        heads: int = 4,
        dim_u: int = 1,
        scope: int | tuple[int, ...] | None = 23,
        feat_size: Sequence[int] | None = None,
        content: bool = True,
        position: bool = True,
        stride: int | tuple[int, ...] = 1,
        position_bias: bool = False,
        algorithm: str = "auto",
        pos_embed: RelativePositionEmbedding | None = None,
        norm: str = "batch",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dim, self.dim_k, self.heads, self.dim_u = (
            check_positive_int(n, v) for n, v in zip(("dim", "dim_k", "heads", "dim_u"), (dim, dim_k, heads, dim_u))
        )
        self.dim_out = dim if dim_out is None else check_positive_int("dim_out", dim_out)
        for name, flag in (("content", content), ("position", position), ("position_bias", position_bias)):
            check_flag(name, flag)
        if self.dim_out % heads:
            raise ValueError(
                f"dim_out={self.dim_out} must be divisible by heads={heads} (value depth = dim_out / heads)"
            )
        if not (content or position):
            raise ValueError("content=False and position=False leave nothing to compute; enable at least one")
        norms = ("batch", "layer", "none") if self.ndim == 1 else ("batch", "none")
        if norm not in norms:
            raise ValueError(f"norm={norm!r} must be one of {norms} for {type(self).__name__}")
        if algorithm != "auto" and algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm={algorithm!r} must be 'auto' or one of {ALGORITHMS}")
        if pos_embed is not None and not isinstance(pos_embed, RelativePositionEmbedding):
            raise TypeError(f"pos_embed must be a RelativePositionEmbedding or None, got {type(pos_embed).__name__}")
        per_axis = f" (or a tuple of {self.ndim})" if self.ndim > 1 else ""
        odd = f"an odd positive integer{per_axis}, or None for global context"
        sides = check_sides("scope", scope, self.ndim, lambda s: s > 0 and s % 2 == 1, odd)
        self.feat_size = check_sides(
            "feat_size", feat_size, self.ndim, lambda s: s > 0, f"{_AXES[self.ndim]} with positive sizes"
        )
        if scope is None and position and feat_size is None:
            raise ValueError(f"scope=None (global relative position embeddings) requires feat_size={_AXES[self.ndim]}")
        strides = check_sides("stride", stride, self.ndim, lambda s: s in (1, 2), f"1 or 2, or a tuple of {self.ndim}")
        self.dim_v = self.dim_out // heads
        self.scope, self.content, self.position, self.stride = scope, content, position, stride
        self.algorithm, self.norm = algorithm, norm

        factory = {"device": device, "dtype": dtype}
        # One fused projection: channels ordered (h k) queries | (u k) keys | (u v) values.
        self.splits = (heads * dim_k, dim_u * dim_k if content else 0, dim_u * self.dim_v)
        self.qkv = self._make_projection(dim, sum(self.splits), factory)
        self.norm_q = self._make_norm(heads * dim_k, factory)
        self.norm_v = self._make_norm(dim_u * self.dim_v, factory)
        self.pos: RelativePositionEmbedding | None = None
        if position:
            kernel = sides if sides is not None else tuple(2 * s - 1 for s in self.feat_size)  # type: ignore[union-attr]
            if pos_embed is None:
                pos_embed = RelativePositionEmbedding(dim_k, kernel, dim_u=dim_u, bias=position_bias, **factory)
            elif (pos_embed.dim_k, pos_embed.dim_u, pos_embed.kernel) != (dim_k, dim_u, kernel):
                raise ValueError(
                    f"pos_embed has (dim_k, dim_u, kernel)={(pos_embed.dim_k, pos_embed.dim_u, pos_embed.kernel)}, "
                    f"expected {(dim_k, dim_u, kernel)}"
                )
            self.pos = pos_embed
        if max(strides) > 1:  # 3-wide average pool with stride 2 on the strided axes, zero padding counted
            # The padding is explicit: avg_pool3d refuses an axis shorter than its kernel even when padded.
            pads = [p for s in reversed(strides) for p in (s - 1, s - 1)]
            kernel = tuple(3 if s == 2 else 1 for s in strides)
            self.pool: nn.Module = nn.Sequential(_PADS[self.ndim](pads, 0.0), _POOLS[self.ndim](kernel, strides))
        else:
            self.pool = nn.Identity()
        self.reset_parameters()

    # ----------------------------------------------------------------------------------------------- building
    def _make_projection(self, dim: int, channels: int, factory: dict) -> nn.Module:
        return _PROJECTIONS[self.ndim](dim, channels, 1, bias=False, **factory)

    def _make_norm(self, channels: int, factory: dict) -> nn.Module:
        if self.norm == "batch":
            return _NORMS[self.ndim](channels, **factory)
        if self.norm == "layer":
            return nn.LayerNorm(channels, **factory)
        return nn.Identity()

    def reset_parameters(self) -> None:
        """Re-initialise every parameter and buffer: fan-in normal projection of App. E.1 (std d^-1/2 for keys and
        values, (|k| d)^-1/2 for queries: the scaled dot-product scaling absorbed), fresh norms (running statistics
        included), unit normal embeddings."""
        weight, nq = self.qkv.weight, self.splits[0]
        with torch.no_grad():
            nn.init.normal_(weight[:nq], std=(self.dim_k * self.dim) ** -0.5)
            nn.init.normal_(weight[nq:], std=self.dim**-0.5)
        for norm in (self.norm_q, self.norm_v):
            if hasattr(norm, "reset_parameters"):
                norm.reset_parameters()
        if self.pos is not None:
            self.pos.reset_parameters()

    # ----------------------------------------------------------------------------------------------- checks
    def _check_tensor(self, x: object, layout: str) -> None:
        """A floating tensor with ``ndim + 2`` axes in the parameters' dtype (unless autocast is on)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a torch.Tensor {layout}, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"input dtype {x.dtype} is not supported; expected a floating-point tensor")
        if x.dim() != self.ndim + 2:
            raise ValueError(f"input must be a {self.ndim + 2}-D tensor {layout}, got shape {tuple(x.shape)}")
        wdtype = self.qkv.weight.dtype
        if x.dtype != wdtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"input dtype {x.dtype} differs from the layer's {wdtype}; cast one or use autocast")

    def _check_input(self, x: Tensor) -> None:
        self._check_tensor(x, f"(batch, dim, {_AXES[self.ndim][1:-1]})")
        if x.shape[1] != self.dim:
            raise ValueError(f"input has {x.shape[1]} channels (shape {tuple(x.shape)}), expected dim={self.dim}")
        if self.scope is None and self.position and tuple(x.shape[2:]) != self.feat_size:
            raise ValueError(
                f"input spatial size {tuple(x.shape[2:])} differs from feat_size={self.feat_size}; global relative "
                "position embeddings need a fixed size (use a local scope for variable sizes)"
            )

    def resolve_algorithm(self, batch: int, spatial: Sequence[int], device: str = "cpu") -> str:
        """The position algorithm used for an input of this batch size and spatial shape on ``device``."""
        if self.algorithm != "auto":
            return self.algorithm
        kernel = self.pos.kernel if self.pos is not None else (1,) * len(spatial)
        dims = {"dim_k": self.dim_k, "dim_v": self.dim_v, "dim_u": self.dim_u, "heads": self.heads}
        return choose_algorithm(batch=batch, spatial=tuple(spatial), kernel=kernel, device=device, **dims)

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        b, spatial = x.shape[0], tuple(x.shape[2:])
        if x.numel() == 0:  # as nn.Conv2d: an empty batch (or map) gives an empty output, still part of the graph
            y = x.new_zeros(b, self.dim_out, *spatial) + 0 * (x.sum() + self.qkv.weight.sum())
            return self.pool(y)
        fmt = _MEMORY_FORMATS[self.ndim]
        # Channels-last inside: every later step works on rows of (b, S..) positions, and on CPU the 1x1
        # projection's backward is several times faster in that layout (docs/benchmarks.md).
        q, k, v = torch.split(self.qkv(x.contiguous(memory_format=fmt)), self.splits, dim=1)
        q = contiguous_grad(self.norm_q(q.contiguous(memory_format=fmt)), fmt)
        v = contiguous_grad(self.norm_v(v.contiguous(memory_format=fmt)), fmt)
        out_dtype = q.dtype
        compute = compute_dtype(out_dtype)
        keep_format = x.is_contiguous(memory_format=fmt) and not x.is_contiguous()
        with float32_island(x.device):
            last = (0, *range(2, self.ndim + 2), 1)  # channels last: a view of the channels-last memory
            q = q.to(compute).permute(last).reshape(b, *spatial, self.heads, self.dim_k)  # b S.. h k
            v = v.to(compute).permute(last).reshape(b, *spatial, self.dim_u, self.dim_v)  # b S.. u v
            y = self._output(q, k.to(compute).permute(last), v, self.resolve_algorithm(b, spatial, x.device.type))
            y = y.reshape(b, -1, self.dim_out).transpose(1, 2)  # b (h v) n
            if torch.compiler.is_compiling():  # a copy, so that viewing symbolic sizes raises no layout guards
                y = y.contiguous()
            y = y.reshape(b, self.dim_out, *spatial)
            y = y.contiguous(memory_format=fmt if keep_format else torch.contiguous_format)
        return cast_output(self.pool(y), out_dtype)  # pooled in float32: float16 pooling overflows too

    def _output(self, q: Tensor, keys: Tensor | None, v: Tensor, algorithm: str) -> Tensor:
        """(b, S.., h, v) output from queries (b, S.., h, k), key logits (b, S.., u k) and values (b, S.., u, v)."""
        b, spatial = q.shape[0], tuple(q.shape[1:-2])
        n, lam_c = math.prod(spatial), None
        if self.content:  # keys softmax-normalised over the positions: one (b, k, v) lambda shared by every query
            keys = keys.reshape(b, n, self.dim_u, self.dim_k).softmax(dim=1)  # b m u k
            lam_c = torch.einsum("bmuk,bmuv->bkv", keys, v.reshape(b, n, self.dim_u, self.dim_v))
        if self.pos is None:
            return lambda_output(q, v, lam_c, None, spatial, algorithm)
        weight, bias = self.pos()
        bias = None if bias is None else bias.to(q.dtype)
        return lambda_output(q, v, lam_c, weight.to(q.dtype), spatial, algorithm, bias=bias)

    # ----------------------------------------------------------------------------------------------- accounting
    def macs(self, *spatial: int) -> dict[str, int]:
        """Multiply-accumulates of one sample at input size ``spatial``, by part, in the paper's convention.

        The position term counts only in-scope (n, m) pairs: the paper does "not count zeroed out flops when
        computing positional lambdas with the einsum implementation". Normalisations, the softmax and the
        average pool are not counted (as ``torch.utils.flop_counter`` does not count them either).
        """
        if len(spatial) != self.ndim:
            raise ValueError(f"macs takes {self.ndim} sizes {_AXES[self.ndim]}, got {spatial}")
        n = math.prod(spatial)
        k, v, u, h = self.dim_k, self.dim_v, self.dim_u, self.heads
        parts = {"projection": n * self.dim * sum(self.splits), "content": 0, "position": 0}
        if self.content:
            parts["content"] = n * k * v * u + n * h * k * v  # lambda_c, then applying it
        if self.pos is not None:
            # in-scope (n, m) pairs of an axis of length S and radius c <= S - 1: S (2c + 1) - c (c + 1)
            radii = [min(side // 2, s - 1) for s, side in zip(spatial, self.pos.kernel)]
            pairs = math.prod(s * (2 * c + 1) - c * (c + 1) for s, c in zip(spatial, radii))
            parts["position"] = pairs * k * v * u + n * h * k * v
        return parts

    def extra_repr(self) -> str:
        ctx = f"scope={self.scope}" if self.scope is not None else f"feat_size={self.feat_size}"
        return (
            f"dim={self.dim}, dim_out={self.dim_out}, dim_k={self.dim_k}, heads={self.heads}, dim_u={self.dim_u}, "
            f"{ctx}, content={self.content}, position={self.position}, stride={self.stride}, "
            f"algorithm={self.algorithm!r}"
        )


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


class LambdaLayer3d(_LambdaNd):
    """Multi-query lambda layer with content and relative position lambdas over (T, H, W), for volumes and video
    (the paper's experiments are 2-D).

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


def contiguous_grad(x: Tensor, memory_format: torch.memory_format) -> Tensor:
    """``x``, whose gradient is made contiguous in ``memory_format`` on the way back (a tensor hook).

    Works around a PyTorch CPU bug (seen in 2.13): ``BatchNorm2d`` backward returns a wrong input gradient when the
    incoming gradient's strides do not match the input's memory format (e.g. a channels-last gradient for a
    contiguous input and a batch of one). Some algorithms hand back gradients with arbitrary strides;
    ``tests/test_layer.py::test_batchnorm_gradient_workaround`` pins both the bug and the workaround.
    """
    if x.requires_grad and not torch.compiler.is_compiling():
        x.register_hook(lambda grad: None if grad is None else grad.contiguous(memory_format=memory_format))
    return x


def lambda_output(
    q: Tensor,
    v: Tensor,
    lam_c: Tensor | None,
    weight: Tensor | None,
    spatial: Sequence[int],
    algorithm: str,
    *,
    bias: Tensor | None = None,
) -> Tensor:
    """The lambda layer's output ``y_n = (lambda_c + lambda_p[n])^T q_n`` (b, S.., h, v) by ``algorithm``, with the
    algorithms' contract (:mod:`lambdanet.layers.algorithms._base`) on a map of size ``spatial``; ``lam_c`` is None
    for a position-only layer, ``weight`` (k, u, *kernel) None for a content-only one; ``bias``, an optional (k,)
    constant added to every position lambda entry (compatibility with implementations built on a biased Conv3d; not
    in the paper). An empty batch or map gives an empty output that stays part of the graph."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r} is not one of {ALGORITHMS}")
    b, h, dv = q.shape[0], q.shape[-2], v.shape[-1]
    if b * math.prod(spatial) == 0:
        zero = 0 * (q.sum() + v.sum() + (0 if weight is None else weight.sum()))
        return q.new_zeros(b, *spatial, h, dv) + zero
    if weight is None:
        return add_content(None, q, lam_c)
    y = REGISTRY[algorithm].output(q, v, crop_kernel(weight, spatial), lam_c)
    return y if bias is None else y + (q @ bias)[..., None]


def cast_output(y: Tensor, dtype: torch.dtype) -> Tensor:
    """Cast the float32 output back to ``dtype``; float16 saturates at its largest finite value instead of
    overflowing: the output grows with the square of the activation scale and exceeds float16's 65504 long before
    a convolution's does (bfloat16 has float32's range).

    Saturation keeps the layer finite, but the layers after it may still overflow on such values: a warning (once
    per process) says so and points to bfloat16.
    """
    if dtype == torch.float16 and y.dtype != dtype:
        limit = torch.finfo(torch.float16).max
        if not torch.compiler.is_compiling() and bool((y.abs() > limit).any()):
            warnings.warn(
                "lambda layer output exceeds float16's range (65504) and is clamped to it; the layers after it may "
                "overflow. Use bfloat16 (e.g. --train.precision bf16-mixed) or float32 for activations this large.",
                RuntimeWarning,
                stacklevel=3,
            )
        y = y.clamp(-limit, limit)
    return y.to(dtype)
