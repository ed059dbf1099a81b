"""Small lambda networks for small images (8x8 digits up to 32x32 CIFAR).

Bello, "LambdaNetworks: Modeling Long-Range Interactions Without Attention", ICLR 2021, arXiv:2102.08602,
Sec. 4 and App. D: a ResNet whose 3x3 convolutions in the later stages are replaced by lambda layers with local
position lambdas (the lambda convolution). This family shrinks that recipe to a few residual blocks so that the
default ``lambdanet train`` run finishes in minutes on a laptop CPU.

Note:
    Not a model from the paper: widths, depth and the scope are chosen for 8x8 to 32x32 inputs (the scope is
    small because the feature maps are). Lambda layers keep the paper's placement rule (later stages only) and
    downsample with a 3x3 average pool after the layer, as the paper does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lambdanet.models._blocks import LambdaCfg, apply_overrides, check_int, check_rate, make_lambda
from lambdanet.models._registry import ModelMeta, register_model

__all__ = ["LambdaNetSmall", "SmallNetCfg", "lambda_net_tiny"]


@dataclass(frozen=True)
class SmallNetCfg:
    """Layout of a :class:`LambdaNetSmall`.

    Attributes:
        widths: output channels of each stage (one residual block per stage); stages after the first stride 2.
        lambda_stages: indices of the stages whose first 3x3 convolution is a lambda layer.
        stem_chs: channels of the 3x3 convolution stem.
        in_chans: input channels.
        num_classes: classes of the linear head.
        lam: settings of the lambda layers (|k|=16, |h|=4, |u|=1, scope 5 by default).
        drop_rate: dropout before the head.
    """

    widths: tuple[int, ...] = (32, 64, 128)
    lambda_stages: tuple[int, ...] = (1, 2)
    stem_chs: int = 32
    in_chans: int = 3
    num_classes: int = 10
    lam: LambdaCfg = field(default_factory=lambda: LambdaCfg(scope=5))
    drop_rate: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.widths, tuple) or not self.widths:
            raise ValueError(f"widths={self.widths!r} must name at least one stage")
        for i, w in enumerate(self.widths):
            check_int(f"widths[{i}]", w)
        if not isinstance(self.lambda_stages, tuple):
            raise ValueError(f"lambda_stages={self.lambda_stages!r} must be a tuple of stage indices")
        bad = [i for i in self.lambda_stages if isinstance(i, bool) or i not in range(len(self.widths))]
        if bad:
            raise ValueError(f"lambda_stages={self.lambda_stages!r} has indices outside 0..{len(self.widths) - 1}")
        for name in ("stem_chs", "in_chans", "num_classes"):
            check_int(name, getattr(self, name))
        check_rate("drop_rate", self.drop_rate)


class _BasicBlock(nn.Module):
    """ResNet basic block; ``use_lambda`` swaps its first 3x3 convolution for a lambda layer (with the stride)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, use_lambda: bool, cfg: SmallNetCfg) -> None:
        super().__init__()
        if use_lambda:
            self.conv1: nn.Module = make_lambda(cfg.lam, in_chs, out_chs, stride=stride)
        else:
            self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        nn.init.zeros_(self.bn2.weight)  # zero-init the residual branch, as in the paper's ResNet baselines
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Sequential(
                nn.AvgPool2d(3, stride, padding=1) if stride != 1 else nn.Identity(),
                nn.Conv2d(in_chs, out_chs, 1, bias=False),
                nn.BatchNorm2d(out_chs),
            )

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act(y + self.shortcut(x))


class LambdaNetSmall(nn.Module):
    """Conv stem, one residual block per stage, global average pool and a linear head.

    Shape: (b, in_chans, hh, ww) -> (b, num_classes)
    """

    def __init__(self, cfg: SmallNetCfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_chans, cfg.stem_chs, 3, padding=1, bias=False),
            nn.BatchNorm2d(cfg.stem_chs),
            nn.ReLU(inplace=True),
        )
        blocks = []
        in_chs = cfg.stem_chs
        for i, out_chs in enumerate(cfg.widths):
            blocks.append(_BasicBlock(in_chs, out_chs, 1 if i == 0 else 2, i in cfg.lambda_stages, cfg))
            in_chs = out_chs
        self.blocks = nn.Sequential(*blocks)
        self.num_features = in_chs
        self.drop = nn.Dropout(cfg.drop_rate)
        self.fc = nn.Linear(in_chs, cfg.num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.blocks(self.stem(x))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(torch.flatten(x.mean(dim=(2, 3)), 1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(
    meta=ModelMeta(
        input_size=(3, 32, 32),
        test_input_size=(3, 8, 8),
        paper_ref="arXiv:2102.08602, Sec. 4 (lambda convolution in a ResNet); small layout, not from the paper",
        num_classes=10,
        extra={"default_recipe": "digits_tiny"},
        config=SmallNetCfg(),
    )
)
def lambda_net_tiny(**overrides: Any) -> LambdaNetSmall:
    """Tiny lambda ResNet (0.23 M parameters) for 8x8 to 32x32 images; stages 2 and 3 use lambda layers."""
    return LambdaNetSmall(apply_overrides(SmallNetCfg(), overrides, model="lambda_net_tiny"))
