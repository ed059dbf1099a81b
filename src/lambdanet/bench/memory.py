"""A written-down memory model of lambda layers, attention and convolution, and the paper's Table 4 from it.

Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602, Sec. 4.4 and Table 4 (``tab:memory_comparison``): memory of
the position-interaction tensors of ResNet-50 at batch 128 and 224x224, float32, with every 3x3 convolution
replaced (feature maps of 3 blocks at 56x56, 4 at 28x28, 6 at 14x14, 3 at 7x7; h = 8 heads for attention):

- global self-attention stores the attention maps, ``b h n^2`` floats per layer (Θ(blhn²));
- axial self-attention stores ``2 b h n sqrt(n)`` (rows and columns);
- a lambda layer stores the relative embeddings ``E`` (n, m, k) of the einsum implementation, ``k n^2`` floats
  per layer, independent of the batch (Θ(lkn²)); shared across each stage, once per stage (Θ(kn²)).

:func:`paper_table4` recomputes the table; :func:`layer_saved_bytes` is a per-layer model of what *our* layers
keep for the backward pass (``saved_tensors_hooks``), term by term: the terms every lambda layer shares, plus the
position algorithm's own (``saved_floats`` of its plug-in in :mod:`lambdanet.layers.algorithms`). It is checked
against measurement by :func:`lambdanet.bench.layer.check_model` (``lambdanet bench memory``).

Axis legend: b batch | d channels | h heads | k query/key depth | v value depth | u intra-depth
             n query positions | m context positions | P FFT grid size
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lambdanet.layers.algorithms import ALGORITHMS, REGISTRY, Problem, choose_algorithm

__all__ = ["CONTENDERS", "PAPER_TABLE4_GB", "RESNET50_MAPS", "LayerShape", "lambda_saved_floats", "layer_saved_bytes"]
__all__ += ["paper_appendix_d2", "paper_table4", "resnet50_layers", "resnet50_model_gib", "total_mib"]

# (blocks, side) of the 3x3 convolutions of ResNet-50 at 224x224, stages c2..c5 (the paper's hidden comment).
RESNET50_MAPS: tuple[tuple[int, int], ...] = ((3, 56), (4, 28), (6, 14), (3, 7))

# The paper's Table 4 column "Memory (GB)".
PAPER_TABLE4_GB: dict[str, float] = {
    "global self-attention": 120.0,
    "axial self-attention": 4.8,
    "lambda layer": 1.9,
    "lambda layer (|k|=8)": 0.95,
    "lambda layer (shared embeddings)": 0.63,
}

CONTENDERS = (*[f"lambda {a}" for a in ALGORITHMS], "attention (materialised)", "attention (sdpa)", "conv3x3")


def paper_table4(
    *,
    batch: int = 128,
    heads: int = 8,
    dim_k: int = 16,
    bytes_per_float: int = 4,
    maps: tuple[tuple[int, int], ...] = RESNET50_MAPS,
) -> dict[str, float]:
    """The paper's Table 4 memory model in GiB (2^30 bytes, which the paper writes "GB").

    Args:
        batch: b (128 in the paper).
        heads: h of the attention layers (8 in the paper's comment).
        dim_k: |k| of the lambda layers (16; the "|k|=8" row halves it).
        bytes_per_float: 4 for float32.
        maps: (number of layers, side) per stage.

    Returns:
        GiB per row, keyed like :data:`PAPER_TABLE4_GB`.
    """
    if batch < 1 or heads < 1 or dim_k < 1 or bytes_per_float < 1:
        raise ValueError(
            f"batch={batch}, heads={heads}, dim_k={dim_k}, bytes_per_float={bytes_per_float} must all be >= 1"
        )
    gib = bytes_per_float / 2**30
    n2 = sum(layers * side**4 for layers, side in maps)  # sum over layers of n^2, n = side^2
    n_sqrt_n = sum(layers * side**3 for layers, side in maps)
    per_stage = sum(side**4 for _, side in maps)
    return {
        "global self-attention": batch * heads * n2 * gib,
        "axial self-attention": 2 * batch * heads * n_sqrt_n * gib,
        "lambda layer": dim_k * n2 * gib,
        "lambda layer (|k|=8)": dim_k // 2 * n2 * gib,
        "lambda layer (shared embeddings)": dim_k * per_stage * gib,
    }


def paper_appendix_d2(*, batch: int = 32, side: int = 20, layers: int = 8, heads: int = 8, dim_k: int = 16) -> dict:
    """App. D.2's example in MiB: LambdaResNet-420 at 320 px, 8 lambda layers in c4 (20x20), 32 images per TPUv3
    core, bfloat16. The paper: lambda layers 38.4 MB (4.8 MB per layer), attention layers 0.625 GB.
    """
    n2 = side**4
    mib = 2 / 2**20  # bfloat16
    return {
        "lambda layers (k n^2 per layer)": layers * dim_k * n2 * mib,
        "lambda layers, shared embeddings": dim_k * n2 * mib,
        "attention layers (b h n^2 per layer)": layers * batch * heads * n2 * mib,
    }


@dataclass(frozen=True)
class LayerShape:
    """One layer application: batch, channels (in = out), square map side, heads, |k|, |u|, scope (None: global)."""

    batch: int
    dim: int
    side: int
    heads: int = 4
    dim_k: int = 16
    dim_u: int = 1
    scope: int | None = 23

    def __post_init__(self) -> None:
        for name in ("batch", "dim", "side", "heads", "dim_k", "dim_u"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")
        if self.scope is not None and (self.scope < 1 or self.scope % 2 == 0):
            raise ValueError(f"scope={self.scope} must be a positive odd integer or None (global)")

    @property
    def n(self) -> int:
        return self.side * self.side

    @property
    def dim_v(self) -> int:
        return self.dim // self.heads

    @property
    def kernel_side(self) -> int:
        """Side of the relative kernel after cropping to the offsets the map holds (2 side - 1 at most)."""
        full = 2 * self.side - 1
        return full if self.scope is None else min(self.scope, full)

    @property
    def problem(self) -> Problem:
        kernel = (self.kernel_side,) * 2
        return Problem(self.batch, (self.side, self.side), kernel, self.heads, self.dim_k, self.dim_v, self.dim_u)


def layer_saved_bytes(kind: str, s: LayerShape, *, bytes_per_float: int = 4) -> dict[str, int]:
    """Model of the bytes saved for backward by one layer, term by term.

    ``kind`` is ``"lambda <algorithm>"`` (one of :data:`lambdanet.layers.ALGORITHMS`), ``"attention
    (materialised)"`` (softmax(q k^T) v with the b h n n map), ``"attention (sdpa)"`` (a fused kernel keeping only
    q, k, v, the output and a log-sum-exp per query) or ``"conv3x3"``. The dominant terms are the paper's: logits
    b h n m, einsum embeddings k u n m, lambda-convolution lambdas b k v n, FFT spectra b u v P.

    Raises:
        ValueError: if ``kind`` is unknown.
    """
    if kind not in CONTENDERS:
        raise ValueError(f"kind={kind!r} must be one of {CONTENDERS}")
    b, n, d, h = s.batch, s.n, s.dim, s.heads
    if kind.startswith("lambda"):
        floats = lambda_saved_floats(kind.split(" ", 1)[1], s.problem, d)
    elif kind == "conv3x3":
        floats = {"input x (b d n)": b * d * n, "weight (d d 3 3)": 9 * d * d}
    else:
        floats = {"input x (b d n)": b * d * n, "weight (3d d)": 3 * d * d, "q, k, v (b 3d n)": 3 * b * d * n}
        floats["output (b d n)"] = b * d * n
        if kind == "attention (materialised)":
            floats["attention map (b h n n)"] = b * h * n * n
        else:
            floats["log-sum-exp (b h n)"] = b * h * n
    return {name: count * bytes_per_float for name, count in floats.items()}


def lambda_saved_floats(algorithm: str, p: Problem, dim: int) -> dict[str, int]:
    """Floats a lambda layer of any dimension keeps for backward: projection, norms, content lambda, and the
    position algorithm's own terms (its plug-in's ``saved_floats``)."""
    qkv = p.heads * p.dim_k + p.dim_u * p.dim_k + p.dim_u * p.dim_v
    return {
        "input x (b d n)": p.batch * dim * p.n,
        "weights (d (hk+uk+uv) + k u r^D)": dim * qkv + p.dim_k * p.dim_u * math.prod(p.kernel),
        "q, k, v projections (b (hk+uk+uv) n)": p.batch * qkv * p.n,
        "normalised q, softmax keys, normalised v": p.batch * qkv * p.n,
        **REGISTRY[algorithm].saved_floats(p),
    }


def total_mib(terms: dict[str, int]) -> float:
    """Sum of a :func:`layer_saved_bytes` dict in MiB."""
    return sum(terms.values()) / 2**20


def resnet50_layers(*, batch: int = 128, scope: int | None = 23, heads: int = 4, dim_k: int = 16) -> list[LayerShape]:
    """The 16 bottleneck 3x3 layers of ResNet-50 at 224x224 as :class:`LayerShape` (widths 64/128/256/512)."""
    widths = (64, 128, 256, 512)
    return [
        LayerShape(batch, width, side, heads, dim_k, 1, scope)
        for (count, side), width in zip(RESNET50_MAPS, widths)
        for _ in range(count)
    ]


def resnet50_model_gib(kind: str, *, batch: int = 128, scope: int | None = 23, heads: int = 4) -> float:
    """Modelled saved-for-backward GiB of ``kind`` in all 16 bottleneck 3x3 slots of ResNet-50 (224 px); ``kind``
    ``"lambda auto"``: in each slot the algorithm :func:`lambdanet.layers.choose_algorithm` picks for its shape."""
    layers = resnet50_layers(batch=batch, scope=scope, heads=heads)
    kinds = [f"lambda {choose_algorithm(**vars(s.problem))}" if kind == "lambda auto" else kind for s in layers]
    return sum(sum(layer_saved_bytes(k, s).values()) for k, s in zip(kinds, layers)) / 2**30
