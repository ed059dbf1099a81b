"""Inference and fine-tuning, the way a newcomer uses them: train on an image folder, predict, fine-tune, share.

The walk-through trains ``lambda_net_tiny`` with the default recipe on a folder of 16x16 RGB images in three
classes a test makes (solid colours with stripes and noise), then asks ``lambdanet predict`` for labels.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

import lambdanet
from lambdanet.checkpoint import load_checkpoint, state_dict_sha256
from lambdanet.cli import main as cli
from lambdanet.data.transforms import EvalTransform

CLASSES = ["blue", "green", "red"]
_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def _image_folder(root: Path, classes: list[str], per_class: int = 10, seed: int = 0) -> Path:
    """``root/{train,val}/<class>/<i>.png``: 16x16 RGB, the class colour with class-specific stripes and noise."""
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                img = torch.tensor(_COLOURS[name], dtype=torch.float32).view(3, 1, 1).expand(3, 16, 16).clone()
                if c == 0:
                    img[:, ::4] *= 0.6  # horizontal stripes
                elif c == 1:
                    img[:, :, ::4] *= 0.6  # vertical stripes
                img += torch.randn(3, 16, 16, generator=gen) * 20
                pixels = img.clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _train_args(root: Path, out: Path, name: str, epochs: int) -> list[str]:
    return [
        "train",
        "--data.name", "imagefolder",
        "--data.root", str(root),
        "--data.image_size", "16",
        "--data.batch_size", "8",
        "--train.epochs", str(epochs),
        "--system.out_dir", str(out),
        "--system.run_name", name,
        "--system.progress_bar", "false",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(image folder, run directory) of the walk-through: 5 epochs of the default recipe."""
    tmp = tmp_path_factory.mktemp("walk")
    root = _image_folder(tmp / "images", CLASSES)
    stray = tmp / "runs" / "walk" / "checkpoints" / ".last.ckpt.99999.tmp"  # left by a killed write
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"half a checkpoint")
    assert cli(_train_args(root, tmp / "runs", "walk", epochs=5)) == 0
    assert not stray.exists()
    return root, tmp / "runs" / "walk"


