"""``LambdaModule``: the one LightningModule that trains any registered model on any registered dataset.

The data picks the task (:class:`lambdanet.data.loader.DataInfo`): ``classification`` (images ``(b, c, h, w)`` ->
``(b, classes)`` logits) or ``language_model`` (token ids ``(b, n)`` -> ``(b, n, vocab)`` logits, the next token at
every position, also scored in bits per character, ``loss / ln 2``).
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

import lambdanet
from lambdanet.checkpoint import CHECKPOINT_KEY, load_checkpoint_into, seal
from lambdanet.data.loader import CLASSIFICATION, LANGUAGE_MODEL, DataInfo
from lambdanet.inference import inference_metadata
from lambdanet.train.callbacks import NonFiniteLossError
from lambdanet.train.config import RunConfig, to_dict
from lambdanet.train.distributed import convert_global_batchnorm
from lambdanet.train.optim import build_optimizer, lr_lambda

__all__ = ["LambdaModule", "build_model", "ema_callback", "model_overrides"]


def model_overrides(cfg: RunConfig, info: DataInfo) -> dict[str, Any]:
    """The model's builder overrides with what the data determines linked in.

    Classification: ``num_classes`` and ``in_chans``; language models: ``vocab_size``. A recipe may state them only
    with the data's values.
    """
    overrides = dict(cfg.model.overrides)
    if info.task == LANGUAGE_MODEL:
        linked = {"vocab_size": (info.num_classes, "a vocabulary of size")}
    else:
        linked = {"num_classes": (info.num_classes, "classes:"), "in_chans": (info.in_chans, "image channels:")}
    for key, (value, what) in linked.items():
        if overrides.get(key) not in (None, value):
            raise ValueError(
                f"model.overrides.{key}={overrides[key]} (recipe {cfg.recipe}) but data.name={cfg.data.name!r} has "
                f"{what} {value}; drop the override: {key} is taken from the data"
            )
        overrides[key] = value
    return overrides


def build_model(cfg: RunConfig, info: DataInfo) -> nn.Module:
    """``create_model(cfg.model.name, **overrides)`` fitted to the data, with ``train.bn_momentum`` applied.

    Models with global position embeddings get ``img_size`` from the data unless the recipe sets it. One forward pass
    of a single zero input checks that model and data fit.

    Raises:
        ValueError: model and data do not fit (one line naming both).
    """
    overrides = model_overrides(cfg, info)
    task = lambdanet.model_info(cfg.model.name).extra.get("task", CLASSIFICATION)
    if task != info.task:
        raise ValueError(
            f"model.name={cfg.model.name!r} is a {task} model but data.name={cfg.data.name!r} is {info.task} data"
        )
    model = lambdanet.create_model(cfg.model.name, **overrides)
    built_size = getattr(getattr(model, "cfg", None), "img_size", info.image_size)
    if getattr(model, "fixed_input_size", False) and "img_size" not in overrides and built_size != info.image_size:
        model = lambdanet.create_model(cfg.model.name, **overrides, img_size=info.image_size)
    max_length = getattr(getattr(model, "cfg", None), "max_length", None)
    if info.task == LANGUAGE_MODEL and max_length is not None and info.input_shape[0] > max_length:
        raise ValueError(f"data.seq_len={info.input_shape[0]} exceeds the max_length={max_length} of {cfg.model.name}")
    dtype = torch.long if info.task == LANGUAGE_MODEL else torch.float32
    try:
        with torch.no_grad():
            model.eval()(torch.zeros((1, *info.input_shape), dtype=dtype))
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"model {cfg.model.name} with {overrides} does not fit data.name={cfg.data.name!r} inputs of shape "
            f"{info.input_shape}: {first}"
        ) from None
    model.train()
    if cfg.train.bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = cfg.train.bn_momentum
    if cfg.train.init_from:
        load_checkpoint_into(model, cfg.train.init_from, fresh_head=True)
    return model


def ema_callback(cfg: RunConfig) -> Any:
    """Lightning's ``EMAWeightAveraging`` for ``train.ema_decay`` (None when off): ``e <- decay e + (1 - decay) p``
    after every optimizer step, over parameters and buffers; the first update copies the weights.

    Validation, the final test and checkpoints' ``state_dict`` hold the average; the trained weights are in
    ``checkpoint["current_model_state"]`` (docs/training.md, "EMA checkpoints").
    """
    if not cfg.train.ema_decay:
        return None
    from lightning.pytorch.callbacks import EMAWeightAveraging

    return EMAWeightAveraging(decay=cfg.train.ema_decay)


class LambdaModule(pl.LightningModule):
    """Train and evaluate a registered model on a registered dataset.

    Args:
        cfg: resolved run configuration.
        info: what the data determines (task, classes or vocabulary size, input shape).
        classes: class names, or the characters of the vocabulary in id order (stored in checkpoints).
        global_gbn: replace BatchNorm2d by global-batch BN for multi-process CPU runs.
    """

    def __init__(self, cfg: RunConfig, info: DataInfo, classes: list[str] | None = None, global_gbn: bool = False):
        super().__init__()
        self.cfg, self.info, self.task, self.num_classes = cfg, info, info.task, info.num_classes
        self.classes = list(classes or [])
        self.model = build_model(cfg, info)
        if global_gbn:
            convert_global_batchnorm(self.model)
        k = info.num_classes
        self.metrics = nn.ModuleDict(  # the loss is averaged by Lightning (self.log with batch_size)
            {
                f"{split}_{name}": MulticlassAccuracy(k, top_k=top_k, average="micro")
                for split in ("train", "val", "test")
                for name, top_k in (("acc1", 1), ("acc5", min(5, k)))
            }
        )
        self._compiled: Any = None

    # -------------------------------------------------------------- model set-up
    def configure_model(self) -> None:
        if self.cfg.train.channels_last and self.task == CLASSIFICATION:
            self.model.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        if self.cfg.train.compile and self._compiled is None:
            # Compiled on first use (after the EMA callback copied the module), and kept out of the module tree so
            # that state_dict keys stay those of the plain model.
            object.__setattr__(self, "_compiled", torch.compile(self.model))
        if self.cfg.train.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return (self.model if self._compiled is None else self._compiled)(x)

    # -------------------------------------------------------------- steps
    def _step(self, split: str, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Logits and targets, flat for language models (one prediction per position); accuracies updated."""
        x, y = batch
        logits = self(x).float()
        if y.dim() == 2:  # (b, n, v), (b, n) -> (b n, v), (b n)
            logits, y = logits.flatten(0, 1), y.flatten()
        for name in ("acc1", "acc5"):  # computed over the epoch (all processes) and reset by Lightning
            metric = self.metrics[f"{split}_{name}"]
            metric.update(logits.detach(), y)
            self.log(f"{split}/{name}", metric, on_step=False, on_epoch=True, prog_bar=f"{split}/{name}" == "val/acc1")
        return logits, y

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        logits, y = self._step("train", batch)
        loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.train.label_smoothing)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}); stopping. Lower optim.lr, set train.grad_clip, or use bf16 instead of fp16."
            )
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=True, on_step=True, batch_size=1)
        return loss

    def _eval_step(self, split: str, batch: tuple[Tensor, Tensor]) -> None:
        logits, y = self._step(split, batch)
        loss = F.cross_entropy(logits, y)
        self.log(f"{split}/loss", loss, batch_size=len(y), sync_dist=True, prog_bar=split == "val")
        if self.task == LANGUAGE_MODEL:  # bits per character
            self.log(f"{split}/bpc", loss / math.log(2.0), batch_size=len(y), sync_dist=True, prog_bar=split == "val")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    # -------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        trainer, accumulate = self.trainer, self.cfg.train.accumulate
        global_batch = self.cfg.data.batch_size * trainer.world_size * accumulate
        optimizer = build_optimizer(self.model, self.cfg.optim, global_batch)
        estimated = trainer.estimated_stepping_batches  # min(max_steps, epochs x steps per epoch)
        total = max(1, int(estimated)) if math.isfinite(estimated) else 1
        batches = trainer.num_training_batches  # per epoch, after limit_train_batches (set by the estimate above)
        per_epoch = max(1, math.ceil(batches / accumulate)) if math.isfinite(batches) else total
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(self.cfg.sched, total, per_epoch))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Metadata under ``checkpoint["lambdanet"]`` and the state dict's checksum; ``vocab`` (language models) or
        ``classes`` (images, with the inference metadata) lists the label of every output id, so a checkpoint alone
        suffices to decode or label predictions."""
        meta = {
            "model_name": self.model.model_name,
            "model_overrides": dict(self.model.model_overrides),
            "task": self.task,
            "num_classes": self.num_classes,
            "input_shape": list(self.info.input_shape),
            "config": to_dict(self.cfg),
            "version": lambdanet.__version__,
            "ema": bool(self.cfg.train.ema_decay),
            "torch_rng_state": torch.get_rng_state(),
        }
        if self.task == LANGUAGE_MODEL:
            meta["vocab"] = list(self.classes)
        else:
            meta.update(inference_metadata(self.cfg.data, self.classes))
        checkpoint[CHECKPOINT_KEY] = meta
        seal(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint[CHECKPOINT_KEY]  # present: the checkpoint IO reads lambdanet checkpoints only
        name, overrides = self.model.model_name, self.model.model_overrides
        if meta.get("model_name") != name or meta.get("model_overrides") != overrides:
            raise ValueError(
                f"checkpoint holds model {meta.get('model_name')!r} with overrides {meta.get('model_overrides')}, "
                f"but this run builds {name!r} with {overrides}"
            )
        if self.task == LANGUAGE_MODEL and meta.get("vocab") not in (None, self.classes):
            raise ValueError("checkpoint was trained with another vocabulary than this run's data")
        if isinstance(meta.get("torch_rng_state"), Tensor):
            torch.set_rng_state(meta["torch_rng_state"])
