"""Evaluate a model on a dataset split: top-1, top-5, loss and samples per second.

Classifiers score one label per image; language models (targets ``(b, n)``) one next token per position, counted
as the samples here (``loss`` is then nats per token and ``bpc = loss / ln 2`` bits per character).
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["evaluate"]


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    max_batches: int | None = None,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Top-1/top-5 accuracy, mean cross-entropy and throughput of ``model`` over ``dataset``.

    Returns:
        ``{"top1", "top5", "loss", "images", "seconds", "images_per_second"}`` (``images`` counts predictions:
        tokens for a language model, which also gets ``bpc``); the time covers the forward passes (with device
        synchronisation) after one warm-up batch, not data loading.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    device = torch.device(device)
    model = model.eval().to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda device: None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    correct1 = correct5 = images = 0
    loss_sum = seconds = 0.0
    for i, (x, y) in enumerate(itertools.islice(loader, max_batches)):
        x, y = x.to(device), y.to(device)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if i == 0:
            model(x)  # warm-up: lazy initialisation and algorithm selection stay out of the timing
        sync(device)
        start = time.perf_counter()
        logits = model(x).float()
        sync(device)
        seconds += time.perf_counter() - start
        token_level = y.dim() == 2
        if token_level:  # language model: one prediction per position
            logits, y = logits.flatten(0, 1), y.flatten()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(dim=1).sum())
        images += len(y)
    if images == 0:
        raise ValueError("the evaluation split is empty")
    out = {"top1": correct1 / images, "top5": correct5 / images, "loss": loss_sum / images, "images": images}
    out.update(seconds=seconds, images_per_second=images / max(seconds, 1e-9))
    if token_level:
        out["bpc"] = out["loss"] / math.log(2.0)
    return out
