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

import torch
from einops import rearrange
from torch import Tensor, nn

from lambdanet.layers._common import check_flag, check_positive_int, compute_dtype, float32_island
from lambdanet.layers.algorithms import choose_algorithm
from lambdanet.layers.core import _LambdaNd
from lambdanet.layers.lambda_ops import content_lambda, position_output
from lambdanet.layers.position import RelativePositionEmbedding
from lambdanet.layers.sequence_ops import (
    CausalLambdaState,
    causal_content_output,
    causal_kernel,
    masked_lambda_output,
)

__all__ = ["NORMS", "LambdaLayer1d"]

NORMS = ("auto", "batch", "layer", "none")


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
        dim_out: output channels (default ``dim``); must be divisible by ``heads``.
        dim_k: query/key depth |k|.
        heads: number of queries |h| sharing each lambda.
        dim_u: intra-depth |u|.
        scope: odd side of the local scope; ``None`` for global relative positions up to ``max_length``.
        max_length: longest accepted sequence; required when ``scope=None`` (optional otherwise).
        content: compute the content lambda.
        position: compute position lambdas.
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
        dim_out: int | None = None,
        dim_k: int = 16,
        heads: int = 4,
        dim_u: int = 1,
        scope: int | None = 23,
        max_length: int | None = None,
        content: bool = True,
        position: bool = True,
        causal: bool = False,
        norm: str = "auto",
        algorithm: str = "auto",
        chunk: int = 32,
        pos_embed: RelativePositionEmbedding | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        chunk = check_positive_int("chunk", chunk)
        if max_length is not None:
            max_length = check_positive_int("max_length", max_length)
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r} must be one of {NORMS}")
        if scope is None and position and max_length is None:
            raise ValueError("scope=None (global relative position embeddings) requires max_length")
        if pos_embed is not None and pos_embed.bias is not None:
            raise ValueError("pos_embed has a bias; LambdaLayer1d supports bias-free embeddings only (the paper's)")
        super().__init__(
            dim,
            dim_out=dim_out,
            dim_k=dim_k,
            heads=heads,
            dim_u=dim_u,
            scope=scope,
            feat_size=None if max_length is None else (max_length,),
            content=content,
            position=position,
            position_bias=False,
            algorithm=algorithm,
            pos_embed=pos_embed,
            norm=("layer" if check_flag("causal", causal) else "batch") if norm == "auto" else norm,
            device=device,
            dtype=dtype,
        )
        self.max_length, self.causal, self.chunk = max_length, causal, chunk

    def _make_projection(self, dim: int, channels: int, factory: dict) -> nn.Module:
        return nn.Linear(dim, channels, bias=False, **factory)

    # ----------------------------------------------------------------------------------------------- helpers
    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries and values (normalised) and key logits from the fused projection; channels last."""
        q, k, v = torch.split(self.qkv(x), list(self.splits), dim=-1)
        return self._normalise(self.norm_q, q), k, self._normalise(self.norm_v, v)

    def _normalise(self, norm: nn.Module, x: Tensor) -> Tensor:
        """Apply a query/value norm to (b, n, c) or (b, c) tensors."""
        if isinstance(norm, nn.BatchNorm1d) and x.dim() == 3:
            return norm(x.transpose(1, 2)).transpose(1, 2)
        return norm(x)

    def _check_input(self, x: Tensor) -> None:
        self._check_tensor(x, "(batch, length, dim)")
        if x.shape[-1] != self.dim:
            raise ValueError(f"input has {x.shape[-1]} channels (shape {tuple(x.shape)}), expected dim={self.dim}")
        if self.max_length is not None and x.shape[1] > self.max_length:
            raise ValueError(f"input length {x.shape[1]} exceeds max_length={self.max_length}")

    def _kernel(self, compute: torch.dtype) -> Tensor | None:
        if self.pos is None:
            return None
        weight = self.pos.weight.to(compute)
        return causal_kernel(weight) if self.causal else weight

    def resolve_algorithm(self, batch: int, length: int) -> str:
        """The position algorithm used by the unmasked paths for an input of this batch size and length."""
        if self.algorithm != "auto":
            return self.algorithm
        kernel = self.pos.kernel if self.pos is not None else (1,)
        return choose_algorithm(
            batch=batch,
            spatial=(length,),
            kernel=kernel,
            dim_k=self.dim_k,
            dim_v=self.dim_v,
            dim_u=self.dim_u,
            heads=self.heads,
        )

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Apply the layer.

        Args:
            x: (b, n, dim) input.
            mask: optional (n, n) boolean mask, True where query n may use context position m (combined with the
                causal mask when ``causal=True``).

        Returns:
            (b, n, dim_out) output.
        """
        self._check_input(x)
        b, n, _ = x.shape
        if mask is not None:
            if mask.dtype != torch.bool or tuple(mask.shape) != (n, n):
                raise ValueError(
                    f"mask must be a boolean (n, m) = ({n}, {n}) tensor, got dtype {mask.dtype} shape "
                    f"{tuple(mask.shape)}"
                )
            if self.norm == "batch" and self.training:
                warnings.warn(
                    "LambdaLayer1d(norm='batch') in training mode pools batch statistics over masked positions; "
                    "use norm='layer' for masked inputs",
                    stacklevel=2,
                )
            if self.causal:
                mask = mask & torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()
        q, k, v = self._project(x)

        out_dtype = q.dtype
        compute = compute_dtype(out_dtype)
        with float32_island(x.device):
            q = rearrange(q.to(compute), "b n (h k) -> b h k n", h=self.heads)
            v = rearrange(v.to(compute), "b m (u v) -> b u v m", u=self.dim_u)
            logits = rearrange(k.to(compute), "b m (u k) -> b u k m", u=self.dim_u) if self.content else None
            weight = self._kernel(compute)
            if mask is not None:
                y = masked_lambda_output(q, logits, v, mask, weight)
            else:
                y = self._unmasked_output(q, logits, v, weight, b, n)
            y = rearrange(y, "b h v n -> b n (h v)")
        return y.to(out_dtype)

    def _unmasked_output(self, q: Tensor, logits: Tensor | None, v: Tensor, weight: Tensor | None, b: int, n: int):
        y = None
        if logits is not None:
            if self.causal:
                y = causal_content_output(q, logits, v, self.chunk)  # one lambda per n, never materialised
            else:
                y = torch.einsum("bhkn,bkv->bhvn", q, content_lambda(logits.softmax(dim=-1), v))
        if weight is not None:
            y_p = position_output(q, v, weight, (n,), self.resolve_algorithm(b, n))
            y = y_p if y is None else y + y_p
        return y

    # ----------------------------------------------------------------------------------------------- decoding
    def init_state(self) -> CausalLambdaState:
        """A fresh decoding state for :meth:`step` (causal layers only)."""
        if not self.causal:
            raise ValueError("init_state needs causal=True: incremental decoding is defined for causal layers only")
        kernel = self.pos.kernel[0] if self.pos is not None else 0
        return CausalLambdaState(kernel=kernel, max_length=self.max_length)

    def step(self, x: Tensor, state: CausalLambdaState) -> Tensor:
        """Output (b, dim_out) for the next position ``x`` (b, dim), updating ``state`` in place.

        Equals the corresponding row of ``forward`` on the whole prefix; the content term costs O(1) per token,
        a local position term O(scope).

        Raises:
            ValueError: a non-causal layer, a wrong input shape, or batch norm in training mode.
        """
        if not self.causal:
            raise ValueError("step needs causal=True: incremental decoding is defined for causal layers only")
        if x.dim() != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"step takes one position (batch, dim={self.dim}), got shape {tuple(x.shape)}")
        if self.norm == "batch" and self.training:
            raise ValueError("step with norm='batch' needs eval mode (training-mode batch statistics span positions)")
        q, k, v = self._project(x)
        out_dtype = q.dtype
        compute = compute_dtype(out_dtype)
        with float32_island(x.device):
            q = rearrange(q.to(compute), "b (h k) -> b h k", h=self.heads)
            v = rearrange(v.to(compute), "b (u v) -> b u v", u=self.dim_u)
            logits = rearrange(k.to(compute), "b (u k) -> b u k", u=self.dim_u) if self.content else None
            y = state.step(q, logits, v, self._kernel(compute))
        return rearrange(y, "b h v -> b (h v)").to(out_dtype)

    def extra_repr(self) -> str:
        ctx = f"scope={self.scope}" if self.scope is not None else "scope=None"
        return (
            f"dim={self.dim}, dim_out={self.dim_out}, dim_k={self.dim_k}, heads={self.heads}, dim_u={self.dim_u}, "
            f"{ctx}, max_length={self.max_length}, content={self.content}, position={self.position}, "
            f"causal={self.causal}, norm={self.norm!r}, algorithm={self.algorithm!r}"
        )
