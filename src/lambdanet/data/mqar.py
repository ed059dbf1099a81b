"""Multi-query associative recall (MQAR), the synthetic recall task of Zoology (Arora et al., 2023, arXiv:2312.04927).

A sequence starts with ``num_kv_pairs`` key-value pairs ``k_1 v_1 k_2 v_2 ...`` (keys distinct within a sequence,
drawn from the lower half of the vocabulary; values from the upper half); the rest is filler (token 0) into which
every key is inserted again once, as a query, at a distance from the context drawn from a power law
``p(gap = i) ∝ i^(a - 1)`` (short gaps are likely, long gaps occur). The model reads ``inputs`` and must predict,
at each query, the value that followed that key in the context: ``labels`` hold that value at the query
positions and ``-100`` (ignored by ``cross_entropy``) everywhere else.

Shape: inputs (num_examples, seq_len) int64, labels (num_examples, seq_len) int64
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["IGNORE", "MQARConfig", "mqar"]

#: Label of positions that are not queries (the default ``ignore_index`` of ``torch.nn.functional.cross_entropy``).
IGNORE = -100


@dataclass(frozen=True)
class MQARConfig:
    """One MQAR setting.

    Attributes:
        vocab_size: tokens; 0 is the filler, keys come from ``[1, vocab_size // 2)``, values from
            ``[vocab_size // 2, vocab_size)``.
        seq_len: tokens per sequence.
        num_kv_pairs: key-value pairs in the context (and queries per sequence).
        power_a: exponent ``a`` of the gap distribution ``p(i) ∝ i^(a - 1)`` (Zoology uses 0.01).
    """

    vocab_size: int = 8192
    seq_len: int = 256
    num_kv_pairs: int = 16
    power_a: float = 0.01

    def validate(self) -> None:
        for name in ("vocab_size", "seq_len", "num_kv_pairs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.vocab_size // 2 - 1 < self.num_kv_pairs:
            raise ValueError(
                f"vocab_size={self.vocab_size} leaves {self.vocab_size // 2 - 1} keys, fewer than "
                f"num_kv_pairs={self.num_kv_pairs} (keys are distinct within a sequence)"
            )
        if self.seq_len < 4 * self.num_kv_pairs:
            raise ValueError(
                f"seq_len={self.seq_len} is too short for num_kv_pairs={self.num_kv_pairs}: the context takes "
                f"{2 * self.num_kv_pairs} tokens and the queries need as many slots again (seq_len >= 4 x pairs)"
            )
        if not 0 < self.power_a <= 1:
            raise ValueError(f"power_a={self.power_a!r} must lie in (0, 1]")


def mqar(cfg: MQARConfig, num_examples: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``num_examples`` MQAR sequences: (inputs, labels), both (num_examples, seq_len) int64 (module docstring).

    Raises:
        ValueError: an invalid configuration or a negative ``num_examples``.
    """
    cfg.validate()
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 0:
        raise ValueError(f"num_examples={num_examples!r} must be a non-negative integer")
    n, d, length = num_examples, cfg.num_kv_pairs, cfg.seq_len
    half = cfg.vocab_size // 2
    # distinct keys per sequence: the first d of a random permutation of [1, half)
    keys = torch.rand(n, half - 1, generator=generator).argsort(dim=1)[:, :d] + 1
    values = torch.randint(half, cfg.vocab_size, (n, d), generator=generator)
    context = 2 * d
    # Queries occupy (key, value) slot pairs after the context; slot i (0-based) sits at gap i + 1 from it.
    slots = (length - context) // 2
    weights = torch.arange(1, slots + 1, dtype=torch.float64) ** (cfg.power_a - 1)
    gaps = torch.multinomial(weights.expand(n, slots), d, replacement=False, generator=generator)  # n d
    inputs = torch.zeros(n, length, dtype=torch.long)
    inputs[:, 0:context:2], inputs[:, 1:context:2] = keys, values
    rows = torch.arange(n)[:, None]
    pos = context + 2 * gaps  # query key positions
    inputs[rows, pos] = keys
    labels = torch.full((n, length), IGNORE, dtype=torch.long)
    labels[rows, pos] = values  # predict the value at the query key (next-token position of the value)
    return inputs, labels
