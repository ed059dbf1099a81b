"""Layer benchmark: lambda layers (every algorithm, global and local) against self-attention, a 3x3 convolution
and the ``lambda-networks`` package, over a sweep of resolutions.

Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602, Sec. 4.4, Tables 2 and 4: lambda layers model long-range
interactions without the b h n^2 attention maps of self-attention. Every contender maps (b, d, S, S) to
(b, d, S, S) with the same width d; the attention modules have ``heads`` heads of depth d / heads:

- ``attention (materialised)``: ``softmax(q k^T / sqrt(d_h)) v`` written out, keeping the (b, h, n, n) map, as the
  paper assumed;
- ``attention (sdpa)``: ``torch.nn.functional.scaled_dot_product_attention`` with PyTorch's default choice of
  kernel (flash attention on CPU and CUDA, or memory-efficient attention), whose memory grows linearly in n.

The ``3d`` context times :class:`~lambdanet.layers.LambdaLayer3d` (every algorithm that serves three axes) on
(b, d, T, H, W) volumes against a 3x3x3 convolution and ``lambda-conv3d``, a lambda convolution written the way
``lambda-networks`` writes its 2-D one (separate projections, einsums, the value depth as an extra convolution
axis): torch has no 4-D convolution, so the value depth is folded into the batch of a ``Conv3d(u, k, (rt, r, r))``.

Axis legend: b batch | d channels | h heads | k query/key depth | u intra-depth | v value depth
             n positions (S x S, or T x H x W)
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lambdanet.bench.memory import CONTENDERS, LayerShape, lambda_saved_floats, layer_saved_bytes, total_mib
from lambdanet.bench.timing import forward_backward, median_ms, peak_mib, saved_for_backward_mib, synchronize
from lambdanet.layers import ALGORITHMS, LambdaLayer, LambdaLayer3d
from lambdanet.layers.algorithms import Problem, usable

__all__ = [
    "CHECK_SHAPES",
    "CONTENDERS_3D",
    "LambdaConv3d",
    "LayerBenchConfig",
    "MaterialisedAttention2d",
    "SDPAttention2d",
    "build_contender",
    "check_model",
    "contender_names",
    "growth_exponent",
    "run_layer_bench",
]

LUCID = "lambda-networks"
#: Contenders of the ``3d`` context besides the lambda algorithms.
CONTENDERS_3D = ("lambda-conv3d", "conv3x3x3")


class _TooSlowError(Exception):
    """A case whose first call exceeds the time limit."""


class _Attention2d(nn.Module):
    """Multi-head self-attention over all S x S positions of a (b, d, S, S) map (fused 1x1 q/k/v projection)."""

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=False)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        qkv = self.qkv(x).reshape(b, 3, self.heads, c // self.heads, hh * ww)
        # Fused kernels need unit stride on the head depth; without this copy SDPA silently falls back to the math
        # kernel, which materialises the attention map.
        q, k, v = qkv.permute(1, 0, 2, 4, 3).contiguous().unbind(0)  # b h n d_h
        y = self.attend(q, k, v)
        return y.transpose(-1, -2).reshape(b, c, hh, ww)


class MaterialisedAttention2d(_Attention2d):
    """Self-attention that stores its (b, h, n, n) attention map: ``softmax(q k^T / sqrt(d_h)) v``."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        attn = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)  # b h n n
        return attn @ v


