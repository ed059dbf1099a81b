"""Assemble and run a training job on Lightning: checks, run directory, Trainer, fit, test, plot and summary.

One path for every task: the data (:data:`lambdanet.data.loader.DATASETS`) decides whether the run classifies images
or models text, and the same :class:`~lambdanet.train.module.LambdaModule`, data module, callbacks, loggers and run
directory serve both.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lambdanet.data.loader import LANGUAGE_MODEL, build_splits, data_info, prepare
from lambdanet.train.config import RunConfig, to_dict, to_yaml

__all__ = ["RUN_DIR_ENV", "RunInterrupted", "fit", "resolve_resume", "run_dir_for"]

RUN_DIR_ENV = "LAMBDANET_RUN_DIR"  # shared with processes that Lightning's DDP launcher starts
_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
_LOGGER_EXTRAS = {"wandb": "wandb", "mlflow": "mlflow"}


class RunInterrupted(SystemExit):
    """A run stopped by SIGTERM (exit status 143) or SIGINT (130); the message says how to resume it."""


def run_dir_for(cfg: RunConfig) -> Path:
    """The run directory: ``system.out_dir/system.run_name``, or ``<recipe>-<model>-<job id or time>``.

    Processes of one job must agree on it: Lightning's launcher passes it in ``LAMBDANET_RUN_DIR``; under SLURM
    and torchrun the job id names it; otherwise (e.g. several nodes started by hand) set ``system.run_name``.
    """
    if cfg.system.run_name:
        return Path(cfg.system.out_dir) / cfg.system.run_name
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    stem = f"{cfg.recipe}-{cfg.model.name}"
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
    if job and job != "none":
        return Path(cfg.system.out_dir) / f"{stem}-job{job}"
    return Path(cfg.system.out_dir) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def resolve_resume(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(checkpoint, run_dir)`` from a checkpoint file or a run directory (which resumes from ``last.ckpt``)."""
    p = Path(path)
    if p.is_dir():
        ckpt = p / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            best = p / "checkpoints" / "best.ckpt"
            hint = f" (its first write was interrupted?); resume from: --resume {best}" if best.is_file() else ""
            raise ValueError(f"--resume {p}: no checkpoints/last.ckpt in this run directory{hint}")
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


class _DropNoise(logging.Filter):
    """Drops Lightning's advertisements and the lines that only say what is not used."""

    NOISE = (
        "Tip:",
        "available: False",
        "Skipping setting a default",
        "to estimate number of stepping batches",
        "Received SIGTERM",  # our own line says where the run stopped and how to resume it
        "Detected KeyboardInterrupt",
        "Found current_model_state in the checkpoint",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in self.NOISE)


def _console(quiet: bool) -> None:
    """Filter Lightning's tips and the framework warnings known to be harmless here; ``quiet`` keeps warnings only."""
    for message in (
        r".*WeightAveraging callback with a model that overrides the configure_model.*",  # not sharded here
        r".*callbacks used to create the checkpoint need to be provided.*",  # the final test leaves out the EMA
        r".*LeafSpec.*",
        r".*is smaller than the logging interval.*",
        r".*does not have many workers which may be a bottleneck.*",
        r".*The number of training batches .* is smaller than.*",
        r".*Checkpoint directory .* exists and is not empty.*",
        r".*could not find the monitored key in the returned metrics.*",  # stopped before validation: our note says so
    ):
        warnings.filterwarnings("ignore", message=message)

    emitters = ["lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"]
    emitters.append("lightning.pytorch.trainer.connectors.signal_connector")
    handlers = [h for name in ("lightning.pytorch", "lightning.fabric") for h in logging.getLogger(name).handlers]
    for target in [*map(logging.getLogger, emitters), *handlers]:  # logger filters act where a record is emitted
        if not any(isinstance(f, _DropNoise) for f in target.filters):
            target.addFilter(_DropNoise())
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)


