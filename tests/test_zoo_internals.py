"""What the zoo's parameter counts cannot see: stride placement, stochastic depth, projection init, MAC formulas.

Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602, App. E.1 (stochastic depth, zero-init of the last BN gamma,
fan-in projection init). Freshly built ResNets zero every residual branch (``zero_init_last``), which hides whatever
runs after the last BN; these tests give the last BN gammas non-zero values first (``_live_branches``).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lambdanet
from lambdanet.layers import LambdaLayer
from lambdanet.models._blocks import DropPath
from lambdanet.models.resnet import BasicBlock, Bottleneck
from lambdanet.stats import model_stats

SMOKE = {"layers": (1, 1, 2, 1)}
LAMBDA_TYPES = tuple(t for t in (LambdaLayer, getattr(lambdanet.layers, "LambdaLayer3d", None)) if t is not None)
NEEDS_3D = pytest.mark.skipif(len(LAMBDA_TYPES) < 2, reason="no lambdanet.layers.LambdaLayer3d")


def _live_branches(model: nn.Module) -> nn.Module:
    """Give every residual branch's last BN a non-zero gamma (and non-trivial running statistics)."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, Bottleneck | BasicBlock):
            bn = m.last_bn()
            with torch.no_grad():
                bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=gen))
    return model


@pytest.mark.parametrize(
    ("name", "overrides"), [("resnet50", {"layers": (1, 1, 1, 1)}), ("resnet18_cifar", {}), ("video_tiny", {})]
)
def test_last_bn_of_every_residual_branch_starts_at_zero(name: str, overrides: dict) -> None:
    """App. E.1: the last BN gamma of every residual branch is initialised to 0 (``zero_init_last``), the others
    to 1; ``zero_init_last=False`` keeps 1 everywhere."""
    for zero in (True, False):
        model = lambdanet.create_model(name, zero_init_last=zero, **overrides)
        blocks = [m for m in model.modules() if hasattr(m, "last_bn")]
        assert blocks
        last = {id(b.last_bn()) for b in blocks}
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d) and m.weight is not None:
                expected = 0.0 if zero and id(m) in last else 1.0
                assert torch.all(m.weight == expected), (name, zero)


@pytest.mark.parametrize("lam", [False, True])
def test_strided_bottleneck_sees_every_input_pixel(lam: bool) -> None:
    """ResNet v1.5 (torchvision, TF): the stride sits on the 3x3, so odd pixels reach the output of a strided block.
    With the stride on the first 1x1 (ResNet v1) the branch and the 1x1 shortcut read only even pixels."""
    torch.manual_seed(0)
    cfg = lambdanet.models._blocks.LambdaCfg(dim_k=4, heads=2, scope=3) if lam else None
    block = _live_branches(Bottleneck(16, 4, stride=2, lam=cfg)).eval()
    x = torch.randn(1, 16, 8, 8, requires_grad=True)
    (grad,) = torch.autograd.grad(block(x).square().sum(), x)
    odd = grad[..., 1::2, 1::2]
    assert odd.abs().amax(dim=1).min() > 0, "some odd input pixels do not reach the strided block's output"
    assert block.conv1.stride == (1, 1)


def test_stochastic_depth_increases_linearly_over_blocks() -> None:
    """ResNet-RS stochastic depth: block i of N drops with rate drop_path_rate * i / (N - 1) (0 for the first)."""
    with torch.device("meta"):
        model = lambdanet.create_model("resnet_rs50", drop_path_rate=0.2, **SMOKE)
    blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
    rates = [0.0 if b.drop_path is None else b.drop_path.p for b in blocks]
    expected = [0.2 * i / (len(blocks) - 1) for i in range(len(blocks))]
    assert rates == pytest.approx(expected)


