"""Assemble and run a training job on Lightning: checks, run directory, Trainer, fit, test, plot and summary.

One path for every task: images and text share the module, data module, callbacks, loggers and run directory.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
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

import lightning
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

import lambdanet
from lambdanet.checkpoint import remove_stray_temp_files
from lambdanet.data.loader import LANGUAGE_MODEL, build_splits, data_info, prepare
from lambdanet.stats import model_stats
from lambdanet.train import callbacks as cb
from lambdanet.train.config import RunConfig, to_dict, to_yaml
from lambdanet.train.datamodules import LambdaDataModule
from lambdanet.train.module import LambdaModule, ema_callback
from lambdanet.train.plots import plot_curves

__all__ = ["RUN_DIR_ENV", "RunInterrupted", "fit", "resolve_resume", "run_dir_for"]

RUN_DIR_ENV = "LAMBDANET_RUN_DIR"  # shared with processes that Lightning's DDP launcher starts
_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class RunInterrupted(SystemExit):
    """A run stopped by SIGTERM (exit status 143) or SIGINT (130); the message says how to resume it."""


def run_dir_for(cfg: RunConfig) -> Path:
    """The run directory: ``system.out_dir/system.run_name``, or ``<recipe>-<model>-<job id or time>``.

    Processes of one job must agree on it: Lightning's launcher passes it in ``LAMBDANET_RUN_DIR``; under SLURM
    and torchrun the job id names it; otherwise (e.g. several nodes started by hand) set ``system.run_name``.
    """
    if cfg.system.run_name:
        return Path(cfg.system.out_dir) / cfg.system.run_name
    if os.environ.get(RUN_DIR_ENV) and os.environ.get("LOCAL_RANK", "0") != "0":  # a process the launcher started
        return Path(os.environ[RUN_DIR_ENV])
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
    suffix = f"job{job}" if job and job != "none" else time.strftime("%Y%m%d-%H%M%S")
    return Path(cfg.system.out_dir) / f"{cfg.recipe}-{cfg.model.name}-{suffix}"


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
    return p, p.parent.parent if p.parent.name == "checkpoints" else p.parent


def _env_info() -> dict[str, Any]:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "lambdanet": lambdanet.__version__,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda if gpus else None,
        "gpus": gpus,
        "cpu_threads": torch.get_num_threads(),
        "git_sha": sha or None,
    }


_NOISE = (  # Lightning's advertisements and the lines that only say what is not used
    "Tip:",
    "available: False",
    "Skipping setting a default",
    "to estimate number of stepping batches",
    "Received SIGTERM",  # our own line says where the run stopped and how to resume it
    "Detected KeyboardInterrupt",
    "Found current_model_state in the checkpoint",
)
_HARMLESS = (  # framework warnings known to be harmless here
    r".*WeightAveraging callback with a model that overrides the configure_model.*",  # not sharded here
    r".*callbacks used to create the checkpoint need to be provided.*",  # the final test leaves out the EMA
    r".*LeafSpec.*",
    r".*does not have many workers which may be a bottleneck.*",
    r".*The number of training batches .* is smaller than the logging interval.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*could not find the monitored key in the returned metrics.*",  # stopped before validation: our note says so
)


def _not_noise(record: logging.LogRecord) -> bool:
    return not any(n in record.getMessage() for n in _NOISE)


def _console(quiet: bool) -> None:
    """Filter Lightning's tips and the framework warnings known to be harmless here; ``quiet`` keeps warnings only."""
    for message in _HARMLESS:
        warnings.filterwarnings("ignore", message=message)
    names = ("lightning.pytorch", "lightning.fabric")
    emitters = [f"{n}.utilities.rank_zero" for n in names] + ["lightning.pytorch.trainer.connectors.signal_connector"]
    handlers = [h for name in names for h in logging.getLogger(name).handlers]
    for target in [*map(logging.getLogger, emitters), *handlers]:  # logger filters act where a record is emitted
        target.addFilter(_not_noise)  # once: addFilter skips a filter it holds
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)


