"""ResNet-RS-style LambdaResNets: Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602, Sec. 5.1, App. D-E.

The family of Tables 14-20: ResNet-RS architectures (ResNet-D shortcut, a stem of three 3x3 convolutions with a
strided 3x3 convolution in place of the max pool, SE with squeeze ratio 4 in conv blocks, dropout and stochastic
depth) whose bottleneck 3x3 convolutions are replaced by lambda layers in every c5 block and at the c4 blocks of
Table 18 (the hybrids), or in all of c4 and c5 (``_c4`` variants). Baselines ``resnet_rsN`` (no SE) and
``resnet_rsN_se`` keep every 3x3 convolution.

Axis legend: b batch | c channels | hh ww spatial

Note:
    Squeeze-excite: "We do not use squeeze-and-excitation in the bottleneck blocks that employ a lambda layer"
    (App. E.1). The published LambdaResNet counts of Table 14 (36.9M, 26.0M, 51.4M, 35.1M) are reproduced only when
    SE is left out of *every* block of the stages that hold lambda layers (c4 and c5) and kept in c2 and c3; this
    is the default (``se_skip="stage"``). ``se_skip="block"`` gives the literal reading (SE in the conv blocks of
    the c4 hybrid), which is 10-16M larger than the published counts. See docs/models.md.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lambdanet.models._registry import ModelMeta, register_model
from lambdanet.models.resnet import ResNet, ResNetCfg, build_resnet

__all__ = ["DEPTHS", "RS_HPARAMS", "rs_cfg"]

# Table 18: block configuration and the (1-based) c4 blocks holding a lambda layer.
DEPTHS: dict[int, tuple[tuple[int, int, int, int], tuple[int, ...]]] = {
    50: ((3, 4, 6, 3), (3,)),
    101: ((3, 4, 23, 3), (6, 12, 18)),
    152: ((3, 8, 36, 3), (5, 10, 15, 20, 25, 30)),
    200: ((3, 24, 36, 3), (5, 10, 15, 20, 25, 30)),
    270: ((4, 29, 53, 4), (8, 16, 24, 32, 40, 48)),
    350: ((4, 36, 72, 4), (10, 20, 30, 40, 50, 60)),
    420: ((4, 44, 87, 4), (10, 20, 30, 40, 50, 60, 70, 80)),
}

# depth -> (native image size, dropout, stochastic depth rate). Sizes: Table 14 (101 at 224, 152 at 256), Table 15
# (200 at 320), Tables 19-20 (the largest size of 50, 270, 350, 420). Dropout and stochastic depth: Table 20's row
# for that depth and size. Table 20 has no row for 101 at 224 (we take its nearest, 192: 0.2 / 0) nor for depth 200
# (we take 152's 0.3 / 0.1, the same c4/c5 layout). Regularisation does not change parameters or MACs.
RS_HPARAMS: dict[int, tuple[int, float, float]] = {
    50: (160, 0.2, 0.0),
    101: (224, 0.2, 0.0),
    152: (256, 0.3, 0.1),
    200: (320, 0.3, 0.1),
    270: (256, 0.3, 0.1),
    350: (320, 0.3, 0.2),
    420: (320, 0.3, 0.2),
}


def rs_cfg(depth: int, *, kind: str) -> ResNetCfg:
    """The :class:`ResNetCfg` of a ResNet-RS family member.

    Args:
        depth: one of :data:`DEPTHS`.
        kind: ``"conv"`` (ResNet-RS without SE), ``"se"`` (with SE), ``"hybrid"`` (LambdaResNet) or ``"c4"``
            (LambdaResNet-C4: every 3x3 of c4 and c5 replaced).

    Raises:
        ValueError: for an unknown depth or kind.
    """
    if depth not in DEPTHS:
        raise ValueError(f"depth={depth!r} must be one of {sorted(DEPTHS)}")
    layers, c4_blocks = DEPTHS[depth]
    size, drop, drop_path = RS_HPARAMS[depth]
    base = ResNetCfg(
        layers=layers,
        stem="rs",
        avg_down=True,
        se_ratio=0.25,
        se_skip="stage",
        img_size=size,
        drop_rate=drop,
        drop_path_rate=drop_path,
    )
    if kind == "conv":
        return replace(base, se_ratio=0.0)
    if kind == "se":
        return base
    if kind == "hybrid":
        return replace(base, placement="CCCL", c4_lambda_blocks=c4_blocks)
    if kind == "c4":
        return replace(base, placement="CCLL")
    raise ValueError(f"kind={kind!r} must be 'conv', 'se', 'hybrid' or 'c4'")


_PUBLISHED: dict[str, float] = {
    "resnet_rs101": 44.6,
    "resnet_rs101_se": 63.6,
    "lambda_resnet_rs101": 36.9,
    "lambda_resnet_rs101_c4": 26.0,
    "resnet_rs152": 60.2,
    "resnet_rs152_se": 86.6,
    "lambda_resnet_rs152": 51.4,
    "lambda_resnet_rs152_c4": 35.1,
    "lambda_resnet_rs200_c4": 42.0,
}

_KINDS = {"resnet_rs": "conv", "resnet_rs_se": "se", "lambda_resnet_rs": "hybrid", "lambda_resnet_rs_c4": "c4"}


def _register(depth: int, prefix: str, suffix: str) -> None:
    name = f"{prefix}{depth}{suffix}"
    kind = _KINDS[f"{prefix}{suffix}"]
    cfg = rs_cfg(depth, kind=kind)
    size = cfg.img_size
    extra: dict[str, Any] = {"rs_kind": kind, "depth": depth, "smoke_overrides": {"layers": (1, 1, 2, 1)}}
    if kind == "hybrid":
        extra["smoke_overrides"] = {"layers": (1, 1, 2, 1), "c4_lambda_blocks": (2,)}
    if name in _PUBLISHED:
        extra["published_params_m"] = _PUBLISHED[name]
    tables = {
        "conv": "Table 14, Fig. 4",
        "se": "Table 14, Fig. 4",
        "hybrid": "Tables 5, 14, 18-20",
        "c4": "Tables 14-16",
    }
    meta = ModelMeta(
        input_size=(3, size, size),
        test_input_size=(3, 64, 64),
        paper_ref=f"arXiv:2102.08602 {tables[kind]}",
        extra=extra,
        config=cfg,
    )

    def builder(**overrides: Any) -> ResNet:
        return build_resnet(cfg, overrides, model=name, lambda_overrides=kind in ("hybrid", "c4"))

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"{name}: ResNet-RS-{depth} ({kind}); layout from ``rs_cfg({depth}, kind={kind!r})``."
    register_model(meta=meta)(builder)
    globals()[name] = builder
    __all__.append(name)


for _depth in DEPTHS:
    for _prefix, _suffix in (
        ("resnet_rs", ""),
        ("resnet_rs", "_se"),
        ("lambda_resnet_rs", ""),
        ("lambda_resnet_rs", "_c4"),
    ):
        _register(_depth, _prefix, _suffix)
