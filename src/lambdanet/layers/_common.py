"""Argument checks, initialisation and the float32 island shared by the lambda layers (2-D and 1-D).

Axis legend: h heads | k query/key depth |k| | u intra-depth |u| | v value depth |v| | d input channels

Shape: qkv projection weight (h k + u k + u v, d, ...) with rows ordered (h k) queries | (u k) keys | (u v) values
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from lambdanet.layers.lambda_ops import ALGORITHMS

__all__ = ["LOW_PRECISION", "check_lambda_args", "check_positive_int", "compute_dtype", "float32_island", "init_qkv_"]

LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return value


def check_lambda_args(
    *,
    dim: int,
    dim_out: int | None,
    dim_k: int,
    heads: int,
    dim_u: int,
    scope: int | None,
    content: bool,
    position: bool,
    algorithm: str,
) -> tuple[int, int, int, int, int]:
    """Validate the arguments every lambda layer shares; returns (dim, dim_out, dim_k, heads, dim_u)."""
    dim = check_positive_int("dim", dim)
    dim_out = dim if dim_out is None else check_positive_int("dim_out", dim_out)
    dim_k = check_positive_int("dim_k", dim_k)
    heads = check_positive_int("heads", heads)
    dim_u = check_positive_int("dim_u", dim_u)
    if dim_out % heads:
        raise ValueError(f"dim_out={dim_out} must be divisible by heads={heads} (value depth = dim_out / heads)")
    if not (content or position):
        raise ValueError("content=False and position=False leave nothing to compute; enable at least one")
    if algorithm != "auto" and algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r} must be 'auto' or one of {ALGORITHMS}")
    if scope is not None and (isinstance(scope, bool) or not isinstance(scope, int) or scope < 1 or scope % 2 == 0):
        raise ValueError(f"scope={scope!r} must be an odd positive integer, or None for global context")
    return dim, dim_out, dim_k, heads, dim_u


def init_qkv_(weight: Tensor, num_queries: int, dim_k: int, dim: int) -> None:
    """Fan-in normal initialisation of App. E.1: std d^-1/2 for keys and values, (|k| d)^-1/2 for queries (the
    scaled dot-product scaling absorbed into the projection)."""
    with torch.no_grad():
        nn.init.normal_(weight[:num_queries], std=(dim_k * dim) ** -0.5)
        nn.init.normal_(weight[num_queries:], std=dim**-0.5)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Lambdas are computed and accumulated in float32 for float16/bfloat16 activations."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def float32_island(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Autocast switched off on ``device`` (a no-op on devices without autocast, such as ``meta``)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()
