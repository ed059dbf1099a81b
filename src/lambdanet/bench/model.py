"""Model benchmark: training and inference images per second and memory of registered models, with parameters and
multiply-accumulates beside them.

Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602, Table 13 (``tab:hybrid_lambdanetworks``): inference
throughput of ResNet-50 (7240 ex/s), the all-lambda LambdaResNet-50 (1160 ex/s) and the C4 hybrid (4980 ex/s),
8 TPUv3 cores, float32. Models are named like ``lambda_resnet50:placement=CCLL`` (registry name, then overrides
passed to :func:`lambdanet.create_model`).
"""

from __future__ import annotations

import ast
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from lambdanet.bench.timing import median_ms, peak_mib, saved_for_backward_mib

__all__ = [
    "DEFAULT_MODELS",
    "PAPER_TABLE13_EX_S",
    "ModelBenchConfig",
    "build_model",
    "parse_model_spec",
    "run_model_bench",
]

# Table 13's three rows: C C C C, L L L L and C C L L (LambdaResNet-50-C4).
DEFAULT_MODELS = ("resnet50", "lambda_resnet50", "lambda_resnet50:placement=CCLL")

# Table 13: inference examples per second on 8 TPUv3 cores, float32, 224x224.
PAPER_TABLE13_EX_S = {"resnet50": 7240.0, "lambda_resnet50": 1160.0, "lambda_resnet50:placement=CCLL": 4980.0}


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets: ``a=1,b=(1,2)`` -> ['a=1', 'b=(1,2)']."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p for p in (s.strip() for s in parts) if p]


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name"`` or ``"name:key=value,key=value"`` -> (name, overrides); values are Python literals or strings.

    Raises:
        ValueError: if an override is not ``key=value``.
    """
    name, _, rest = spec.partition(":")
    overrides: dict[str, Any] = {}
    for item in _split_top(rest):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"model spec {spec!r}: override {item!r} must be key=value")
        try:
            overrides[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value.strip()
    return name.strip(), overrides


def build_model(spec: str, *, device: str | torch.device = "cpu") -> tuple[nn.Module, tuple[int, ...]]:
    """Create the model of ``spec`` on ``device``; returns it with its native input size (channels, H, W)."""
    import lambdanet

    name, overrides = parse_model_spec(spec)
    model = lambdanet.create_model(name, **overrides)
    info = lambdanet.model_info(name)
    size = tuple(info.input_size)
    if "img_size" in overrides:  # fixed-size models (global position embeddings) built for another size
        side = overrides["img_size"]
        size = (size[0], *((side, side) if isinstance(side, int) else tuple(side)))
    return model.to(device), size


@dataclass
class ModelBenchConfig:
    """What ``lambdanet bench model`` measures.

    Attributes:
        models: model specs (``name[:key=value,...]``).
        batch: images per step.
        image_size: square input side; ``None`` = each model's native size.
        train, infer: measure training steps (forward, cross-entropy, backward, SGD step) and/or inference.
        reps, warmup, budget_s: timing (median of ``reps`` calls after ``warmup``; at most ``budget_s`` per model).
        device, dtype, channels_last, compile: as for the layer benchmark; bf16 is autocast.
        measure_peak: also measure peak live bytes of a training step (slow on CPU).
    """

    models: tuple[str, ...] = DEFAULT_MODELS
    batch: int = 8
    image_size: int | None = None
    train: bool = True
    infer: bool = True
    reps: int = 5
    warmup: int = 1
    budget_s: float = 30.0
    device: str = "cpu"
    dtype: str = "float32"
    channels_last: bool = False
    compile: bool = False
    measure_peak: bool = False

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models must name at least one model")
        if self.batch < 1:
            raise ValueError(f"batch={self.batch} must be >= 1")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size={self.image_size} must be a positive integer or None")
        if not 0 < self.budget_s < float("inf"):
            raise ValueError(f"budget_s={self.budget_s} must be a finite number > 0")
        if not (self.train or self.infer):
            raise ValueError("train and infer are both False: nothing to measure")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype={self.dtype!r} must be 'float32' or 'bfloat16'")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device={self.device!r} must be 'cpu' or 'cuda'")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch.cuda.is_available() is False")


def _stats(spec: str, size: tuple[int, ...]) -> tuple[int, int]:
    import lambdanet

    name, overrides = parse_model_spec(spec)
    with torch.device("meta"):
        model = lambdanet.create_model(name, **overrides)
    stats = lambdanet.model_stats(model, size)
    return stats.params, stats.macs


def _bench_one(cfg: ModelBenchConfig, spec: str) -> dict[str, Any]:
    device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    model, size = build_model(spec, device=device)
    if cfg.image_size is not None:
        size = (size[0], cfg.image_size, cfg.image_size)
    params, macs = _stats(spec, size)
    row: dict[str, Any] = {"model": spec, "input": "x".join(map(str, size)), "params_m": params / 1e6}
    row["gmacs"] = macs / 1e9
    if spec in PAPER_TABLE13_EX_S and size[1:] == (224, 224):
        row["paper_ex_s"] = PAPER_TABLE13_EX_S[spec]
    x = torch.randn(cfg.batch, *size, device=device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    fn = torch.compile(model) if cfg.compile else model
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16) if cfg.dtype == "bfloat16" else nullcontext()
    )
    if cfg.infer:
        model.eval()

        def infer() -> None:
            with torch.no_grad(), autocast:
                fn(x)

        ms = median_ms(infer, reps=cfg.reps, warmup=cfg.warmup, budget_s=cfg.budget_s, device=device)
        row["infer_ms"] = ms
        row["infer_img_s"] = cfg.batch / ms * 1e3
    if cfg.train:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        with torch.no_grad(), autocast:
            classes = fn(x).shape[-1]
        target = torch.randint(0, classes, (cfg.batch,), device=device)

        def forward_loss() -> torch.Tensor:
            with autocast:
                return nn.functional.cross_entropy(fn(x).float(), target)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            forward_loss().backward()
            opt.step()

        ms = median_ms(step, reps=cfg.reps, warmup=cfg.warmup, budget_s=cfg.budget_s, device=device)
        row["train_ms"] = ms
        row["train_img_s"] = cfg.batch / ms * 1e3
        row["saved_mib"] = saved_for_backward_mib(forward_loss)
        if cfg.measure_peak or device.type == "cuda":
            row["peak_mib"] = peak_mib(step, device=device)
    return row


def run_model_bench(cfg: ModelBenchConfig, *, progress: bool = True) -> dict[str, Any]:
    """Measure every model of ``cfg``; returns {"config", "rows", "notes"} (a model that fails is skipped)."""
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for i, spec in enumerate(cfg.models, 1):
        if progress:
            print(f"[{i}/{len(cfg.models)}] {spec}", file=sys.stderr, flush=True)
        try:
            rows.append(_bench_one(cfg, spec))
        except (torch.OutOfMemoryError, MemoryError) as err:
            if cfg.device == "cuda":
                torch.cuda.empty_cache()
            notes.append(f"{spec} skipped: out of memory ({str(err).splitlines()[0][:120]})")
            rows.append({"model": spec, "skipped": "out of memory"})
    config = asdict(cfg)
    config["models"] = list(cfg.models)
    return {"config": config, "rows": rows, "notes": notes}
