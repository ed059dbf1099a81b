"""ResNets with lambda layers: Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602, Sec. 5 and App. E.1.

One configurable :class:`ResNet` serves every ResNet of the zoo: the vanilla ResNet-50 of the 90-epoch ablations
(Tables 3, 9, 10, 11, 13), its squeeze-excite version, the all-lambda ResNet-50 whose checkpoint is published by
d-li14/lambda.pytorch, the ResNet-RS-style LambdaResNets (``resnet_rs.py``) and the CIFAR networks of
leaderj1001/LambdaNetworks (``cifar.py``). "We construct LambdaResNets by replacing the 3x3 convolutions in the
bottleneck blocks of the ResNet architecture" (Sec. 5); strided blocks use "3x3 average-pooling with stride 2 after
the lambda layers" (App. E.1), which is :class:`~lambdanet.layers.LambdaLayer`'s ``stride=2``.

Axis legend: b batch | c channels | hh ww spatial

Module names follow torchvision (``conv1``, ``bn1``, ``layer{1..4}.{i}.conv1/bn1/conv2/bn2/conv3/bn3/downsample``)
so that published checkpoints map onto them with few renames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lambdanet.models._blocks import (
    DropPath,
    LambdaCfg,
    SqueezeExcite,
    apply_overrides,
    check_bool,
    check_int,
    check_rate,
    init_weights,
    make_lambda,
)
from lambdanet.models._registry import ModelMeta, register_model

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "ResNetCfg",
    "build_resnet",
    "lambda_resnet50",
    "lambda_resnet152",
    "lambda_resnet200",
    "resnet50",
    "resnet50_se",
]

STAGE_NAMES = ("c2", "c3", "c4", "c5")


@dataclass(frozen=True)
class ResNetCfg:
    """Layout of a :class:`ResNet`.

    Attributes:
        layers: blocks per stage c2..c5.
        block: ``"bottleneck"`` (1x1, 3x3, 1x1; expansion 4) or ``"basic"`` (3x3, 3x3; expansion 1).
        placement: one letter per stage c2..c5, ``C`` = 3x3 convolutions, ``L`` = every 3x3 replaced by a lambda
            layer (Table 13 notation: ``"LLLL"`` all-lambda, ``"CCLL"`` the C4 hybrid).
        c4_lambda_blocks: 1-based indices of the c4 blocks that use a lambda layer (Table 18); when set, it replaces
            ``placement[2]`` (stage c4 becomes a hybrid).
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max pool), ``"rs"`` (ResNet-RS/ResNet-D: three 3x3 convs 32-32-64,
            the first strided, then a strided 3x3 conv in place of the max pool) or ``"cifar"`` (one 3x3/1 conv).
        base_width: channels of the c2 bottleneck (64 in every published model; smaller only for quick tests).
        avg_down: ResNet-D shortcut (2x2 average pool, then the 1x1 projection) in strided blocks.
        se_ratio: squeeze channels of SE blocks as a fraction of the block's output channels (0 = no SE).
        se_skip: where SE is left out in models with lambda layers: ``"block"`` = in blocks that hold a lambda
            layer (the paper's sentence), ``"stage"`` = in every block of a stage that holds a lambda layer (the
            rule that reproduces Table 14's counts, see docs/models.md).
        shortcut_bias: bias on the projection shortcut's 1x1 conv (leaderj1001/LambdaNetworks has one).
        lam: settings of the lambda layers.
        img_size: input side used to size global position embeddings (``lam.scope=None`` only).
        num_classes: classes of the linear head.
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth rate of the last block (linearly increasing over blocks, ResNet-RS).
        zero_init_last: initialise the last BN gamma of every residual branch to 0 (App. E.1).
    """

    layers: tuple[int, ...] = (3, 4, 6, 3)
    block: Literal["bottleneck", "basic"] = "bottleneck"
    placement: str = "CCCC"
    c4_lambda_blocks: tuple[int, ...] | None = None
    stem: Literal["imagenet", "rs", "cifar"] = "imagenet"
    base_width: int = 64
    avg_down: bool = False
    se_ratio: float = 0.0
    se_skip: Literal["block", "stage"] = "block"
    shortcut_bias: bool = False
    lam: LambdaCfg = field(default_factory=LambdaCfg)
    img_size: int = 224
    num_classes: int = 1000
    in_chans: int = 3
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    zero_init_last: bool = True

    def __post_init__(self) -> None:
        if (
            not isinstance(self.layers, tuple)
            or len(self.layers) != 4
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in self.layers)
        ):
            raise ValueError(f"layers={self.layers!r} must be 4 positive block counts (stages c2..c5)")
        if not isinstance(self.placement, str) or len(self.placement) != 4 or set(self.placement) - {"C", "L"}:
            raise ValueError(f"placement={self.placement!r} must be 4 letters C/L, one per stage c2..c5")
        if self.c4_lambda_blocks is not None:
            if not isinstance(self.c4_lambda_blocks, tuple) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in self.c4_lambda_blocks
            ):
                raise ValueError(f"c4_lambda_blocks={self.c4_lambda_blocks!r} must be a tuple of block indices or None")
            bad = [i for i in self.c4_lambda_blocks if not 1 <= i <= self.layers[2]]
            if bad:
                raise ValueError(
                    f"c4_lambda_blocks={self.c4_lambda_blocks!r} has indices {bad} outside 1..{self.layers[2]} "
                    f"(1-based block indices of stage c4)"
                )
        if self.block not in ("bottleneck", "basic"):
            raise ValueError(f"block={self.block!r} must be 'bottleneck' or 'basic'")
        if self.stem not in ("imagenet", "rs", "cifar"):
            raise ValueError(f"stem={self.stem!r} must be 'imagenet', 'rs' or 'cifar'")
        if self.se_skip not in ("block", "stage"):
            raise ValueError(f"se_skip={self.se_skip!r} must be 'block' or 'stage'")
        for name in ("base_width", "img_size", "num_classes", "in_chans"):
            check_int(name, getattr(self, name))
        check_rate("se_ratio", self.se_ratio, high=float("inf"))
        check_rate("drop_rate", self.drop_rate)
        check_rate("drop_path_rate", self.drop_path_rate)
        for name in ("avg_down", "shortcut_bias", "zero_init_last"):
            check_bool(name, getattr(self, name))
        if not isinstance(self.lam, LambdaCfg):
            raise ValueError(f"lam={self.lam!r} must be a LambdaCfg")

    def lambda_mask(self) -> list[list[bool]]:
        """For every stage and block: True where the block's 3x3 is a lambda layer."""
        mask = [[letter == "L"] * depth for letter, depth in zip(self.placement, self.layers, strict=True)]
        if self.c4_lambda_blocks is not None:
            mask[2] = [i + 1 in self.c4_lambda_blocks for i in range(self.layers[2])]
        return mask


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _shortcut(cin: int, cout: int, stride: int, *, avg_down: bool, bias: bool) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    if avg_down and stride > 1:
        pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
        return nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=bias), nn.BatchNorm2d(cout))
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=bias), nn.BatchNorm2d(cout))


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3 or lambda, 1x1) with optional SE and stochastic depth; expansion 4.

    The stride sits on the 3x3 (TF ResNet-v1 and torchvision); a lambda layer downsamples with its 3x3 average pool.
    BN and ReLU follow the lambda layer as they followed the convolution.

    Shape: (b, in_chs, hh, ww) -> (b, 4 * width, hh / stride, ww / stride)
    """

    expansion = 4

    def __init__(
        self,
        in_chs: int,
        width: int,
        *,
        stride: int = 1,
        lam: LambdaCfg | None = None,
        feat_size: tuple[int, int] | None = None,
        se_ratio: float = 0.0,
        avg_down: bool = False,
        shortcut_bias: bool = False,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        out_chs = width * self.expansion
        self.conv1 = nn.Conv2d(in_chs, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        if lam is None:
            self.conv2: nn.Module = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        else:
            self.conv2 = make_lambda(lam, width, stride=stride, feat_size=feat_size)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.se = SqueezeExcite(out_chs, int(out_chs * se_ratio)) if se_ratio > 0 else None
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_chs, out_chs, stride, avg_down=avg_down, bias=shortcut_bias)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else None

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        if self.se is not None:
            y = self.se(y)
        if self.drop_path is not None:
            y = self.drop_path(y)
        return self.relu(y + shortcut)


class BasicBlock(nn.Module):
    """ResNet basic block (3x3, 3x3 or lambda); expansion 1. A lambda layer replaces the second 3x3.

    Shape: (b, in_chs, hh, ww) -> (b, width, hh / stride, ww / stride)
    """

    expansion = 1

    def __init__(
        self,
        in_chs: int,
        width: int,
        *,
        stride: int = 1,
        lam: LambdaCfg | None = None,
        feat_size: tuple[int, int] | None = None,
        se_ratio: float = 0.0,
        avg_down: bool = False,
        shortcut_bias: bool = False,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        if lam is None:
            self.conv2: nn.Module = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        else:
            half = None if feat_size is None else (math.ceil(feat_size[0] / stride), math.ceil(feat_size[1] / stride))
            self.conv2 = make_lambda(lam, width, feat_size=half)
        self.bn2 = nn.BatchNorm2d(width)
        self.se = SqueezeExcite(width, int(width * se_ratio)) if se_ratio > 0 else None
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_chs, width, stride, avg_down=avg_down, bias=shortcut_bias)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else None

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.se is not None:
            y = self.se(y)
        if self.drop_path is not None:
            y = self.drop_path(y)
        return self.relu(y + shortcut)


class ResNet(nn.Module):
    """ResNet / LambdaResNet backbone and classifier built from a :class:`ResNetCfg`.

    ``forward_features`` returns the c5 map, ``forward_pyramid`` the c2..c5 maps (strides 4, 8, 16, 32 with the
    ImageNet stems; 1, 2, 4, 8 with the CIFAR stem) for detection/segmentation heads, ``forward_head`` pools and
    classifies, and ``forward`` composes the two.

    Shape: (b, in_chans, hh, ww) -> (b, num_classes)
    """

    def __init__(self, cfg: ResNetCfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.fixed_input_size = cfg.lam.scope is None and cfg.lam.position and any(map(any, cfg.lambda_mask()))
        stem_w = cfg.base_width
        if cfg.stem == "imagenet":
            self.conv1 = nn.Conv2d(cfg.in_chans, stem_w, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem_w)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
            stem_stride = 4
        elif cfg.stem == "rs":
            half = stem_w // 2
            self.conv1 = nn.Sequential(
                *_conv_bn(cfg.in_chans, half, 3, 2),
                *_conv_bn(half, half, 3),
                nn.Conv2d(half, stem_w, 3, 1, 1, bias=False),
            )
            self.bn1 = nn.BatchNorm2d(stem_w)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.Sequential(*_conv_bn(stem_w, stem_w, 3, 2))
            stem_stride = 4
        else:
            self.conv1 = nn.Conv2d(cfg.in_chans, stem_w, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(stem_w)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.Identity()
            stem_stride = 1
        block_cls: type[Bottleneck] | type[BasicBlock] = Bottleneck if cfg.block == "bottleneck" else BasicBlock
        mask = cfg.lambda_mask()
        total = sum(cfg.layers)
        side = math.ceil(cfg.img_size / stem_stride)
        in_chs, idx = stem_w, 0
        self.feature_info: list[dict[str, Any]] = []
        reduction = stem_stride
        for s, depth in enumerate(cfg.layers):
            width = cfg.base_width * 2**s
            stage_has_lambda = any(mask[s])
            blocks = []
            for i in range(depth):
                stride = 2 if (s > 0 and i == 0) else 1
                use_lambda = mask[s][i]
                skip_se = use_lambda if cfg.se_skip == "block" else stage_has_lambda
                blocks.append(
                    block_cls(
                        in_chs,
                        width,
                        stride=stride,
                        lam=cfg.lam if use_lambda else None,
                        feat_size=(side, side),
                        se_ratio=0.0 if skip_se else cfg.se_ratio,
                        avg_down=cfg.avg_down,
                        shortcut_bias=cfg.shortcut_bias,
                        drop_path_rate=cfg.drop_path_rate * idx / max(total - 1, 1),
                    )
                )
                in_chs = width * block_cls.expansion
                side = math.ceil(side / stride)
                idx += 1
            reduction *= 2 if s > 0 else 1
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
            self.feature_info.append({"name": STAGE_NAMES[s], "num_chs": in_chs, "reduction": reduction})
        self.num_features = in_chs
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(cfg.drop_rate) if cfg.drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(in_chs, cfg.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        init_weights(self, conv_mode="fan_out")
        if self.cfg.zero_init_last:
            for m in self.modules():
                if isinstance(m, Bottleneck | BasicBlock):
                    nn.init.zeros_(m.last_bn().weight)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.cfg.in_chans:
            raise ValueError(f"input shape {tuple(x.shape)} must be (batch, {self.cfg.in_chans}, H, W)")
        if self.fixed_input_size and tuple(x.shape[-2:]) != (self.cfg.img_size,) * 2:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} differs from img_size={self.cfg.img_size}: this model has global "
                "position lambdas (scope=None), which fix the input size"
            )

    def _stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_pyramid(self, x: Tensor) -> dict[str, Tensor]:
        """The c2..c5 feature maps (keys ``"c2"`` .. ``"c5"``), e.g. for a Mask R-CNN FPN."""
        self._check_input(x)
        x = self._stem(x)
        out = {}
        for name, stage in zip(STAGE_NAMES, (self.layer1, self.layer2, self.layer3, self.layer4), strict=True):
            x = stage(x)
            out[name] = x
        return out

    def forward_features(self, x: Tensor) -> Tensor:
        self._check_input(x)
        x = self._stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def build_resnet(base: ResNetCfg, overrides: dict[str, Any], *, model: str, lambda_overrides: bool = True) -> ResNet:
    """A :class:`ResNet` from ``base`` with ``overrides`` (unknown keys raise ``ValueError``)."""
    if not lambda_overrides:
        from lambdanet.models._blocks import LAMBDA_KEYS

        bad = sorted(set(overrides) & set(LAMBDA_KEYS))
        if bad:
            raise ValueError(f"model {model!r} has no lambda layers; overrides {bad} do not apply")
    return ResNet(apply_overrides(base, overrides, model=model))


# ------------------------------------------------------------------------------------------------ ResNet-50 family
_IMAGENET = {"input_size": (3, 224, 224), "test_input_size": (3, 64, 64)}

MODEL_CFGS: dict[str, ResNetCfg] = {
    # Vanilla ResNet-50 of the 90-epoch ablations ("our implementation" in Table 3; 25.6M).
    "resnet50": ResNetCfg(),
    # Table 3's SE row (28.1M): SE squeeze = 1/4 of the bottleneck width = 1/16 of the block output.
    "resnet50_se": ResNetCfg(se_ratio=1 / 16),
    # Every bottleneck 3x3 replaced (Table 3 "lambda layer", Table 13 "L L L L"; d-li14/lambda.pytorch's layout).
    "lambda_resnet50": ResNetCfg(placement="LLLL"),
    # leaderj1001/LambdaNetworks' all-lambda ResNet-152/200: biased 1x1 shortcut convs.
    "lambda_resnet152": ResNetCfg(layers=(3, 8, 36, 3), placement="LLLL", shortcut_bias=True),
    "lambda_resnet200": ResNetCfg(layers=(3, 24, 36, 3), placement="LLLL", shortcut_bias=True),
}


@register_model(
    meta=ModelMeta(
        config=MODEL_CFGS["resnet50"],
        **_IMAGENET,
        paper_ref="arXiv:2102.08602 Tables 3, 13",
        extra={"published_params_m": 25.6},
    )
)
def resnet50(**overrides: Any) -> ResNet:
    """Vanilla ResNet-50 (torchvision layout, 7x7 stem and max pool), the baseline of Tables 3, 9 and 13."""
    return build_resnet(MODEL_CFGS["resnet50"], overrides, model="resnet50", lambda_overrides=False)


@register_model(
    meta=ModelMeta(
        config=MODEL_CFGS["resnet50_se"],
        **_IMAGENET,
        paper_ref="arXiv:2102.08602 Table 3",
        extra={"published_params_m": 28.1},
    )
)
def resnet50_se(**overrides: Any) -> ResNet:
    """ResNet-50 with squeeze-excite in every bottleneck (Table 3, "conv + channel attention")."""
    return build_resnet(MODEL_CFGS["resnet50_se"], overrides, model="resnet50_se", lambda_overrides=False)


@register_model(
    meta=ModelMeta(
        config=MODEL_CFGS["lambda_resnet50"],
        **_IMAGENET,
        paper_ref="arXiv:2102.08602 Tables 3, 9, 10, 11, 13; d-li14/lambda.pytorch checkpoint",
        extra={"published_params_m": 15.0},
    )
)
def lambda_resnet50(**overrides: Any) -> ResNet:
    """ResNet-50 with lambda layers (k=16, h=4, u=1, 23x23 scope) in place of the bottleneck 3x3 convolutions.

    ``placement`` picks the stages ("LLLL" default; "CCLL" = LambdaResNet-50-C4 of Tables 11 and 13);
    ``position_bias=True`` gives d-li14/lambda.pytorch's exact architecture (14,995,848 parameters).
    """
    return build_resnet(MODEL_CFGS["lambda_resnet50"], overrides, model="lambda_resnet50")


@register_model(
    meta=ModelMeta(
        config=MODEL_CFGS["lambda_resnet152"],
        **_IMAGENET,
        paper_ref="leaderj1001/LambdaNetworks (LambdaResNet152)",
        extra={"published_params_m": 32.8, "smoke_overrides": {"layers": (1, 1, 2, 1)}},
    )
)
def lambda_resnet152(**overrides: Any) -> ResNet:
    """All-lambda ResNet-152 of leaderj1001/LambdaNetworks (biased shortcut 1x1s, 7x7 stem; not the paper's hybrid)."""
    return build_resnet(MODEL_CFGS["lambda_resnet152"], overrides, model="lambda_resnet152")


@register_model(
    meta=ModelMeta(
        config=MODEL_CFGS["lambda_resnet200"],
        **_IMAGENET,
        paper_ref="leaderj1001/LambdaNetworks (LambdaResNet200)",
        extra={"published_params_m": 35.29, "smoke_overrides": {"layers": (1, 1, 2, 1)}},
    )
)
def lambda_resnet200(**overrides: Any) -> ResNet:
    """All-lambda ResNet-200 of leaderj1001/LambdaNetworks (biased shortcut 1x1s, 7x7 stem; not the paper's hybrid)."""
    return build_resnet(MODEL_CFGS["lambda_resnet200"], overrides, model="lambda_resnet200")
