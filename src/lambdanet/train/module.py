"""``LambdaModule``: a LightningModule that trains any registered model (Bello, ICLR 2021, App. E.2 recipes).

Cross-entropy with label smoothing, optional EMA of the weights (evaluated instead of the raw weights), warm-up
plus cosine / step / exponential schedules stepped per optimizer step, channels_last and torch.compile. Every
checkpoint carries ``lambdanet`` metadata: model name and overrides, resolved config and RNG states.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

import lambdanet
from lambdanet.checkpoint import CHECKPOINT_KEY
from lambdanet.inference import describe_checkpoint
from lambdanet.train.callbacks import NonFiniteLossError, convert_global_batchnorm
from lambdanet.train.config import RunConfig, to_dict
from lambdanet.train.optim import build_optimizer, lr_lambda

__all__ = ["CHECKPOINT_KEY", "LambdaModule", "build_model", "model_overrides"]


def model_overrides(cfg: RunConfig, num_classes: int) -> dict[str, Any]:
    """The model's builder overrides with ``num_classes`` linked from the data unless the recipe sets it."""
    overrides = dict(cfg.model.overrides)
    overrides.setdefault("num_classes", num_classes)
    return overrides


def build_model(cfg: RunConfig, num_classes: int) -> nn.Module:
    """``create_model(cfg.model.name, **overrides)``, with ``train.bn_momentum`` applied."""
    model = lambdanet.create_model(cfg.model.name, **model_overrides(cfg, num_classes))
    if cfg.train.bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = cfg.train.bn_momentum
    if cfg.train.init_from:
        from lambdanet.checkpoint import init_from

        init_from(model, cfg.train.init_from)
    return model


class _EMA(nn.Module):
    """Exponential moving average of a model's parameters (buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.module.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach().to(e.dtype), 1.0 - self.decay)
        for e, b in zip(self.module.buffers(), model.buffers(), strict=True):
            e.copy_(b)

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)


class LambdaModule(pl.LightningModule):
    """Train and evaluate a registered model.

    Args:
        cfg: resolved run configuration.
        num_classes: classes of the dataset (linked into the model's overrides).
        global_gbn: replace BatchNorm2d by global-batch BN for multi-process CPU runs.
    """

    def __init__(self, cfg: RunConfig, num_classes: int, global_gbn: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.model = build_model(cfg, num_classes)
        if global_gbn:
            convert_global_batchnorm(self.model)
        self.ema = _EMA(self.model, cfg.train.ema_decay) if cfg.train.ema_decay else None
        top5 = min(5, num_classes)
        self.metrics = nn.ModuleDict(
            {
                f"{split}_{name}": metric
                for split in ("train", "val", "test")
                for name, metric in (
                    ("acc1", MulticlassAccuracy(num_classes, top_k=1, average="micro")),
                    ("acc5", MulticlassAccuracy(num_classes, top_k=top5, average="micro")),
                    ("loss", MeanMetric()),
                )
            }
        )
        self._compiled: Any = None

    # -------------------------------------------------------------- model set-up
    def configure_model(self) -> None:
        if self.cfg.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
            if self.ema is not None:
                self.ema.to(memory_format=torch.channels_last)
        if self.cfg.train.compile and self._compiled is None:
            # Kept out of the module tree so that state_dict keys stay those of the plain model.
            object.__setattr__(self, "_compiled", torch.compile(self.model))

    def _inputs(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.train.channels_last else x

    def forward(self, x: Tensor) -> Tensor:
        model = self._compiled if self._compiled is not None else self.model
        return model(self._inputs(x))

    def eval_model(self) -> nn.Module:
        """The weights used for evaluation: the EMA copy when enabled, else the trained model."""
        return self.ema.module if self.ema is not None else self.model

    # -------------------------------------------------------------- steps
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.train.label_smoothing)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}); stopping. Lower optim.lr, set train.grad_clip, or use bf16 instead of fp16."
            )
        self._update_metrics("train", logits.detach(), y, loss.detach())
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=True, on_step=True, batch_size=1)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.model)

    def _update_metrics(self, split: str, logits: Tensor, y: Tensor, loss: Tensor) -> None:
        self.metrics[f"{split}_acc1"].update(logits, y)
        self.metrics[f"{split}_acc5"].update(logits, y)
        self.metrics[f"{split}_loss"].update(loss, weight=len(y))

    def _eval_step(self, split: str, batch: tuple[Tensor, Tensor]) -> None:
        x, y = batch
        logits = self.eval_model()(self._inputs(x)).float()
        loss = F.cross_entropy(logits, y)
        self._update_metrics(split, logits, y, loss)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _log_epoch(self, split: str) -> None:
        for name in ("acc1", "acc5", "loss"):
            metric = self.metrics[f"{split}_{name}"]
            self.log(f"{split}/{name}", metric.compute(), prog_bar=split == "val" and name != "acc5", sync_dist=False)
            metric.reset()

    def on_train_epoch_end(self) -> None:
        for name in ("acc1", "acc5"):
            self.log(f"train/{name}", self.metrics[f"train_{name}"].compute())
            self.metrics[f"train_{name}"].reset()
        self.metrics["train_loss"].reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # -------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        trainer = self.trainer
        global_batch = self.cfg.data.batch_size * trainer.world_size * self.cfg.train.accumulate
        optimizer = build_optimizer(self.model, self.cfg.optim, global_batch)
        estimated = trainer.estimated_stepping_batches  # min(max_steps, epochs x steps per epoch)
        total = max(1, int(estimated)) if math.isfinite(estimated) else 1
        per_epoch = float(self._steps_per_epoch())
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(self.cfg.sched, total, per_epoch))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (epoch-based schedule settings convert with it)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            return max(1, int(self.trainer.estimated_stepping_batches) // max(1, self.cfg.train.epochs))
        batches = len(datamodule.train_dataloader())
        limit = self.cfg.train.limit_train_batches
        if isinstance(limit, int) and not isinstance(limit, bool):
            batches = min(batches, limit)
        else:
            batches = int(batches * float(limit))
        return max(1, math.ceil(batches / self.cfg.train.accumulate))

    # -------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "model_name": getattr(self.model, "model_name", self.cfg.model.name),
            "model_overrides": dict(getattr(self.model, "model_overrides", {})),
            "num_classes": self.num_classes,
            "config": to_dict(self.cfg),
            "version": lambdanet.__version__,
            "ema": self.ema is not None,
            "torch_rng_state": torch.get_rng_state(),
        }
        describe_checkpoint(checkpoint, self.cfg.data, getattr(self._trainer, "datamodule", None))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get(CHECKPOINT_KEY)
        if not isinstance(meta, dict):
            raise ValueError("not a lambdanet checkpoint: the 'lambdanet' metadata is missing")
        name = getattr(self.model, "model_name", self.cfg.model.name)
        if meta.get("model_name") != name or meta.get("model_overrides") != getattr(self.model, "model_overrides", {}):
            raise ValueError(
                f"checkpoint holds model {meta.get('model_name')!r} with overrides {meta.get('model_overrides')}, "
                f"but this run builds {name!r} with {getattr(self.model, 'model_overrides', {})}"
            )
        if isinstance(meta.get("torch_rng_state"), Tensor):
            torch.set_rng_state(meta["torch_rng_state"])
