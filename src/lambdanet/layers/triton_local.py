"""The ``triton`` algorithm for local position lambdas: one fused Triton kernel per pass, logits kept on chip.

Axis legend: b batch | h heads | k query/key depth | u intra-depth | v value depth | S.. spatial axes (1 or 2)
             K.. kernel sides (odd) | n query positions | m context positions | t kernel offsets

Shape: q (b, S.., h, k), v (b, S.., u, v), weight (k, u, K..), lam_c (b, k, v) -> y (b, S.., h, v)

Computes the same sum as :func:`lambdanet.layers.blocked.blocked_output` (the contract is identical)::

    y[n, h] = q[n, h] . (lam_c + sum_{u, m in scope(n)} E[:, u, m - n + c] v[m, u]^T),   c = K // 2 per axis

Each program of the forward kernel takes a tile of (position, head) query rows, walks the context positions its
scope can reach, forms the logits ``q_n . E[m - n + c]`` for a tile of context positions in registers (a gather
from the small kernel table, zero outside the scope) and applies them to that tile of values with one matrix
product, accumulating in float32; the content lambda is applied in the same pass. No (n, scope^2) logits and no
(n, k, v) position lambdas are written to memory. The backward pass recomputes the logits: one kernel for the
query gradient, one for the value gradient and one for the kernel gradient (per-split partial sums added by the
caller, deterministic); the content-lambda terms of the backward pass are plain matrix products.

Inputs may be float32, bfloat16 or float16 (float32 accumulation either way; low-precision inputs give
low-precision outputs and gradients). Float32 matrix products inside the kernels run on tensor cores as three
TF32 products (about float32 accuracy), or as one when ``torch.backends.cuda.matmul.allow_tf32`` is set. Scopes
larger than the map are cropped first (exact).

Triton is an optional extra (``pip install lambdanet[triton]``): this module imports it only when the kernels run.
On a CPU the kernels run in Triton's interpreter when ``TRITON_INTERPRET=1`` is set before Triton is first
imported (slow: for tests only).
"""

from __future__ import annotations

import importlib.util
import math
import os
from types import ModuleType

import torch
from torch import Tensor

__all__ = ["triton_available", "triton_causal_position_output", "triton_position_output"]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules (import blocked)
        return False


def triton_available(device: torch.device | str) -> bool:
    """Whether the Triton kernels can run on ``device``: CUDA with triton installed, or a CPU with
    ``TRITON_INTERPRET=1`` and triton and numpy installed (the interpreter). Imports nothing."""
    device = torch.device(device)
    if not _installed("triton"):
        return False
    if device.type == "cuda":
        return torch.cuda.is_available()
    if device.type == "cpu":
        return _interpreting() and _installed("numpy")
    return False


def _kernels() -> ModuleType:
    from lambdanet.layers import _triton_kernels  # lazy: triton is optional

    return _triton_kernels


def _pow2(x: int, low: int = 16) -> int:
    return max(low, 1 << (x - 1).bit_length())