def _loggers(cfg: RunConfig, run_dir: Path) -> list[Any]:
    """The loggers of ``system.loggers``; a missing optional package is a one-line error."""
    makers = {  # csv: logs/version_<n>/metrics.csv, one per (resumed) attempt
        "csv": lambda: CSVLogger(run_dir, name="logs", flush_logs_every_n_steps=cfg.train.log_every_steps),
        "tensorboard": lambda: TensorBoardLogger(run_dir, name="tb", version="", default_hp_metric=False),
        "wandb": lambda: WandbLogger(name=run_dir.name, save_dir=str(run_dir), project="lambdanet"),
        "mlflow": lambda: MLFlowLogger(experiment_name="lambdanet", run_name=run_dir.name),
    }
    for name in cfg.system.loggers:
        if name not in makers:
            raise ValueError(
                f"system.loggers={cfg.system.loggers}: unknown logger {name!r}; expected some of {list(makers)}"
            )
        if name in ("wandb", "mlflow") and importlib.util.find_spec(name) is None:
            raise ValueError(
                f"system.loggers includes {name!r} but the {name} package is not installed; "
                f"pip install 'lambdanet[{name}]'"
            )
    return [makers[name]() for name in cfg.system.loggers]


def fit(
    cfg: RunConfig,
    argv: Sequence[str] = (),
    resume: str | os.PathLike[str] | None = None,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train ``cfg`` (optionally resuming a checkpoint), test the best checkpoint and write the run directory.

    Model and data are checked against each other before anything is written; a run that fails before its first
    checkpoint removes the directory it created. The run directory's files are listed in docs/training.md.

    Returns:
        The results written to ``results.json`` (final metrics, model, data, times, paths).

    Raises:
        ValueError: model and data do not fit, or a bad setting (before anything is written).
        NonFiniteLossError: the loss became NaN/Inf (the last good checkpoint stays in place).
        RunInterrupted: SIGTERM (exit status 143) or SIGINT (130); no ``results.json`` is written.
    """
    ckpt_path, run_dir = resolve_resume(resume) if resume is not None else (None, run_dir_for(cfg))
    ckpts = run_dir / "checkpoints"
    _console(cfg.quiet)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision(cfg.system.matmul_precision)

    # ---- checks: nothing is written until data, model and Trainer settings are known to fit
    info = data_info(cfg.data)
    splits = None
    if os.environ.get("LOCAL_RANK", "0") == "0":  # other ranks build theirs in setup, after the process group starts
        prepare(cfg.data)
        splits = build_splits(cfg.data, cfg.seed)
    # synchronised batch norm: torch's SyncBatchNorm on CUDA, GlobalBatchNorm2d for CPU processes
    cuda = cfg.system.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    global_bn = cfg.system.sync_batchnorm and not cuda
    module = LambdaModule(cfg, info, splits.classes if splits else None, global_gbn=global_bn)
    datamodule = LambdaDataModule(cfg.data, cfg.seed, splits)
    try:  # forward FLOPs of one sample, 0 when they cannot be counted
        flops = int(model_stats(module.model, info.input_shape).flops)
    except (RuntimeError, ValueError, TypeError, NotImplementedError):
        flops = 0
    module.flops_per_batch = 3 * flops * cfg.data.batch_size  # forward + backward, read by ThroughputMonitor
    lm = info.task == LANGUAGE_MODEL
    common = {"dirpath": ckpts, "auto_insert_metric_name": False, "enable_version_counter": False}
    checkpoint = cb.FiniteModelCheckpoint(  # first: Trainer.checkpoint_callback, whose best_model_path is "best"
        filename="best", monitor="val/loss" if lm else "val/acc1", mode="min" if lm else "max", **common
    )
    last = cb.FiniteModelCheckpoint(filename="last", save_on_train_epoch_end=True, **common)  # every epoch
    throughput = ThroughputMonitor(
        batch_size_fn=lambda batch: len(batch[0]),
        length_fn=(lambda batch: batch[0].numel()) if lm else None,  # tokens per second for text
        window_size=max(2, min(20, cfg.train.log_every_steps)),
    )
    ema = ema_callback(cfg)
    show = cfg.system.progress_bar and not cfg.quiet
    bar = [cb.ProgressBar(refresh_rate=1 if sys.stderr.isatty() else 20), cb.ModelSummaryWithMacs(flops)]
    ours = [checkpoint, last, cb.StartStepMarker(), throughput, *([ema] if ema else [])]
    loggers = _loggers(cfg, run_dir)
    limit = cfg.train.limit_train_batches  # passed only when set: Lightning warns about the default otherwise
    try:
        trainer = pl.Trainer(
            default_root_dir=str(run_dir),
            max_epochs=cfg.train.epochs,
            max_steps=cfg.train.max_steps,
            accelerator=cfg.system.accelerator,
            devices=cfg.system.devices,
            num_nodes=cfg.system.num_nodes,
            strategy=cfg.system.strategy,
            sync_batchnorm=cfg.system.sync_batchnorm and cuda,
            precision=cfg.train.precision,
            gradient_clip_val=cfg.train.grad_clip,
            accumulate_grad_batches=cfg.train.accumulate,
            deterministic=cfg.train.deterministic,
            check_val_every_n_epoch=cfg.train.val_every_epochs,
            log_every_n_steps=cfg.train.log_every_steps,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            enable_progress_bar=show,
            enable_model_summary=show,
            callbacks=[*ours, *callbacks, *(bar if show else [])],
            logger=loggers,
            plugins=[cb.AtomicCheckpointIO()],
            **({"limit_train_batches": limit} if limit != 1.0 else {}),
        )
    except (MisconfigurationException, ModuleNotFoundError, RuntimeError) as e:  # e.g. no GPU for accelerator=gpu
        raise ValueError(
            f"system.accelerator={cfg.system.accelerator!r}, system.devices={cfg.system.devices!r}, "
            f"system.strategy={cfg.system.strategy!r}: {(str(e).strip() or type(e).__name__).splitlines()[0]}"
        ) from None

    created = not run_dir.exists()
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stray_temp_files(ckpts)  # left by writes that a killed attempt interrupted
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        with open(run_dir / "argv.txt", "a") as f:
            f.write(" ".join(["lambdanet", "train", *argv]) + "\n")
        (run_dir / "env.json").write_text(json.dumps(_env_info(), indent=2) + "\n")
        for logger in loggers:
            logger.log_hyperparams(to_dict(cfg))
        if not cfg.quiet:
            device = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()  # the recipe may pin cpu
            where = f"on {trainer.num_devices} {device} device{'s' if trainer.num_devices > 1 else ''}"
            print(f"run directory: {run_dir} ({where}" + (f"; resuming {ckpt_path})" if ckpt_path else ")"), flush=True)

    def run(phase: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        """``call``; a signal during it (Lightning exits on SIGTERM, and on SIGINT after its graceful shutdown) prints
        where it stopped the run and how to resume it, and raises :class:`RunInterrupted`."""
        with contextlib.suppress(SystemExit):
            out = call(*args, **kwargs)
            if not trainer.received_sigterm:
                return out
        signal_name = "SIGTERM" if trainer.received_sigterm else "SIGINT"
        line = f"{signal_name} stopped {phase} at epoch {trainer.current_epoch} step {trainer.global_step}"
        if (ckpts / "last.ckpt").is_file():
            line += f"; last good checkpoint {ckpts / 'last.ckpt'}; resume with: lambdanet train --resume {run_dir}"
        else:
            line += ", before the first checkpoint; nothing to resume"
        if trainer.is_global_zero:
            print(f"lambdanet train: {line}", file=sys.stderr, flush=True)
        raise RunInterrupted(_EXIT_CODES[signal_name])

    start = time.perf_counter()
    os.environ[RUN_DIR_ENV] = str(run_dir)  # for the processes Lightning's DDP launcher starts
    try:
        run("training", trainer.fit, module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except BaseException as e:
        if created and not any(ckpts.glob("*.ckpt")) and trainer.is_global_zero and not isinstance(e, RunInterrupted):
            shutil.rmtree(run_dir, ignore_errors=True)  # failed during set-up: leave nothing behind
        raise
    results: dict[str, Any] = {"recipe": cfg.recipe, "model": cfg.model.name, "data": cfg.data.name, "task": info.task}
    results["fit_seconds"] = round(time.perf_counter() - start, 2)
    best = str(ckpts / Path(checkpoint.best_model_path).name) if checkpoint.best_model_path else None
    say = print if trainer.is_global_zero else lambda *args, **kwargs: None
    if cfg.train.test_after_fit:
        use = best if best and Path(best).is_file() else None
        if use is None:
            say("note: no validation before training stopped, so no best.ckpt; the final weights are tested")
        split = "test" if info.has_test else "val"
        if not info.has_test:
            say(f"note: data.root {cfg.data.root} has no test/ split; the final metrics are on val/", flush=True)
        if ema is not None:  # else its on_load_checkpoint would put the trained weights, not the average, in place
            trainer.callbacks.remove(ema)
        evaluate = trainer.test if info.has_test else trainer.validate
        tested = run(
            f"the final {split} evaluation", evaluate, module, datamodule=datamodule, ckpt_path=use, verbose=False
        )
        results.update({k: float(v) for k, v in (tested[0] if tested else {}).items()}, final_split=split)
        results["tested_checkpoint"] = use or "final weights"
    results.update(global_step=int(trainer.global_step), epochs=int(trainer.current_epoch), best_checkpoint=best)
    results.update(last_checkpoint=str(ckpts / "last.ckpt"), total_seconds=round(time.perf_counter() - start, 2))
    if trainer.is_global_zero:
        rows = _merge_csv(sorted((run_dir / "logs").glob("version_*/metrics.csv")), run_dir / "metrics.csv")
        if rows:
            try:
                results["plot"] = str(plot_curves(rows, run_dir / "curves.png", title=run_dir.name))
            except ValueError as e:
                print(f"no plot: {e}", file=sys.stderr)
        (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        keys = [f"{results.get('final_split', 'test')}/{k}" for k in ("acc1", "acc5", "loss", "bpc")]
        summary = ", ".join(f"{k}={results[k]:.4f}" for k in keys if k in results)
        print(f"done in {results['total_seconds']:.1f} s: {summary or 'no test'}; run directory {run_dir}", flush=True)
    return results


def _merge_csv(parts: list[Path], out: Path) -> list[dict[str, str]]:
    """Concatenate the CSV logs of every attempt of a run (in order) into ``out``; returns the rows.

    A resumed attempt restarts at the global step of its checkpoint (``start_step`` beside its CSV): the rows an
    earlier attempt logged from that step on were redone, and are dropped.
    """
    parts = sorted(parts, key=lambda p: int(p.parent.name.split("_")[-1]))
    starts = [int(m.read_text()) if (m := p.parent / "start_step").is_file() else 0 for p in parts]
    rows: list[dict[str, str]] = []
    fields: list[str] = []
    for i, part in enumerate(parts):
        limit = min(starts[i + 1 :], default=None)
        with open(part, newline="") as f:
            reader = csv.DictReader(f)
            fields += [k for k in reader.fieldnames or [] if k not in fields]
            rows += [r for r in reader if limit is None or int(float(r.get("step") or 0)) < limit]
    if rows:
        with open(out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    return rows
