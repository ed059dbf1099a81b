"""The video networks: ``video_tiny`` (Conv3d ResNet-3D) and ``lambda_video_tiny`` (3-D lambda layers in stages
2-4). Layout counted against closed formulas, MACs against a hand count, clips of any length, the global-scope size
check. The forward/backward, determinism, batch-independence and batch-0 checks run over the registry in
``tests/test_models.py``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lambdanet
from lambdanet.models.video import VideoBlock
from lambdanet.stats import model_stats

CLIP = (1, 16, 32, 32)


def _lambda_params(d: int, k: int = 16, h: int = 4, u: int = 1, scope: int = 5) -> int:
    """Parameters of a 3-D lambda layer d -> d: Q/K/V projection, BN of queries and values, position embeddings."""
    v = d // h
    return d * (h * k + u * k + u * v) + 2 * h * k + 2 * u * v + k * u * scope**3


def test_lambda_layout_and_parameters() -> None:
    """Stages 2-4 swap their second 3x3x3 convolution for a lambda layer; everything else is the baseline."""
    with torch.device("meta"):
        conv = lambdanet.create_model("video_tiny")
        lam = lambdanet.create_model("lambda_video_tiny")
    kinds = [type(b.conv2).__name__ for stage in lam.stages for b in stage]
    assert kinds == ["Conv3d", "LambdaLayer3d", "LambdaLayer3d", "LambdaLayer3d"]
    widths = (32, 64, 128)
    expected = sum(p.numel() for p in conv.parameters())
    expected += sum(_lambda_params(d) - d * d * 27 for d in widths)
    assert sum(p.numel() for p in lam.parameters()) == expected


def test_lambda_macs_by_hand() -> None:
    """Paper convention in 3-D: projection n d (hk + uk + uv), content n k v u + n h k v, position n min(|m|, n) k v u
    + n h k v; the lambda layers of stages 2-4 see (8, 8, 8), (4, 4, 4) and (2, 2, 2) maps of a 16x32x32 clip."""
    with torch.device("meta"):
        conv = lambdanet.create_model("video_tiny")
        lam = lambdanet.create_model("lambda_video_tiny")
    k, h, u, m = 16, 4, 1, 125
    hand = 0
    replaced = 0
    for d, side in ((32, 8), (64, 4), (128, 2)):
        n, v = side**3, d // 4
        hand += (
            n * d * (h * k + u * k + u * v)
            + (n * k * v * u + n * h * k * v)
            + (n * min(m, n) * k * v * u + n * h * k * v)
        )
        replaced += n * d * d * 27
    s_conv, s_lam = model_stats(conv, CLIP), model_stats(lam, CLIP)
    assert s_lam.lambda_macs == hand
    assert s_lam.macs - s_lam.lambda_macs == s_conv.macs - replaced
    assert s_conv.lambda_macs == 0


@pytest.mark.parametrize("name", ["video_tiny", "lambda_video_tiny"])
@pytest.mark.parametrize("frames", [10, 13, 16])
def test_clips_of_any_length(name: str, frames: int) -> None:
    torch.manual_seed(0)
    model = lambdanet.create_model(name, num_classes=4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, frames, 32, 32))
    assert out.shape == (2, 4)
    assert out.isfinite().all()


def test_lambda_layers_mix_information_across_frames() -> None:
    """With live residual branches, changing only the last frame changes the features at the first time step of
    stage 4 (a 2x2x2 map, whose lambda layer's 5-wide scope spans both time steps): context crosses time."""
    torch.manual_seed(0)
    model = lambdanet.create_model("lambda_video_tiny", num_classes=3).eval()
    for m in model.modules():
        if isinstance(m, VideoBlock):
            nn.init.ones_(m.last_bn().weight)
    x = torch.randn(1, 1, 16, 32, 32)
    y = x.clone()
    y[:, :, -1] += 1.0
    with torch.no_grad():
        fx, fy = model.forward_features(x), model.forward_features(y)
    assert fx.shape[2:] == (2, 2, 2)
    assert not torch.allclose(fx[:, :, 0], fy[:, :, 0])


def test_global_scope_fixes_the_clip_size() -> None:
    model = lambdanet.create_model("lambda_video_tiny", scope=None, clip_size=(8, 16, 16), num_classes=3).eval()
    assert model.fixed_input_size
    with torch.no_grad():
        assert model(torch.randn(1, 1, 8, 16, 16)).shape == (1, 3)
    with pytest.raises(ValueError, match=r"clip_size=\(8, 16, 16\)"):
        model(torch.randn(1, 1, 10, 16, 16))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"widths": (16, 32)}, "must name the same stages"),
        ({"lambda_stages": (4,)}, r"outside 0\.\.3"),
        ({"clip_size": (16, 32)}, "clip_size="),
        ({"in_chans": 0}, "in_chans=0"),
        ({"scope": (3, 4, 5)}, r"scope=\(3, 4, 5\)"),
        ({"zero_init_last": "yes"}, "zero_init_last='yes'"),
    ],
)
def test_bad_overrides(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        lambdanet.create_model("lambda_video_tiny", **overrides)
    assert "\n" not in str(info.value)


def test_wrong_input_is_one_line() -> None:
    model = lambdanet.create_model("video_tiny")
    with pytest.raises(ValueError, match=r"must be \(batch, 1, frames, H, W\)"):
        model(torch.randn(2, 1, 32, 32))
