"""Interop: the published d-li14 Lambda-ResNet-50 checkpoint (conformance fixture), strict loading, lambda-networks.

Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602; fixture procedure in tests/fixtures/README.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lambdanet
from lambdanet.checkpoint import seal, state_dict_sha256
from lambdanet.interop import (
    CheckpointMismatchError,
    convert_dli_state_dict,
    from_lucidrains,
    load_checkpoint_into,
    read_checkpoint,
)
from tests.fixtures.deterministic_weights import calibrate_batchnorm, deterministic_state_dict, fixture_input

FIXTURE = Path(__file__).parent / "fixtures" / "dli14_lambda_resnet50"
TENSORS = json.loads((FIXTURE / "tensors.json").read_text())
CASES = json.loads((FIXTURE / "logits.json").read_text())["cases"]


def _published_file(path: Path, state: dict[str, torch.Tensor], prefix: str = "module.") -> Path:
    """A checkpoint laid out as the published one: DDP-prefixed ``state_dict`` next to its training metadata."""
    sgd = {"state": {}, "param_groups": [{"lr": 0.0, "momentum": 0.9, "params": []}]}
    blob = {"epoch": 130, "arch": "lambda_resnet50", "state_dict": {prefix + k: v for k, v in state.items()}}
    torch.save({**blob, "best_acc1": torch.tensor(78.208), "optimizer": sgd}, path)
    return path


@pytest.fixture(scope="module")
def published_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = deterministic_state_dict(TENSORS["tensors"])
    return _published_file(tmp_path_factory.mktemp("dli") / "model_best.pth.tar", state)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c["input_shape"])))
def test_published_checkpoint_matches_fixture_logits(published_checkpoint: Path, case: dict) -> None:
    model = lambdanet.create_model("lambda_resnet50", checkpoint=published_checkpoint)
    assert sum(p.numel() for p in model.parameters()) == TENSORS["parameters"] == 14_995_848
    model.double()
    x = fixture_input(tuple(case["input_shape"]), case["input_seed"]).double()
    calibrate_batchnorm(model, x)
    with torch.no_grad():
        logits = model(x)
    ref = torch.tensor(case["logits"], dtype=torch.float64)
    assert logits.shape == ref.shape
    rel = (logits - ref).norm() / ref.norm()
    assert rel < 1e-9, f"relative error {rel:.3e}"


def test_state_dict_order_and_names_follow_the_published_file() -> None:
    converted = convert_dli_state_dict(deterministic_state_dict(TENSORS["tensors"]))
    model = lambdanet.create_model("lambda_resnet50", position_bias=True)
    assert list(converted) == list(model.state_dict())
    assert converted["layer1.0.conv2.pos.weight"].shape == (16, 1, 23, 23)
    assert converted["layer4.2.conv2.pos.bias"].shape == (16,)


def test_checkpoint_without_prefix_and_implied_position_bias(tmp_path: Path) -> None:
    model = lambdanet.create_model("lambda_resnet50", position_bias=True, layers=(1, 1, 1, 1), num_classes=7)
    path = _published_file(tmp_path / "plain.pth", _dli_names(model.state_dict()), prefix="")
    ckpt = read_checkpoint(path)
    assert ckpt.kind == "dli"
    assert ckpt.overrides == {"position_bias": True}
    assert ckpt.extra == {"epoch": 130, "arch": "lambda_resnet50"}
    loaded = lambdanet.create_model("lambda_resnet50", checkpoint=path, layers=(1, 1, 1, 1), num_classes=7)
    assert loaded.model_overrides == {"position_bias": True, "layers": (1, 1, 1, 1), "num_classes": 7}
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_mismatched_checkpoint_reports_keys_by_name(tmp_path: Path) -> None:
    state = deterministic_state_dict(TENSORS["tensors"])
    del state["layer2.1.conv2.norm_v.running_var"]
    state["layer1.0.conv2.extra.weight"] = torch.zeros(3)
    state["fc.weight"] = torch.zeros(10, 2048)
    path = _published_file(tmp_path / "broken.pth", state)
    with pytest.raises(CheckpointMismatchError) as info:
        lambdanet.create_model("lambda_resnet50", checkpoint=path)
    err = info.value
    assert err.missing == ["layer2.1.conv2.norm_v.running_var"]
    assert err.unexpected == ["layer1.0.conv2.extra.weight"]
    assert err.mismatched == [("fc.weight", (10, 2048), (1000, 2048))]
    for name in ("broken.pth", "layer2.1.conv2.norm_v.running_var", "layer1.0.conv2.extra.weight", "fc.weight"):
        assert name in str(err)


def test_checkpoint_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nowhere\.pth"):
        lambdanet.create_model("lambda_net_tiny", checkpoint=tmp_path / "nowhere.pth")
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pth"):
        lambdanet.create_model("lambda_net_tiny", checkpoint=bad)
    listy = tmp_path / "list.pth"
    torch.save([1, 2], listy)
    with pytest.raises(ValueError, match="holds no state dict"):
        read_checkpoint(listy)
    # a lambda_net_tiny state dict does not fit resnet50_cifar: every key is reported
    torch.save(lambdanet.create_model("lambda_net_tiny").state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(CheckpointMismatchError, match="missing key"):
        lambdanet.create_model("resnet18_cifar", checkpoint=tmp_path / "tiny.pt")


def test_lambdanet_checkpoint_round_trip_and_wrong_model(tmp_path: Path) -> None:
    model = lambdanet.create_model("lambda_net_tiny", num_classes=5)
    state = {"model." + k: v for k, v in model.state_dict().items()}
    meta = {"model_name": "lambda_net_tiny", "model_overrides": {"num_classes": 5}}
    torch.save({"lambdanet": meta, "state_dict": state}, tmp_path / "run.ckpt")
    loaded = lambdanet.create_model("lambda_net_tiny", checkpoint=tmp_path / "run.ckpt")
    assert loaded.model_overrides == {"num_classes": 5}
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model.eval()(x))
    with pytest.raises(ValueError, match="holds model 'lambda_net_tiny'"):
        lambdanet.create_model("resnet18_cifar", checkpoint=tmp_path / "run.ckpt")
    fresh = lambdanet.create_model("lambda_net_tiny", num_classes=5)
    load_checkpoint_into(fresh, tmp_path / "run.ckpt")
    assert torch.equal(fresh.fc.weight, model.fc.weight)
    with pytest.raises(ValueError, match=r"run\.ckpt has no EMA weights"):
        lambdanet.create_model("lambda_net_tiny", checkpoint=tmp_path / "run.ckpt", weights="ema")


def test_lambdanet_checkpoint_with_ema_loads_the_ema_copy(tmp_path: Path) -> None:
    raw = lambdanet.create_model("lambda_net_tiny", num_classes=5)
    ema = lambdanet.create_model("lambda_net_tiny", num_classes=5)  # other random weights
    state = {"model." + k: v for k, v in ema.state_dict().items()}  # Lightning's EMA: state_dict is the average
    trained = {"model." + k: v for k, v in raw.state_dict().items()}
    meta = {"model_name": "lambda_net_tiny", "model_overrides": {"num_classes": 5}}
    torch.save(seal({"lambdanet": meta, "state_dict": state, "current_model_state": trained}), tmp_path / "ema.ckpt")
    for weights, expected in (("auto", ema), ("ema", ema), ("model", raw)):
        loaded = lambdanet.create_model("lambda_net_tiny", checkpoint=tmp_path / "ema.ckpt", weights=weights)
        for (k, a), b in zip(loaded.state_dict().items(), expected.state_dict().values()):
            assert torch.equal(a, b), (weights, k)
    assert not torch.equal(raw.fc.weight, ema.fc.weight)


# ---------------------------------------------------------------------------------------------- lambda-networks
def _randomise(layer: torch.nn.Module) -> None:
    with torch.no_grad():
        for bn in (layer.norm_q, layer.norm_v):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
        if getattr(layer, "local_contexts", False):
            layer.pos_conv.bias.normal_()


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({"dim": 32, "dim_k": 16, "r": 5, "heads": 4}, (2, 32, 9, 7)),
        ({"dim": 24, "dim_k": 8, "r": 3, "heads": 2, "dim_out": 16, "dim_u": 3}, (3, 24, 6, 6)),
        ({"dim": 16, "dim_k": 4, "n": 6, "heads": 4, "dim_out": 32, "dim_u": 2}, (2, 16, 6, 6)),
        ({"dim": 12, "dim_k": 6, "n": 5, "heads": 1, "dim_u": 1}, (2, 12, 5, 5)),
    ],
    ids=["local-k16-h4-u1", "local-k8-h2-u3", "global-k4-h4-u2", "global-k6-h1-u1"],
)
@pytest.mark.filterwarnings("ignore:torch.meshgrid")
def test_from_lucidrains_same_outputs_train_and_eval(kwargs: dict, shape: tuple[int, ...]) -> None:
    lambda_networks = pytest.importorskip("lambda_networks")  # test dependency (the ``bench`` extra)
    theirs = lambda_networks.LambdaLayer(**kwargs).double()
    _randomise(theirs)
    ours = from_lucidrains(theirs)
    assert ours.scope == kwargs.get("r") and ours.dim_u == kwargs.get("dim_u", 1)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    for training in (True, False):
        theirs.train(training)
        ours.train(training)
        x = torch.randn(shape, dtype=torch.float64)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-10, atol=1e-10)
    # the train-mode pass updated both layers' running statistics alike
    torch.testing.assert_close(ours.norm_v.running_var, theirs.norm_v.running_var)


def test_from_lucidrains_rejects_other_modules() -> None:
    with pytest.raises(ValueError, match=r"not a lambda_networks\.LambdaLayer"):
        from_lucidrains(torch.nn.Conv2d(3, 3, 1))


# ---------------------------------------------------------------------------------------------- lambdanet convert
def _dli_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lambdanet names -> d-li14 names (the inverse of convert_dli_state_dict)."""
    out = {}
    for k, v in state.items():
        k = k.replace(".qkv.", ".conv_qkv.").replace(".pos.", ".lambda_conv.")
        out[k] = v.unsqueeze(2) if k.endswith("lambda_conv.weight") else v
    return out


