"""Masked and causal lambdas for sequences, and the state for incremental (token by token) decoding.

Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602, App. B.2 (Figure 6, masked contexts). The paper gives the
masked formulation but no formula for the per-query key normalisation; this module supplies it.

Axis legend: b batch | h heads (queries) | k query/key depth |k| | v value depth |v| | u intra-depth |u|
             n query positions | m context positions | t kernel offsets | w decoding window

Shape: q (b, h, k, n), key logits (b, u, k, m), v (b, u, v, m), mask (n, m), weight (k, u, t) -> y (b, h, v, n)

Masked keys are normalised only inside each query's context (per key channel and intra-depth slice)::

    kbar[n, m] = exp(k_m) mask[n, m] / sum_m' exp(k_m') mask[n, m']      lambda_c[n] = sum_m kbar[n, m] v_m^T

so every query has its own content lambda. A query with an empty context gets a zero content lambda (not NaN).
Position embeddings are masked: ``lambda_p[n] = sum_m E[n, m] mask[n, m] v_m``.

The causal mask (``mask[n, m] = m <= n``) needs no (n, m) tensor: the content term is the chunkwise online-softmax
scan of :mod:`lambdanet.layers.causal_chunk` (memory linear in the length), and the position lambdas use the
relative kernel with its future half (offsets ``m - n > 0``) set to zero (:func:`causal_kernel`), so every
algorithm of :func:`lambdanet.layers.core.lambda_output` applies unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lambdanet.layers.algorithms._base import apply_lambdas, relative_embeddings
from lambdanet.layers.causal_chunk import ContentState

__all__ = ["CausalLambdaState", "causal_kernel", "check_mask", "masked_content_lambdas", "masked_lambda_output"]


def check_mask(mask: Tensor, n: int) -> None:
    """Raise unless ``mask`` is a boolean (n, n) tensor."""
    if mask.dtype != torch.bool or tuple(mask.shape) != (n, n):
        raise ValueError(
            f"mask must be a boolean (n, m) = ({n}, {n}) tensor, got dtype {mask.dtype} shape {tuple(mask.shape)}"
        )


def masked_content_lambdas(logits: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Per-query content lambdas (b, k, v, n) under a shared (n, m) mask (paper App. B.2) from key logits
    (b, u, k, m) (before any softmax), normalised within each query's context; empty contexts give zeros.

    Memory Θ(b u k n m) for the normalised keys; the causal mask needs none (:mod:`lambdanet.layers.causal_chunk`).
    """
    x = logits[:, :, :, None, :].masked_fill(~mask, float("-inf"))  # b u k n m
    top = x.amax(dim=-1, keepdim=True).detach()  # the softmax is shift invariant: no gradient through the shift
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # empty context: any finite shift
    e = torch.exp(x - top)  # masked entries: exp(-inf) = 0
    # A non-empty context holds its maximum, whose term is exp(0) = 1, so clamping at 1 only touches empty rows.
    return torch.einsum("buknm,buvm->bkvn", e / e.sum(dim=-1, keepdim=True).clamp_min(1.0), v)


def masked_lambda_output(
    q: Tensor, logits: Tensor | None, v: Tensor, mask: Tensor, weight: Tensor | None = None
) -> Tensor:
    """Output (b, h, v, n) of a masked lambda layer: content (if ``logits``) plus position (if ``weight``) terms.

    Args:
        q: (b, h, k, n) queries.
        logits: (b, u, k, m) key logits, or None for no content term.
        v: (b, u, v, m) values.
        mask: (n, m) boolean mask shared across the batch (n = m).
        weight: (k, u, t) relative position kernel, or None for no position term.

    Raises:
        ValueError: a mask of the wrong dtype or shape, or neither term requested.
    """
    check_mask(mask, v.shape[-1])
    if logits is None and weight is None:
        raise ValueError("masked_lambda_output needs logits (content term) or weight (position term), got neither")
    lam = masked_content_lambdas(logits, v, mask) if logits is not None else None
    if weight is not None:  # masked position embeddings: lambda_p[n] = sum_m E[n, m] mask[n, m] v_m
        e = relative_embeddings(weight, (v.shape[-1],)) * mask.to(v.dtype)  # k u n m
        lam_p = torch.einsum("kunm,buvm->bkvn", e, v)
        lam = lam_p if lam is None else lam + lam_p
    return apply_lambdas(q, lam)


