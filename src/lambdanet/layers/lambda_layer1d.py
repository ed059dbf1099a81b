"""1-D lambda layer for sequences, with masked and causal contexts and incremental decoding.

Bello, "LambdaNetworks: Modeling Long-Range Interactions Without Attention", ICLR 2021, arXiv:2102.08602, Sec. 3
(the lambda layer on any structured input) and App. B.2 (Figure 6, masked contexts). The paper runs no sequence
experiments; see ``docs/sequences.md``.

Axis legend: b batch | h heads (queries) | k query/key depth |k| | v value depth |v| = dim_out / h
             u intra-depth |u| | n query positions | m context positions

Shape: (b, n, dim) -> (b, n, dim_out)
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lambdanet.layers._common import check_flag, check_positive_int, compute_dtype, float32_island
from lambdanet.layers.algorithms import logits
from lambdanet.layers.causal_chunk import chunk_causal_content, recurrent_causal_content
from lambdanet.layers.core import RelativePositionEmbedding, _LambdaNd, lambda_output
from lambdanet.layers.sequence_ops import CausalLambdaState, causal_kernel, check_mask, masked_lambda_output

__all__ = ["NORMS", "LambdaLayer1d"]

NORMS = ("auto", "batch", "layer", "none")
#: Causal ``auto``: ``logits`` (an (n, n) map, half of it zeros) only up to this length; at 1-2k tokens it was
#: 2.0-3.8x slower than ``fft`` for any batch (both grow linearly with the batch), at 512 and below faster.
CAUSAL_LOGITS_MAX_LENGTH = 512
#: Causal ``auto``: ``blocked`` up to this scope radius (1-D windows cost B + 2 r per position, not (B + 2 r)^2):
#: 0.6-0.95x of ``fft`` for 63- and 127-wide scopes at 1k-4k tokens, 1.15x at 255.
CAUSAL_BLOCKED_MAX_HALF = 63


class LambdaLayer1d(_LambdaNd):
    """Multi-query lambda layer over a sequence, optionally masked or causal.

    Same structure and arguments as :class:`lambdanet.LambdaLayer`: one bias-free projection to queries, keys and
    values; keys softmax-normalised over the context per key channel; relative position lambdas from a local
    ``scope`` (offsets within ``±scope // 2``; any length) or, with ``scope=None``, global relative embeddings over
    any length up to ``max_length`` (kernel side ``2 * max_length - 1``).

    ``forward(x, mask)`` takes an optional boolean (n, m) mask shared across the batch (paper App. B.2): every query
    then has its own content lambda with keys normalised within its own context, and the position embeddings are
    masked. ``causal=True`` applies the causal mask ``m <= n`` without any (n, m) tensor (prefix sums with a running
    maximum; memory linear in the length) and enables :meth:`init_state` / :meth:`step` for token-by-token decoding
    that reproduces the full causal pass.

    Args:
        dim: input channels d.
        dim_out, dim_k, heads, dim_u, content, position, device, dtype: keyword arguments as for
            :class:`lambdanet.LambdaLayer`.
        scope: odd side of the local scope; ``None`` for global relative positions up to ``max_length``.
        max_length: longest accepted sequence; required when ``scope=None`` (optional otherwise).
        causal: mask the future (offsets ``m - n > 0``); causal position lambdas use offsets ``-(scope // 2) .. 0``.
        norm: normalisation of queries and values: ``"batch"`` (the paper's BatchNorm over batch and length),
            ``"layer"`` (LayerNorm per position), ``"none"``, or ``"auto"``: ``"layer"`` if ``causal`` else
            ``"batch"``.
        algorithm: position algorithm of the unmasked paths, ``"auto"`` or one of ``"einsum"``, ``"logits"``,
            ``"conv"``, ``"fft"``; masked inputs always use the masked einsum.
        chunk: block length of the causal prefix-sum scan (memory per block Θ(chunk²)).
        pos_embed: a :class:`RelativePositionEmbedding` with kernel ``(scope,)`` or ``(2 * max_length - 1,)`` to
            share with other layers.

    Raises:
        ValueError: for inconsistent arguments (see the messages).

    Note:
        Batch normalisation over (batch, length) in training mode mixes statistics of every position into every
        output, so future tokens leak into past outputs and masked positions into visible ones. The paper's BN is
        meant for images; causal layers default to LayerNorm per position instead, and a layer with
        ``norm="batch"`` warns when it receives a mask in training mode. Pass ``norm="layer"`` (or ``"none"``)
        for masked use.
    """

    ndim = 1

    def __init__(
        self,
        dim: int,
        *,
        scope: int | None = 23,
        max_length: int | None = None,
        causal: bool = False,
        norm: str = "auto",
        chunk: int = 32,
        pos_embed: RelativePositionEmbedding | None = None,
        **kwargs: Any,
    ) -> None:
        chunk = check_positive_int("chunk", chunk)
        if max_length is not None:
            max_length = check_positive_int("max_length", max_length)
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r} must be one of {NORMS}")
        if scope is None and kwargs.get("position", True) and max_length is None:
            raise ValueError("scope=None (global relative position embeddings) requires max_length")
        if pos_embed is not None and pos_embed.bias is not None:
            raise ValueError("pos_embed has a bias; LambdaLayer1d supports bias-free embeddings only (the paper's)")
        if images_only := sorted(kwargs.keys() & {"feat_size", "stride", "position_bias"}):
            raise TypeError(f"LambdaLayer1d got unexpected keyword arguments {images_only} (2-D and 3-D layers only)")
        causal = check_flag("causal", causal)
        norm = ("layer" if causal else "batch") if norm == "auto" else norm
        feat_size = None if max_length is None else (max_length,)
        super().__init__(dim, scope=scope, feat_size=feat_size, norm=norm, pos_embed=pos_embed, **kwargs)
        self.max_length, self.causal, self.chunk = max_length, causal, chunk

    def _make_projection(self, dim: int, channels: int, factory: dict) -> nn.Module:
        return nn.Linear(dim, channels, bias=False, **factory)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor, torch.dtype]:
        """Normalised queries (.., h, k), key logits (.., u, k) (None without content) and normalised values
        (.., u, v) in the compute dtype from (b, n, dim) or (b, dim) inputs; and the output dtype."""
        q, k, v = torch.split(self.qkv(x), self.splits, dim=-1)
        if x.dim() == 3 and self.norm == "batch":  # BatchNorm1d takes (b, c, n)
            q, v = self.norm_q(q.transpose(1, 2)).transpose(1, 2), self.norm_v(v.transpose(1, 2)).transpose(1, 2)
        else:
            q, v = self.norm_q(q), self.norm_v(v)
        out_dtype = q.dtype
        compute = compute_dtype(out_dtype)
        q = q.to(compute).unflatten(-1, (self.heads, self.dim_k))
        k = k.to(compute).unflatten(-1, (self.dim_u, self.dim_k)) if self.content else None
        return q, k, v.to(compute).unflatten(-1, (self.dim_u, self.dim_v)), out_dtype

    def _check_input(self, x: Tensor) -> None:
        self._check_tensor(x, "(batch, length, dim)")
        if x.shape[-1] != self.dim:
            raise ValueError(f"input has {x.shape[-1]} channels (shape {tuple(x.shape)}), expected dim={self.dim}")
        if self.max_length is not None and x.shape[1] > self.max_length:
            raise ValueError(f"input length {x.shape[1]} exceeds max_length={self.max_length}")

    def resolve_algorithm(self, batch: int, length: int) -> str:  # type: ignore[override]
        """The position algorithm used by the unmasked paths for an input of this batch size and length.

        Causal layers cost only the past half of their kernel (offsets ``-(t // 2) .. 0``; every algorithm still
        multiplies the zeroed future half), with the 1-D causal rule measured in ``docs/sequences.md``:
        ``logits`` up to :data:`CAUSAL_LOGITS_MAX_LENGTH` tokens while the past scope covers a third of the
        sequence, ``blocked`` for scopes up to ``2 * CAUSAL_BLOCKED_MAX_HALF + 1``, ``fft`` otherwise.
        """
        if self.algorithm != "auto" or not self.causal:
            return super().resolve_algorithm(batch, (length,))
        half = min(self.pos.kernel[0] // 2 if self.pos is not None else 0, length - 1)
        elements = batch * self.heads * self.dim_u * length * length
        # half + 1: the in-scope context positions of the last query
        if length <= min(CAUSAL_LOGITS_MAX_LENGTH, logits.MAX_WASTE * (half + 1)) and elements <= logits.MAX_ELEMENTS:
            return "logits"
        return "blocked" if half <= CAUSAL_BLOCKED_MAX_HALF else "fft"

    # ----------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        state: CausalLambdaState | None = None,
        return_state: bool = False,
    ) -> Tensor | tuple[Tensor, CausalLambdaState]:
        """Apply the layer.

        Args:
            x: (b, n, dim) input.
            mask: optional (n, n) boolean mask, True where query n may use context position m (combined with the
                causal mask when ``causal=True``).
            state: continue a causal layer from the state after an earlier prefix (from ``return_state=True`` or
                :meth:`step`); the state is not modified.
            return_state: also return the state after the last position (prefill for :meth:`step`); causal
                layers only.

        Returns:
            (b, n, dim_out) output, and with ``return_state`` the new state. With ``state``, equal to the last n
            rows of the full pass over prefix and ``x``.
        """
        if state is not None or return_state:
            if not self.causal:
                raise ValueError("state/return_state need causal=True: only causal layers can continue a prefix")
            if mask is not None:
                raise ValueError("mask cannot be combined with state/return_state (prefill is causal only)")
        self._check_input(x)
        b, n, _ = x.shape
        if state is not None:
            state.check_room(n, b)
        if mask is not None:
            check_mask(mask, n)
            if self.norm == "batch" and self.training:
                warnings.warn(
                    "LambdaLayer1d(norm='batch') in training mode pools batch statistics over masked positions; "
                    "use norm='layer' for masked inputs",
                    stacklevel=2,
                )
            if self.causal:
                mask = mask & torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()
        q, k, v, out_dtype = self._project(x)  # b n h k, b n u k, b n u v
        with float32_island(x.device):
            if mask is not None:  # masked contexts (App. B.2): the future is masked by ``mask`` when causal
                keys = None if k is None else k.permute(0, 2, 3, 1)
                weight = None if self.pos is None else self.pos.weight.to(q.dtype)
                y = masked_lambda_output(q.permute(0, 2, 3, 1), keys, v.permute(0, 2, 3, 1), mask, weight)
                y = y.permute(0, 3, 1, 2)  # b n h v
            elif self.causal:
                y, new_state = self._causal_output(q, k, v, state)
            else:
                y = self._output(q, k, v, self.resolve_algorithm(b, n))
        y = y.reshape(b, n, self.dim_out).to(out_dtype)
        return (y, new_state) if return_state else y

    def _causal_output(
        self, q: Tensor, k: Tensor, v: Tensor, state: CausalLambdaState | None
    ) -> tuple[Tensor, CausalLambdaState]:
        """Causal output (b, n, h, v) from q (b, n, h, k), key logits (b, n, u, k), v (b, n, u, v), continuing
        ``state``; returns a new state."""
        b, n = q.shape[:2]
        new = self.init_state()
        new.length = n if state is None else state.length + n
        y = None
        if k is not None:
            prior = None if state is None else state.content
            y, new.content = chunk_causal_content(q, k, v, prior, output_final_state=True, chunk_size=self.chunk)
        if self.pos is not None:
            weight = causal_kernel(self.pos.weight.to(q.dtype))
            prefix = None if state is None else state.recent_values()  # earlier values the new queries still see
            p = 0 if prefix is None else prefix.shape[-1]
            if p:
                v = torch.cat([prefix.permute(0, 3, 1, 2).to(v.dtype), v], dim=1)
                q = F.pad(q, (0, 0, 0, 0, p, 0))
            algorithm = self.resolve_algorithm(b, p + n)
            y_p = lambda_output(q, v, None, weight, (p + n,), algorithm)[:, p:]
            y = y_p if y is None else y + y_p
            new.store_values(v.permute(0, 2, 3, 1), new.length)
        return y, new

    # ----------------------------------------------------------------------------------------------- decoding
    def init_state(self) -> CausalLambdaState:
        """A fresh decoding state for :meth:`step` or ``forward(x, state=...)`` (causal layers only)."""
        if not self.causal:
            raise ValueError("init_state needs causal=True: incremental decoding is defined for causal layers only")
        kernel = self.pos.kernel[0] if self.pos is not None else 0
        return CausalLambdaState(kernel=kernel, max_length=self.max_length)

    def step(self, x: Tensor, state: CausalLambdaState) -> Tensor:
        """Output (b, dim_out) for the next position ``x`` (b, dim), updating ``state`` in place.

        Equals the corresponding row of ``forward`` on the whole prefix; the content term costs O(1) per token,
        a local position term O(scope) (a ring buffer, written in place).

        Raises:
            ValueError: a non-causal layer, a wrong input shape, a full state, or batch norm in training mode.
        """
        if not self.causal:
            raise ValueError("step needs causal=True: incremental decoding is defined for causal layers only")
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[-1] != self.dim:
            got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"step takes one position (batch, dim={self.dim}), got {got}")
        self._check_tensor(x[:, None], "(batch, dim)")  # dtype: floating, the layer's (unless autocast)
        if self.norm == "batch" and self.training:
            raise ValueError("step with norm='batch' needs eval mode (training-mode batch statistics span positions)")
        state.check_room(1, x.shape[0])
        q, k, v, out_dtype = self._project(x)  # b h k, b u k, b u v
        with float32_island(x.device):
            y = None
            if k is not None:
                y, state.content = recurrent_causal_content(q, k, v, state.content)
            if self.pos is not None:  # reads offsets <= 0 only: the raw kernel, no per-token causal copy
                y_p = state.position_output(q, v, self.pos.weight.to(q.dtype))
                y = y_p if y is None else y + y_p
            state.length += 1
        return y.flatten(1).to(out_dtype)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, dim_out={self.dim_out}, dim_k={self.dim_k}, heads={self.heads}, dim_u={self.dim_u}, "
            f"scope={self.scope}, max_length={self.max_length}, content={self.content}, position={self.position}, "
            f"causal={self.causal}, norm={self.norm!r}, algorithm={self.algorithm!r}"
        )
