"""``triton``: the fused Triton kernel for local scopes (1-D, 2-D), logits kept on chip; see
:mod:`lambdanet.layers.triton_local`.

Axis legend: b batch | h heads | k query/key depth | v value depth | u intra-depth | S.. spatial axes

Shape: q (b, S.., h, k), v (b, S.., u, v), weight (k, u, K..), lam_c (b, k, v) -> y (b, S.., h, v)

Runs on CUDA with Triton installed (``pip install lambdanet[triton]``), and on CPU tensors in Triton's interpreter
when ``TRITON_INTERPRET=1`` (tests). ``auto`` never picks it yet: no GPU measurement exists to rank it (the GPU
suite, ``benchmarks/gpu_suite.py``, times it); ask for it with ``algorithm="triton"``. Graphs traced for
``torch.export`` take the ``blocked`` operators instead (same sums), since a Triton launch cannot be exported.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lambdanet.layers.algorithms import blocked
from lambdanet.layers.algorithms._base import PositionAlgorithm, Problem
from lambdanet.layers.triton_local import triton_available, triton_position_output


def output(q: Tensor, v: Tensor, weight: Tensor, lam_c: Tensor | None = None) -> Tensor:
    if torch.compiler.is_exporting():
        return blocked.blocked_output(q, v, weight, lam_c)
    return triton_position_output(q, v, weight, lam_c)


def cost(p: Problem, device: str) -> float | None:
    del p, device
    return None  # explicit only until the GPU suite has measured it


def saved_floats(p: Problem) -> dict[str, int]:
    """Only the inputs are kept for backward (the logits are recomputed tile by tile): nothing beyond the common
    terms."""
    del p
    return {}


ALGORITHM = PositionAlgorithm(
    "triton", output, cost=cost, saved_floats=saved_floats, dims=(1, 2), available=triton_available
)