def causal_kernel(weight: Tensor) -> Tensor:
    """The relative kernel (k, u, t) with its future half (offsets ``m - n > 0``) set to zero; same shape."""
    c = weight.shape[-1] // 2
    return F.pad(weight[..., : c + 1], (0, c))


class CausalLambdaState:
    """Decoding state of one causal lambda layer after a prefix: continue it with ``LambdaLayer1d.step`` or
    ``LambdaLayer1d.forward(x, state=...)``.

    Holds the content state (:class:`~lambdanet.layers.causal_chunk.ContentState`: numerator (b, u, k, v),
    normaliser and running maximum (b, u, k)), so the content term costs O(1) per token, and a ring buffer of the
    last ``window`` values (b, u, v, w) for the position term (``window = kernel // 2 + 1``: the offsets
    ``-(kernel // 2) .. 0``), written in place, so a local scope costs O(scope) per token and nothing is
    re-concatenated; a global kernel keeps up to ``max_length`` values.

    Args:
        kernel: side t of the relative position kernel (0 for no position term).
        max_length: longest sequence accepted (None: unlimited); a global kernel must cover it.
    """

    def __init__(self, kernel: int = 0, max_length: int | None = None) -> None:
        if kernel < 0 or (kernel and kernel % 2 == 0):
            raise ValueError(f"kernel={kernel} must be 0 (no position term) or an odd positive side")
        self.kernel = kernel
        self.window = kernel // 2 + 1 if kernel else 0
        self.max_length = max_length
        self.length = 0
        self.content: ContentState | None = None
        self.values: Tensor | None = None  # ring buffer b u v w: position p lives in slot p % w

    def check_room(self, n: int, batch: int | None = None) -> None:
        """Raise unless ``n`` more positions (of ``batch`` sequences, if given) fit this state."""
        if self.max_length is not None and self.length + n > self.max_length:
            raise ValueError(f"the state holds {self.length} positions; {n} more exceed max_length={self.max_length}")
        held = self.values if self.values is not None else (None if self.content is None else self.content[0])
        if batch is not None and held is not None and held.shape[0] != batch:
            raise ValueError(f"the state holds a batch of {held.shape[0]} sequences, got an input batch of {batch}")

    def recent_values(self) -> Tensor | None:
        """The last ``min(length, window - 1)`` values (b, u, v, p) in order (those later positions still see)."""
        if self.values is None:
            return None
        count = min(self.length, self.window - 1)
        slots = torch.arange(self.length - count, self.length, device=self.values.device) % self.window
        return self.values[..., slots]

    def store_values(self, v: Tensor, total: int) -> None:
        """Write the trailing values of ``v`` (b, u, v, p), ending at position ``total - 1``, into the ring."""
        if not self.window:
            return
        if self.values is None:
            self.values = v.new_zeros(*v.shape[:-1], self.window)
        count = min(v.shape[-1], self.window - 1, total)
        if count:
            slots = torch.arange(total - count, total, device=v.device) % self.window
            self.values[..., slots] = v[..., v.shape[-1] - count :].to(self.values.dtype)

    def position_output(self, q: Tensor, v: Tensor, weight: Tensor) -> Tensor:
        """Write value ``v`` (b, u, v) of position ``length`` into the ring; position output (b, h, v) of query q.

        ``weight`` (k, u, t) is the relative kernel; only its offsets ``<= 0`` are read (no causal copy needed).

        Contracts ``q`` with the embeddings first ((b, h, u, w), then with the values): (h k + h v) w work per
        token instead of the k v w of forming the position lambda.
        """
        if weight.shape[-1] != self.kernel:
            raise ValueError(f"weight has kernel side {weight.shape[-1]}, but the state was built for {self.kernel}")
        w = self.window
        if self.values is None:
            self.values = v.new_zeros(*v.shape, w)
        self.values[..., self.length % w] = v
        c = self.kernel // 2
        if self.length < w:  # slots 0..length hold positions 0..length
            filled = self.length + 1
            kern, vals = weight[..., c - filled + 1 : c + 1], self.values[..., :filled]
        else:  # slot j holds the position of chronological index (j - r) mod w, oldest first (r: the oldest slot)
            kern = torch.roll(weight[..., c - w + 1 : c + 1], shifts=(self.length + 1) % w, dims=-1)
            vals = self.values
        scores = torch.matmul(q[:, None], kern.transpose(0, 1))  # b u h w (strided operands, no copies)
        return torch.matmul(scores, vals.transpose(-1, -2)).sum(dim=1)  # b h v