def test_convert_then_eval_on_an_image_folder(published_checkpoint: Path, tmp_path: Path, capsys) -> None:
    from PIL import Image

    from lambdanet.cli import main as cli

    dst = tmp_path / "converted.ckpt"
    assert cli(["convert", str(published_checkpoint), str(dst)]) == 0
    assert cli(["convert", str(published_checkpoint), str(dst)]) == 2  # exists, no --force
    saved = torch.load(dst, map_location="cpu", weights_only=True)
    assert saved["model_name"] == saved["lambdanet"]["model_name"] == "lambda_resnet50"
    assert saved["model_overrides"] == {"position_bias": True}
    assert saved["lambdanet"]["config"]["data"]["crop_pct"] == 0.875  # ImageNet evaluation: resize 256, crop 224
    assert saved["lambdanet"]["state_dict_sha256"] == state_dict_sha256(saved["state_dict"])
    reference = lambdanet.create_model("lambda_resnet50", checkpoint=published_checkpoint)
    again = lambdanet.create_model("lambda_resnet50", checkpoint=dst)
    for (k, a), b in zip(reference.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    # inference metadata derived from the stored ImageNet recipe
    assert again.pretrained_cfg["input_size"] == [3, 224, 224] and again.pretrained_cfg["crop_pct"] == 0.875
    # lambdanet eval reads it: an ImageNet-style folder with the 1000 classes, one tiny image each
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in range(1000):
            folder = tmp_path / "imagenet" / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            pixels = torch.randint(0, 256, (10, 12, 3), generator=gen, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / "img.png")
    result = tmp_path / "eval.json"
    args = ["eval", str(dst), "--data.root", str(tmp_path / "imagenet"), "--data.image_size", "64", "--split", "val"]
    args += ["--max-batches", "1", "--batch-size", "2", "--data.num_workers", "0"]
    # deterministic weights with random running statistics overflow in this deep net (the fixture calibrates its
    # batch norms in float64): eval refuses to report an accuracy from NaN logits
    capsys.readouterr()
    assert cli([*args, "--json", str(result)]) == 1
    err = capsys.readouterr().err
    assert "NaN or Inf" in err and len(err.strip().splitlines()) == 1 and not result.exists()
