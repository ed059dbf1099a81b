"""Position algorithms as plug-ins: the registry, and the ``auto`` choice of the fastest one for a shape.

Axis legend: b batch | h heads | k query/key depth | v value depth | u intra-depth | n positions | r kernel side

Shape: none (a registry and a pure function of the layer configuration and the input shape)

Every module here (``einsum``, ``logits``, ``blocked``, ``conv``, ``fft``, ``triton_fused``, ``unfold``) exposes
``ALGORITHM``, a :class:`PositionAlgorithm`: its ``output(q, v, weight, lam_c=None)`` (all compute the same sums, see
:mod:`lambdanet.layers.algorithms._base`), the numbers of spatial axes it serves, ``available(device)``, its
``cost`` for ``auto`` and its memory model. Adding an algorithm is one module plus one entry in ``_MODULES``.

The work and memory of each are tabulated in ``docs/algorithms.md``.

``auto`` takes the available algorithm with the lowest cost. On CPU the costs encode the rule measured by
``benchmarks/algorithm_sweep.py`` (forward + backward; results and the command in ``docs/algorithms.md``):
``logits`` wins when the scope covers at least a third of a small map; ``blocked`` for small scopes (up to 11x11,
up to 23x23 when the value depth is 64 or more); ``fft`` for the other large scopes and global context on large
maps; in 3-D ``unfold`` for scopes from 3x5x5 to 15x15x15. The paper's ``einsum`` and the ``conv`` lambda
convolution never won a measured shape on CPU. On CUDA the rule is a guess that has not been measured on a GPU yet
(``docs/algorithms.md``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from lambdanet.layers.algorithms import blocked, conv, einsum, fft, logits, triton_fused, unfold
from lambdanet.layers.algorithms._base import PositionAlgorithm, Problem

__all__ = ["ALGORITHMS", "REGISTRY", "PositionAlgorithm", "Problem", "choose_algorithm", "usable"]

_MODULES = (einsum, logits, blocked, conv, fft, triton_fused, unfold)
REGISTRY: dict[str, PositionAlgorithm] = {m.ALGORITHM.name: m.ALGORITHM for m in _MODULES}
ALGORITHMS = tuple(REGISTRY)


def usable(name: str, ndim: int, device: torch.device | str = "cpu") -> bool:
    """Whether algorithm ``name`` serves ``ndim`` spatial axes and runs on ``device``."""
    algorithm = REGISTRY[name]
    return ndim in algorithm.dims and algorithm.available(torch.device(device))


@functools.lru_cache(maxsize=4096)
def _choose(problem: Problem, device: str) -> str:
    costs = {}
    for name, algorithm in REGISTRY.items():
        if usable(name, len(problem.spatial), device):
            cost = algorithm.cost(problem, device)
            if cost is not None:
                costs[name] = cost
    return min(costs, key=costs.__getitem__) if costs else "fft"


@torch.compiler.assume_constant_result
def choose_algorithm(
    *,
    batch: int,
    spatial: Sequence[int],
    kernel: Sequence[int],
    dim_k: int,
    dim_v: int,
    dim_u: int,
    heads: int,
    device: str = "cpu",
) -> str:
    """Name of the algorithm expected to be fastest for this shape on ``device`` ("cpu", "cuda", ...).

    A pure function of static shapes: ``torch.compile`` and ``torch.export`` treat its result as a constant.
    """
    spatial, kernel = tuple(int(s) for s in spatial), tuple(int(s) for s in kernel)
    problem = Problem(int(batch), spatial, kernel, int(heads), int(dim_k), int(dim_v), int(dim_u))
    return _choose(problem, "cuda" if device == "cuda" else "cpu")
