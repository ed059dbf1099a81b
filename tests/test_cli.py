"""The command-line entry point and the layer demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lambdanet
from lambdanet.cli import main


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("demo", "train", "models"):
        assert command in out


def test_help_does_not_import_torch_and_public_names_load_on_use() -> None:
    code = (
        "import sys; from lambdanet.cli import main; main(['--help']); assert 'torch' not in sys.modules, 'torch';"
        "import lambdanet; from lambdanet import LambdaLayer; assert lambdanet.LambdaLayer is LambdaLayer;"
        "assert lambdanet.layers.LambdaLayer is LambdaLayer and callable(lambdanet.create_model);"
        "assert set(lambdanet.__all__) <= set(dir(lambdanet))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = lambdanet.nope


def test_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_demo_runs_and_reports_exact_algorithms(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    from lambdanet.cli import demo

    monkeypatch.setattr(demo, "SHAPES", [((2, 16, 7, 7), 5), ((1, 8, 6, 6), None)])
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("(")]
    assert len(rows) == 2
    for row in rows:
        assert float(row.split()[-3]) < 1e-5  # max relative difference between algorithms


def test_readme_model_table_lists_every_registered_model() -> None:
    """The README's table is `lambdanet models --format markdown`; regenerate it when a model is added."""
    from pathlib import Path

    import lambdanet

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("<!-- models-table")[1].split("<!-- /models-table -->")[0]
    missing = [name for name in lambdanet.list_models() if f"`{name}`" not in table]
    assert not missing, f"README model table lacks {missing}; run `lambdanet models --format markdown`"


# ----------------------------------------------------------------------------------------------- eval, export, bench


def _checkpoint(path: Path) -> Path:
    """A lambdanet checkpoint of an untrained lambda_net_tiny for the digits recipe (the layout `convert` writes)."""
    import torch

    import lambdanet
    from lambdanet.train.config import load_config, to_dict

    overrides = {"in_chans": 1, "num_classes": 10}
    model = lambdanet.create_model("lambda_net_tiny", **overrides)
    meta = {"model_name": "lambda_net_tiny", "model_overrides": overrides, "num_classes": 10}
    meta["config"] = to_dict(load_config("digits_tiny"))
    torch.save({"lambdanet": meta, "state_dict": {"model." + k: v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.mark.parametrize("command", ["eval", "export", "convert"])
def test_help_lists_keys_with_docs(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    flat = " ".join(capsys.readouterr().out.split())
    expected = {
        "eval": ["--max_batches MAX_BATCHES stop after this many batches. (type: int | null", "--data.batch_size"],
        "export": ["--format FORMAT `onnx` or `torch-export`", "--force {true,false} overwrite", "--input_size"],
        "convert": ["--data_root DATA_ROOT image-folder root", "--force {true,false} overwrite"],
    }[command]
    for text in expected:
        assert text in flat


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-batches", "0"], "max_batches=0 must be >= 1"),
        (["--batch-size", "0"], "batch_size=0 must be >= 1"),
        (["--num-workers", "-1"], "num_workers=-1 must be >= 0"),
        (["--split", "dev"], "split=dev: expected one of 'test', 'val', 'train'"),
        (["--data.batch_size", "0"], "data.batch_size=0 must be >= 1"),
        (["--data.nam", "cifar10"], "unknown key 'data.nam'; did you mean data.name"),
        (["--device", "tpu:x"], "device='tpu:x' is not a torch device"),
        (["--data.root", "~/data/cifar"], "data.root='~/data/cifar' is not used by data.name='digits'"),
    ],
)
def test_eval_option_errors_are_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _checkpoint(tmp_path / "tiny.ckpt")
    assert main(["eval", str(ckpt), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lambdanet eval: error: ") and err.count("\n") == 1
    assert message in err


def test_eval_cuda_without_cuda_and_json_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    ckpt = _checkpoint(tmp_path / "tiny.ckpt")
    if not torch.cuda.is_available():
        assert main(["eval", str(ckpt), "--device", "cuda"]) == 2
        assert "device='cuda' but CUDA is not available" in capsys.readouterr().err
    assert main(["eval", "--data.batch_size", "0", str(ckpt)]) == 2  # the checkpoint may follow a --data option
    assert "data.batch_size=0 must be >= 1" in capsys.readouterr().err
    result = tmp_path / "new" / "folder" / "result.json"
    assert main(["eval", str(ckpt), "--max-batches", "1", "--batch-size", "8", "--json", str(result)]) == 0
    assert json.loads(result.read_text())["images"] == 8
    (tmp_path / "file").write_text("")
    bad = tmp_path / "file" / "result.json"  # parent is a file: the write fails
    capsys.readouterr()
    assert main(["eval", str(ckpt), "--max-batches", "1", "--batch-size", "8", "--json", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "cannot be written" in err[0]


def test_bench_config_file_and_command_line_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lambdanet.cli.bench import _parse

    root = Path(__file__).resolve().parents[1]
    output, cfg = _parse("layer", ["--config", str(root / "configs/bench/layer_cpu.yaml"), "--dim", "32", "--no-peak"])
    assert (cfg.sides, cfg.dim_k, cfg.budget_s, output.threads) == ([8, 16, 24, 32, 48, 64, 96], 16, 6.0, 2)
    assert (cfg.dim, cfg.measure_peak) == (32, False)  # the command line wins over the file
    output, cfg = _parse("model", ["--config", str(root / "configs/bench/model_cpu.yaml"), "--no-infer", "--peak"])
    assert cfg.models == ("resnet50", "lambda_resnet50", "lambda_resnet50:placement=CCLL")
    assert (cfg.image_size, cfg.infer, cfg.train, cfg.measure_peak) == (224, False, True, True)
    bad = tmp_path / "bad.yaml"
    bad.write_text("command: layer\ndim: [1\n")
    assert main(["bench", "layer", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not valid YAML" in err
    assert main(["bench", "model", "--batch", "0", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "lambdanet bench model: error: batch=0 must be >= 1\n"
