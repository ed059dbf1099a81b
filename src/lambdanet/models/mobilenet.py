"""MobileNets with lambda layers.

- MobileNet-v2 and the "lightweight lambda block" of Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602,
  App. D.3, Table 17: the depthwise convolution of an inverted bottleneck is replaced by a lambda convolution
  (|m|=5x5, |k|=32, |h|=4) and the first pointwise convolution keeps the channel count instead of expanding it.
- MobileNet-v1 for CIFAR-100 and the six layer tables of rajatsaini0294/lambda-mobilenets, which put
  lambda layers (lambda-networks' layer: k=4, h=4, u=1, scope 3, biased position Conv3d) in place of some
  depthwise-separable blocks and remove others.

Axis legend: b batch | c channels | hh ww spatial

Note:
    That repository's lambda layer has no stride, so where it replaces a strided block (configurations 2, 3, 5 and
    6) the stride-2 downsample silently disappears and later maps are twice as large. We reproduce that by default
    (``fix_downsampling=False``); ``fix_downsampling=True`` gives the lambda layer the paper's stride 2 (3x3 average
    pool after the layer). Parameters are the same; MACs differ (docs/models.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lambdanet.models._blocks import (
    LambdaCfg,
    apply_overrides,
    check_bool,
    check_int,
    check_rate,
    init_weights,
    make_lambda,
)
from lambdanet.models._registry import ModelMeta, register_model

__all__ = [
    "IR",
    "LambdaMobileNetV1Cifar",
    "MobileNetV1CifarCfg",
    "MobileNetV2",
    "MobileNetV2Cfg",
    "lambda_mobilenet_v2",
    "mobilenet_v1_cifar",
    "mobilenet_v2",
]


def _conv_bn_act(
    cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type[nn.Module] = nn.ReLU
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), act(inplace=True)
    )


# ------------------------------------------------------------------------------------------------ MobileNet-v1 CIFAR
# rajatsaini0294/lambda-mobilenets' 14 layers: (out channels, stride); layer 0 is a full 3x3 convolution, the rest
# depthwise-separable.
V1_LAYERS: tuple[tuple[int, int], ...] = (
    (32, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip

# rajatsaini0294/lambda-mobilenets' table, one letter per layer: C = convolution block, L = lambda layer, - = removed.
V1_TABLE: dict[int, str] = {
    1: "CCCCCCCCCCCCCC",
    2: "CCCCCCCC----LC",
    3: "CCCCCCCCLCLCLC",
    4: "CCCCCCCCL---C-",
    5: "CCCCCCL-----C-",
    6: "CCC-C-L-----C-",
}


@dataclass(frozen=True)
class MobileNetV1CifarCfg:
    """Layout of a (lambda) MobileNet-v1 for 32x32 inputs.

    Attributes:
        layers: one letter per layer of :data:`V1_LAYERS` (C, L or - for removed); layer 0 must be C.
        lam: lambda-layer settings (rajatsaini0294/lambda-mobilenets: k=4, h=4, u=1, scope 3, biased position
            embeddings).
        fix_downsampling: give a lambda layer that replaces a strided block the stride (3x3 average pool after it)
            instead of dropping the downsample as that repository's code does.
        num_classes: classes of the linear head (CIFAR-100).
        in_chans: input channels.
    """

    layers: str = V1_TABLE[1]
    lam: LambdaCfg = field(default_factory=lambda: LambdaCfg(dim_k=4, heads=4, dim_u=1, scope=3, position_bias=True))
    fix_downsampling: bool = False
    num_classes: int = 100
    in_chans: int = 3

    def __post_init__(self) -> None:
        if (
            not isinstance(self.layers, str)
            or len(self.layers) != len(V1_LAYERS)
            or set(self.layers) - set("CL-")
            or self.layers[0] != "C"
        ):
            raise ValueError(
                f"layers={self.layers!r} must be {len(V1_LAYERS)} letters from C/L/- (convolution, lambda, removed) "
                "starting with C"
            )
        check_bool("fix_downsampling", self.fix_downsampling)
        check_int("num_classes", self.num_classes)
        check_int("in_chans", self.in_chans)


class LambdaMobileNetV1Cifar(nn.Module):
    """MobileNet-v1 for CIFAR (3x3/1 stem) whose layers may be lambda layers or removed (lambda-mobilenets).

    Shape: (b, in_chans, 32, 32) -> (b, num_classes); any input size works.
    """

    def __init__(self, cfg: MobileNetV1CifarCfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        blocks: list[nn.Module] = []
        cin = cfg.in_chans
        for i, (letter, (cout, stride)) in enumerate(zip(cfg.layers, V1_LAYERS, strict=True)):
            if letter == "-":
                continue
            if i == 0:
                blocks.append(_conv_bn_act(cin, cout, 3, stride))
            elif letter == "C":
                blocks.append(nn.Sequential(_conv_bn_act(cin, cin, 3, stride, groups=cin), _conv_bn_act(cin, cout, 1)))
            else:
                s = stride if cfg.fix_downsampling else 1
                blocks.append(make_lambda(cfg.lam, cin, cout, stride=s))
            cin = cout
        self.features = nn.Sequential(*blocks)
        self.num_features = cin
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, cfg.num_classes)
        # fan-in keeps activations from vanishing through 14 layers at initialisation (fan-out shrinks them by
        # about 3x per depthwise layer, which underflows in eval mode before training).
        init_weights(self, conv_mode="fan_in")

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_pyramid(self, x: Tensor) -> dict[str, Tensor]:
        """The last feature map of every resolution, keyed ``"c{log2 stride}"`` (``"c0"`` = full resolution)."""
        out: dict[str, Tensor] = {}
        side = x.shape[-1]
        for block in self.features:
            x = block(x)
            level = (side // x.shape[-1]).bit_length() - 1
            out[f"c{level}"] = x
        return out

    def forward_head(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


_V1_META = {"input_size": (3, 32, 32), "test_input_size": (3, 32, 32), "num_classes": 100}
_V1_PUBLISHED = {1: 3.30, 2: 1.84, 3: 2.53, 4: 1.24, 5: 0.80, 6: 0.71}


def _build_v1(table_id: int, overrides: dict[str, Any], name: str) -> LambdaMobileNetV1Cifar:
    cfg = apply_overrides(MobileNetV1CifarCfg(layers=V1_TABLE[table_id]), overrides, model=name)
    return LambdaMobileNetV1Cifar(cfg)


@register_model(
    meta=ModelMeta(
        **_V1_META,
        paper_ref="rajatsaini0294/lambda-mobilenets (CIFAR-100, configuration 1)",
        extra={"published_params_m": 3.30},
    )
)
def mobilenet_v1_cifar(**overrides: Any) -> LambdaMobileNetV1Cifar:
    """MobileNet-v1 for CIFAR-100, configuration 1 of rajatsaini0294/lambda-mobilenets (all convolutions)."""
    return _build_v1(1, overrides, "mobilenet_v1_cifar")


def _register_v1(table_id: int) -> None:
    name = f"lambda_mobilenet_v1_cifar_{table_id}"
    meta = ModelMeta(
        **_V1_META,
        paper_ref=f"rajatsaini0294/lambda-mobilenets (CIFAR-100, configuration {table_id}: {V1_TABLE[table_id]})",
        extra={"published_params_m": _V1_PUBLISHED[table_id]},
        config=MobileNetV1CifarCfg(layers=V1_TABLE[table_id]),
    )

    def builder(**overrides: Any) -> LambdaMobileNetV1Cifar:
        return _build_v1(table_id, overrides, name)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = (
        f"Lambda MobileNet-v1 of rajatsaini0294/lambda-mobilenets, configuration {table_id} "
        f"(layers {V1_TABLE[table_id]!r})."
    )
    register_model(meta=meta)(builder)
    globals()[name] = builder
    __all__.append(name)


for _tid in range(2, 7):
    _register_v1(_tid)


# ------------------------------------------------------------------------------------------------ MobileNet-v2
@dataclass(frozen=True)
class IR:
    """One row of the MobileNet-v2 table: expansion t, channels c, repeats n, first stride s."""

    t: int
    c: int
    n: int
    s: int


V2_TABLE: tuple[IR, ...] = (
    # t, c, n, s (Sandler et al. 2018, Table 2)
    IR(1, 16, 1, 1),
    IR(6, 24, 2, 2),
    IR(6, 32, 3, 2),
    IR(6, 64, 4, 2),
    IR(6, 96, 3, 1),
    IR(6, 160, 3, 2),
    IR(6, 320, 1, 1),
)


@dataclass(frozen=True)
class MobileNetV2Cfg:
    """Layout of a (lambda) MobileNet-v2.

    Attributes:
        lambda_blocks: 1-based indices (over the 17 inverted bottlenecks) of the blocks made lightweight lambda
            blocks (Table 17: 10 and 16).
        lam: lambda-layer settings of those blocks (Table 17: k=32, h=4, u=1, scope 5).
        num_classes: classes of the linear head.
        in_chans: input channels.
        drop_rate: dropout before the classifier (App. E.2: 0.2).
        lambda_pw: put a separate non-expanding 1x1 conv (+BN+ReLU6) before the lambda layer. Off by default: the
            lambda layer's own Q/K/V projection is then the block's first pointwise step, which reproduces Table
            17 (3.21M, 573 MFLOPs vs 563); with it the block gives 3.24M and 577 MFLOPs (docs/models.md).
    """

    lambda_blocks: tuple[int, ...] = ()
    lam: LambdaCfg = field(default_factory=lambda: LambdaCfg(dim_k=32, heads=4, dim_u=1, scope=5))
    lambda_pw: bool = False
    num_classes: int = 1000
    in_chans: int = 3
    drop_rate: float = 0.2

    def __post_init__(self) -> None:
        total = sum(r.n for r in V2_TABLE)
        if not isinstance(self.lambda_blocks, tuple) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in self.lambda_blocks
        ):
            raise ValueError(f"lambda_blocks={self.lambda_blocks!r} must be a tuple of block indices (1..{total})")
        check_bool("lambda_pw", self.lambda_pw)
        check_int("num_classes", self.num_classes)
        check_int("in_chans", self.in_chans)
        check_rate("drop_rate", self.drop_rate)
        bad = [i for i in self.lambda_blocks if not 1 <= i <= total]
        if bad:
            raise ValueError(f"lambda_blocks={self.lambda_blocks!r} has indices {bad} outside 1..{total}")


class InvertedResidual(nn.Module):
    """MobileNet-v2 inverted bottleneck, or with ``lam`` the paper's lightweight lambda block.

    Lightweight lambda block (App. D.3): no expansion; (optional 1x1 conv keeping ``in_chs`` channels,) lambda
    convolution (stride via its average pool), BN + ReLU6, 1x1 projection + BN.

    Shape: (b, in_chs, hh, ww) -> (b, out_chs, hh / stride, ww / stride)
    """

    def __init__(
        self, in_chs: int, out_chs: int, stride: int, t: int, lam: LambdaCfg | None = None, lambda_pw: bool = False
    ) -> None:
        super().__init__()
        self.use_res = stride == 1 and in_chs == out_chs
        layers: list[nn.Module] = []
        if lam is not None:
            if lambda_pw:
                layers += [_conv_bn_act(in_chs, in_chs, 1, act=nn.ReLU6)]
            layers += [make_lambda(lam, in_chs, stride=stride), nn.BatchNorm2d(in_chs), nn.ReLU6(inplace=True)]
            hidden = in_chs
        else:
            hidden = in_chs * t
            if t != 1:
                layers.append(_conv_bn_act(in_chs, hidden, 1, act=nn.ReLU6))
            layers.append(_conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6))
        layers += [nn.Conv2d(hidden, out_chs, 1, bias=False), nn.BatchNorm2d(out_chs)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return x + y if self.use_res else y


class MobileNetV2(nn.Module):
    """MobileNet-v2 (width 1.0) with optional lightweight lambda blocks (Table 17).

    Shape: (b, in_chans, hh, ww) -> (b, num_classes)
    """

    def __init__(self, cfg: MobileNetV2Cfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        blocks: list[nn.Module] = [_conv_bn_act(cfg.in_chans, 32, 3, 2, act=nn.ReLU6)]
        cin, idx = 32, 0
        for row in V2_TABLE:
            for i in range(row.n):
                idx += 1
                lam = cfg.lam if idx in cfg.lambda_blocks else None
                blocks.append(InvertedResidual(cin, row.c, row.s if i == 0 else 1, row.t, lam, cfg.lambda_pw))
                cin = row.c
        blocks.append(_conv_bn_act(cin, 1280, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*blocks)
        self.num_features = 1280
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(cfg.drop_rate) if cfg.drop_rate > 0 else nn.Identity()
        self.classifier = nn.Linear(1280, cfg.num_classes)
        init_weights(self, conv_mode="fan_in", linear_std=0.01)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_pyramid(self, x: Tensor) -> dict[str, Tensor]:
        """The last feature map at strides 4, 8, 16 and 32 (``"c2"`` .. ``"c5"``)."""
        out: dict[str, Tensor] = {}
        side = x.shape[-1]
        for block in self.features:
            x = block(x)
            level = (side // x.shape[-1]).bit_length() - 1
            if level >= 2:
                out[f"c{level}"] = x
        return out

    def forward_head(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(torch.flatten(self.pool(x), 1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


_V2_META = {"input_size": (3, 224, 224), "test_input_size": (3, 64, 64)}
_LAMBDA_V2 = MobileNetV2Cfg(lambda_blocks=(10, 16))


@register_model(
    meta=ModelMeta(
        **_V2_META, paper_ref="arXiv:2102.08602 Table 17", config=MobileNetV2Cfg(), extra={"published_params_m": 3.50}
    )
)
def mobilenet_v2(**overrides: Any) -> MobileNetV2:
    """MobileNet-v2 1.0 (Sandler et al. 2018), Table 17's baseline."""
    return MobileNetV2(apply_overrides(MobileNetV2Cfg(), overrides, model="mobilenet_v2"))


@register_model(
    meta=ModelMeta(
        **_V2_META, paper_ref="arXiv:2102.08602 Table 17", config=_LAMBDA_V2, extra={"published_params_m": 3.21}
    )
)
def lambda_mobilenet_v2(**overrides: Any) -> MobileNetV2:
    """MobileNet-v2 with blocks 10 and 16 made lightweight lambda blocks (Table 17, App. D.3)."""
    return MobileNetV2(apply_overrides(_LAMBDA_V2, overrides, model="lambda_mobilenet_v2"))