def test_walkthrough_predict_json_names_the_classes_and_beats_chance(
    trained_run: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    root, run = trained_run
    images = sorted((root / "val").glob("*/*.png"))
    capsys.readouterr()
    assert cli(["predict", str(run / "checkpoints" / "best.ckpt"), *map(str, images), "--json", "--topk", "3"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in results] == [str(p) for p in images]
    for r in results:
        assert sorted(t["label"] for t in r["top"]) == CLASSES
        assert [t["label"] for t in r["top"]] == [CLASSES[t["index"]] for t in r["top"]]
        probs = [t["prob"] for t in r["top"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)
    correct = sum(r["top"][0]["label"] == Path(r["path"]).parent.name for r in results)
    assert correct / len(results) >= 0.8  # chance: 1/3
    # Lightning's checkpoint passes the safe loader and carries its checksum and inference metadata
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["lambdanet"]["state_dict_sha256"] == state_dict_sha256(ckpt["state_dict"])
    assert ckpt["lambdanet"]["classes"] == CLASSES and ckpt["lambdanet"]["input_size"] == [3, 16, 16]
    # the Python path gives the same answer, from the run directory
    model, transform, classes = lambdanet.load_for_inference(run)
    assert classes == CLASSES
    assert transform == EvalTransform((3, 16, 16), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.875)
    with torch.no_grad():
        probs = model(transform(images[0]).unsqueeze(0)).softmax(dim=1)[0]
    assert probs[results[0]["top"][0]["index"]].item() == pytest.approx(results[0]["top"][0]["prob"], abs=1e-6)
    # text output: one line per image, the best label first
    assert cli(["predict", str(run), str(images[0]), "--topk", "1"]) == 0
    assert capsys.readouterr().out.strip() == f"{images[0]}: {results[0]['top'][0]['label']} {probs.max():.4f}"


def test_predict_bad_input_is_one_line_and_exit_2(
    trained_run: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    root, run = trained_run
    image = str(next((root / "val").glob("*/*.png")))
    not_image = root / "notes.txt"
    not_image.write_text("hello")
    cases = [
        ([str(run), str(root / "missing.png")], "missing.png"),
        ([str(run), str(not_image)], "notes.txt"),
        ([str(run), image, "--topk", "4"], "--topk 4"),
        ([str(root / "nowhere.ckpt"), image], "nowhere.ckpt"),
        ([str(root), image], "neither a pretrained directory"),
        ([str(run), image, "--device", "nonsense"], "device='nonsense' is not a torch device"),
        ([str(run), image, "--device", f"cuda:{torch.cuda.device_count()}"], "device(s); use cpu"),
    ]
    for args, needle in cases:
        capsys.readouterr()
        assert cli(["predict", *args]) == 2, args
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and needle in err, err


def test_init_from_another_class_count_drops_the_head(
    trained_run: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from lambdanet.checkpoint import read_checkpoint
    from lambdanet.data.loader import CLASSIFICATION, DataInfo
    from lambdanet.train.config import load_config
    from lambdanet.train.module import build_model

    def images(num_classes: int, in_chans: int = 3) -> DataInfo:
        return DataInfo(CLASSIFICATION, num_classes, (in_chans, 16, 16))

    _, run = trained_run
    source = read_checkpoint(run / "checkpoints" / "best.ckpt").state_dict
    cfg = load_config(None, {"train": {"init_from": str(run)}})
    with caplog.at_level(logging.WARNING, logger="lambdanet.checkpoint"):
        model = build_model(cfg, images(2))
    message = [r.getMessage() for r in caplog.records if "classifier head" in r.getMessage()]
    assert len(message) == 1 and "fc.weight [3, " in message[0] and "-> [2, " in message[0]
    for k, v in model.state_dict().items():
        if k.startswith("fc."):
            assert v.shape[0] == 2
        else:
            assert torch.equal(v, source[k]), k
    # same class count: everything is loaded, nothing dropped
    caplog.clear()
    same = build_model(cfg, images(3))
    assert all(torch.equal(v, source[k]) for k, v in same.state_dict().items())
    assert not [r for r in caplog.records if "classifier head" in r.getMessage()]
    # the CLI: fine-tune on a two-class folder for one epoch
    two = _image_folder(tmp_path / "two", ["blue", "red"], per_class=4, seed=1)
    args = _train_args(two, tmp_path / "runs", "ft", epochs=1)
    assert cli([*args, "--init-from", str(run / "checkpoints" / "best.ckpt"), "--train.test_after_fit", "false"]) == 0
    _, _, classes = lambdanet.load_for_inference(tmp_path / "runs" / "ft")
    assert classes == ["blue", "red"]
    # a mismatch outside the head is refused with the keys named
    wide = load_config(None, {"train": {"init_from": str(run)}})
    with pytest.raises(ValueError, match=r"stem"):
        build_model(wide, images(3, in_chans=1))


def test_save_pretrained_round_trip_and_hub_errors(trained_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = trained_run
    model, transform, classes = lambdanet.load_for_inference(run)
    out = lambdanet.save_pretrained(model, tmp_path / "hub")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_name"] == "lambda_net_tiny" and config["classes"] == CLASSES
    again = lambdanet.create_model("lambda_net_tiny", pretrained=out).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert lambdanet.load_for_inference(out)[1:] == (transform, classes)
    with pytest.raises(ValueError, match="holds model 'lambda_net_tiny'"):
        lambdanet.create_model("resnet18_cifar", pretrained=out)
    with pytest.raises(ValueError, match="publishes no default weights"):
        lambdanet.create_model("lambda_net_tiny", pretrained=True)
    with pytest.raises(ValueError, match="not a pretrained directory"):
        lambdanet.create_model("lambda_net_tiny", pretrained=tmp_path)


def test_hub_id_offline_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read when huggingface_hub was imported
    with pytest.raises(
        ValueError,
        match=r"'lambdanet-tests/no-such-model' is no local path, and fetching it from the Hugging Face Hub failed",
    ) as info:
        lambdanet.create_model("lambda_net_tiny", pretrained="lambdanet-tests/no-such-model")
    assert "\n" not in str(info.value)


def test_eval_transform_reproduces_the_evaluation_pipeline(trained_run: tuple[Path, Path], tmp_path: Path) -> None:
    """On images of the training size, EvalTransform built from the stored metadata gives the very tensors the
    run evaluated: digits (greyscale array data, plain resize) and an image folder (resize and centre crop)."""
    from PIL import Image

    from lambdanet.data.loader import DataConfig, build_splits
    from lambdanet.inference import inference_metadata

    digits = DataConfig(name="digits", val_fraction=0.1)
    splits = build_splits(digits)
    meta = inference_metadata(digits, splits.classes)
    assert meta["classes"] == [str(i) for i in range(10)] and meta["input_size"] == [1, 8, 8]
    transform = EvalTransform.from_metadata(meta)
    for i in (0, 17, 101):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(splits.test.base.images[i, 0].numpy(), mode="L").save(path)
        assert torch.equal(transform(path), splits.test[i][0])
    root, _ = trained_run
    folder = DataConfig(name="imagefolder", root=str(root), image_size=16)
    splits = build_splits(folder)
    transform = EvalTransform.from_metadata(inference_metadata(folder, splits.classes))
    for i in (0, 11, 29):
        path, _ = splits.val.base.samples[i]
        assert torch.equal(transform(path), splits.val[i][0])
