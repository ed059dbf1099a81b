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

__all__ = ["DropPath", "LambdaCfg", "SqueezeExcite", "apply_overrides", "make_lambda"]


@dataclass(frozen=True)
class LambdaCfg:
    """Settings of every lambda layer in a model (paper symbols, App. E.1 defaults).

    Attributes:
        dim_k: query/key depth |k|.
        heads: queries |h|.
        dim_u: intra-depth |u|.
        scope: side of the local position scope |m|; ``None`` = global relative embeddings (fixed input size).
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
    scope: int | None = 23
    content: bool = True
    position: bool = True
    position_bias: bool = False
    algorithm: str = "auto"


LAMBDA_KEYS = tuple(f.name for f in fields(LambdaCfg))


def make_lambda(
    cfg: LambdaCfg, dim: int, dim_out: int | None = None, *, stride: int = 1, feat_size: tuple[int, int] | None = None
) -> LambdaLayer:
    """A :class:`LambdaLayer` from ``cfg``; ``feat_size`` is used only for global scope (``cfg.scope=None``)."""
    return LambdaLayer(
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
            lam[key] = value
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
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop_path p={p!r} must be in [0, 1)")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"
