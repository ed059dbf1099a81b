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

__all__ = ["CausalLM", "KVCache", "LMCfg", "lambda_lm_tiny", "transformer_lm_tiny"]


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


class KVCache:
    """Key/value cache of one attention block: keys and values (b, heads, max_length, c) written in place."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self.length = 0
        self.keys: Tensor | None = None
        self.values: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (b, h, n, c) after the cached positions; all keys and values so far (views)."""
        n = k.shape[2]
        if self.length + n > self.max_length:
            raise ValueError(f"the cache holds {self.length} positions; {n} more exceed max_length={self.max_length}")
        if self.keys is not None and self.keys.shape[0] != k.shape[0]:
            raise ValueError(f"the cache holds a batch of {self.keys.shape[0]} sequences, got {k.shape[0]}")
        if self.keys is None:
            shape = (k.shape[0], k.shape[1], self.max_length, k.shape[3])
            self.keys, self.values = k.new_zeros(shape), v.new_zeros(shape)
        self.keys[:, :, self.length : self.length + n] = k
        self.values[:, :, self.length : self.length + n] = v
        self.length += n
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]


class _CausalSelfAttention(nn.Module):
    """Multi-head causal softmax attention (PyTorch's fused kernel); (b, n, dim) -> (b, n, dim)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        """Attend causally; with ``cache``, after the cached positions (the cache is extended in place)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # b h n c each
        start = 0 if cache is None else cache.length
        if cache is not None:
            k, v = cache.append(k, v)
        if start == 0:
            y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif n == 1:  # one new query sees every cached position
            y = nn.functional.scaled_dot_product_attention(q, k, v)
        else:  # query i sits at position start + i
            mask = torch.ones(n, start + n, dtype=torch.bool, device=x.device).tril(diagonal=start)
            y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
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

    def forward(self, x: Tensor, state: DecodingState | None = None) -> tuple[Tensor, DecodingState | None]:
        """Residual block; with ``state`` (a lambda state or a key/value cache), continue it: (output, new state)."""
        h = self.norm1(x)
        if state is None:
            h = self.mixer(h)
        elif isinstance(state, KVCache):
            h = self.mixer(h, cache=state)
        else:
            h, state = self.mixer(h, state=state, return_state=True)
        x = x + self.drop(self.proj(h))
        return x + self.drop(self.mlp(self.norm2(x))), state

    def step(self, x: Tensor, state: DecodingState) -> Tensor:
        """One position (b, dim), updating ``state`` in place."""
        h = self.norm1(x)
        h = self.mixer(h[:, None], cache=state)[:, 0] if isinstance(state, KVCache) else self.mixer.step(h, state)
        x = x + self.drop(self.proj(h))
        return x + self.drop(self.mlp(self.norm2(x)))


#: Per-block decoding state: a causal lambda layer's state or an attention block's key/value cache.
DecodingState = CausalLambdaState | KVCache