def _flops_per_sample(model: Any, input_shape: tuple[int, ...]) -> int:
    """Forward FLOPs of one sample (:func:`lambdanet.stats.model_stats`), 0 when they cannot be counted."""
    from lambdanet.stats import model_stats

    try:
        return int(model_stats(model, input_shape).flops)
    except (RuntimeError, ValueError, TypeError, NotImplementedError):
        return 0


def _loggers(cfg: RunConfig, run_dir: Path) -> list[Any]:
    """The loggers of ``system.loggers``; a missing optional package is a one-line error."""
    import importlib.util

    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

    out: list[Any] = []
    for name in cfg.system.loggers:
        package = _LOGGER_EXTRAS.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise ValueError(
                f"system.loggers includes {name!r} but the {package} package is not installed; "
                f"pip install 'lambdanet[{name}]'"
            )
        if name == "csv":  # logs/version_<n>/metrics.csv: one per (resumed) attempt
            out.append(
                CSVLogger(save_dir=str(run_dir), name="logs", flush_logs_every_n_steps=cfg.train.log_every_steps)
            )
        elif name == "tensorboard":
            out.append(TensorBoardLogger(save_dir=str(run_dir), name="tb", version="", default_hp_metric=False))
        elif name == "wandb":
            out.append(WandbLogger(name=run_dir.name, save_dir=str(run_dir), project="lambdanet"))
        elif name == "mlflow":
            out.append(MLFlowLogger(experiment_name="lambdanet", run_name=run_dir.name))
        else:
            raise ValueError(
                f"system.loggers={cfg.system.loggers}: unknown logger {name!r}; expected some of "
                "['csv', 'tensorboard', 'wandb', 'mlflow']"
            )
    return out


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out