class _Config:
    """Geometry (positions flattened row-major over an (HM, W) map) and tile sizes of one call."""

    def __init__(self, q: Tensor, v: Tensor, kernel: tuple[int, int], width: int, causal: bool) -> None:
        self.b, self.n, self.h, self.k = q.shape
        self.u, self.dv = v.shape[2], v.shape[3]
        self.width, self.causal = width, causal
        self.kh, self.kw = kernel
        self.ch, self.cw = self.kh // 2, self.kw // 2
        # Low-precision matrix products (float32 accumulation) on GPUs; Triton's interpreter (3.9) multiplies
        # bfloat16 matrices wrongly, so there the low-precision inputs are multiplied in float32.
        self.lowp = q.dtype != torch.float32 and not _interpreting()
        # Float32 products on tensor cores: three TF32 products (about float32 accuracy), or one when PyTorch
        # allows TF32 for matrix products; exact IEEE products in the interpreter.
        if q.device.type != "cuda" or _interpreting():
            self.prec = "ieee"
        else:
            self.prec = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3"
        self.bk = _pow2(self.k)
        self.hp = _pow2(self.h, low=1)  # a tile holds bmn positions with all their heads: bmn * hp query rows
        if _interpreting():  # small tiles: the tests cover several tiles per map on tiny shapes
            self.bmn, self.bn, self.bv, self.bt, self.splits = max(1, 16 // self.hp), 16, 16, 16, 2
        else:
            self.bmn, self.bn, self.bt = max(1, 64 // self.hp), 64, 64
            self.bv = min(64, _pow2(self.dv))
            tiles = math.ceil(self.kh * self.kw / self.bt) * self.u
            sms = torch.cuda.get_device_properties(q.device).multi_processor_count
            self.splits = max(1, min(self.b * math.ceil(self.n / self.bmn), -(-4 * sms // tiles)))

    def common(self) -> dict[str, object]:
        return {
            "H": self.h, "K": self.k, "U": self.u, "V": self.dv, "KH": self.kh, "KW": self.kw,
            "CH": self.ch, "CW": self.cw, "CAUSAL": self.causal,
        }  # fmt: skip


class _TritonLocal(torch.autograd.Function):
    """Fused local position output (+ content lambda) on (b, n, h, k) / (b, m, u, v) contiguous tensors."""

    @staticmethod
    def forward(ctx, q, v, weight, lam_c, width, causal):  # type: ignore[override]
        kern, triton = _kernels(), _triton()
        cfg = _Config(q, v, tuple(weight.shape[2:]), width, causal)
        y = q.new_empty(cfg.b, cfg.n, cfg.h, cfg.dv)
        grid = (triton.cdiv(cfg.n, cfg.bmn), cfg.b, triton.cdiv(cfg.dv, cfg.bv))
        kern.forward_kernel[grid](
            q, v, weight, lam_c if lam_c is not None else q, y, cfg.n, cfg.width, **cfg.common(),
            HAS_LAM=lam_c is not None, LOWP=cfg.lowp, PREC=cfg.prec, BMN=cfg.bmn, HP=cfg.hp, BN=cfg.bn, BK=cfg.bk,
            BV=cfg.bv,
        )  # fmt: skip
        ctx.save_for_backward(q, v, weight, lam_c)
        ctx.cfg = cfg
        return y

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        q, v, weight, lam_c = ctx.saved_tensors
        cfg: _Config = ctx.cfg
        kern, triton = _kernels(), _triton()
        grad = grad.contiguous()
        need_q, need_v, need_w, need_lam = ctx.needs_input_grad[:4]
        grad_q = grad_v = grad_w = grad_lam = None
        opts = {"LOWP": cfg.lowp, "PREC": cfg.prec, "BMN": cfg.bmn, "HP": cfg.hp, "BN": cfg.bn}
        if need_q:
            grad_q = torch.empty_like(q)
            grid = (triton.cdiv(cfg.n, cfg.bmn), cfg.b)
            kern.dq_kernel[grid](
                q, v, weight, grad, grad_q, cfg.n, cfg.width, **cfg.common(), **opts, BK=cfg.bk, BV=cfg.bv
            )
            if lam_c is not None:  # content part: gy @ lam_c^T
                y_c = torch.bmm(grad.view(cfg.b, -1, cfg.dv).float(), lam_c.float().transpose(1, 2))
                grad_q = (grad_q.float() + y_c.view(grad_q.shape)).to(q.dtype)
        if need_v:
            grad_v = torch.empty_like(v)
            grid = (triton.cdiv(cfg.n, cfg.bn), cfg.b, triton.cdiv(cfg.dv, cfg.bv))
            kern.dv_kernel[grid](q, weight, grad, grad_v, cfg.n, cfg.width, **cfg.common(), **opts, BV=cfg.bv)
        if need_w:
            t = cfg.kh * cfg.kw
            part = torch.zeros(cfg.splits, cfg.k, cfg.u, t, device=q.device, dtype=torch.float32)
            grid = (triton.cdiv(t, cfg.bt), cfg.u, cfg.splits)
            kern.de_kernel[grid](
                q, v, grad, part, cfg.b, cfg.n, cfg.width, **cfg.common(),
                PREC=cfg.prec, BMN=cfg.bmn, HP=cfg.hp, BT=cfg.bt, BK=cfg.bk,
            )  # fmt: skip
            grad_w = part.sum(0).view(weight.shape).to(weight.dtype)
        if need_lam and lam_c is not None:
            q_rows, g_rows = q.view(cfg.b, -1, cfg.k).float(), grad.view(cfg.b, -1, cfg.dv).float()
            grad_lam = torch.bmm(q_rows.transpose(1, 2), g_rows).to(lam_c.dtype)
        return grad_q, grad_v, grad_w, grad_lam, None, None


def _triton() -> ModuleType:
    import triton  # lazy: triton is optional

    return triton


def _crop(weight: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """Drop kernel offsets no pair of positions of the map can reach (exact; autograd pads the gradient back)."""
    slices = [slice(None), slice(None)]
    for side, size in zip(weight.shape[2:], spatial):
        c, keep = side // 2, min(side // 2, size - 1)
        slices.append(slice(c - keep, c + keep + 1))
    return weight[tuple(slices)]


def _check(name: str, q: Tensor, v: Tensor, weight: Tensor, lam_c: Tensor | None, dims: tuple[int, ...]) -> int:
    """Validate the arguments (one-line errors); returns the number of spatial axes."""
    if q.dim() - 3 not in dims:
        raise ValueError(f"{name}: q has shape {tuple(q.shape)}, expected (b, S.., h, k) with {dims} spatial axes")
    d = q.dim() - 3
    if v.dim() != q.dim() or v.shape[: 1 + d] != q.shape[: 1 + d]:
        raise ValueError(f"{name}: v has shape {tuple(v.shape)}, expected (b, S.., u, v) with q's (b, S..)")
    b, k, u, dv = q.shape[0], q.shape[-1], v.shape[-2], v.shape[-1]
    if weight.dim() != 2 + d or weight.shape[:2] != (k, u) or any(s % 2 == 0 for s in weight.shape[2:]):
        raise ValueError(f"{name}: weight has shape {tuple(weight.shape)}, expected (k={k}, u={u}, K..) with odd K")
    if lam_c is not None and lam_c.shape != (b, k, dv):
        raise ValueError(f"{name}: lam_c has shape {tuple(lam_c.shape)}, expected (b, k, v) = ({b}, {k}, {dv})")
    for arg, x in (("q", q), ("v", v), ("weight", weight), ("lam_c", lam_c)):
        if x is not None and x.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name}: {arg} has dtype {x.dtype}, expected float32, bfloat16 or float16")
        if x is not None and x.device != q.device:
            raise ValueError(f"{name}: {arg} is on {x.device}, expected q's device {q.device}")
    if v.dtype != q.dtype:
        raise ValueError(f"{name}: v has dtype {v.dtype}, expected q's dtype {q.dtype}")
    if not triton_available(q.device):
        why = (
            "needs CUDA with triton installed, or a CPU with TRITON_INTERPRET=1 (Triton's interpreter) and triton "
            "and numpy installed (pip install lambdanet[triton])"
        )
        raise ValueError(f"{name}: device={q.device} cannot run the triton algorithm; it {why}")
    if q.device.type == "cpu" and type(_triton().language.zeros).__name__ != "InterpretedFunction":
        raise ValueError(
            f"{name}: TRITON_INTERPRET=1 was set after triton was first imported (importing torch or lambdanet "
            "may import it); set it in the environment before Python starts"
        )
    return d


@torch.compiler.disable  # torch.compile runs the kernels as they are (a graph break); not exportable
def _run(q: Tensor, v: Tensor, weight: Tensor, lam_c: Tensor | None, causal: bool) -> Tensor:
    spatial = tuple(q.shape[1:-2])
    weight = _crop(weight, spatial)
    if len(spatial) == 1:  # a sequence is a map of one row
        spatial, weight = (1, spatial[0]), weight.unsqueeze(2)
    b, h, dv = q.shape[0], q.shape[-2], v.shape[-1]
    n = math.prod(spatial)
    q2 = q.reshape(b, n, h, q.shape[-1]).contiguous()
    v2 = v.reshape(b, n, v.shape[-2], dv).contiguous()
    lam = None if lam_c is None else lam_c.contiguous()
    y = _TritonLocal.apply(q2, v2, weight.contiguous(), lam, spatial[1], causal)
    return y.view(*q.shape[:-1], dv)


def triton_position_output(q: Tensor, v: Tensor, weight: Tensor, lam_c: Tensor | None = None) -> Tensor:
    """Local lambda output ``q^T (lambda_c + lambda_p)`` by the fused Triton kernel (blocked_output's contract).

    Args:
        q: (b, S.., h, k) queries, one or two spatial axes (any strides).
        v: (b, S.., u, v) values (any strides), q's dtype.
        weight: (k, u, K..) relative position kernel, odd sides (cropped to the map here).
        lam_c: optional (b, k, v) content lambda added to every position lambda (fused into the same pass).

    Returns:
        (b, S.., h, v) in q's dtype.

    Raises:
        ValueError: shapes that do not fit, an unsupported dtype, or a device the kernels cannot run on.
    """
    _check("triton_position_output", q, v, weight, lam_c, (1, 2))
    return _run(q, v, weight, lam_c, causal=False)


def triton_causal_position_output(q: Tensor, v: Tensor, weight: Tensor, lam_c: Tensor | None = None) -> Tensor:
    """Causal local lambda output over a sequence: only offsets ``m - n`` in ``[-(K // 2), 0]`` are used.

    Equals ``triton_position_output(q, v, causal_kernel(weight), lam_c)`` (the kernel's future half zeroed), but
    skips the future half of the scope instead of multiplying it by zero; the future half of the kernel gets a
    zero gradient.

    Args:
        q: (b, L, h, k) queries.
        v: (b, L, u, v) values.
        weight: (k, u, K) relative kernel, K odd.
        lam_c: optional (b, k, v) lambda added to every position lambda.

    Returns:
        (b, L, h, v) in q's dtype.
    """
    _check("triton_causal_position_output", q, v, weight, lam_c, (1,))
    return _run(q, v, weight, lam_c, causal=True)
