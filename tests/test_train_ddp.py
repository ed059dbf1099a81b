"""Data parallelism through Lightning's DDP on 2 CPU processes (gloo) equals one process at the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lambdanet.checkpoint import load_checkpoint

LAMBDANET = Path(sys.executable).parent / "lambdanet"
TINY = "{in_chans: 3, widths: [8, 16], lambda_stages: [1], stem_chs: 8, dim_k: 4, heads: 2, scope: 3}"


def _run(out: Path, name: str, devices: int, batch: int) -> subprocess.CompletedProcess[str]:
    cmd = [
        str(LAMBDANET), "train", "-c", "synthetic_smoke",
        "--model.overrides", TINY,
        "--data.num_classes", "4", "--data.image_size", "8", "--data.synthetic_samples", "128",
        "--data.batch_size", str(batch),
        "--optim.name", "sgd", "--optim.lr", "0.1", "--optim.momentum", "0.9",
        "--train.epochs", "2",
        "--system.accelerator", "cpu", "--system.devices", str(devices),
        "--system.strategy", "ddp" if devices > 1 else "auto",
        "--system.sync_batchnorm", "true",
        "--system.out_dir", str(out), "--system.run_name", name, "--system.progress_bar", "false",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
@pytest.mark.skipif(not LAMBDANET.exists(), reason="the lambdanet console script is not installed")
def test_two_gloo_processes_match_one_process_at_the_same_global_batch(tmp_path: Path) -> None:
    single = _run(tmp_path, "single", devices=1, batch=16)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = _run(tmp_path, "ddp", devices=2, batch=8)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.ckpt")
    b = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 16
    assert a["lambdanet"]["config"]["system"]["devices"] == 1
    assert b["lambdanet"]["config"]["system"]["devices"] == 2
    for key, value in a["state_dict"].items():
        if key.startswith("model.") and value.is_floating_point():
            torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    ra = json.loads((tmp_path / "single" / "results.json").read_text())
    rb = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert ra["test/acc1"] == pytest.approx(rb["test/acc1"])
    assert ra["test/loss"] == pytest.approx(rb["test/loss"], rel=1e-4)