def fit(
    cfg: RunConfig,
    argv: Sequence[str] = (),
    resume: str | os.PathLike[str] | None = None,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train ``cfg`` (optionally resuming a checkpoint), test the best checkpoint and write the run directory.

    Model and data are checked against each other before anything is written; a run that fails before its first
    checkpoint removes the directory it created. Run directory: ``config.yaml``, ``argv.txt``, ``env.json``,
    ``metrics.csv`` (merged from ``logs/version_*``, one per attempt, without the rows a killed attempt logged after
    its last checkpoint), ``tb/`` (TensorBoard), ``checkpoints/{best,last}.ckpt``, ``curves.png`` and
    ``results.json``.

    Returns:
        The results written to ``results.json`` (final metrics, model, data, times, paths).

    Raises:
        ValueError: model and data do not fit, or a bad setting (before anything is written).
        NonFiniteLossError: the loss became NaN/Inf (the last good checkpoint stays in place).
        RunInterrupted: SIGTERM (exit status 143) or SIGINT (130); no ``results.json`` is written.
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
    from lightning.pytorch.callbacks import ThroughputMonitor
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from lambdanet.train.callbacks import (
        AtomicCheckpointIO,
        FiniteModelCheckpoint,
        ModelSummaryWithMacs,
        ProgressBar,
        RunWatch,
    )
    from lambdanet.train.datamodules import LambdaDataModule
    from lambdanet.train.module import LambdaModule, ema_callback

    _console(cfg.quiet)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision(cfg.system.matmul_precision)

    # ---- checks: nothing is written until data, model and Trainer settings are known to fit
    info = data_info(cfg.data)
    splits = None
    if os.environ.get("LOCAL_RANK", "0") == "0":  # other ranks build their splits after rank 0's prepare_data
        prepare(cfg.data)
        splits = build_splits(cfg.data, cfg.seed)
    multi_process = _world_size_hint(cfg) > 1
    global_bn = cfg.system.sync_batchnorm and multi_process and not _uses_cuda(cfg)
    classes = splits.classes if splits is not None else None
    module = LambdaModule(cfg, info, classes, global_gbn=global_bn)
    datamodule = LambdaDataModule(cfg.data, cfg.seed, splits)
    flops = _flops_per_sample(module.model, info.input_shape)
    module.flops_per_batch = 3 * flops * cfg.data.batch_size  # forward + backward, read by ThroughputMonitor
    lm = info.task == LANGUAGE_MODEL
    monitor = "val/loss" if lm else "val/acc1"

    checkpoint = FiniteModelCheckpoint(  # first: Trainer.checkpoint_callback, whose best_model_path is "best"
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode="min" if lm else "max",
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
    watch = RunWatch()
    throughput = ThroughputMonitor(
        batch_size_fn=lambda batch: len(batch[0]),
        length_fn=(lambda batch: batch[0].numel()) if lm else None,  # tokens per second for text
        window_size=max(2, min(20, cfg.train.log_every_steps)),
    )
    ema = ema_callback(cfg)
    all_callbacks: list[Any] = [checkpoint, last, watch, throughput, *([ema] if ema else []), *callbacks]
    show = cfg.system.progress_bar and not cfg.quiet
    if show:
        all_callbacks.append(ProgressBar(refresh_rate=1 if sys.stderr.isatty() else 20))
        all_callbacks.append(ModelSummaryWithMacs(flops))
    loggers = _loggers(cfg, run_dir)
    trainer_args: dict[str, Any] = {
        "default_root_dir": str(run_dir),
        "max_epochs": cfg.train.epochs,
        "max_steps": cfg.train.max_steps,
        "accelerator": cfg.system.accelerator,
        "devices": cfg.system.devices,
        "num_nodes": cfg.system.num_nodes,
        "strategy": cfg.system.strategy,
        "sync_batchnorm": cfg.system.sync_batchnorm and _uses_cuda(cfg),
        "precision": cfg.train.precision,
        "gradient_clip_val": cfg.train.grad_clip,
        "accumulate_grad_batches": cfg.train.accumulate,
        "deterministic": cfg.train.deterministic,
        "check_val_every_n_epoch": cfg.train.val_every_epochs,
        "log_every_n_steps": cfg.train.log_every_steps,
        "num_sanity_val_steps": 0,
        "use_distributed_sampler": False,
        "enable_progress_bar": show,
        "enable_model_summary": show,
        "callbacks": all_callbacks,
        "logger": loggers,
        "plugins": [AtomicCheckpointIO()],
    }
    if cfg.train.limit_train_batches != 1.0:  # Lightning warns about the default when it is passed explicitly
        trainer_args["limit_train_batches"] = cfg.train.limit_train_batches
    try:
        trainer = pl.Trainer(**trainer_args)
    except (MisconfigurationException, ModuleNotFoundError, RuntimeError) as e:  # e.g. no GPU for accelerator=gpu
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"system.accelerator={cfg.system.accelerator!r}, system.devices={cfg.system.devices!r}, "
            f"system.strategy={cfg.system.strategy!r}: {first}"
        ) from None

    created = not run_dir.exists()
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        with open(run_dir / "argv.txt", "a") as f:
            f.write(" ".join(["lambdanet", "train", *argv]) + "\n")
        (run_dir / "env.json").write_text(json.dumps(_env_info(), indent=2) + "\n")
        for logger in loggers:
            logger.log_hyperparams(_flat(to_dict(cfg)))
        if not cfg.quiet:
            device = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()  # the recipe may pin cpu
            where = f"on {trainer.num_devices} {device} device{'s' if trainer.num_devices > 1 else ''}"
            print(f"run directory: {run_dir} ({where}" + (f"; resuming {ckpt_path})" if ckpt_path else ")"), flush=True)

    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except BaseException:
        if watch.signal is not None:
            _interrupted(trainer, watch.signal, run_dir, "training")
        if created and trainer.is_global_zero and not any((run_dir / "checkpoints").glob("*.ckpt")):
            shutil.rmtree(run_dir, ignore_errors=True)  # failed during set-up: leave nothing behind
        raise
    if trainer.received_sigterm or trainer.interrupted:
        _interrupted(trainer, watch.signal or "SIGTERM", run_dir, "training")
    fit_seconds = time.perf_counter() - start

    results: dict[str, Any] = {
        "recipe": cfg.recipe,
        "model": cfg.model.name,
        "data": cfg.data.name,
        "task": info.task,
        "fit_seconds": round(fit_seconds, 2),
    }
    best = str(run_dir / "checkpoints" / Path(checkpoint.best_model_path).name) if checkpoint.best_model_path else ""
    if cfg.train.test_after_fit:
        use = best if best and Path(best).is_file() else None
        if use is None and trainer.is_global_zero:
            print("note: no validation before training stopped, so no best.ckpt; the final weights are tested")
        split = "test" if info.has_test else "val"
        if not info.has_test and trainer.is_global_zero:
            print(f"note: data.root {cfg.data.root} has no test/ split; the final metrics are on val/", flush=True)
        if ema is not None:  # else its on_load_checkpoint would put the trained weights, not the average, in place
            trainer.callbacks.remove(ema)
        try:
            run_eval = trainer.test if info.has_test else trainer.validate
            tested = run_eval(module, datamodule=datamodule, ckpt_path=use, verbose=False)
        except BaseException:
            if watch.signal is not None:
                _interrupted(trainer, watch.signal, run_dir, f"the final {split} evaluation")
            raise
        if watch.signal is not None or trainer.received_sigterm:
            _interrupted(trainer, watch.signal or "SIGTERM", run_dir, f"the final {split} evaluation")
        results.update({k: float(v) for k, v in (tested[0] if tested else {}).items()})
        results["final_split"] = split
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

                results["plot"] = str(plot_curves(metrics_csv, run_dir / "curves.png", title=run_dir.name))
            except ValueError as e:
                print(f"no plot: {e}", file=sys.stderr)
        (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        keys = [f"{results.get('final_split', 'test')}/{k}" for k in ("acc1", "acc5", "loss", "bpc")]
        summary = ", ".join(f"{k}={results[k]:.4f}" for k in keys if k in results)
        print(f"done in {results['total_seconds']:.1f} s: {summary or 'no test'}; run directory {run_dir}", flush=True)
    return results


def _interrupted(trainer: Any, signal_name: str, run_dir: Path, phase: str) -> None:
    """Print where a signal stopped the run and how to resume it; raise :class:`RunInterrupted`."""
    last = run_dir / "checkpoints" / "last.ckpt"
    where = f"{signal_name} stopped {phase} at epoch {trainer.current_epoch} step {trainer.global_step}"
    if last.is_file():
        line = f"{where}; last good checkpoint {last}; resume with: lambdanet train --resume {run_dir}"
    else:
        line = f"{where}, before the first checkpoint; nothing to resume"
    if trainer.is_global_zero:
        print(f"lambdanet train: {line}", file=sys.stderr, flush=True)
    raise RunInterrupted(_EXIT_CODES[signal_name])


def _merge_csv(parts: list[Path], out: Path) -> Path | None:
    """Concatenate the CSV logs of every attempt of a run (in order) into ``out``.

    A resumed attempt restarts at the global step of its checkpoint (``start_step`` beside its CSV): the rows an
    earlier attempt logged from that step on were redone, and are dropped.
    """
    import csv

    parts = sorted(parts, key=lambda p: int(p.parent.name.split("_")[-1]))
    starts = []
    for part in parts:
        marker = part.parent / "start_step"
        starts.append(int(marker.read_text()) if marker.is_file() else 0)
    rows: list[dict[str, str]] = []
    fields: list[str] = []
    for i, part in enumerate(parts):
        limit = min(starts[i + 1 :], default=None)
        with open(part, newline="") as f:
            reader = csv.DictReader(f)
            fields += [k for k in reader.fieldnames or [] if k not in fields]
            for row in reader:
                if limit is None or int(float(row.get("step") or 0)) < limit:
                    rows.append(row)
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
