"""Export: ONNX (checked with onnxruntime) and torch.export programs reproduce eager outputs.

Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602; models from the registry (docs/models.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lambdanet
from lambdanet.cli import main as cli
from lambdanet.interop import export_onnx, export_program, fixed_spatial, load_program, onnx_forward, save_program
from lambdanet.layers import LambdaLayer
from tests.fixtures.deterministic_weights import calibrate_batchnorm

pytestmark = [pytest.mark.export, pytest.mark.filterwarnings("ignore::FutureWarning")]


def _randomise_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Non-zero BN scales and non-trivial running statistics, so every branch shapes the output."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _assert_float32_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Within float32 rounding of a deep network: the export runs the lambda convolution, eager may run another
    exact algorithm ("auto"), so the two sum in different orders (1e-4 of the output's scale, as the CLI check)."""
    assert out.shape == ref.shape
    scale = ref.abs().max().item()
    assert scale > 1e-3
    err = (out - ref).abs().max().item()
    assert err <= 1e-4 * scale, f"max |exported - eager| = {err:.3g} for max |eager| = {scale:.3g}"


def _tiny_global() -> torch.nn.Module:
    """A small CIFAR LambdaResNet with global relative position lambdas (fixed 16x16 input)."""
    model = lambdanet.create_model(
        "lambda_resnet18_cifar", scope=None, img_size=16, base_width=8, layers=(1, 1, 1, 1), num_classes=5
    )
    return _randomise_norms(model)


