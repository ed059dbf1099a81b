"""Argument checks and the float32 island shared by the lambda layers and their functional core.

Axis legend: none (scalar checks and dtype rules)

Shape: none
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["LOW_PRECISION", "check_flag", "check_positive_int", "compute_dtype", "float32_island"]

LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return value


def check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r} must be a bool (True or False)")
    return value


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Lambdas are computed and accumulated in float32 for float16/bfloat16 activations."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def float32_island(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Autocast switched off on ``device`` (a no-op on devices without autocast, such as ``meta``)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()