def test_drop_path_keeps_the_expectation() -> None:
    """Kept samples are scaled by 1 / keep, so the expected output equals the input."""
    torch.manual_seed(0)
    drop = DropPath(0.25).train()
    x = torch.ones(20000, 3)
    y = drop(x)
    per_sample = y[:, 0]
    assert torch.equal(y, per_sample[:, None].expand_as(y)), "DropPath must drop whole samples"
    values = per_sample.unique().tolist()
    assert values == [0.0, pytest.approx(1 / 0.75)]
    assert abs(per_sample.mean().item() - 1.0) < 0.03
    assert abs((per_sample == 0).float().mean().item() - 0.25) < 0.02


@pytest.mark.parametrize("name", ["resnet_rs50", "lambda_resnet_rs50"])
def test_stochastic_depth_is_off_in_eval(name: str) -> None:
    """In eval mode a model with stochastic depth computes exactly what the same weights without it compute."""
    torch.manual_seed(0)
    smoke = lambdanet.model_info(name).extra["smoke_overrides"]
    model = _live_branches(lambdanet.create_model(name, drop_path_rate=0.5, num_classes=5, **smoke)).eval()
    plain = lambdanet.create_model(name, drop_path_rate=0.0, num_classes=5, **smoke).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out, plain(x), rtol=0, atol=0)
        torch.testing.assert_close(model(x), out, rtol=0, atol=0)
    # ... and the rate is live in training: some sample's output changes between two training-mode passes.
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("lambda_resnet50", {"layers": (1, 1, 1, 1)}),
        ("lambda_resnet_rs50", {**SMOKE, "c4_lambda_blocks": (2,)}),
        ("lambda_resnet18_cifar", {}),
        ("lambda_mobilenet_v1_cifar_3", {}),
        ("lambda_mobilenet_v2", {}),
        ("lambda_net_tiny", {}),
        pytest.param("lambda_video_tiny", {}, marks=NEEDS_3D),
    ],
)
def test_model_init_keeps_the_lambda_projection_init(name: str, overrides: dict) -> None:
    """App. E.1: query rows of the Q/K/V projection ~ N(0, 1/(|k| d)), key and value rows ~ N(0, 1/d); the
    model-level Kaiming init of the convolutions must not overwrite them."""
    torch.manual_seed(0)
    model = lambdanet.create_model(name, **overrides)
    layers = [m for m in model.modules() if isinstance(m, LAMBDA_TYPES)]
    assert layers
    for layer in layers:
        w = layer.qkv.weight.detach().flatten(1)
        nq = layer.splits[0]
        for rows, std in ((w[:nq], (layer.dim_k * layer.dim) ** -0.5), (w[nq:], layer.dim**-0.5)):
            tol = 6 / math.sqrt(2 * rows.numel())  # six standard errors of a sample standard deviation
            assert abs(rows.std().item() / std - 1) < tol, (name, rows.std().item(), std)


def test_scope_position_macs_count_every_intra_depth_slice() -> None:
    """Paper convention: position lambdas cost n * |m| * |k| * |v| * |u| MACs (one lambda per query position, |m|
    context positions each, |u| slices), applying them n * |h| * |k| * |v|; here by hand for |u| = 4."""
    n_side, d, k, h, u, scope = 12, 32, 8, 4, 4, 5
    layer = LambdaLayer(d, dim_k=k, heads=h, dim_u=u, scope=scope)
    model = nn.Sequential(layer)
    v, n, m = d // h, n_side * n_side, scope * scope
    stats = model_stats(model, (d, n_side, n_side))
    assert stats.lambda_parts["position"] == n * m * k * v * u + n * h * k * v
    assert stats.lambda_parts["content"] == n * k * v * u + n * h * k * v
    assert stats.lambda_parts["projection"] == n * d * (h * k + u * k + u * v)
    taps = model_stats(model, (d, n_side, n_side), position_count="taps")
    assert taps.lambda_parts["position"] == stats.lambda_parts["position"]  # the scope fits inside the map
    # A scope larger than the map: the paper's count charges min(|m|, n) context positions.
    small = model_stats(model, (d, 3, 3))
    assert small.lambda_parts["position"] == 9 * 9 * k * v * u + 9 * h * k * v