class SDPAttention2d(_Attention2d):
    """Self-attention through ``scaled_dot_product_attention`` (fused flash / memory-efficient kernels)."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v)


class LambdaConv3d(nn.Module):
    """A 3-D lambda layer (content + local position lambdas) written as ``lambda-networks`` writes its 2-D one.

    Shape: (b, d, T, H, W) -> (b, d, T, H, W); position lambdas from ``Conv3d(u, k, scope)`` over (b v, u, T, H, W).
    """

    def __init__(self, dim: int, *, dim_k: int = 16, heads: int = 4, dim_u: int = 1, scope=(3, 7, 7)) -> None:
        super().__init__()
        self.heads, self.dim_k, self.dim_u, self.dim_v = heads, dim_k, dim_u, dim // heads
        self.to_q = nn.Conv3d(dim, dim_k * heads, 1, bias=False)
        self.to_k = nn.Conv3d(dim, dim_k * dim_u, 1, bias=False)
        self.to_v = nn.Conv3d(dim, self.dim_v * dim_u, 1, bias=False)
        self.norm_q, self.norm_v = nn.BatchNorm3d(dim_k * heads), nn.BatchNorm3d(self.dim_v * dim_u)
        self.pos_conv = nn.Conv3d(dim_u, dim_k, scope, padding=tuple(r // 2 for r in scope))

    def forward(self, x: Tensor) -> Tensor:
        b, _, *spatial = x.shape
        q = self.norm_q(self.to_q(x)).reshape(b, self.heads, self.dim_k, -1)  # b h k n
        k = self.to_k(x).reshape(b, self.dim_u, self.dim_k, -1).softmax(dim=-1)  # b u k m
        v = self.norm_v(self.to_v(x)).reshape(b, self.dim_u, self.dim_v, -1)  # b u v m
        y = torch.einsum("bhkn,bkv->bhvn", q, torch.einsum("bukm,buvm->bkv", k, v))
        folded = v.transpose(1, 2).reshape(b * self.dim_v, self.dim_u, *spatial)  # (b v) u T H W
        lam_p = self.pos_conv(folded).reshape(b, self.dim_v, self.dim_k, -1)  # b v k n
        y = y + torch.einsum("bhkn,bvkn->bhvn", q, lam_p)
        return y.reshape(b, -1, *spatial)


def _lucid_available() -> bool:
    try:
        import lambda_networks  # noqa: F401
    except ImportError:
        return False
    return True


def contender_names(*, lucid: bool | None = None) -> tuple[str, ...]:
    """Every contender name ``build_contender`` accepts (``lambda-networks`` only when installed)."""
    lucid = _lucid_available() if lucid is None else lucid
    return (*CONTENDERS, LUCID, *CONTENDERS_3D) if lucid else (*CONTENDERS, *CONTENDERS_3D)


def build_contender3d(name: str, dim: int, scope: tuple[int, int, int], *, heads: int = 4, dim_k: int = 16):
    """The module named ``name`` for (b, dim, T, H, W) inputs: ``lambda <algorithm>`` or one of CONTENDERS_3D."""
    if name.startswith("lambda ") and name.split(" ", 1)[1] in ALGORITHMS:
        return LambdaLayer3d(dim, dim_k=dim_k, heads=heads, scope=scope, algorithm=name.split(" ", 1)[1])
    if name == "lambda-conv3d":
        return LambdaConv3d(dim, dim_k=dim_k, heads=heads, scope=scope)
    if name == "conv3x3x3":
        return nn.Conv3d(dim, dim, 3, padding=1, bias=False)
    raise ValueError(f"name={name!r} is not a 3-D contender; expected 'lambda <algorithm>' or one of {CONTENDERS_3D}")


def build_contender(name: str, dim: int, side: int, *, heads: int = 4, dim_k: int = 16, scope: int | None) -> nn.Module:
    """The module named ``name`` (see :func:`contender_names`) for (b, dim, side, side) inputs.

    ``scope=None`` means global context (lambda layers with global relative embeddings for a ``side`` map).

    Raises:
        ValueError: if ``name`` is unknown or ``lambda-networks`` is not installed.
    """
    if name.startswith("lambda ") and name.split(" ", 1)[1] in ALGORITHMS:
        feat = (side, side) if scope is None else None
        return LambdaLayer(dim, dim_k=dim_k, heads=heads, scope=scope, feat_size=feat, algorithm=name.split(" ", 1)[1])
    if name == "attention (materialised)":
        return MaterialisedAttention2d(dim, heads)
    if name == "attention (sdpa)":
        return SDPAttention2d(dim, heads)
    if name == "conv3x3":
        return nn.Conv2d(dim, dim, 3, padding=1, bias=False)
    if name == LUCID:
        try:
            from lambda_networks import LambdaLayer as LucidLambda
        except ImportError as err:
            raise ValueError(f"name={name!r} needs the lambda-networks package (pip install lambda-networks)") from err
        if scope is None:
            return LucidLambda(dim, dim_k=dim_k, n=side, heads=heads, dim_u=1)
        return LucidLambda(dim, dim_k=dim_k, r=scope, heads=heads, dim_u=1)
    raise ValueError(f"name={name!r} is not a contender; expected one of {contender_names()}")


def _modelled_mib(name: str, shape: LayerShape) -> float | None:
    if name == LUCID:
        # lambda-networks gathers E (n, m, k) for global context (like our einsum) and runs a Conv3d for local.
        kind = "lambda einsum" if shape.scope is None else "lambda conv"
        return total_mib(layer_saved_bytes(kind, shape))
    return total_mib(layer_saved_bytes(name, shape))


@dataclass
class LayerBenchConfig:
    """What ``lambdanet bench layer`` measures.

    Attributes:
        sides: map sides S of the sweep (n = S^2 positions).
        batch, dim, heads, dim_k: layer shape (|u| = 1, |v| = dim / heads).
        scope: local scope of the "local" context.
        volumes: (T, H, W, rt, rh, rw) of the "3d" context: volume and per-axis scope.
        contexts: "global" (attention, global lambda layers), "local" (scope-limited lambda layers) and/or "3d"
            (3-D lambda layers of every algorithm serving 3-D, lambda-conv3d, conv3x3x3 on ``volumes``).
        contenders: names from :func:`contender_names`; attention runs in the global context only, the 3x3
            convolution in the local one.
        reps, warmup, budget_s: timing (median of ``reps`` calls after ``warmup``; at most ``budget_s`` per case).
        memory_budget_mib: a case whose modelled saved memory exceeds this is skipped with a note.
        max_call_s: a case whose first forward + backward call takes longer is skipped with a note.
        device: "cpu" or "cuda".
        dtype: "float32" or "bfloat16" (autocast; lambda layers keep float32 internally).
        channels_last: run with channels_last inputs and modules.
        compile: wrap every module in ``torch.compile``.
        measure_peak: also measure peak live bytes (slow on CPU: every operator goes through Python).
    """

    sides: Sequence[int] = (8, 16, 32)
    batch: int = 2
    dim: int = 64
    heads: int = 4
    dim_k: int = 16
    scope: int = 7
    volumes: Sequence[Sequence[int]] = ((8, 28, 28, 3, 7, 7), (16, 16, 16, 7, 7, 7))
    contexts: Sequence[str] = ("global", "local")
    contenders: Sequence[str] = field(default_factory=contender_names)
    reps: int = 10
    warmup: int = 2
    budget_s: float = 10.0
    memory_budget_mib: float = 2048.0
    max_call_s: float = 5.0
    device: str = "cpu"
    dtype: str = "float32"
    channels_last: bool = False
    compile: bool = False
    measure_peak: bool = True

    def __post_init__(self) -> None:
        if not self.sides or min(self.sides) < 1:
            raise ValueError(f"sides={list(self.sides)} must be a non-empty list of positive integers")
        bad = [c for c in self.contexts if c not in ("global", "local", "3d")]
        if bad or not self.contexts:
            raise ValueError(f"contexts={list(self.contexts)} must hold 'global', 'local' and/or '3d'")
        if any(len(v) != 6 or min(v) < 1 or any(r % 2 == 0 for r in v[3:]) for v in self.volumes):
            raise ValueError(f"volumes={list(self.volumes)} must hold (T, H, W, rt, rh, rw) with odd scopes")
        known = contender_names()
        unknown = [c for c in self.contenders if c not in known]
        if unknown:
            raise ValueError(f"contenders {unknown} unknown; expected names from {known}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype={self.dtype!r} must be 'float32' or 'bfloat16'")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device={self.device!r} must be 'cpu' or 'cuda'")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch.cuda.is_available() is False")
        for key in ("budget_s", "max_call_s", "memory_budget_mib"):
            if not 0 < getattr(self, key) < float("inf"):
                raise ValueError(f"{key}={getattr(self, key)} must be a finite number > 0")
        LayerShape(self.batch, self.dim, 1, self.heads, self.dim_k, 1, self.scope)  # validates the rest


def _cases(cfg: LayerBenchConfig) -> list[tuple[str, str, Any]]:
    cases = []
    for context in cfg.contexts:
        if context == "3d":
            for volume in cfg.volumes:
                for name in cfg.contenders:
                    algorithm = name.split(" ", 1)[1] if name.startswith("lambda ") else None
                    if name in CONTENDERS_3D or (algorithm in ALGORITHMS and usable(algorithm, 3, cfg.device)):
                        cases.append((context, name, tuple(volume)))
            continue
        for side in cfg.sides:
            for name in cfg.contenders:
                if name in CONTENDERS_3D or (name.startswith("lambda ") and not usable(name[7:], 2, cfg.device)):
                    continue
                if context == "local" and name.startswith("attention"):
                    continue  # attention here is global
                if context == "global" and name == "conv3x3":
                    continue  # a 3x3 convolution is local; it is listed with the local context
                cases.append((context, name, side))
    return cases


def _autocast(cfg: LayerBenchConfig) -> Any:
    if cfg.dtype == "bfloat16":
        return torch.autocast(device_type=cfg.device, dtype=torch.bfloat16)
    return nullcontext()


def _measure(cfg: LayerBenchConfig, module: nn.Module, x: Tensor) -> dict[str, float]:
    device = torch.device(cfg.device)
    fn: Callable[[Tensor], Tensor] = torch.compile(module) if cfg.compile else module  # type: ignore[assignment]

    def forward() -> Tensor:
        with _autocast(cfg):
            return fn(x)

    with torch.no_grad():
        sample = forward()
    grad = torch.randn(sample.shape, device=sample.device).to(sample.dtype)
    del sample

    def forward_backward() -> None:
        forward().backward(grad)

    def eager() -> Tensor:
        with _autocast(cfg):
            return module(x)

    if cfg.compile:
        forward_backward()  # compilation is not part of the first call's time
    first = time.perf_counter()
    forward_backward()
    synchronize(device)
    first = time.perf_counter() - first
    if first > cfg.max_call_s:
        raise _TooSlowError(f"one forward+backward took {first:.1f} s > max_call_s={cfg.max_call_s:g} s")

    def inference() -> None:
        with torch.no_grad():
            forward()

    out = {
        "first_call_s": first,
        "fwd_ms": median_ms(inference, reps=cfg.reps, warmup=cfg.warmup, budget_s=cfg.budget_s, device=device),
        "fwd_bwd_ms": median_ms(
            forward_backward, reps=cfg.reps, warmup=cfg.warmup, budget_s=cfg.budget_s, device=device
        ),
        # memory saved for backward is measured in eager mode (compiled graphs save their own selection)
        "saved_mib": saved_for_backward_mib(eager),
    }
    if cfg.measure_peak:
        out["peak_mib"] = peak_mib(forward_backward, device=device)
    return out


def run_layer_bench(cfg: LayerBenchConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run the sweep of ``cfg``; returns {"config", "rows", "notes"} with one row per (context, contender, side).

    Every row has ``context``, ``name``, ``side``, ``n``, ``model_mib`` (modelled saved memory, see
    :mod:`lambdanet.bench.memory`), and either the measurements ``fwd_ms``, ``fwd_bwd_ms``, ``saved_mib``
    (``peak_mib``) or ``skipped`` with the reason. Progress goes to stderr.
    """
    cases = _cases(cfg)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    device = torch.device(cfg.device)
    first_call: dict[tuple[str, str], tuple[int, float]] = {}  # (context, name) -> (n, seconds) of the last size
    for i, (context, name, side) in enumerate(cases, 1):
        if context == "3d":
            rows.append(_volume_row(cfg, name, side, device, notes, progress=progress, label=f"[{i}/{len(cases)}]"))
            continue
        scope = None if context == "global" else cfg.scope
        shape = LayerShape(cfg.batch, cfg.dim, side, cfg.heads, cfg.dim_k, 1, scope)
        row: dict[str, Any] = {"context": context, "name": name, "side": side, "n": side * side}
        modelled = _modelled_mib(name, shape)
        row["model_mib"] = modelled
        if progress:
            print(f"[{i}/{len(cases)}] {context} {name} {side}x{side}", file=sys.stderr, flush=True)
        if modelled is not None and modelled > cfg.memory_budget_mib:
            row["skipped"] = f"modelled {modelled:.0f} MiB saved for backward > budget {cfg.memory_budget_mib:.0f} MiB"
            notes.append(f"{context} {name} at {side}x{side} skipped: {row['skipped']}")
            rows.append(row)
            continue
        if (context, name) in first_call:
            # Extrapolate the previous size's warm forward+backward time quadratically in n (the worst growth here)
            # and skip cases that would exceed the time limit: a global lambda convolution at 96x96 runs for
            # minutes. Not the first call: it carries the process's one-time warm-up (about 0.5 s on CPU).
            n_prev, t_prev = first_call[context, name]
            predicted = t_prev * (side * side / n_prev) ** 2
            if predicted > cfg.max_call_s:
                row["skipped"] = f"predicted {predicted:.0f} s per forward+backward > max_call_s={cfg.max_call_s:g} s"
                notes.append(f"{context} {name} at {side}x{side} skipped: {row['skipped']}")
                first_call[context, name] = (side * side, predicted)
                rows.append(row)
                continue
        try:
            module = build_contender(name, cfg.dim, side, heads=cfg.heads, dim_k=cfg.dim_k, scope=scope).to(device)
            x = torch.randn(cfg.batch, cfg.dim, side, side, device=device, requires_grad=True)
            if cfg.channels_last:
                x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
                try:
                    module = module.to(memory_format=torch.channels_last)
                except RuntimeError:  # 5-D weights (lambda-networks' Conv3d): only the input is channels_last
                    row["note"] = "module weights not channels_last (5-D)"
            row.update(_measure(cfg, module, x))
            first_call[context, name] = (side * side, row["fwd_bwd_ms"] / 1000.0)
        except _TooSlowError as err:
            row["skipped"] = str(err)
            first_call[context, name] = (side * side, math.inf)
            notes.append(f"{context} {name} at {side}x{side} skipped: {err}")
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as err:  # out of memory or a backend refusal
            if device.type == "cuda":
                torch.cuda.empty_cache()
            reason = str(err).splitlines()[0][:160]
            row["skipped"] = f"failed: {type(err).__name__}: {reason}"
            notes.append(f"{context} {name} at {side}x{side} skipped: {row['skipped']}")
        rows.append(row)
    config = asdict(cfg)
    config.update(sides=list(cfg.sides), contexts=list(cfg.contexts), contenders=list(cfg.contenders))
    return {"config": config, "rows": rows, "notes": notes}


