"""Relative position embeddings for lambda layers (Bello, ICLR 2021, Sec. 3.3-3.4).

Axis legend: k query/key depth |k| | u intra-depth |u| | t kernel offsets (one axis per spatial dimension)

Shape: weight (k, u, *kernel); kernel side r for a local scope, 2S - 1 for global context over a map of side S.

One module holds the learned tensor R of the paper (|r| x |k| per intra-depth slice), laid out as a convolution
kernel so that the lambda convolution uses it as is. The same module may be passed to several lambda layers to share
embeddings across layers (App. A: "share position embeddings across layers" to save memory).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["RelativePositionEmbedding"]


class RelativePositionEmbedding(nn.Module):
    """Learned relative position embeddings ``R`` indexed by the offset ``m - n``.

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
