"""The model zoo (ResNet-50 family, ResNet-RS LambdaResNets, CIFAR ResNets, MobileNets): every registered model of
these families runs forward/backward, is deterministic and batch-independent in eval mode, compiles (eager backend)
and exports. Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602.

Cost control (stated): models whose ``ModelMeta.extra`` has ``smoke_overrides`` (the ResNet-RS family and leaderj1001's
ResNet-152/200) run these checks at reduced depth ``layers=(1, 1, 2, 1)`` with the same blocks (SE, ResNet-D, lambda
and conv blocks in the c4 hybrid); their full-size parameter counts are checked on the meta device in
``test_full_size_params`` and against the published numbers in ``test_reproduction.py``. ``torch.compile`` and
``torch.export`` run on one model per distinct block structure (``COMPILE_SUBSET``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import lambdanet
from lambdanet.layers import LambdaLayer
from lambdanet.stats import model_stats

# Every registered image and video model; the language models have their own tests (tests/test_lm.py).
ZOO = [n for n in lambdanet.list_models() if lambdanet.model_info(n).extra.get("task") != "language_model"]
# The lambda video models need lambdanet.layers.LambdaLayer3d; where it is missing their tests skip.
NEEDS_3D = pytest.mark.skipif(
    not hasattr(lambdanet.layers, "LambdaLayer3d"), reason="no lambdanet.layers.LambdaLayer3d"
)
ZOO_CASES = [pytest.param(n, marks=NEEDS_3D) if n.startswith("lambda_video") else n for n in ZOO]
STATS_JSON = Path(lambdanet.__file__).parent / "models" / "zoo_stats.json"
# One model per distinct block structure for torch.compile / torch.export, at reduced depth where it has one.
ONE_BLOCK = {"layers": (1, 1, 1, 1)}
COMPILE_SUBSET: dict[str, dict[str, Any]] = {
    "resnet50_se": ONE_BLOCK,
    "lambda_resnet50": ONE_BLOCK,
    "lambda_resnet_rs101": {"layers": (1, 1, 2, 1), "c4_lambda_blocks": (2,)},
    "resnet18_cifar": ONE_BLOCK,
    "lambda_mobilenet_v1_cifar_5": {},
    "lambda_mobilenet_v2": {},
    "lambda_net_tiny": {},
}


def _smoke(name: str, **extra: Any) -> tuple[nn.Module, tuple[int, ...]]:
    info = lambdanet.model_info(name)
    overrides = dict(info.extra.get("smoke_overrides", {}))
    overrides.update(extra)
    return lambdanet.create_model(name, **overrides), info.smoke_input_size


def test_zoo_is_complete() -> None:
    expected = {"resnet50", "resnet50_se", "lambda_resnet50", "mobilenet_v1_cifar", "mobilenet_v2"}
    expected |= {"lambda_mobilenet_v2", "resnet18_cifar", "lambda_resnet18_cifar", "resnet50_cifar"}
    expected |= {"lambda_resnet50_cifar", *(f"lambda_mobilenet_v1_cifar_{i}" for i in range(2, 7))}
    for d in (50, 101, 152, 200, 270, 350, 420):
        expected |= {f"resnet_rs{d}", f"resnet_rs{d}_se", f"lambda_resnet_rs{d}", f"lambda_resnet_rs{d}_c4"}
    assert expected <= set(ZOO), sorted(expected - set(ZOO))


@pytest.mark.parametrize("name", ZOO_CASES)
def test_forward_backward(name: str) -> None:
    model, size = _smoke(name, num_classes=7)
    model.train()
    x = torch.randn(2, *size)
    out = model(x)
    assert out.shape == (2, 7)
    assert out.isfinite().all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without grad: {missing[:5]}"
    assert all(p.grad.isfinite().all() for p in model.parameters())


@pytest.mark.parametrize("name", ZOO_CASES)
def test_eval_deterministic_and_batch_independent(name: str) -> None:
    model, size = _smoke(name, num_classes=5)
    model.eval()
    x = torch.randn(3, *size, requires_grad=True)
    out = model(x)
    with torch.no_grad():
        again = model(x)
    torch.testing.assert_close(out, again, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(out[0].sum(), x)
    assert grad[0].abs().sum() > 0
    assert grad[1:].abs().max() == 0, "sample 0's output depends on other samples in eval mode"


@pytest.mark.parametrize("name", ZOO_CASES)
def test_full_size_params(name: str) -> None:
    """Full-size parameter counts (meta device) equal the shipped table of ``lambdanet models``
    (models/zoo_stats.json; regenerate it deliberately with ``python -m lambdanet.cli.models --write-cache``)."""
    pinned = json.loads(STATS_JSON.read_text())
    with torch.device("meta"):
        model = lambdanet.create_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert name in pinned, f"{name} is missing from {STATS_JSON.name}: {count} params"
    assert count == pinned[name]["params"]
    assert pinned[name]["input_size"] == list(lambdanet.model_info(name).input_size)
    published = lambdanet.model_info(name).extra.get("published_params_m")
    if published is not None:
        assert abs(count / 1e6 / published - 1) < 0.25  # the exact comparison lives in test_reproduction.py


def test_stats_table_lists_exactly_the_registered_image_models() -> None:
    assert sorted(json.loads(STATS_JSON.read_text())) == ZOO


# Cheap to count; the slow test below recounts every model.
CHEAP_3D = ["lambda_video_tiny"]
CHEAP = [
    "video_tiny",
    "resnet18_cifar",
    "lambda_resnet18_cifar",
    "lambda_mobilenet_v1_cifar_5",
    "lambda_mobilenet_v2",
    "lambda_net_tiny",
]


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[] if n in CHEAP else pytest.mark.slow) for n in ZOO if n not in CHEAP_3D]
    + [pytest.param(n, marks=NEEDS_3D) for n in CHEAP_3D],
)
def test_stats_table_macs(name: str) -> None:
    from lambdanet.cli.models import compute_stats

    assert compute_stats(name) == json.loads(STATS_JSON.read_text())[name]


@pytest.mark.compile
@pytest.mark.parametrize("name", COMPILE_SUBSET)
def test_compile_eager(name: str) -> None:
    torch._dynamo.reset()
    model, size = _smoke(name, num_classes=3, **COMPILE_SUBSET[name])
    model.eval()
    x = torch.randn(2, *size)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.export
@pytest.mark.parametrize("name", COMPILE_SUBSET)
def test_export(name: str) -> None:
    model, size = _smoke(name, num_classes=3, **COMPILE_SUBSET[name])
    model.eval()
    x = torch.randn(2, *size)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


@pytest.mark.parametrize("name", ["lambda_resnet50", "resnet_rs50", "lambda_resnet18_cifar"])
def test_pyramid(name: str) -> None:
    model, size = _smoke(name, num_classes=3)
    model.eval()
    x = torch.randn(1, *size)
    with torch.no_grad():
        feats = model.forward_pyramid(x)
        final = model.forward_features(x)
    assert list(feats) == ["c2", "c3", "c4", "c5"]
    for info in model.feature_info:
        f = feats[info["name"]]
        assert f.shape[1] == info["num_chs"]
        assert f.shape[-1] == -(-size[-1] // info["reduction"])
    torch.testing.assert_close(feats["c5"], final)


def test_mobilenet_pyramids() -> None:
    model = lambdanet.create_model("mobilenet_v2").eval()
    with torch.no_grad():
        feats = model.forward_pyramid(torch.randn(1, 3, 64, 64))
    assert {k: v.shape[-1] for k, v in feats.items()} == {"c2": 16, "c3": 8, "c4": 4, "c5": 2}


def test_placement_and_hybrid_layout() -> None:
    model = lambdanet.create_model("lambda_resnet50", placement="CCLL")
    kinds = [
        "L" if isinstance(b.conv2, LambdaLayer) else "C"
        for s in (model.layer1, model.layer2, model.layer3, model.layer4)
        for b in s
    ]
    assert "".join(kinds) == "C" * 7 + "L" * 9
    with torch.device("meta"):
        hybrid = lambdanet.create_model("lambda_resnet_rs101")
    c4 = [i + 1 for i, b in enumerate(hybrid.layer3) if isinstance(b.conv2, LambdaLayer)]
    assert c4 == [6, 12, 18]
    assert all(isinstance(b.conv2, LambdaLayer) and b.se is None for b in hybrid.layer4)
    assert all(b.se is not None for b in hybrid.layer2)  # SE stays in the conv-only stages (se_skip="stage")
    assert lambdanet.model_info("lambda_resnet_rs101").input_size == (3, 224, 224)


def test_dli14_layout_names() -> None:
    """Module names follow the d-li14 checkpoint (tensors.json) wherever the layer internals are not involved."""
    with torch.device("meta"):
        model = lambdanet.create_model("lambda_resnet50", position_bias=True)
    names = {n for n, _ in model.named_parameters()}
    for expected in (
        "conv1.weight",
        "bn1.weight",
        "layer1.0.conv1.weight",
        "layer1.0.bn2.bias",
        "layer1.0.conv3.weight",
        "layer1.0.downsample.0.weight",
        "layer4.2.bn3.weight",
        "fc.weight",
        "layer1.0.conv2.pos.bias",
    ):
        assert expected in names, expected
    assert sum(p.numel() for p in model.parameters()) == 14_995_848


def test_mobilenet_v1_downsampling_fix() -> None:
    x = torch.randn(1, 3, 32, 32)
    faithful = lambdanet.create_model("lambda_mobilenet_v1_cifar_5").eval()
    fixed = lambdanet.create_model("lambda_mobilenet_v1_cifar_5", fix_downsampling=True).eval()
    with torch.no_grad():
        assert faithful.forward_features(x).shape[-1] == 4  # lambda-mobilenets: the lambda layer dropped a stride
        assert fixed.forward_features(x).shape[-1] == 2
    assert sum(p.numel() for p in faithful.parameters()) == sum(p.numel() for p in fixed.parameters())


def test_global_scope_fixed_input() -> None:
    model = lambdanet.create_model("lambda_resnet50", scope=None, img_size=64, placement="CCLL", num_classes=3).eval()
    assert model.fixed_input_size
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match="img_size=64"):
        model(torch.randn(1, 3, 96, 96))


@pytest.mark.parametrize(
    ("name", "overrides", "match"),
    [
        ("lambda_resnet50", {"bogus": 1}, "unknown override bogus"),
        ("resnet50", {"dim_k": 8}, "no lambda layers"),
        ("lambda_resnet50", {"placement": "LLXL"}, "placement='LLXL'"),
        ("lambda_resnet_rs101", {"c4_lambda_blocks": (30,)}, r"outside 1\.\.23"),
        ("lambda_mobilenet_v2", {"lambda_blocks": (18,)}, "outside 1..17"),
        ("mobilenet_v1_cifar", {"layers": "LCCCCCCCCCCCCC"}, "starting with C"),
    ],
)
def test_bad_overrides(name: str, overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        lambdanet.create_model(name, **overrides)


def test_unknown_model_names_the_cli_listing_and_close_names_only() -> None:
    with pytest.raises(ValueError, match="lambdanet models") as err:
        lambdanet.create_model("lambda_resnt50")
    hint = str(err.value).split("Did you mean ")[1]
    assert "lambda_resnet50" in hint and "mobilenet" not in hint and "lm_tiny" not in hint
    with pytest.raises(ValueError, match="unknown model") as err:
        lambdanet.create_model("nosuch")
    assert "Did you mean" not in str(err.value)


def test_model_stats_matches_flop_counter_without_lambda() -> None:
    model = lambdanet.create_model("resnet18_cifar").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    stats = model_stats(model, (3, 32, 32))
    assert stats.macs * 2 == counter.get_total_flops() == stats.flops
    assert stats.lambda_macs == 0
    assert stats.params == sum(p.numel() for p in model.parameters())


def test_model_stats_lambda_conventions() -> None:
    model = lambdanet.create_model("lambda_resnet18_cifar", dim_u=1, scope=23)
    layers = [m for m in model.modules() if isinstance(m, LambdaLayer)]
    pairs = model_stats(model, (3, 32, 32), position_count="pairs")
    scope = model_stats(model, (3, 32, 32))
    taps = model_stats(model, (3, 32, 32), position_count="taps")
    # The first lambda layer sees the 32x32 map: pairs <= scope <= taps, and the non-lambda part is the same.
    assert pairs.macs - pairs.lambda_macs == scope.macs - scope.lambda_macs == taps.macs - taps.lambda_macs
    assert pairs.lambda_parts["position"] < scope.lambda_parts["position"] < taps.lambda_parts["position"]
    sides = [32, 32, 32, 16, 16, 8, 8, 4]  # input side of each lambda layer (strided blocks see the larger map)
    assert len(layers) == len(sides)
    assert pairs.lambda_parts["projection"] == sum(
        m.macs(s, s)["projection"] for m, s in zip(layers, sides, strict=True)
    )
    assert pairs.lambda_parts["position"] == sum(m.macs(s, s)["position"] for m, s in zip(layers, sides, strict=True))
    assert all("forward" not in layer.__dict__ for layer in layers), "model_stats left a stub forward behind"
    with pytest.raises(ValueError, match="position_count"):
        model_stats(model, (3, 32, 32), position_count="all")
    with pytest.raises(ValueError, match="input_size"):
        model_stats(model, (32, 32))


def test_model_stats_input_that_does_not_fit() -> None:
    model = lambdanet.create_model("lambda_net_tiny")  # its stem conv raises torch's own channel error
    with pytest.raises(ValueError, match=r"input_size=\(4, 32, 32\) does not fit the model"):
        model_stats(model, (4, 32, 32))
    layers = [m for m in model.modules() if isinstance(m, LambdaLayer)]
    assert layers and all("forward" not in layer.__dict__ for layer in layers), "model_stats left a stub forward"


@pytest.mark.parametrize("name", [None, 5, ["lambda_net_tiny"]])
def test_model_name_must_be_str(name: Any) -> None:
    with pytest.raises(TypeError, match=r"model name=.* must be a str"):
        lambdanet.create_model(name)


@pytest.mark.parametrize("fmt", ["table", "markdown", "json", "csv"])
def test_cli_models(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    from lambdanet.cli import main

    assert main(["models", "--format", fmt, "resnet50*"]) == 0
    out = capsys.readouterr().out
    assert "resnet50_se" in out
    assert "resnet50_cifar" in out
    assert "lambda_resnet50" not in out
    if fmt == "json":
        rows = {r["name"]: r for r in json.loads(out)}
        assert rows["resnet50"]["params_m"] == 25.557
        assert rows["resnet50"]["input_size"] == "3x224x224"
        assert rows["resnet50"]["source"] == "arXiv:2102.08602 Tables 3, 13"
    assert main(["models", "no_such_model*"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_such_model*" in err


def test_cli_models_recompute_matches_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    from lambdanet.cli import main

    assert main(["models", "--format", "json", "*resnet18_cifar"]) == 0
    cached = capsys.readouterr().out
    assert len(json.loads(cached)) == 2
    assert main(["models", "--format", "json", "--recompute", "*resnet18_cifar"]) == 0
    assert capsys.readouterr().out == cached


@pytest.mark.parametrize(
    ("name", "overrides", "match"),
    [
        ("resnet50", {"num_classes": 0}, "num_classes=0"),
        ("lambda_resnet18_cifar", {"in_chans": 0}, "in_chans=0"),
        ("resnet50_se", {"se_ratio": -0.25}, "se_ratio=-0.25"),
        ("resnet50", {"base_width": 0}, "base_width=0"),
        ("resnet50", {"layers": (3, 4, 6, True)}, "layers="),
        ("lambda_resnet50", {"placement": None}, "placement=None"),
        ("lambda_resnet50", {"content": "no"}, "content='no'"),
        ("lambda_resnet50", {"scope": 6}, "scope=6"),
        ("lambda_resnet50", {"dim_k": 0}, "dim_k=0"),
        ("lambda_resnet50", {"zero_init_last": 1}, "zero_init_last=1"),
        ("resnet_rs50", {"drop_path_rate": 1.0}, "drop_path_rate=1.0"),
        ("mobilenet_v2", {"num_classes": -10}, "num_classes=-10"),
        ("lambda_mobilenet_v2", {"lambda_pw": "yes"}, "lambda_pw='yes'"),
        ("mobilenet_v1_cifar", {"in_chans": 0}, "in_chans=0"),
        ("lambda_mobilenet_v1_cifar_5", {"fix_downsampling": 0}, "fix_downsampling=0"),
        ("lambda_net_tiny", {"widths": (32, 0)}, r"widths\[1\]=0"),
        ("lambda_net_tiny", {"num_classes": 0}, "num_classes=0"),
        ("lambda_net_tiny", {"position_bias": "false"}, "position_bias='false'"),
    ],
)
def test_nonsense_overrides_are_refused_in_one_line(name: str, overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        lambdanet.create_model(name, **overrides)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ZOO_CASES)
def test_batch_zero(name: str) -> None:
    """An empty batch gives an empty output of the right shape, as nn.Conv2d does (eval mode; train-mode BatchNorm
    needs samples)."""
    info = lambdanet.model_info(name)
    overrides = dict(info.extra.get("smoke_overrides", {}))
    model = lambdanet.create_model(name, num_classes=3, **overrides).eval()
    size = info.smoke_input_size
    if len(size) == 3 and not info.fixed_input_size:
        size = (size[0], 32, 32)
    with torch.no_grad():
        out = model(torch.zeros(0, *size))
    assert out.shape == (0, 3)


@pytest.mark.parametrize(
    "size", [None, "3x32x32", (3, 32.7, 32), (3, 32), (3, 0, 32), (3, True, 32), 32, (3, "32", 32)]
)
def test_model_stats_argument_errors_are_one_line(size: Any) -> None:
    model = lambdanet.create_model("resnet18_cifar")
    with pytest.raises(ValueError, match="input_size=") as info:
        model_stats(model, size)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="model=str"):
        model_stats("resnet18_cifar", (3, 32, 32))  # type: ignore[arg-type]


def test_model_stats_prints_readable_figures() -> None:
    with torch.device("meta"):
        model = lambdanet.create_model("lambda_resnet50", position_bias=True)
    stats = model_stats(model, (3, 224, 224))
    assert stats.params == 14_995_848
    assert str(stats) == (
        f"15.00 M params, {stats.macs / 1e9:.2f} GMACs ({2 * stats.macs / 1e9:.2f} GFLOPs), input 3x224x224"
    )
    assert str(model_stats(nn.Conv2d(3, 4, 1), (3, 1, 1))) == "16 params, 12 MACs (24 FLOPs), input 3x1x1"


def test_cli_info(capsys: pytest.CaptureFixture[str]) -> None:
    from lambdanet.cli import main

    assert main(["info", "lambda_resnet50"]) == 0
    out = capsys.readouterr().out
    assert "d-li14/lambda.pytorch" in out
    assert "3x224x224 (other sizes work too)" in out
    assert "14.996 M params, 6.011 GMACs" in out
    lines = {
        line.split()[0]: line.split()[1:3] for line in out.splitlines() if line.startswith("  ") and "  " in line[2:]
    }
    assert lines["dim_k"] == ["int", "16"]
    assert lines["placement"] == ["str", "'LLLL'"]
    assert lines["num_classes"] == ["int", "1000"]
    assert lines["zero_init_last"] == ["bool", "True"]
    # every listed override is accepted by create_model (and nothing the builder accepts is missing)
    from lambdanet.cli.info import override_table

    keys = {row[0] for row in override_table("lambda_resnet_rs50")}
    assert {"c4_lambda_blocks", "se_ratio", "dim_k", "drop_path_rate"} <= keys
    cfg = lambdanet.model_info("lambda_resnet_rs50").config
    with torch.device("meta"):
        for key in keys:
            value = getattr(cfg, key) if hasattr(cfg, key) else getattr(cfg.lam, key)
            lambdanet.create_model("lambda_resnet_rs50", **{key: value})
    assert main(["info", "lamda_resnet50"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lambda_resnet50" in err
