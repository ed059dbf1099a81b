"""Building blocks shared by the model zoo: lambda-layer settings, squeeze-excite, stochastic depth.

Bello, "LambdaNetworks: Modeling Long-Range Interactions Without Attention", ICLR 2021, arXiv:2102.08602,
App. E.1 (ResNet and LambdaResNet implementation details: SE squeeze ratio, stochastic depth, dropout).

Shape: every module maps (b, c, hh, ww) -> (b, c', hh', wh'), documented per class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from lambdanet.layers import LambdaLayer

__all__ = [
    "DropPath",
    "LambdaCfg",
    "SqueezeExcite",
    "apply_overrides",
    "check_bool",
    "check_int",
    "check_rate",
    "init_weights",
    "make_lambda",
]


def check_int(name: str, value: Any, *, minimum: int = 1) -> None:
    """Raise a one-line ``ValueError`` unless ``value`` is an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


def check_bool(name: str, value: Any) -> None:
    """Raise a one-line ``ValueError`` unless ``value`` is True or False (no truthy strings or numbers)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be True or False")


def check_rate(name: str, value: Any, *, high: float = 1.0) -> None:
    """Raise a one-line ``ValueError`` unless ``value`` is a real number in [0, ``high``)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < high:
        raise ValueError(f"{name}={value!r} must be a number in [0, {high:g})")


def init_weights(model: nn.Module, *, conv_mode: str = "fan_out", linear_std: float | None = None) -> None:
    """Initialise ``model`` once, the same way in every family.

    A module defined outside ``torch.nn`` that has its own ``reset_parameters`` (a lambda layer: App. E.1's
    projection init) owns the initialisation of its whole subtree and is reset through that method. Everything else:
    convolutions get Kaiming-normal weights (``conv_mode`` fan-in or fan-out, ReLU gain) and zero biases; linear
    layers get normal weights with ``linear_std`` and zero biases when ``linear_std`` is given (PyTorch's default
    otherwise); normalisation layers keep PyTorch's defaults.
    """

    def visit(module: nn.Module) -> None:
        if not type(module).__module__.startswith("torch.") and callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
            return
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode=conv_mode, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and linear_std is not None:
            nn.init.normal_(module.weight, 0.0, linear_std)
            nn.init.zeros_(module.bias)
        for child in module.children():
            visit(child)

    for child in model.children():
        visit(child)


@dataclass(frozen=True)
class LambdaCfg:
    """Settings of every lambda layer in a model (paper symbols, App. E.1 defaults).

    Attributes:
        dim_k: query/key depth |k|.
        heads: queries |h|.
        dim_u: intra-depth |u|.
        scope: side of the local position scope |m| (3-D layers: also a (t, h, w) tuple of sides); ``None`` = global
            relative embeddings (fixed input size).
        content: compute content lambdas.
        position: compute position lambdas.
        position_bias: learned per-key constant on the position lambdas (a biased Conv3d, as in d-li14 and
            lambda-networks; not in the paper).
        algorithm: position-lambda algorithm of :class:`~lambdanet.layers.LambdaLayer` (``"auto"`` or a name);
            all give the same result up to rounding.
    """

    dim_k: int = 16
    heads: int = 4
    dim_u: int = 1
    scope: int | tuple[int, ...] | None = 23
    content: bool = True
    position: bool = True
    position_bias: bool = False
    algorithm: str = "auto"

    def __post_init__(self) -> None:
        for name in ("dim_k", "heads", "dim_u"):
            check_int(name, getattr(self, name))
        if self.scope is not None:
            sides = self.scope if isinstance(self.scope, tuple) else (self.scope,)
            if not sides or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 or s % 2 == 0 for s in sides):
                raise ValueError(
                    f"scope={self.scope!r} must be an odd positive integer (a centred local scope), a tuple of them "
                    "(one per axis, 3-D layers), or None (global)"
                )
        for name in ("content", "position", "position_bias"):
            check_bool(name, getattr(self, name))
        if not isinstance(self.algorithm, str):
            raise ValueError(f"algorithm={self.algorithm!r} must be a string ('auto' or an algorithm name)")


LAMBDA_KEYS = tuple(f.name for f in fields(LambdaCfg))


def make_lambda(
    cfg: LambdaCfg,
    dim: int,
    dim_out: int | None = None,
    *,
    stride: int = 1,
    feat_size: tuple[int, ...] | None = None,
    layer: type[nn.Module] = LambdaLayer,
) -> nn.Module:
    """A lambda layer (``layer``: :class:`LambdaLayer` or :class:`LambdaLayer3d`) from ``cfg``; ``feat_size`` is used
    only for global scope (``cfg.scope=None``)."""
    return layer(
        dim,
        dim_out=dim_out,
        dim_k=cfg.dim_k,
        heads=cfg.heads,
        dim_u=cfg.dim_u,
        scope=cfg.scope,
        feat_size=feat_size if cfg.scope is None else None,
        content=cfg.content,
        position=cfg.position,
        stride=stride,
        position_bias=cfg.position_bias,
        algorithm=cfg.algorithm,
    )


def apply_overrides(cfg: Any, overrides: Mapping[str, Any], *, model: str) -> Any:
    """Return ``cfg`` (a frozen dataclass with an optional ``lam: LambdaCfg`` field) with ``overrides`` applied.

    Keys of :class:`LambdaCfg` (``dim_k``, ``heads``, ``dim_u``, ``scope``, ``content``, ``position``,
    ``position_bias``, ``algorithm``) go to ``cfg.lam``; other keys must be fields of ``cfg``.

    Raises:
        ValueError: for a key that is neither, naming the model and the accepted keys.
    """
    names = {f.name for f in fields(cfg)}
    has_lam = "lam" in names
    top: dict[str, Any] = {}
    lam: dict[str, Any] = {}
    for key, value in overrides.items():
        if has_lam and key in LAMBDA_KEYS:
            lam[key] = tuple(value) if isinstance(value, list) else value
        elif key in names and key != "lam":
            top[key] = tuple(value) if isinstance(value, list) else value
        else:
            accepted = sorted((names - {"lam"}) | (set(LAMBDA_KEYS) if has_lam else set()))
            raise ValueError(f"unknown override {key}={value!r} for model {model!r}; expected one of {accepted}")
    if lam:
        top["lam"] = replace(cfg.lam, **lam)
    return replace(cfg, **top)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): global average pool, 1x1 reduce + ReLU, 1x1 expand + sigmoid gate.

    Args:
        chs: channels of the gated tensor.
        rd_chs: squeeze (reduced) channels.

    Shape: (b, chs, hh, ww) -> (b, chs, hh, ww)
    """

    def __init__(self, chs: int, rd_chs: int) -> None:
        super().__init__()
        if rd_chs < 1:
            raise ValueError(f"rd_chs={rd_chs} must be >= 1 (squeeze channels of a {chs}-channel SE block)")
        self.fc1 = nn.Conv2d(chs, rd_chs, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd_chs, chs, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop the residual branch per sample with probability ``p`` in training.

    Shape: (b, ...) -> (b, ...)
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        check_rate("drop_path p", p)
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"
