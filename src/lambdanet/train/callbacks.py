"""Lightning plug-ins: atomic checkpoint writes, finite-only checkpoints, a model summary with MACs, start steps."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ModelSummary, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from lambdanet.checkpoint import _listing, atomic_save, load_checkpoint, non_finite_keys

__all__ = [
    "AtomicCheckpointIO",
    "FiniteModelCheckpoint",
    "ModelSummaryWithMacs",
    "NonFiniteLossError",
    "ProgressBar",
    "StartStepMarker",
]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint writes that never damage the previous file, and reads with lambdanet's safe, checked loader.

    Writes go through :func:`lambdanet.checkpoint.atomic_save` (temp file, fsync, ``os.replace``); reads (``fit``'s
    ``ckpt_path``, i.e. ``--resume``) through :func:`lambdanet.checkpoint.load_checkpoint`: ``weights_only`` only,
    checksum and finite weights verified.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path)


class FiniteModelCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` that never writes a checkpoint with NaN or Inf in any floating tensor of the module's
    state dict (parameters, BatchNorm statistics and the EMA copy), so ``last.ckpt`` stays the last good one.
    """

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        # the module's state dict and that of every averaged copy a callback holds (Lightning's EMA)
        averages = [getattr(c, "_average_model", None) for c in trainer.callbacks]
        states = [trainer.lightning_module.state_dict()]
        states += [{f"average.{k}": v for k, v in a.state_dict().items()} for a in averages if isinstance(a, nn.Module)]
        bad = [key for state in states for key in non_finite_keys(state)]
        if bad:
            warnings.warn(f"not saving {filepath}: NaN or Inf in {_listing(bad)}", stacklevel=2)
            return
        super()._save_checkpoint(trainer, filepath)


class ModelSummaryWithMacs(ModelSummary):
    """Lightning's model summary without its FLOPs column (zeros without an example input); "Total Flops" is that of
    one sample, from :func:`lambdanet.stats.model_stats` (2 x multiply-accumulates, the paper's convention).
    """

    def __init__(self, flops_per_sample: int, max_depth: int = 1) -> None:
        super().__init__(max_depth=max_depth)
        self.flops_per_sample = flops_per_sample

    def summarize(self, summary_data: list[tuple[str, list[str]]], *args: Any, **kwargs: Any) -> None:
        kwargs["total_flops"] = self.flops_per_sample
        super().summarize([column for column in summary_data if column[0] != "FLOPs"], *args, **kwargs)


class StartStepMarker(Callback):
    """Writes the global step this attempt began at (0, or the resumed checkpoint's) to ``<csv log dir>/start_step``,
    so that ``metrics.csv`` can drop the rows a killed attempt logged after its last checkpoint."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        csv_loggers = [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)] if trainer.is_global_zero else []
        for log_dir in (Path(lg.log_dir) for lg in csv_loggers):
            log_dir.mkdir(parents=True, exist_ok=True)
            (log_dir / "start_step").write_text(f"{trainer.global_step}\n")


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar without the logger version (``v_num``), which names no metric."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items
