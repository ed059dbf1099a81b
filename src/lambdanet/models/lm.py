"""Small causal language models: a lambda-layer LM and a Transformer of matched size.

Bello, "LambdaNetworks: Modeling Long-Range Interactions Without Attention", ICLR 2021, arXiv:2102.08602, Sec. 3
and App. B.2 (masked/causal lambda layers). The paper runs no language-model experiments; this family is our own
comparison (``docs/sequences.md``).

Both models are pre-norm residual stacks ``x + proj(mixer(LN(x)))``, ``x + MLP(LN(x))`` over token embeddings with a
final LayerNorm and a linear head. The lambda LM's mixer is a causal :class:`lambdanet.LambdaLayer1d` with global
relative position embeddings over ``max_length`` (so it needs no absolute positions); the Transformer's mixer is
causal multi-head softmax attention with learned absolute position embeddings. The lambda LM's MLP is widened so
that both have the same parameter count (to within 0.1%).

Note:
    Not a model from the paper. Queries and values use LayerNorm per position (``norm="layer"``) instead of the
    paper's BatchNorm, which would leak future tokens in training mode.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from lambdanet.layers import LambdaLayer1d
from lambdanet.layers.sequence_ops import CausalLambdaState
from lambdanet.models._registry import ModelMeta, register_model

__all__ = ["CausalLM", "LMCfg", "lambda_lm_tiny", "transformer_lm_tiny"]


@dataclass(frozen=True)
class LMCfg:
    """Layout of a :class:`CausalLM`.

    Attributes:
        mixer: ``"lambda"`` (causal lambda layer) or ``"attention"`` (causal softmax attention).
        vocab_size: tokens (characters) in the vocabulary.
        max_length: longest sequence (global relative positions / absolute positions).
        dim: model width.
        depth: residual blocks.
        heads: queries |h| of the lambda layer, or attention heads.
        dim_k: query/key depth |k| of the lambda layer.
        dim_u: intra-depth |u| of the lambda layer.
        scope: local scope of the lambda layer's position lambdas; None for global relative positions.
        mlp_hidden: hidden width of each MLP.
        dropout: dropout on the residual branches.
        algorithm: position algorithm of the lambda layers (``auto``, ``einsum``, ``logits``, ``conv``, ``fft``);
            ``conv``/``fft`` keep memory linear in the length.
    """

    mixer: str = "lambda"
    vocab_size: int = 128
    max_length: int = 256
    dim: int = 128
    depth: int = 4
    heads: int = 4
    dim_k: int = 16
    dim_u: int = 1
    scope: int | None = None
    mlp_hidden: int = 512
    dropout: float = 0.0
    algorithm: str = "auto"


class _CausalSelfAttention(nn.Module):
    """Multi-head causal softmax attention (PyTorch's fused kernel); (b, n, dim) -> (b, n, dim)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # b h n c each
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return y.transpose(1, 2).reshape(b, n, d)


class _Block(nn.Module):
    def __init__(self, cfg: LMCfg) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        if cfg.mixer == "lambda":
            self.mixer: nn.Module = LambdaLayer1d(
                cfg.dim,
                dim_k=cfg.dim_k,
                heads=cfg.heads,
                dim_u=cfg.dim_u,
                scope=cfg.scope,
                max_length=cfg.max_length,
                causal=True,
                norm="layer",
                algorithm=cfg.algorithm,
            )
        else:
            self.mixer = _CausalSelfAttention(cfg.dim, cfg.heads)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.mlp_hidden), nn.GELU(), nn.Linear(cfg.mlp_hidden, cfg.dim))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.proj(self.mixer(self.norm1(x))))
        return x + self.drop(self.mlp(self.norm2(x)))


