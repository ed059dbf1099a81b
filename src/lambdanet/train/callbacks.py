"""Lightning plug-ins: atomic checkpoint writes, finite-only checkpoints, a model summary with MACs, run watch."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ModelSummary, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from torch import nn

__all__ = [
    "AtomicCheckpointIO",
    "FiniteModelCheckpoint",
    "ModelSummaryWithMacs",
    "NonFiniteLossError",
    "ProgressBar",
    "RunWatch",
]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file in the same folder, fsync it, then ``os.replace`` it into place.

    A crash or kill during the write leaves the previous checkpoint untouched (and at most a stray ``.tmp`` file).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        try:  # make the rename itself durable
            fd = os.open(path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def _all_finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


class FiniteModelCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` that refuses to overwrite checkpoints with non-finite weights."""

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if not _all_finite(trainer.lightning_module):
            warnings.warn(f"not saving {filepath}: the weights hold NaN or Inf", stacklevel=2)
            return
        super()._save_checkpoint(trainer, filepath)


class ModelSummaryWithMacs(ModelSummary):
    """Lightning's model summary without its FLOPs column (zeros without an example input); "Total Flops" is that of
    one sample, from :func:`lambdanet.stats.model_stats` (2 x multiply-accumulates, the paper's convention).
    """

    def __init__(self, flops_per_sample: int, max_depth: int = 1) -> None:
        super().__init__(max_depth=max_depth)
        self.flops_per_sample = flops_per_sample

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        summary = self._summary(trainer, pl_module)
        data = [column for column in summary._get_summary_data() if column[0] != "FLOPs"]
        self.summarize(
            data,
            summary.total_parameters,
            summary.trainable_parameters,
            summary.model_size,
            summary.total_training_modes,
            total_flops=self.flops_per_sample,
            **self._summarize_kwargs,
        )


class RunWatch(Callback):
    """Records what a run needs to report honestly: the signal that stopped it, and where this attempt started.

    ``signal``: ``SIGTERM`` / ``SIGINT`` once Lightning stops on one. ``start_step``: the global step this attempt
    began at (0, or the resumed checkpoint's), written to ``<csv log dir>/start_step`` so that ``metrics.csv`` can
    drop the rows a killed attempt logged after its last checkpoint.
    """

    def __init__(self) -> None:
        self.signal: str | None = None
        self.start_step = 0

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            self.signal = "SIGTERM"
        elif isinstance(exception, KeyboardInterrupt):
            self.signal = "SIGINT"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_step = int(trainer.global_step)
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                Path(logger.log_dir).mkdir(parents=True, exist_ok=True)
                (Path(logger.log_dir) / "start_step").write_text(f"{self.start_step}\n")


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar without the logger version (``v_num``), which names no metric."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items
