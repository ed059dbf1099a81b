"""Small video (clip) networks: a ResNet-3D and its lambda version.

The layout is a ResNet-3D with basic blocks (Hara, Kataoka and Satoh, "Can Spatiotemporal 3D CNNs Retrace the
History of 2D CNNs and ImageNet?", CVPR 2018) shrunk for 10-16 frame 32x32 single-channel clips (moving digits):
widths 16-128, one block per stage. ``lambda_video_tiny`` replaces the second 3x3x3 convolution of the blocks in the
later stages by a 3-D lambda layer with a local (t, h, w) position scope, the 3-D analogue of the lambda
convolution of Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602, Sec. 4 (the paper's placement rule: lambda
layers in the later stages, BN + ReLU after them as after the convolution they replace). ``video_tiny`` is the
Conv3d baseline with the same layout.

Note:
    Not models from the paper. The lambda layer is :class:`lambdanet.layers.LambdaLayer3d`.

Axis legend: b batch | c channels | tt time | hh ww spatial

Shape: (b, in_chans, tt, hh, ww) -> (b, num_classes)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lambdanet.layers import LambdaLayer3d
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

__all__ = ["VideoBlock", "VideoNet", "VideoNetCfg", "lambda_video_tiny", "video_tiny"]

Size3 = tuple[int, int, int]


@dataclass(frozen=True)
class VideoNetCfg:
    """Layout of a :class:`VideoNet`.

    Attributes:
        layers: basic blocks per stage; stages after the first halve time, height and width.
        widths: output channels of each stage (one per entry of ``layers``).
        stem_chs: channels of the 3x3x3 stem convolution (stride 1 in time, 2 in space).
        lambda_stages: 0-based indices of the stages whose blocks use a 3-D lambda layer in place of their second
            3x3x3 convolution.
        lam: settings of the lambda layers (``scope``: one odd side for every axis or a (t, h, w) tuple of odd
            sides; ``None`` = global relative positions over ``clip_size``, which fixes the input size).
        clip_size: (frames, height, width) used to size global position embeddings (``scope=None`` only).
        in_chans: input channels.
        num_classes: classes of the linear head.
        drop_rate: dropout before the classifier.
        zero_init_last: initialise the last BN gamma of every residual branch to 0.
    """

    layers: tuple[int, ...] = (1, 1, 1, 1)
    widths: tuple[int, ...] = (16, 32, 64, 128)
    stem_chs: int = 16
    lambda_stages: tuple[int, ...] = ()
    lam: LambdaCfg = field(default_factory=lambda: LambdaCfg(dim_k=16, heads=4, dim_u=1, scope=5))
    clip_size: tuple[int, int, int] = (16, 32, 32)
    in_chans: int = 1
    num_classes: int = 10
    drop_rate: float = 0.0
    zero_init_last: bool = True

    def __post_init__(self) -> None:
        for name in ("layers", "widths", "lambda_stages", "clip_size"):
            if not isinstance(getattr(self, name), tuple):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a tuple")
        if not self.layers or len(self.widths) != len(self.layers):
            raise ValueError(f"widths={self.widths!r} and layers={self.layers!r} must name the same stages (>= 1)")
        for name in ("layers", "widths"):
            for i, value in enumerate(getattr(self, name)):
                check_int(f"{name}[{i}]", value)
        bad = [i for i in self.lambda_stages if isinstance(i, bool) or i not in range(len(self.layers))]
        if bad:
            raise ValueError(f"lambda_stages={self.lambda_stages!r} has indices outside 0..{len(self.layers) - 1}")
        if len(self.clip_size) != 3:
            raise ValueError(f"clip_size={self.clip_size!r} must be (frames, height, width)")
        for i, value in enumerate(self.clip_size):
            check_int(f"clip_size[{i}]", value)
        for name in ("stem_chs", "in_chans", "num_classes"):
            check_int(name, getattr(self, name))
        check_rate("drop_rate", self.drop_rate)
        check_bool("zero_init_last", self.zero_init_last)
        if not isinstance(self.lam, LambdaCfg):
            raise ValueError(f"lam={self.lam!r} must be a LambdaCfg")


def _conv_bn(cin: int, cout: int, k: int, stride: int | Size3 = 1) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm3d(cout)]


class VideoBlock(nn.Module):
    """ResNet-3D basic block (3x3x3, then 3x3x3 or a 3-D lambda layer); the stride sits on the first convolution.

    Shape: (b, in_chs, tt, hh, ww) -> (b, out_chs, ceil(tt / stride), ceil(hh / stride), ceil(ww / stride))
    """

    def __init__(
        self, in_chs: int, out_chs: int, *, stride: int = 1, lam: LambdaCfg | None = None, feat_size: Size3
    ) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_chs, out_chs, 3, stride)
        self.relu = nn.ReLU(inplace=True)
        if lam is None:
            self.conv2: nn.Module = nn.Conv3d(out_chs, out_chs, 3, 1, 1, bias=False)
        else:
            self.conv2 = make_lambda(lam, out_chs, feat_size=feat_size, layer=LambdaLayer3d)
        self.bn2 = nn.BatchNorm3d(out_chs)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(*_conv_bn(in_chs, out_chs, 1, stride))

    def last_bn(self) -> nn.BatchNorm3d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + shortcut)


class VideoNet(nn.Module):
    """ResNet-3D (optionally with 3-D lambda layers) built from a :class:`VideoNetCfg`.

    Shape: (b, in_chans, tt, hh, ww) -> (b, num_classes)
    """

    def __init__(self, cfg: VideoNetCfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.fixed_input_size = bool(cfg.lambda_stages) and cfg.lam.scope is None and cfg.lam.position
        self.stem = nn.Sequential(*_conv_bn(cfg.in_chans, cfg.stem_chs, 3, (1, 2, 2)), nn.ReLU(inplace=True))
        size = (cfg.clip_size[0], math.ceil(cfg.clip_size[1] / 2), math.ceil(cfg.clip_size[2] / 2))
        stages: list[nn.Module] = []
        in_chs = cfg.stem_chs
        for s, (depth, width) in enumerate(zip(cfg.layers, cfg.widths, strict=True)):
            blocks = []
            for i in range(depth):
                stride = 2 if (s > 0 and i == 0) else 1
                size = tuple(math.ceil(side / stride) for side in size)  # type: ignore[assignment]
                lam = cfg.lam if s in cfg.lambda_stages else None
                blocks.append(VideoBlock(in_chs, width, stride=stride, lam=lam, feat_size=size))
                in_chs = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = in_chs
        self.dropout = nn.Dropout(cfg.drop_rate) if cfg.drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(in_chs, cfg.num_classes)
        init_weights(self, conv_mode="fan_out")
        if cfg.zero_init_last:
            for m in self.modules():
                if isinstance(m, VideoBlock):
                    nn.init.zeros_(m.last_bn().weight)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.cfg.in_chans:
            raise ValueError(f"input shape {tuple(x.shape)} must be (batch, {self.cfg.in_chans}, frames, H, W)")
        if self.fixed_input_size and tuple(x.shape[2:]) != self.cfg.clip_size:
            raise ValueError(
                f"input size {tuple(x.shape[2:])} differs from clip_size={self.cfg.clip_size}: this model has global "
                "position lambdas (scope=None), which fix the input size"
            )

    def forward_features(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(torch.flatten(x.mean(dim=(2, 3, 4)), 1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


_META: dict[str, Any] = {"input_size": (1, 16, 32, 32), "test_input_size": (1, 8, 16, 16), "num_classes": 10}
MODEL_CFGS: dict[str, VideoNetCfg] = {
    "video_tiny": VideoNetCfg(),
    "lambda_video_tiny": VideoNetCfg(lambda_stages=(1, 2, 3)),
}


@register_model(
    meta=ModelMeta(
        **_META,
        paper_ref="ResNet-3D (Hara et al., CVPR 2018) at reduced width; Conv3d baseline of lambda_video_tiny",
        config=MODEL_CFGS["video_tiny"],
        extra={"task": "classification", "input": "clips (batch, channels, frames, height, width)"},
    )
)
def video_tiny(**overrides: Any) -> VideoNet:
    """Tiny ResNet-3D (one basic block per stage, widths 16-128) for 10-16 frame 32x32 clips."""
    return VideoNet(apply_overrides(MODEL_CFGS["video_tiny"], overrides, model="video_tiny"))


@register_model(
    meta=ModelMeta(
        **_META,
        paper_ref="arXiv:2102.08602 Sec. 4 lambda convolution in 3-D, ResNet-3D layout; small, not from the paper",
        config=MODEL_CFGS["lambda_video_tiny"],
        extra={"task": "classification", "input": "clips (batch, channels, frames, height, width)"},
    )
)
def lambda_video_tiny(**overrides: Any) -> VideoNet:
    """Tiny ResNet-3D whose stages 2-4 use 3-D lambda layers (k16 h4 u1, 5x5x5 scope) for 10-16 frame clips."""
    return VideoNet(apply_overrides(MODEL_CFGS["lambda_video_tiny"], overrides, model="lambda_video_tiny"))
