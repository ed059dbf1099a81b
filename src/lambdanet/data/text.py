"""Character-level text data: an embedded corpus, its vocabulary and next-character windows.

The corpus ``pydoc_topics`` is Python's bundled ``pydoc_data.topics.topics`` (the reference text behind ``help()``
topics, about 465,000 characters of English and code shipped with every CPython; no download). Its topics are joined
in sorted key order with blank lines; the vocabulary is the sorted set of its characters. The split is contiguous:
the first ``1 - val_fraction - test_fraction`` trains, the next ``val_fraction`` validates, the rest tests.

A sample is a window of ``seq_len`` input ids and the ``seq_len`` ids that follow each of them (the targets).
Evaluation windows start every ``seq_len`` characters; training windows too, shifted by a phase drawn from
``(seed, epoch)``, so every boundary is seen over epochs and a resumed run sees the same windows.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["CORPORA", "CharVocab", "TextWindows", "load_corpus", "split_ids"]

CORPORA = ("pydoc_topics",)


def load_corpus(name: str = "pydoc_topics") -> str:
    """The text of an embedded corpus (no download).

    Raises:
        ValueError: an unknown corpus name.
    """
    if name != "pydoc_topics":
        raise ValueError(f"corpus {name!r}; expected one of {list(CORPORA)}")
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


class CharVocab:
    """Characters <-> integer ids; id ``i`` is ``chars[i]``.

    Args:
        chars: the characters in id order (a corpus's sorted character set, or the list a checkpoint stores).
    """

    def __init__(self, chars: str | list[str]) -> None:
        self.chars = list(chars)
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("chars holds repeated characters; expected each character once")
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> Tensor:
        """(len(text),) int64 ids; raises ValueError naming a character outside the vocabulary."""
        try:
            return torch.tensor([self.index[c] for c in text], dtype=torch.long)
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the vocabulary of {len(self)} characters") from e

    def decode(self, ids: Tensor) -> str:
        return "".join(self.chars[i] for i in ids.tolist())


def split_ids(ids: Tensor, val_fraction: float, test_fraction: float) -> tuple[Tensor, Tensor, Tensor]:
    """Contiguous (train, val, test) parts of a token sequence."""
    n_test, n_val = int(len(ids) * test_fraction), int(len(ids) * val_fraction)
    n_train = len(ids) - n_val - n_test
    return ids[:n_train], ids[n_train : n_train + n_val], ids[n_train + n_val :]


class TextWindows(Dataset):
    """Next-token windows of a token sequence: ``(ids[s : s + seq_len], ids[s + 1 : s + seq_len + 1])``.

    Keys are ints or ``(epoch, index)`` pairs (see :class:`lambdanet.data.loader.EpochSampler`). With ``shift``,
    window ``i`` of epoch ``e`` starts at ``phase(seed, e) + i * seq_len``; without, at ``i * seq_len``.

    Args:
        ids: the split's token ids.
        seq_len: tokens per window.
        shift: a per-epoch random phase (training).
        seed: run seed (the phase).
        limit: at most this many windows (None: all).
    """

    def __init__(self, ids: Tensor, seq_len: int, shift: bool = False, seed: int = 0, limit: int | None = None):
        usable = len(ids) - 1 - (seq_len if shift else 0)  # room for the target and, when shifting, the phase
        count = usable // seq_len
        if count < 1:
            raise ValueError(f"a split of {len(ids)} tokens is shorter than one window of seq_len={seq_len} + 1")
        self.ids, self.seq_len, self.shift, self.seed = ids, seq_len, shift, seed
        self.count = count if limit is None else min(count, limit)

    def __len__(self) -> int:
        return self.count

    def phase(self, epoch: int) -> int:
        if not self.shift:
            return 0
        return int(torch.randint(self.seq_len, (1,), generator=torch.Generator().manual_seed(self.seed + epoch)))

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        if not 0 <= i < self.count:
            raise IndexError(f"window {i} outside 0..{self.count - 1}")
        start = self.phase(epoch) + i * self.seq_len
        chunk = self.ids[start : start + self.seq_len + 1]
        return chunk[:-1], chunk[1:]
