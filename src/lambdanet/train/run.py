"""Assemble and run a training job on Lightning: run directory, Trainer, fit, test, plot and summary."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lambdanet.data.loader import data_info
from lambdanet.train.config import RunConfig, to_yaml

__all__ = ["RUN_DIR_ENV", "fit", "resolve_resume", "run_dir_for"]

RUN_DIR_ENV = "LAMBDANET_RUN_DIR"  # shared with processes that Lightning's DDP launcher starts


def run_dir_for(cfg: RunConfig) -> Path:
    """The run directory: ``system.out_dir/system.run_name``, or ``<recipe>-<job id or time>``.

    Processes of one job must agree on it: Lightning's launcher passes it in ``LAMBDANET_RUN_DIR``; under SLURM
    and torchrun the job id names it; otherwise (e.g. several nodes started by hand) set ``system.run_name``.
    """
    if cfg.system.run_name:
        return Path(cfg.system.out_dir) / cfg.system.run_name
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
    if job and job != "none":
        return Path(cfg.system.out_dir) / f"{cfg.recipe}-job{job}"
    return Path(cfg.system.out_dir) / f"{cfg.recipe}-{time.strftime('%Y%m%d-%H%M%S')}"


def resolve_resume(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(checkpoint, run_dir)`` from a checkpoint file or a run directory (which resumes from ``last.ckpt``)."""
    p = Path(path)
    if p.is_dir():
        ckpt = p / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise ValueError(f"--resume {p}: no checkpoints/last.ckpt in this run directory")
        return ckpt, p
    if not p.is_file():
        raise ValueError(f"--resume {p}: no such checkpoint file or run directory")
    run_dir = p.parent.parent if p.parent.name == "checkpoints" else p.parent
    return p, run_dir


def _env_info() -> dict[str, Any]:
    import lightning

    import lambdanet

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    cuda = torch.cuda.is_available()
    return {
        "lambdanet": lambdanet.__version__,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cpu_threads": torch.get_num_threads(),
        "git_sha": sha or None,
    }


