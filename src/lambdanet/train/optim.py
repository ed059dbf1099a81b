"""Optimizers and per-step learning-rate schedules (warm-up, cosine, multi-step, exponential)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lambdanet.train.config import OptimConfig, SchedConfig

__all__ = ["build_optimizer", "lr_lambda", "peak_lr"]


def peak_lr(cfg: OptimConfig, global_batch: int) -> float:
    """``cfg.lr``, scaled linearly by ``global_batch / cfg.lr_base_batch`` when ``lr_base_batch`` is set."""
    return cfg.lr * global_batch / cfg.lr_base_batch if cfg.lr_base_batch else cfg.lr


def build_optimizer(model: nn.Module, cfg: OptimConfig, global_batch: int) -> torch.optim.Optimizer:
    """The optimizer of ``cfg`` over the trainable parameters of ``model``, at the peak learning rate.

    Unless ``cfg.decay_norm_and_bias``, parameters with at most one dimension (norms, biases) get no weight decay.
    """
    lr, wd = peak_lr(cfg, global_batch), cfg.weight_decay
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": params, "weight_decay": wd}]
    if not cfg.decay_norm_and_bias and wd:
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": wd}]
        groups.append({"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0})
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=cfg.alpha, eps=cfg.eps, momentum=cfg.momentum)
    raise ValueError(f"optim.name={cfg.name!r}; expected 'sgd', 'adamw' or 'rmsprop'")


def lr_lambda(cfg: SchedConfig, total_steps: int, steps_per_epoch: float) -> Callable[[int], float]:
    """Multiplier of the peak rate at optimizer step ``s`` (for ``torch.optim.lr_scheduler.LambdaLR``).

    Args:
        cfg: schedule.
        total_steps: optimizer steps of the whole run.
        steps_per_epoch: optimizer steps per epoch (to convert epoch-based settings).
    """
    if total_steps < 1 or steps_per_epoch <= 0:
        raise ValueError(f"total_steps={total_steps} and steps_per_epoch={steps_per_epoch} must be positive")
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    milestones = sorted(round(m * steps_per_epoch) for m in cfg.milestones)
    decay_every = max(1.0, cfg.decay_every_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return cfg.warmup_start_factor + (1 - cfg.warmup_start_factor) * step / warmup
        if cfg.name == "cosine":
            t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return cfg.min_lr_factor + (1 - cfg.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * t))
        if cfg.name == "multistep":
            return cfg.gamma ** sum(step >= m for m in milestones)
        if cfg.name == "exponential":
            return cfg.gamma ** math.floor((step - warmup) / decay_every)
        return 1.0

    return factor
