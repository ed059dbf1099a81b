"""``--resume``: a run killed by a real SIGKILL and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lambdanet.checkpoint import load_checkpoint

LAMBDANET = Path(sys.executable).parent / "lambdanet"
TINY = "{in_chans: 3, widths: [8, 16], lambda_stages: [1], stem_chs: 8, dim_k: 4, heads: 2, scope: 3}"
EPOCHS = 10


def train_args(out: Path, name: str) -> list[str]:
    """Tiny lambda_net_tiny on 512 synthetic images, batch 16 (32 steps per epoch), AdamW, warm-up + cosine, EMA."""
    return [
        str(LAMBDANET), "train", "-c", "synthetic_smoke",
        "--model.overrides", TINY,
        "--data.num_classes", "4", "--data.image_size", "8", "--data.synthetic_samples", "512",
        "--data.batch_size", "16",
        "--optim.name", "adamw", "--optim.lr", "0.01",
        "--sched.warmup_epochs", "1", "--train.ema_decay", "0.9", "--train.epochs", str(EPOCHS),
        "--train.test_after_fit", "false",
        "--system.out_dir", str(out), "--system.run_name", name, "--system.progress_bar", "false",
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _checkpoint_epoch(path: Path) -> int:
    try:
        return int(load_checkpoint(path)["epoch"])
    except ValueError:  # not written yet
        return -1


@pytest.mark.skipif(not LAMBDANET.exists(), reason="the lambdanet console script is not installed")
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    killed = subprocess.Popen(
        train_args(tmp_path, "killed"), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    try:
        while _checkpoint_epoch(last) < 2:  # atomic writes: a checkpoint can be read while the run writes the next
            assert killed.poll() is None, f"the run ended before it could be killed:\n{killed.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint of epoch 2 within 120 s"
            time.sleep(0.02)
        killed.send_signal(signal.SIGKILL)
    finally:
        killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    stopped_at = load_checkpoint(last)
    assert 2 <= stopped_at["epoch"] < EPOCHS - 1

    resumed = subprocess.run(
        [str(LAMBDANET), "train", "--resume", str(tmp_path / "killed")],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = subprocess.run(train_args(tmp_path, "ref"), env=_env(), capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]

    a = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.ckpt")
    b = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == EPOCHS * 32
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert any(k.startswith("ema.module.") for k in a["state_dict"])
    for key, value in b["state_dict"].items():
        assert torch.equal(a["state_dict"][key], value), key  # weights, BN statistics and the EMA copy
    opt_a, opt_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i in opt_b:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(opt_a[i][name]), torch.as_tensor(opt_b[i][name])), (i, name)
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"]
    assert len(list((tmp_path / "killed" / "logs").glob("version_*"))) == 2  # both attempts' metrics are kept