class CausalLM(nn.Module):
    """Next-token model: (b, n) token ids -> (b, n, vocab_size) logits; output n depends on tokens <= n only.

    Decoding: :meth:`prefill` runs a prompt once and returns the per-block states (causal lambda states, or
    key/value caches for the Transformer), :meth:`step` feeds one token, :meth:`generate` samples a continuation.

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

    def _check_tokens(self, tokens: Tensor, start: int = 0) -> None:
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be (batch, length) integer ids, got {tuple(tokens.shape)} {tokens.dtype}")
        if start + tokens.shape[1] > self.cfg.max_length:
            raise ValueError(f"sequence length {start + tokens.shape[1]} exceeds max_length={self.cfg.max_length}")

    def _embed(self, tokens: Tensor, start: int) -> Tensor:
        x = self.embed(tokens)
        if self.pos_embed is not None:
            x = x + self.pos_embed[start : start + tokens.shape[-1]]
        return x

    def forward_features(self, tokens: Tensor) -> Tensor:
        self._check_tokens(tokens)
        x = self._embed(tokens, 0)
        for block in self.blocks:
            x, _ = block(x)
        return self.norm(x)

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(x)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(tokens))

    # ------------------------------------------------------------------------------------------- decoding
    def init_state(self) -> list[DecodingState]:
        """Empty per-block decoding states (lambda states, or key/value caches for the attention mixer)."""
        if self.cfg.mixer == "lambda":
            return [block.mixer.init_state() for block in self.blocks]
        return [KVCache(self.cfg.max_length) for _ in self.blocks]

    def prefill(self, tokens: Tensor, state: list[DecodingState] | None = None) -> tuple[Tensor, list[DecodingState]]:
        """Run ``tokens`` (b, n) in one pass after the prefix held by ``state`` (None: an empty prefix).

        Returns:
            logits (b, n, vocab_size), equal to the last n rows of ``forward`` on prefix and tokens, and the
            per-block states after the last token (lambda states are new objects; key/value caches are extended
            in place).
        """
        state = self._check_state(self.init_state() if state is None else state)
        start = state[0].length
        self._check_tokens(tokens, start)
        x = self._embed(tokens, start)
        new = []
        for block, st in zip(self.blocks, state, strict=True):
            x, st = block(x, st)
            new.append(st)
        return self.head(self.norm(x)), new

    def step(self, token: Tensor, states: list[DecodingState]) -> Tensor:
        """Next-token logits (b, vocab_size) after feeding ``token`` (b,); equals ``forward`` on the whole prefix.

        Each lambda layer does O(1) work per token for its content term (and O(scope) for a local position term);
        attention reads the whole key/value cache (O(prefix)).
        """
        if token.dim() != 1:
            raise ValueError(f"step takes one token per sequence, shape (batch,), got {tuple(token.shape)}")
        states = self._check_state(states)
        start = states[0].length
        self._check_tokens(token[:, None], start)
        x = self._embed(token[:, None], start)[:, 0]
        for block, state in zip(self.blocks, states, strict=True):
            x = block.step(x, state)
        return self.head(self.norm(x))

    @torch.no_grad()
    def generate(
        self,
        tokens: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample ``max_new_tokens`` tokens after the prompt ``tokens`` (b, n): prefill once, then step.

        Args:
            tokens: (b, n) prompt ids, n >= 1.
            max_new_tokens: tokens to append.
            temperature: softmax temperature; 0 picks the most likely token (greedy).
            top_k: sample among the k most likely tokens only (None: all).
            generator: random generator for reproducible sampling.

        Returns:
            (b, n + max_new_tokens) ids: the prompt followed by the samples.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a non-negative integer")
        if not 0 <= temperature < float("inf"):
            raise ValueError(f"temperature={temperature!r} must be a finite number >= 0 (0: greedy)")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k={top_k!r} must be a positive integer or None")
        self._check_tokens(tokens)
        if tokens.shape[1] == 0:
            raise ValueError("tokens must hold a prompt of at least one token, got length 0")
        if tokens.shape[1] + max_new_tokens - 1 > self.cfg.max_length:
            raise ValueError(
                f"prompt of {tokens.shape[1]} tokens + max_new_tokens={max_new_tokens} exceeds "
                f"max_length={self.cfg.max_length}"
            )
        out = [tokens]
        if max_new_tokens == 0:
            return tokens
        logits, state = self.prefill(tokens)
        logits = logits[:, -1]
        for i in range(max_new_tokens):
            nxt = _sample(logits, temperature, top_k, generator)
            out.append(nxt[:, None])
            if i + 1 < max_new_tokens:
                logits = self.step(nxt, state)
        return torch.cat(out, dim=1)

    def _check_state(self, states: list[DecodingState]) -> list[DecodingState]:
        if len(states) != len(self.blocks):
            raise ValueError(f"expected {len(self.blocks)} states (one per block), got {len(states)}")
        return states


def _sample(logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> Tensor:
    """Token ids (b,) from logits (b, vocab)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]


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