def test_cli_onnx_dynamic_batch_and_spatial_matches_onnxruntime(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = _randomise_norms(lambdanet.create_model("lambda_net_tiny"))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    path = tmp_path / "tiny.onnx"
    args = ["export", "lambda_net_tiny", "--format", "onnx", "--output", str(path)]
    assert cli([*args, "--checkpoint", str(tmp_path / "weights.pt")]) == 0
    assert "dynamic batch, height, width" in capsys.readouterr().out
    import onnx

    graph_input = onnx.load(str(path)).graph.input[0]
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert graph_input.name == "input" and dims[1] == 3 and all(isinstance(d, str) for d in dims[::2])
    for shape in [(1, 3, 32, 32), (3, 3, 24, 40), (2, 3, 9, 13)]:
        x = torch.randn(shape)
        with torch.no_grad():
            _assert_float32_close(onnx_forward(path, x), model(x))


def test_onnx_fixed_size_model_has_dynamic_batch_only(tmp_path: Path) -> None:
    model = _tiny_global()
    assert fixed_spatial(model)
    with pytest.raises(ValueError, match="dynamic_spatial=True"):
        export_onnx(model, tmp_path / "x.onnx", (3, 16, 16), dynamic_spatial=True)
    path = export_onnx(model, tmp_path / "global.onnx", (3, 16, 16))
    assert [layer.algorithm for layer in model.modules() if isinstance(layer, LambdaLayer)] == ["auto"] * 4
    for batch in (1, 3):
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            _assert_float32_close(onnx_forward(path, x), model(x))


def test_torch_export_saved_and_reloaded(tmp_path: Path) -> None:
    model = _randomise_norms(lambdanet.create_model("lambda_net_tiny", num_classes=4))
    program = export_program(model, (3, 32, 32))
    path = save_program(program, tmp_path / "tiny.pt2")
    reloaded = load_program(path).module()
    assert model.training is False and all(
        layer.algorithm == "auto" for layer in model.modules() if isinstance(layer, LambdaLayer)
    )
    for shape in [(2, 3, 32, 32), (1, 3, 20, 28), (4, 3, 48, 48)]:
        x = torch.randn(shape)
        with torch.no_grad():
            _assert_float32_close(reloaded(x), model(x))


def test_torch_export_global_model_and_errors(tmp_path: Path) -> None:
    model = _tiny_global()
    reloaded = load_program(save_program(export_program(model, (3, 16, 16), batch=3), tmp_path / "g.pt2")).module()
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        _assert_float32_close(reloaded(x), model(x))
    with pytest.raises(ValueError, match="input_size"):
        export_program(model, (3, 16))
    with pytest.raises(ValueError, match="batch=1"):
        export_program(model, (3, 16, 16), batch=1)
    with pytest.raises(ValueError, match="algorithm='nope'"):
        export_program(model, (3, 16, 16), algorithm="nope")
    with pytest.raises(ValueError, match="does not exist"):
        load_program(tmp_path / "missing.pt2")


def test_cli_torch_export_with_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = _randomise_norms(lambdanet.create_model("lambda_net_tiny"))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    out = tmp_path / "tiny.pt2"
    args = ["export", "lambda_net_tiny", "--output", str(out)]  # no --format: .pt2 means torch-export
    args += ["--checkpoint", str(tmp_path / "weights.pt"), "--input-size", "3", "16", "16", "--static-spatial"]
    assert cli(args) == 0
    assert "(torch-export, dynamic batch)" in capsys.readouterr().out
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        _assert_float32_close(load_program(out).module()(x), model(x))
    assert cli(args) == 2  # an existing output is kept unless --force
    assert "exists; pass --force to overwrite it" in capsys.readouterr().err
    assert cli(["export", "lambda_net_tiny", "--format", "onnx", "--output", str(out), "--checkpoint", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_cli_refuses_language_models_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli(["export", "lambda_lm_tiny", "--format", "onnx", "--output", str(tmp_path / "lm.onnx")]) == 2
    err = capsys.readouterr().err
    assert "model='lambda_lm_tiny' is a language model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "lm.onnx").exists()


def test_onnx_from_a_checkpoint_takes_its_size_and_carries_its_metadata(tmp_path: Path) -> None:
    from lambdanet.checkpoint import seal
    from lambdanet.interop import onnx_metadata

    model = _randomise_norms(lambdanet.create_model("lambda_net_tiny", in_chans=1, num_classes=3))
    meta = {"model_name": "lambda_net_tiny", "model_overrides": {"in_chans": 1, "num_classes": 3}}
    meta.update({"classes": ["a", "b", "c"], "mean": [0.3], "std": [0.4], "input_size": [1, 12, 12], "crop_pct": None})
    state = {"model." + k: v for k, v in model.state_dict().items()}
    torch.save(seal({"lambdanet": meta, "state_dict": state}), tmp_path / "run.ckpt")
    out = tmp_path / "tiny.onnx"
    args = ["export", "lambda_net_tiny", "--format", "onnx", "--output", str(out), "--checkpoint"]
    assert cli([*args, str(tmp_path / "run.ckpt"), "--static-spatial"]) == 0  # no --input-size: (1, 12, 12)
    import onnx

    dims = [d.dim_param or d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [1, 12, 12]
    stored = onnx_metadata(out)
    assert stored["model_name"] == "lambda_net_tiny" and stored["model_overrides"] == {"in_chans": 1, "num_classes": 3}
    assert {k: stored[k] for k in ("classes", "mean", "std", "input_size", "crop_pct")} == {
        k: meta[k] for k in ("classes", "mean", "std", "input_size", "crop_pct")
    }
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        _assert_float32_close(onnx_forward(out, x), model(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lambda_resnet50", "lambda_resnet18_cifar", "lambda_mobilenet_v1_cifar_3"])
def test_onnx_registered_models(tmp_path: Path, name: str) -> None:
    model = lambdanet.create_model(name)
    size = lambdanet.model_info(name).input_size
    calibrate_batchnorm(model, torch.randn(2, *size))  # random running statistics blow deep lambda networks up
    path = export_onnx(model, tmp_path / f"{name}.onnx", size)
    for shape in [(1, *size), (2, size[0], size[1] + 32, size[2] - 16)]:
        x = torch.randn(shape)
        with torch.no_grad():
            _assert_float32_close(onnx_forward(path, x), model(x))


def test_fft_algorithm_with_dynamic_size_refused_in_one_line() -> None:
    """fft specialises on the map size: a ValueError naming the way out, not torch.export's constraint report."""
    model = lambdanet.create_model("lambda_net_tiny")
    with pytest.raises(ValueError, match=r"algorithm='fft' cannot keep height and width dynamic") as info:
        export_program(model, (3, 16, 16), algorithm="fft", dynamic_spatial=True)
    assert "\n" not in str(info.value)


def test_blocked_algorithm_with_dynamic_size_refused_by_onnx(tmp_path: Path) -> None:
    """Its dynamic-size ONNX graph was written but failed in onnxruntime for every input, the example's included."""
    model = lambdanet.create_model("lambda_net_tiny")
    with pytest.raises(ValueError, match=r"algorithm='blocked' does not export to ONNX with dynamic height and width"):
        export_onnx(model, tmp_path / "blocked.onnx", (3, 16, 16), algorithm="blocked", dynamic_spatial=True)
    assert not (tmp_path / "blocked.onnx").exists()


@pytest.mark.slow
def test_fft_algorithm_refused_by_onnx_in_one_line(tmp_path: Path) -> None:
    """ONNX has no complex FFT operators: a ValueError, not the exporter's ConversionError traceback (~15 s)."""
    model = lambdanet.create_model("lambda_net_tiny")
    with pytest.raises(ValueError, match=r"ONNX cannot express this model with algorithm='fft'") as info:
        export_onnx(model, tmp_path / "fft.onnx", (3, 16, 16), algorithm="fft")
    assert "\n" not in str(info.value)
