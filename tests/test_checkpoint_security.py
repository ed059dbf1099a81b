"""Checkpoint files never run code, and damaged or poisoned ones are refused, through every loading entry point.

A crafted pickle (an object whose ``__reduce__`` calls ``exec`` to create a marker file) is put inside a training
checkpoint and inside a plain state dict; no entry point may create the marker, and each says why in one line.
"""

from __future__ import annotations

import builtins
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

import lambdanet
from lambdanet.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_checkpoint_into,
    read_checkpoint,
    remove_stray_temp_files,
    seal,
    state_dict_sha256,
)
from lambdanet.cli import main as cli
from lambdanet.train.callbacks import AtomicCheckpointIO, FiniteModelCheckpoint
from lambdanet.train.config import load_config, to_dict

TINY = {"in_chans": 3, "widths": [8, 16], "lambda_stages": [1], "stem_chs": 8, "dim_k": 4, "heads": 2, "scope": 3}


class Payload:
    """Creates ``marker`` when unpickled: what a malicious checkpoint would do with a real command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _training_checkpoint(model: nn.Module | None = None) -> dict[str, Any]:
    """A lambdanet training checkpoint as ``lambdanet train`` writes it (metadata and model. keys)."""
    model = model or lambdanet.create_model("lambda_net_tiny", num_classes=4, **TINY)
    state = {"model." + k: v for k, v in model.state_dict().items()}
    cfg = load_config(
        "synthetic_smoke",
        {
            "model": {"name": "lambda_net_tiny", "overrides": dict(TINY)},
            "data": {"name": "synthetic", "num_classes": 4, "image_size": 8, "synthetic_samples": 16},
            "system": {"progress_bar": False},
        },
    )
    meta = {"model_name": "lambda_net_tiny", "model_overrides": dict(model.model_overrides), "config": to_dict(cfg)}
    meta.update({"num_classes": 4, "mean": [0.5], "std": [0.25], "input_size": [3, 8, 8], "crop_pct": None})
    return seal({"lambdanet": meta, "state_dict": state, "epoch": 0})


@pytest.fixture
def evil_files(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    marker = tmp_path / "PWNED"
    ckpt = _training_checkpoint()
    ckpt["note"] = Payload(marker)
    torch.save(ckpt, tmp_path / "evil_training.ckpt")
    state = dict(lambdanet.create_model("lambda_net_tiny", **TINY).state_dict())
    state["fc.bias"] = Payload(marker)  # type: ignore[assignment]
    torch.save(state, tmp_path / "evil_state.pth")
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    torch.save(ckpt, run / "last.ckpt")
    return marker, {"training": tmp_path / "evil_training.ckpt", "state": tmp_path / "evil_state.pth"}


def _cli_entry_points(path: Path, tmp: Path) -> list[list[str]]:
    from PIL import Image

    image = tmp / "img.png"
    Image.new("RGB", (8, 8)).save(image)
    return [
        ["eval", str(path)],
        ["train", "--resume", str(path)],
        ["train", "--init-from", str(path), "--system.out_dir", str(tmp / "runs"), "--system.progress_bar", "false"],
        ["convert", str(path), str(tmp / "out.ckpt"), "--model", "lambda_net_tiny"],
        ["export", "lambda_net_tiny", "--format", "onnx", "--output", str(tmp / "x.onnx"), "--checkpoint", str(path)],
        ["predict", str(path), str(image)],
    ]


def _python_entry_points(path: Path) -> list[Callable[[], Any]]:
    return [
        lambda: lambdanet.create_model("lambda_net_tiny", checkpoint=path),
        lambda: lambdanet.load_for_inference(path),
        lambda: read_checkpoint(path),
        lambda: load_checkpoint(path),
        lambda: load_checkpoint_into(lambdanet.create_model("lambda_net_tiny", **TINY), path, fresh_head=True),
        lambda: AtomicCheckpointIO().load_checkpoint(path),
    ]


@pytest.mark.parametrize("kind", ["training", "state"])
def test_no_entry_point_runs_a_crafted_pickle(
    kind: str, evil_files: tuple[Path, dict[str, Path]], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker, files = evil_files
    path = files[kind]
    for args in [*_cli_entry_points(path, tmp_path), ["train", "--resume", str(tmp_path / "run")]]:
        capsys.readouterr()
        assert cli(args) == 2, args
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, (args, err)
        assert "safe loader refuses" in err and "--unsafe-load" in err, (args, err)
        assert not marker.exists(), args
    for call in _python_entry_points(path):
        with pytest.raises(CheckpointError, match=r"holds (builtins\.)?exec, which the safe loader refuses") as info:
            call()
        assert "\n" not in str(info.value) and path.name in str(info.value)
        assert not marker.exists()


def test_unsafe_load_is_an_explicit_opt_in_that_says_what_it_risks(evil_files: tuple[Path, dict[str, Path]]) -> None:
    marker, files = evil_files
    with pytest.warns(UserWarning, match="can run arbitrary code"):
        ckpt = read_checkpoint(files["training"], allow_pickle=True)
    assert marker.exists()  # the opt-in really is the full unpickler
    assert ckpt.kind == "lambdanet"


def test_numpy_scalars_are_allowed(tmp_path: Path) -> None:
    import numpy as np

    state = lambdanet.create_model("lambda_net_tiny", **TINY).state_dict()
    torch.save({"state_dict": dict(state), "best_acc1": np.float64(78.2), "epoch": 3}, tmp_path / "np.pth")
    ckpt = read_checkpoint(tmp_path / "np.pth")
    assert ckpt.kind == "state_dict" and ckpt.extra["epoch"] == 3


# ---------------------------------------------------------------------------------------------- integrity
def _flip_tensor_bytes(path: Path, tensor: torch.Tensor) -> None:
    """Flip one bit inside ``tensor``'s stored bytes (the zip reader checks no CRC)."""
    data = bytearray(path.read_bytes())
    needle = tensor.contiguous().numpy().tobytes()
    at = data.find(needle)
    assert at >= 0 and data.find(needle, at + 1) < 0
    data[at + 5] ^= 0x10
    path.write_bytes(bytes(data))


