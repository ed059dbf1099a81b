"""Training runs on tiny data: run directory, your own RGB image folder, set-up failures, signals, eval round trip,
non-finite loss, checkpoints."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lambdanet.checkpoint import CheckpointError, load_checkpoint
from lambdanet.cli import eval as cli_eval
from lambdanet.cli import train as cli_train
from lambdanet.models._builder import model_from_weights
from lambdanet.train.callbacks import AtomicCheckpointIO, NonFiniteLossError
from lambdanet.train.config import RunConfig, config_from_dict, load_config
from lambdanet.train.run import fit

TINY_MODEL = {"in_chans": 3, "widths": [8, 16], "lambda_stages": [1], "stem_chs": 8, "dim_k": 4, "heads": 2, "scope": 3}


def tiny_config(tmp_path: Path, **train: Any) -> RunConfig:
    """lambda_net_tiny shrunk to ~3k parameters on 128 synthetic 8x8 images in 4 classes: 8 steps per epoch."""
    overrides = {
        "model": {"name": "lambda_net_tiny", "overrides": dict(TINY_MODEL)},
        "data": {"name": "synthetic", "num_classes": 4, "image_size": 8, "synthetic_samples": 128, "batch_size": 16},
        "optim": {"name": "adamw", "lr": 0.02, "weight_decay": 0.0},
        "train": {"epochs": 2, "log_every_steps": 1, **train},
        "system": {
            "accelerator": "cpu",
            "devices": 1,
            "out_dir": str(tmp_path),
            "run_name": "run",
            "progress_bar": False,
        },
    }
    return load_config("synthetic_smoke", overrides)


def test_fit_writes_the_run_directory_and_eval_reproduces_the_test(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, epochs=3, ema_decay=0.8)
    results = fit(cfg, argv=["--train.epochs", "3"])
    run = tmp_path / "run"
    for name in ("config.yaml", "argv.txt", "env.json", "metrics.csv", "curves.png", "results.json"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "tb").glob("events.out.tfevents*"))
    assert config_from_dict(yaml.safe_load((run / "config.yaml").read_text())) == cfg
    assert json.loads((run / "results.json").read_text())["test/acc1"] == results["test/acc1"]
    assert results["global_step"] == 24
    assert (results["model"], results["data"], results["final_split"]) == ("lambda_net_tiny", "synthetic", "test")
    assert results["test/acc1"] > 0.5  # 4 learnable classes: chance is 0.25
    header = (run / "metrics.csv").read_text().splitlines()[0]
    for column in ("train/loss_step", "val/acc1", "val/acc5", "lr", "train/device/samples_per_sec"):
        assert column in header

    ckpt = load_checkpoint(run / "checkpoints" / "best.ckpt")
    meta = ckpt["lambdanet"]
    assert meta["model_name"] == "lambda_net_tiny"
    assert meta["model_overrides"]["num_classes"] == 4
    raw = ckpt["current_model_state"]  # Lightning's EMA: state_dict holds the average
    assert raw.keys() == ckpt["state_dict"].keys() and ckpt["lambdanet"]["ema"]
    assert any(not torch.equal(raw[k], v) for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    for weights, source in (("model", raw), ("ema", ckpt["state_dict"]), ("auto", ckpt["state_dict"])):
        loaded = model_from_weights(run / "checkpoints" / "best.ckpt", weights=weights).state_dict()
        assert all(torch.equal(v, source[f"model.{k}"]) for k, v in loaded.items()), weights
    out = tmp_path / "eval.json"
    assert cli_eval.main([str(run / "checkpoints" / "best.ckpt"), "--json", str(out)]) == 0
    evaluated = json.loads(out.read_text())
    assert evaluated["top1"] == pytest.approx(results["test/acc1"], abs=1e-6)
    assert evaluated["loss"] == pytest.approx(results["test/loss"], rel=1e-4)
    assert evaluated["images"] == 32
    assert evaluated["images_per_second"] > 0


def test_results_paths_share_one_style_and_a_short_run_says_it_has_no_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(tmp_path, epochs=1)
    cfg.system.out_dir = "runs"  # relative, as by default: every path in results.json is relative too
    results = fit(cfg, argv=[])
    assert results["best_checkpoint"] == results["tested_checkpoint"] == str(Path("runs/run/checkpoints/best.ckpt"))
    assert results["last_checkpoint"] == str(Path("runs/run/checkpoints/last.ckpt"))
    assert results["plot"] == str(Path("runs/run/curves.png"))
    out = capsys.readouterr().out
    assert "no best.ckpt" not in out
    assert f"run directory: {Path('runs/run')} (on 1 cpu device)" in out  # which device, since recipes pin cpu

    cfg = tiny_config(tmp_path, epochs=1, max_steps=2)  # stops before the first validation
    cfg.system.run_name = "short"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = fit(cfg, argv=[])
    assert results["best_checkpoint"] is None and results["tested_checkpoint"] == "final weights"
    assert "no validation before training stopped, so no best.ckpt" in capsys.readouterr().out
    assert not [w for w in caught if "monitored key" in str(w.message)]


def _poison(epoch: int, batch_idx: int) -> Any:
    from lightning.pytorch.callbacks import Callback

    class Poison(Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
            if trainer.current_epoch == epoch and idx == batch_idx:
                batch[0].fill_(float("nan"))

    return Poison()


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, epochs=3)
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss \(nan\) at step 9 \(epoch 1"):
        fit(cfg, callbacks=[_poison(epoch=1, batch_idx=1)])
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 8
    assert last["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_cli_reports_non_finite_loss_without_a_traceback(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    import lambdanet.train.run as run_module

    def diverge(*args: Any, **kwargs: Any) -> None:
        raise NonFiniteLossError("non-finite training loss (nan) at step 7")

    monkeypatch.setattr(run_module, "fit", diverge)
    assert cli_train.main(["--train.epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "non-finite training loss (nan) at step 7" in err
    assert "last good checkpoint" in err
    assert "Traceback" not in err


def test_cli_reports_a_write_failure_without_a_traceback(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    import errno

    import lambdanet.train.run as run_module

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EFBIG, "File too large", "runs/x/checkpoints/.last.ckpt.1.tmp")

    monkeypatch.setattr(run_module, "fit", full)
    assert cli_train.main(["--train.epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "File too large" in err and ".last.ckpt.1.tmp" in err
    assert "last good checkpoint" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2


def test_atomic_checkpoint_write_survives_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"w": torch.ones(3)}, path)

    def crash(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_bad_checkpoints_give_clear_errors(tmp_path: Path, capsys: Any) -> None:
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00\x01 this is not a checkpoint")
    assert cli_eval.main([str(garbage)]) == 2
    err = capsys.readouterr().err
    assert "corrupt or not a PyTorch checkpoint" in err
    assert str(garbage) in err
    assert "Traceback" not in err
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}}, foreign)
    assert cli_eval.main([str(foreign)]) == 2
    assert "not a lambdanet training checkpoint" in capsys.readouterr().err
    assert cli_eval.main([str(tmp_path / "missing.ckpt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, epochs=1, test_after_fit=False)
    fit(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(last)
    ckpt["lambdanet"]["model_overrides"]["widths"] = [8, 32]
    torch.save(ckpt, tmp_path / "edited.ckpt")
    with pytest.raises(CheckpointError, match=r"edited\.ckpt .*do not fit the model"):
        model_from_weights(tmp_path / "edited.ckpt")
    ckpt["lambdanet"]["model_name"] = "no_such_model"
    torch.save(ckpt, tmp_path / "edited.ckpt")
    with pytest.raises(CheckpointError, match="no_such_model"):
        model_from_weights(tmp_path / "edited.ckpt")
    other = tiny_config(tmp_path / "other", epochs=2)
    other.model.overrides["widths"] = [8, 32]
    with pytest.raises(ValueError, match=r"checkpoint holds model 'lambda_net_tiny' with overrides"):
        fit(other, resume=last)


def test_precision_channels_last_accumulation_and_clipping(tmp_path: Path) -> None:
    cfg = tiny_config(
        tmp_path,
        epochs=1,
        precision="bf16-mixed",
        channels_last=True,
        accumulate=2,
        grad_clip=1.0,
        deterministic=True,
        test_after_fit=False,
    )
    cfg.sched.warmup_epochs = 0.5
    results = fit(cfg)
    assert results["global_step"] == 4  # 8 batches, 2 per optimizer step
    import csv

    with open(tmp_path / "run" / "metrics.csv") as f:
        lrs = {int(r["step"]): float(r["lr"]) for r in csv.DictReader(f) if r.get("lr")}
    # 4 optimizer steps per epoch: half an epoch of warm-up is 2 steps, then cosine over the remaining 2
    assert [lrs[s] for s in range(4)] == pytest.approx([0.0, 0.01, 0.02, 0.01])
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_cifar_recipe_trains_end_to_end_on_a_local_archive(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("_cifar_writer", Path(__file__).with_name("test_data_datasets.py"))
    assert spec is not None and spec.loader is not None
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    helpers.write_cifar(tmp_path / "cifar", "cifar10", per_batch=8)
    over = {
        "model": {"name": "lambda_net_tiny", "overrides": dict(TINY_MODEL)},
        "data": {"root": str(tmp_path / "cifar"), "batch_size": 8, "num_workers": 0, "randaugment_layers": 2},
        "train": {"epochs": 1},
        "system": {"accelerator": "cpu", "out_dir": str(tmp_path), "run_name": "cifar", "progress_bar": False},
    }
    cfg = load_config("cifar10_lambda_resnet18", over)
    results = fit(cfg)
    assert results["global_step"] == 5  # 40 training images, batch 8
    assert 0.0 <= results["test/acc1"] <= 1.0
    assert load_checkpoint(tmp_path / "cifar" / "checkpoints" / "last.ckpt")["lambdanet"]["num_classes"] == 10


@pytest.mark.slow
@pytest.mark.compile
def test_compiled_training_keeps_plain_checkpoint_keys(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, epochs=1, compile=True, test_after_fit=False)
    fit(cfg)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert not [k for k in ckpt["state_dict"] if "_orig_mod" in k]
    model_from_weights(tmp_path / "run" / "checkpoints" / "last.ckpt")  # loads into a plain (uncompiled) model


@pytest.mark.slow
def test_default_run_reaches_97_percent_within_3_minutes(tmp_path: Path) -> None:
    """The issue's acceptance test: `lambdanet train` with no recipe arguments (about 20-70 s on 2 cores)."""
    import subprocess
    import sys
    import time

    start = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lambdanet"), "train", "--system.out_dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = tmp_path.iterdir()
    results = json.loads((run / "results.json").read_text())
    assert results["test/acc1"] >= 0.97
    assert seconds < 180
    assert (run / "curves.png").stat().st_size > 10_000