def _volume_row(cfg: LayerBenchConfig, name: str, volume: tuple, device, notes: list[str], *, progress, label) -> dict:
    """One ``3d`` case: (b, d, T, H, W) with per-axis scope ``volume[3:]``."""
    spatial, scope = volume[:3], volume[3:]
    row: dict[str, Any] = {"context": "3d", "name": name, "side": "x".join(map(str, spatial)), "scope": scope}
    row["n"] = math.prod(spatial)
    if progress:
        print(f"{label} 3d {name} {row['side']} scope {scope}", file=sys.stderr, flush=True)
    if name.startswith("lambda "):
        problem = Problem(cfg.batch, tuple(spatial), scope, cfg.heads, cfg.dim_k, cfg.dim // cfg.heads)
        row["model_mib"] = sum(lambda_saved_floats(name.split(" ", 1)[1], problem, cfg.dim).values()) * 4 / 2**20
        if row["model_mib"] > cfg.memory_budget_mib:
            row["skipped"] = f"modelled {row['model_mib']:.0f} MiB saved for backward > budget"
            notes.append(f"3d {name} at {row['side']} skipped: {row['skipped']}")
            return row
    try:
        module = build_contender3d(name, cfg.dim, scope, heads=cfg.heads, dim_k=cfg.dim_k).to(device)
        x = torch.randn(cfg.batch, cfg.dim, *spatial, device=device, requires_grad=True)
        row.update(_measure(cfg, module, x))
    except (_TooSlowError, torch.OutOfMemoryError, MemoryError, RuntimeError) as err:
        row["skipped"] = str(err).splitlines()[0][:160]
        notes.append(f"3d {name} at {row['side']} skipped: {row['skipped']}")
    return row


def growth_exponent(rows: list[dict[str, Any]], name: str, context: str, key: str) -> float | None:
    """Least-squares slope of log(``key``) against log(n) for one contender (2 = quadratic, 1 = linear)."""
    pts = [
        (math.log(r["n"]), math.log(r[key]))
        for r in rows
        if r["name"] == name and r["context"] == context and r.get(key, 0) > 0
    ]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    var = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / var if var else None


# Small shapes where the memory model is checked against measurement: (batch, dim, side, scope).
CHECK_SHAPES: tuple[tuple[int, int, int, int | None], ...] = (
    (2, 64, 16, None),
    (2, 64, 16, 7),
    (4, 32, 24, 5),
    (8, 64, 8, 23),
)


def _usable_on_cpu(kind: str) -> bool:
    return not kind.startswith("lambda ") or usable(kind[7:], 2, "cpu")


def check_model(
    shapes: tuple[tuple[int, int, int, int | None], ...] = CHECK_SHAPES,
    kinds: tuple[str, ...] = CONTENDERS,
    *,
    measure_peak: bool = False,
) -> list[dict[str, object]]:
    """Measure saved-for-backward memory of each layer kind at ``shapes`` and compare it with the memory model
    (:mod:`lambdanet.bench.memory`).

    Returns one row per (shape, kind) with ``model_mib``, ``saved_mib``, ``ratio`` (measured / model) and the
    model's dominant term; with ``measure_peak`` also the peak of live bytes of forward + backward.
    """
    rows: list[dict[str, object]] = []
    for batch, dim, side, scope in shapes:
        shape = LayerShape(batch, dim, side, scope=scope)
        x = torch.randn(batch, dim, side, side, requires_grad=True)
        for kind in kinds:
            if (kind.startswith("attention") and scope is not None) or not _usable_on_cpu(kind):
                continue
            module = build_contender(kind, dim, side, scope=scope)
            terms = layer_saved_bytes(kind, shape)
            model = total_mib(terms)
            saved = saved_for_backward_mib(lambda module=module, x=x: module(x))
            row: dict[str, object] = {
                "shape": f"b{batch} d{dim} {side}x{side}",
                "scope": "global" if scope is None else scope,
                "kind": kind,
                "model_mib": model,
                "saved_mib": saved,
                "ratio": saved / model,
                "dominant term": max(terms, key=terms.__getitem__),
            }
            if measure_peak:
                row["peak_mib"] = peak_mib(forward_backward(module, x))
            rows.append(row)
    return rows