def test_bit_flipped_checkpoint_is_refused_with_its_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = lambdanet.create_model("lambda_net_tiny", num_classes=4, **TINY)
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([0.125, -3.5, 7.25, 1e-3]))
    path = tmp_path / "best.ckpt"
    ckpt = _training_checkpoint(model)
    torch.save(ckpt, path)
    assert ckpt["lambdanet"]["state_dict_sha256"] == state_dict_sha256(ckpt["state_dict"])
    read_checkpoint(path)  # intact: loads
    _flip_tensor_bytes(path, model.fc.bias.detach())
    assert not torch.equal(torch.load(path, weights_only=True)["state_dict"]["model.fc.bias"], model.fc.bias)
    for call in (
        lambda: read_checkpoint(path),
        lambda: load_checkpoint(path),
        lambda: lambdanet.load_for_inference(path),
    ):
        with pytest.raises(CheckpointError, match=rf"{path}.* is damaged"):
            call()
    capsys.readouterr()
    assert cli(["eval", str(path)]) == 2
    assert "is damaged" in capsys.readouterr().err
    # the same for a pretrained directory (safetensors stores no checksum of its own)
    out = lambdanet.save_pretrained(model, tmp_path / "pre")
    _flip_tensor_bytes(out / "model.safetensors", model.fc.bias.detach())
    with pytest.raises(CheckpointError, match=r"model\.safetensors is damaged"):
        lambdanet.create_model("lambda_net_tiny", pretrained=out)


def test_non_finite_weights_are_refused(tmp_path: Path) -> None:
    model = lambdanet.create_model("lambda_net_tiny", num_classes=4, **TINY)
    state = dict(model.state_dict())
    key = next(k for k in state if k.endswith("running_var"))
    state[key] = state[key].clone()
    state[key][0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=rf"NaN or Inf in .*{key}"):
        lambdanet.create_model("lambda_net_tiny", checkpoint=tmp_path / "nan.pth", num_classes=4, **TINY)


# ---------------------------------------------------------------------------------------------- finite guard
class _Module(nn.Module):
    """What the guard sees of a LambdaModule (the model) and of Lightning's EMA callback (the averaged copy)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
        self.ema = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))


def _stub_trainer(module: nn.Module, saved: list[str]) -> Any:
    return SimpleNamespace(
        lightning_module=module.model,
        callbacks=[SimpleNamespace(_average_model=module.ema)],
        save_checkpoint=lambda path, weights_only=False: saved.append(path),
        global_step=3,
        is_global_zero=False,
        loggers=[],
    )


@pytest.mark.parametrize("where", ["parameter", "bn_running_var", "ema_running_mean"])
def test_finite_guard_checks_every_floating_tensor(where: str, tmp_path: Path) -> None:
    callback = FiniteModelCheckpoint(dirpath=tmp_path, filename="last")
    module, saved = _Module(), []
    callback._save_checkpoint(_stub_trainer(module, saved), str(tmp_path / "last.ckpt"))
    assert saved == [str(tmp_path / "last.ckpt")]  # finite: written
    with torch.no_grad():
        if where == "parameter":
            module.model[0].weight[0, 0, 0, 0] = float("nan")
        elif where == "bn_running_var":
            module.model[1].running_var[1] = float("inf")
        else:
            module.ema[1].running_mean[0] = float("nan")
    with pytest.warns(UserWarning, match=r"not saving .*last2\.ckpt: NaN or Inf in (average\.)?[01]\."):
        callback._save_checkpoint(_stub_trainer(module, saved), str(tmp_path / "last2.ckpt"))
    assert saved == [str(tmp_path / "last.ckpt")]


def test_stray_temp_files_are_removed(tmp_path: Path) -> None:
    for name in (".last.ckpt.4242.tmp", ".best.ckpt.7.tmp", "notes.tmp", "last.ckpt"):
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stray_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == [".best.ckpt.7.tmp", ".last.ckpt.4242.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "notes.tmp"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert remove_stray_temp_files(tmp_path / "missing") == []