def write_rgb_folder(root: Path, splits: tuple[str, ...] = ("train", "val"), per_class: int = 10) -> Path:
    """3 classes of 16x16 RGB images (a red, a green and a blue square, with noise) in ``root/<split>/<class>/``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for c, name in enumerate(("red", "green", "blue")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                img = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
                img[4:12, 4:12, c] = 220
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


def test_rgb_image_folder_trains_with_the_default_recipe_and_reports_val(tmp_path: Path, capsys: Any) -> None:
    root = write_rgb_folder(tmp_path / "imgs")
    argv = ["--data.name", "imagefolder", "--data.root", str(root), "--data.image_size", "16"]
    argv += ["--system.out_dir", str(tmp_path / "runs"), "--system.progress_bar", "false"]
    assert cli_train.main(argv) == 0  # the default recipe: no in_chans, no num_classes
    out = capsys.readouterr().out
    assert "no test/ split; the final metrics are on val/" in out
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("digits_tiny-lambda_net_tiny-")
    results = json.loads((run / "results.json").read_text())
    assert results["final_split"] == "val" and not [k for k in results if k.startswith("test/")]
    assert 0.0 <= results["val/acc1"] <= 1.0
    meta = load_checkpoint(run / "checkpoints" / "last.ckpt")["lambdanet"]
    assert meta["model_overrides"]["in_chans"] == 3 and meta["model_overrides"]["num_classes"] == 3
    assert meta["classes"] == ["blue", "green", "red"]


def test_set_up_failures_leave_no_run_directory(tmp_path: Path, capsys: Any) -> None:
    root = write_rgb_folder(tmp_path / "imgs", per_class=2)
    out = tmp_path / "runs"
    base = ["--data.name", "imagefolder", "--data.root", str(root), "--system.out_dir", str(out)]
    assert cli_train.main([*base, "--model.overrides.in_chans", "1"]) == 2
    err = capsys.readouterr().err
    assert "model.overrides.in_chans=1 (recipe digits_tiny) but data.name='imagefolder' has image channels: 3" in err
    assert len(err.strip().splitlines()) == 1
    assert cli_train.main(["-c", "cifar10_lambda_resnet18", "--data.root", str(tmp_path / "none"), *base[4:]]) == 2
    assert "Traceback" not in capsys.readouterr().err
    if importlib.util.find_spec("wandb") is None:
        assert cli_train.main([*base, "--system.loggers", "[csv, wandb]"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (
            "lambdanet train: error: system.loggers includes 'wandb' but the wandb package is not installed; "
            "pip install 'lambdanet[wandb]'"
        )
    if not torch.cuda.is_available():
        assert cli_train.main([*base, "--system.accelerator", "gpu"]) == 2
        assert "lambdanet train: error: system.accelerator='gpu'" in capsys.readouterr().err
    cfg = tiny_config(tmp_path / "poisoned", epochs=2)
    with pytest.raises(NonFiniteLossError):  # fails inside fit, before the first checkpoint
        fit(cfg, callbacks=[_poison(epoch=0, batch_idx=0)])
    assert not out.exists() and not (tmp_path / "poisoned" / "run").exists()


@pytest.mark.parametrize(("signal_name", "status"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_exits_with_its_status_the_resume_line_and_no_results(
    tmp_path: Path, signal_name: str, status: int
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    def default_sigint() -> None:  # a background job may inherit an ignored SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    cmd = [str(Path(sys.executable).parent / "lambdanet"), "train", "-c", "synthetic_smoke"]
    cmd += ["--data.image_size", "8", "--data.synthetic_samples", "64", "--data.batch_size", "16"]
    cmd += ["--model.overrides", "{widths: [8, 16], lambda_stages: [1], stem_chs: 8, dim_k: 4, heads: 2, scope: 3}"]
    cmd += ["--train.epochs", "1000", "--system.out_dir", str(tmp_path), "--system.run_name", "run"]
    cmd += ["--system.progress_bar", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    try:
        while not last.is_file():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        proc.send_signal(getattr(signal, signal_name))
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status, err[-3000:]
    (line,) = [x for x in err.splitlines() if signal_name in x]  # one line, Lightning's own notices filtered
    assert line.startswith(f"lambdanet train: {signal_name} stopped training at epoch ")
    assert f"last good checkpoint {last}; resume with: lambdanet train --resume {tmp_path / 'run'}" in line
    assert not (tmp_path / "run" / "results.json").exists()