def _uses_cuda(cfg: RunConfig) -> bool:
    return cfg.system.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def fit(
    cfg: RunConfig,
    argv: Sequence[str] = (),
    resume: str | os.PathLike[str] | None = None,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train ``cfg`` (optionally resuming a checkpoint), test the best checkpoint and write the run directory.

    Run directory: ``config.yaml``, ``argv.txt``, ``env.json``, ``metrics.csv`` (merged from ``logs/version_*``, one
    per attempt), ``tb/`` (TensorBoard),
    ``checkpoints/{best,last}.ckpt``, ``curves.png`` and ``results.json``.

    Returns:
        The results written to ``results.json`` (test metrics, times, paths).

    Raises:
        NonFiniteLossError: the loss became NaN/Inf (the last good checkpoint stays in place).
    """
    ckpt_path: Path | None = None
    if resume is not None:
        ckpt_path, run_dir = resolve_resume(resume)
    else:
        run_dir = run_dir_for(cfg)
    previous_env = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # for the processes Lightning's DDP launcher starts during fit
    try:
        return _fit(cfg, run_dir, ckpt_path, argv, callbacks)
    finally:
        if previous_env is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous_env


def _fit(
    cfg: RunConfig, run_dir: Path, ckpt_path: Path | None, argv: Sequence[str], callbacks: Sequence[Any]
) -> dict[str, Any]:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from lambdanet.train.callbacks import AtomicCheckpointIO, FiniteModelCheckpoint, ThroughputMonitor
    from lambdanet.train.datamodules import LambdaDataModule
    from lambdanet.train.module import LambdaModule

    # The EMA copy is in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision(cfg.system.matmul_precision)
    info = data_info(cfg.data)
    multi_process = _world_size_hint(cfg) > 1
    global_bn = cfg.system.sync_batchnorm and multi_process and not _uses_cuda(cfg)
    module = LambdaModule(cfg, info.num_classes, global_gbn=global_bn)
    datamodule = LambdaDataModule(cfg.data, cfg.seed)

    checkpoint = FiniteModelCheckpoint(  # first: Trainer.checkpoint_callback, whose best_model_path is "best"
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor="val/acc1",
        mode="max",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    last = FiniteModelCheckpoint(  # every epoch, whether or not validation improved
        dirpath=run_dir / "checkpoints",
        filename="last",
        save_top_k=1,
        save_on_train_epoch_end=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    all_callbacks: list[Any] = [checkpoint, last, ThroughputMonitor(), *callbacks]
    if cfg.system.progress_bar:
        all_callbacks.append(TQDMProgressBar(refresh_rate=1 if sys.stderr.isatty() else 20))
    loggers = [
        CSVLogger(save_dir=str(run_dir), name="logs"),  # logs/version_<n>/metrics.csv: one per (resumed) attempt
        TensorBoardLogger(save_dir=str(run_dir), name="tb", version="", default_hp_metric=False),
    ]
    trainer = pl.Trainer(
        default_root_dir=str(run_dir),
        max_epochs=cfg.train.epochs,
        max_steps=cfg.train.max_steps,
        accelerator=cfg.system.accelerator,
        devices=cfg.system.devices,
        num_nodes=cfg.system.num_nodes,
        strategy=cfg.system.strategy,
        sync_batchnorm=cfg.system.sync_batchnorm and _uses_cuda(cfg),
        precision=cfg.train.precision,  # type: ignore[arg-type]
        gradient_clip_val=cfg.train.grad_clip,
        accumulate_grad_batches=cfg.train.accumulate,
        deterministic=cfg.train.deterministic,
        check_val_every_n_epoch=cfg.train.val_every_epochs,
        limit_train_batches=cfg.train.limit_train_batches,
        log_every_n_steps=cfg.train.log_every_steps,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        enable_progress_bar=cfg.system.progress_bar,
        enable_model_summary=cfg.system.progress_bar,
        callbacks=all_callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
    )
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        with open(run_dir / "argv.txt", "a") as f:
            f.write(" ".join(["lambdanet", "train", *argv]) + "\n")
        (run_dir / "env.json").write_text(json.dumps(_env_info(), indent=2) + "\n")
        print(f"run directory: {run_dir}" + (f" (resuming {ckpt_path})" if ckpt_path else ""), flush=True)

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    fit_seconds = time.perf_counter() - start

    results: dict[str, Any] = {"recipe": cfg.recipe, "fit_seconds": round(fit_seconds, 2)}
    best = checkpoint.best_model_path
    if cfg.train.test_after_fit:
        use = best if best and Path(best).is_file() else None
        tested = trainer.test(module, datamodule=datamodule, ckpt_path=use, verbose=False)
        results.update({k: float(v) for k, v in (tested[0] if tested else {}).items()})
        results["tested_checkpoint"] = use or "final weights"
    results.update(
        {
            "global_step": int(trainer.global_step),
            "epochs": int(trainer.current_epoch),
            "best_checkpoint": best or None,
            "last_checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
            "total_seconds": round(time.perf_counter() - start, 2),
        }
    )
    if trainer.is_global_zero:
        metrics_csv = _merge_csv(sorted((run_dir / "logs").glob("version_*/metrics.csv")), run_dir / "metrics.csv")
        if metrics_csv is not None:
            try:
                from lambdanet.train.plots import plot_curves

                results["plot"] = str(plot_curves(metrics_csv, run_dir / "curves.png", title=cfg.recipe))
            except ValueError as e:
                print(f"no plot: {e}", file=sys.stderr)
        (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        summary = ", ".join(f"{k}={results[k]:.4f}" for k in ("test/acc1", "test/acc5", "test/loss") if k in results)
        print(f"done in {results['total_seconds']:.1f} s: {summary or 'no test'}; run directory {run_dir}", flush=True)
    return results


def _merge_csv(parts: list[Path], out: Path) -> Path | None:
    """Concatenate the CSV logs of every attempt of a run (in order) into ``out``."""
    import csv

    parts = sorted(parts, key=lambda p: int(p.parent.name.split("_")[-1]))
    rows: list[dict[str, str]] = []
    fields: list[str] = []
    for part in parts:
        with open(part, newline="") as f:
            reader = csv.DictReader(f)
            fields += [k for k in reader.fieldnames or [] if k not in fields]
            rows += list(reader)
    if not rows:
        return None
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return out


def _world_size_hint(cfg: RunConfig) -> int:
    """Processes the run will use (before the Trainer exists)."""
    devices = cfg.system.devices
    if isinstance(devices, int):
        count = devices
    elif isinstance(devices, list):
        count = len(devices)
    elif isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        count = int(devices)
    else:
        count = torch.cuda.device_count() if _uses_cuda(cfg) else 1
    if count == -1:
        count = torch.cuda.device_count() if _uses_cuda(cfg) else (os.cpu_count() or 1)
    return max(1, count) * cfg.system.num_nodes