class CausalLM(nn.Module):
    """Next-token model: (b, n) token ids -> (b, n, vocab_size) logits; output n depends on tokens <= n only.

    Raises:
        ValueError: an unknown mixer, or inputs that are not (b, n) integer ids with n <= ``max_length``.
    """

    def __init__(self, cfg: LMCfg) -> None:
        super().__init__()
        if cfg.mixer not in ("lambda", "attention"):
            raise ValueError(f"mixer={cfg.mixer!r} must be 'lambda' or 'attention'")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_embed = nn.Parameter(torch.zeros(cfg.max_length, cfg.dim)) if cfg.mixer == "attention" else None
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.embed.weight, std=0.02)
        if self.pos_embed is not None:
            nn.init.normal_(self.pos_embed, std=0.02)
        for block in self.blocks:
            for lin in (block.proj, block.mlp[2]):  # residual outputs start small (GPT-2 style)
                nn.init.normal_(lin.weight, std=0.02 / (2 * self.cfg.depth) ** 0.5)
                nn.init.zeros_(lin.bias)

    def forward_features(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be (batch, length) integer ids, got {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.shape[1] > self.cfg.max_length:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_length={self.cfg.max_length}")
        x = self.embed(tokens)
        if self.pos_embed is not None:
            x = x + self.pos_embed[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(x)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(tokens))

    def init_state(self) -> list[CausalLambdaState]:
        """Per-block decoding states for :meth:`step` (lambda mixer only).

        Raises:
            ValueError: for the attention mixer (no key/value cache is implemented).
        """
        if self.cfg.mixer != "lambda":
            raise ValueError(f"incremental decoding needs mixer='lambda', this model has mixer={self.cfg.mixer!r}")
        return [block.mixer.init_state() for block in self.blocks]

    def step(self, token: Tensor, states: list[CausalLambdaState]) -> Tensor:
        """Next-token logits (b, vocab_size) after feeding ``token`` (b,); equals ``forward`` on the whole prefix.

        Each lambda layer does O(1) work per token for its content term (and O(scope) for a local position term).
        """
        if token.dim() != 1:
            raise ValueError(f"step takes one token per sequence, shape (batch,), got {tuple(token.shape)}")
        if len(states) != len(self.blocks):
            raise ValueError(f"expected {len(self.blocks)} states (one per block), got {len(states)}")
        x = self.embed(token)
        for block, state in zip(self.blocks, states, strict=True):
            x = x + block.drop(block.proj(block.mixer.step(block.norm1(x), state)))
            x = x + block.drop(block.mlp(block.norm2(x)))
        return self.head(self.norm(x))


def _build(base: LMCfg, overrides: dict[str, Any]) -> CausalLM:
    names = {f.name for f in fields(LMCfg)} - {"mixer"}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown override(s) {unknown}; expected some of {sorted(names)}")
    return CausalLM(replace(base, **overrides))


_META = {
    "input_size": (256,),
    "test_input_size": (32,),
    "num_classes": 128,
    "extra": {"task": "language_model", "input": "token ids (batch, length), int64; length <= max_length"},
}

# Matched sizes at the defaults (dim 128, depth 4, vocab 128, max_length 256): 859,008 parameters (Transformer) vs
# 858,720 (lambda, MLP 648 wide instead of 512); tests/test_lm.py pins both.
MODEL_CFGS: dict[str, LMCfg] = {
    "lambda_lm_tiny": LMCfg(mixer="lambda", mlp_hidden=648),
    "transformer_lm_tiny": LMCfg(mixer="attention", mlp_hidden=512),
}


@register_model(meta=ModelMeta(paper_ref="arXiv:2102.08602, App. B.2 (masked lambda layer); our LM", **_META))
def lambda_lm_tiny(**overrides: Any) -> CausalLM:
    """Causal lambda-layer LM, 4 blocks of width 128 (global relative positions). Layout: ``MODEL_CFGS``."""
    return _build(MODEL_CFGS["lambda_lm_tiny"], overrides)


@register_model(meta=ModelMeta(paper_ref="Vaswani et al. 2017 (baseline for the lambda LM)", **_META))
def transformer_lm_tiny(**overrides: Any) -> CausalLM:
    """Causal Transformer LM of the same size as ``lambda_lm_tiny``. Layout: ``MODEL_CFGS``."""
    return _build(MODEL_CFGS["transformer_lm_tiny"], overrides)
