"""Resume: a stopped and resumed run ends bit-identical to an uninterrupted one (weights, EMA, optimizer, RNG), starts
from ``last.ckpt``, and a language-model run survives a real SIGKILL; ``lambdanet eval`` and decoding need only its
checkpoint."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback

import lambdanet
from lambdanet.checkpoint import load_checkpoint
from lambdanet.cli import eval as cli_eval
from lambdanet.data.text import CharVocab
from lambdanet.models._builder import model_from_weights
from lambdanet.train.config import load_config
from lambdanet.train.run import fit, resolve_resume

LAMBDANET = Path(sys.executable).parent / "lambdanet"


class StopError(Exception):
    pass


class StopAtEpoch(Callback):
    """Raise when ``epoch`` starts, after the checkpoint of the epoch before it (a crash between two epochs)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == self.epoch:
            raise StopError


def _config(out: Path, name: str) -> Any:
    """lambda_net_tiny with dropout 0.5 (draws on the global RNG) and a slow EMA (0.999: the history matters)."""
    model = {"widths": [8, 16], "lambda_stages": [1], "stem_chs": 8, "dim_k": 4, "heads": 2, "scope": 3}
    over = {
        "model": {"overrides": {**model, "drop_rate": 0.5}},
        "data": {"num_classes": 4, "image_size": 8, "synthetic_samples": 128, "batch_size": 16},
        "optim": {"name": "adamw", "lr": 0.01},
        "sched": {"warmup_epochs": 1},
        "train": {"epochs": 4, "ema_decay": 0.999, "test_after_fit": False, "log_every_steps": 1},
        "system": {"out_dir": str(out), "run_name": name, "progress_bar": False},
    }
    return load_config("synthetic_smoke", over)


def test_stopped_and_resumed_run_is_bit_identical_to_a_straight_run(tmp_path: Path) -> None:
    fit(_config(tmp_path, "straight"))
    with pytest.raises(StopError):
        fit(_config(tmp_path, "stopped"), callbacks=[StopAtEpoch(2)])
    stopped = tmp_path / "stopped"
    assert load_checkpoint(stopped / "checkpoints" / "last.ckpt")["global_step"] == 16
    fit(_config(tmp_path, "stopped"), resume=stopped)
    assert (stopped / "logs" / "version_1" / "start_step").read_text().strip() == "16"  # from last.ckpt

    a = load_checkpoint(stopped / "checkpoints" / "last.ckpt")
    b = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 32
    for part in ("state_dict", "current_model_state", "averaging_state"):  # the EMA, the weights, the EMA's count
        assert a[part].keys() == b[part].keys()
        for key, value in b[part].items():
            assert torch.equal(a[part][key], value), (part, key)  # BN statistics included
    opt_a, opt_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i in opt_b:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(opt_a[i][name]), torch.as_tensor(opt_b[i][name])), (i, name)
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"]
    assert torch.equal(a["lambdanet"]["torch_rng_state"], b["lambdanet"]["torch_rng_state"])


def test_resume_of_a_run_directory_takes_last_ckpt(tmp_path: Path) -> None:
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "best.ckpt").write_bytes(b"best")
    (checkpoints / "last.ckpt").write_bytes(b"last")
    assert resolve_resume(tmp_path / "run") == (checkpoints / "last.ckpt", tmp_path / "run")
    assert resolve_resume(checkpoints / "best.ckpt") == (checkpoints / "best.ckpt", tmp_path / "run")
    (checkpoints / "last.ckpt").unlink()  # a kill during the first last.ckpt write leaves best.ckpt only
    with pytest.raises(ValueError, match=r"no checkpoints/last\.ckpt.*: --resume .*best\.ckpt$"):
        resolve_resume(tmp_path / "run")
    (checkpoints / "best.ckpt").unlink()
    with pytest.raises(ValueError, match=r"no checkpoints/last\.ckpt in this run directory$"):
        resolve_resume(tmp_path / "run")


def _rows(path: Path) -> list[tuple[int, frozenset[str]]]:
    with open(path, newline="") as f:
        return [(int(r["step"]), frozenset(k for k, v in r.items() if v not in ("", None))) for r in csv.DictReader(f)]


@pytest.mark.skipif(not LAMBDANET.exists(), reason="the lambdanet console script is not installed")
def test_language_model_run_resumes_after_sigkill_and_its_checkpoint_suffices(tmp_path: Path, capsys: Any) -> None:
    tiny = "{dim: 32, depth: 1, heads: 2, dim_k: 8, mlp_hidden: 64, max_length: 32}"
    cmd = [str(LAMBDANET), "train", "-c", "lm_tiny", "--model.overrides", tiny]
    cmd += ["--data.seq_len", "16", "--data.batch_size", "8", "--data.max_eval_windows", "8"]
    cmd += ["--train.epochs", "8", "--train.limit_train_batches", "20", "--train.log_every_steps", "5"]
    cmd += ["--system.out_dir", str(tmp_path), "--system.run_name", "lm", "--system.progress_bar", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    run = tmp_path / "lm"
    last = run / "checkpoints" / "last.ckpt"
    killed = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    try:
        while not last.is_file():
            assert killed.poll() is None, f"the run ended before it could be killed:\n{killed.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        time.sleep(0.3)  # let it log a few steps past the checkpoint
        killed.send_signal(signal.SIGKILL)
    finally:
        killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    stopped_at = load_checkpoint(last)["global_step"]
    assert 20 <= stopped_at < 160  # killed well before the end, however fast this machine is

    resumed = subprocess.run([str(LAMBDANET), "train", "--resume", str(run)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["task"] == "language_model" and results["global_step"] == 160
    assert 0 < results["test/bpc"] < 8 and results["test/bpc"] == pytest.approx(results["test/loss"] / 0.6931472)
    assert (run / "logs" / "version_1" / "start_step").read_text().strip() == str(stopped_at)
    rows = _rows(run / "metrics.csv")
    assert len(rows) == len(set(rows))  # the killed attempt's rows after its checkpoint were dropped
    assert (run / "curves.png").is_file() and list((run / "tb").glob("events.out.tfevents*"))

    best = run / "checkpoints" / "best.ckpt"
    out = tmp_path / "eval.json"
    assert cli_eval.main([str(best), "--json", str(out)]) == 0
    evaluated = json.loads(out.read_text())
    assert evaluated["loss"] == pytest.approx(results["test/loss"], rel=1e-4)
    assert evaluated["bpc"] == pytest.approx(results["test/bpc"], rel=1e-4)

    ckpt = load_checkpoint(best)  # alone: vocabulary, model and weights
    vocab = CharVocab(ckpt["lambdanet"]["vocab"])
    assert len(vocab) == ckpt["lambdanet"]["num_classes"] == ckpt["lambdanet"]["model_overrides"]["vocab_size"]
    model = model_from_weights(best)
    ids = vocab.encode("def ")
    with torch.no_grad():
        for _ in range(8):
            ids = torch.cat([ids, model(ids[None])[0, -1].argmax()[None]])
    assert vocab.decode(ids).startswith("def ") and len(vocab.decode(ids)) == 12
    assert lambdanet.model_info(ckpt["lambdanet"]["model_name"]).extra["task"] == "language_model"
