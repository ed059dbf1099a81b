"""Lightning plug-ins for safe, observable runs: atomic checkpoint writes, finite-only checkpoints, throughput
logging, and global batch statistics for CPU (gloo) data parallelism.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor, nn

from lambdanet.checkpoint import atomic_save, load_checkpoint, non_finite_keys, remove_stray_temp_files

__all__ = [
    "AtomicCheckpointIO",
    "FiniteModelCheckpoint",
    "GlobalBatchNorm2d",
    "NonFiniteLossError",
    "ThroughputMonitor",
    "convert_global_batchnorm",
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

    When the run starts it deletes the temp files that interrupted writes left in its folder.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath:
            remove_stray_temp_files(self.dirpath)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        bad = non_finite_keys(trainer.lightning_module.state_dict())
        if bad:
            shown = ", ".join(bad[:5]) + (f", ... ({len(bad) - 5} more)" if len(bad) > 5 else "")
            warnings.warn(f"not saving {filepath}: NaN or Inf in {shown}", stacklevel=2)
            return
        super()._save_checkpoint(trainer, filepath)


class ThroughputMonitor(Callback):
    """Log images per second and step time of every training batch (all processes together)."""

    def __init__(self) -> None:
        self._start = 0.0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        dt = max(time.perf_counter() - self._start, 1e-9)
        images = len(batch[0]) * trainer.world_size
        pl_module.log("train/img_s", images / dt, prog_bar=True, on_step=True, on_epoch=False, batch_size=1)
        pl_module.log("train/step_ms", dt * 1000, prog_bar=True, on_step=True, on_epoch=False, batch_size=1)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover every process's batch (sums all-reduced with autograd).

    ``torch.nn.SyncBatchNorm`` only runs on accelerators; this does the same on CPU (gloo), so that data-parallel
    training on ``n`` processes with batch ``b`` each matches one process with batch ``n * b``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        xf = x.float()
        local = torch.cat([xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3)), xf.new_tensor([x.numel() / c])])
        total = all_reduce(local)
        count = total[-1]
        mean = total[:c] / count
        var = (total[c : 2 * c] / count - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * count / (count - 1).clamp_min(1)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        y = (xf - mean.view(1, c, 1, 1)) * torch.rsqrt(var.view(1, c, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y.to(x.dtype)


def convert_global_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every ``BatchNorm2d`` in ``module`` for :class:`GlobalBatchNorm2d` (same parameters and buffers)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_global_batchnorm(child)
    return module
