"""Triton kernels of :mod:`lambdanet.layers.triton_local` (imported only when that algorithm runs).

Axis legend: b batch | h heads | k query/key depth | u intra-depth | v value depth | n query positions
             m context positions | t kernel offsets (T = KH * KW) | r query rows (n, h) flattened

Shape: q (b, n, h, k), v (b, m, u, v), e (k, u, T), lam (b, k, v) -> y (b, n, h, v); all contiguous

Positions are flattened row-major over an (HM, W) map (a sequence is a map of one row). The offset of context
position m from query n is (dy, dx) = (m // W - n // W, m % W - n % W); it is in scope when
``|dy| <= CH`` and ``|dx| <= CW`` (and ``dx <= 0`` for the causal 1-D case), where it selects the kernel entry
``t = (dy + CH) * KW + dx + CW``. Logits ``a[r, m] = q[r] . e[:, u, t(n, m)]`` are formed tile by tile in registers
from the (small, cache-resident) kernel and applied to a tile of values at once; nothing of size (n, scope^2)
or (n, k, v) is written to memory. The backward pass recomputes the logits.
"""

# Triton's convention: compile-time constants (tl.constexpr) and sizes in capitals; constexpr branches as statements.
# ruff: noqa: N803, SIM108

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["de_kernel", "dq_kernel", "dv_kernel", "forward_kernel"]


@triton.jit
def _scope(n, m, N, W, KH: tl.constexpr, KW: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr, CAUSAL: tl.constexpr):
    """Kernel offset index t (BM, BN) of every (query n, context m) pair and whether it lies in the scope."""
    dy = (m // W)[None, :] - (n // W)[:, None] + CH
    dx = (m % W)[None, :] - (n % W)[:, None] + CW
    ok = (dy >= 0) & (dy < KH) & (dx >= 0) & (dx < KW) & (m < N)[None, :] & (n < N)[:, None]
    if CAUSAL:
        ok = ok & (dx <= CW)
    return dy * KW + dx, ok


@triton.jit
def _logits(q_rows, row_ok, e_u, t, ok, BM: tl.constexpr, BN: tl.constexpr, K: tl.constexpr, UT: tl.constexpr):
    """a[r, m] = sum_k q[r, k] e[k, u, t(r, m)] (zero out of scope), float32; ``e_u`` points at e[0, u, 0]."""
    a = tl.zeros((BM, BN), dtype=tl.float32)
    for k in tl.static_range(K):
        qk = tl.load(q_rows + k, mask=row_ok, other=0.0).to(tl.float32)
        ek = tl.load(e_u + k * UT + t, mask=ok, other=0.0).to(tl.float32)
        a += qk[:, None] * ek
    return a


@triton.jit
def forward_kernel(
    q, v, e, lam, y, N, W,
    H: tl.constexpr, K: tl.constexpr, U: tl.constexpr, V: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_LAM: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """y[r, :] = sum_{u, m} a_u[r, m] v[m, u, :] (+ q[r] @ lam): grid (row tiles, b, value tiles)."""
    pid_r = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    pid_v = tl.program_id(2)
    T: tl.constexpr = KH * KW
    r = pid_r * BM + tl.arange(0, BM)
    row_ok = r < N * H
    n = r // H
    c = pid_v * BV + tl.arange(0, BV)
    c_ok = c < V
    q_rows = q + b * N * H * K + r * K
    v_b = v + b * N * U * V
    acc = tl.zeros((BM, BV), dtype=tl.float32)
    reach = CH * W + CW  # largest |m - n| in the scope, flattened
    n_lo = (pid_r * BM) // H
    n_hi = tl.minimum((pid_r * BM + BM - 1) // H, N - 1)
    m_lo = tl.maximum(n_lo - reach, 0)
    if CAUSAL:
        m_hi = n_hi
    else:
        m_hi = tl.minimum(n_hi + reach, N - 1)
    for m0 in range(m_lo, m_hi + 1, BN):
        m = m0 + tl.arange(0, BN)
        t, ok = _scope(n, m, N, W, KH, KW, CH, CW, CAUSAL)
        ok = ok & row_ok[:, None]
        for u in tl.static_range(U):
            a = _logits(q_rows, row_ok, e + u * T, t, ok, BM, BN, K, U * T)
            vt = tl.load(
                v_b + m[:, None] * (U * V) + u * V + c[None, :], mask=(m < N)[:, None] & c_ok[None, :], other=0.0
            )
            if LOWP:
                acc = tl.dot(a.to(vt.dtype), vt, acc)
            else:
                acc = tl.dot(a, vt.to(tl.float32), acc, input_precision=PREC)
    if HAS_LAM:  # the content lambda, shared by every position of the sample, in the same pass
        kk = tl.arange(0, BK)
        qt = tl.load(q_rows[:, None] + kk[None, :], mask=row_ok[:, None] & (kk < K)[None, :], other=0.0)
        lt = tl.load(lam + b * K * V + kk[:, None] * V + c[None, :], mask=(kk < K)[:, None] & c_ok[None, :], other=0.0)
        acc = tl.dot(qt.to(tl.float32), lt.to(tl.float32), acc, input_precision=PREC)
    out = y + b * N * H * V + r[:, None] * V + c[None, :]
    tl.store(out, acc.to(y.dtype.element_ty), mask=row_ok[:, None] & c_ok[None, :])


@triton.jit
def dq_kernel(
    q, v, e, gy, gq, N, W,
    H: tl.constexpr, K: tl.constexpr, U: tl.constexpr, V: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr,
    CAUSAL: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """gq[r, k] = sum_{u, m} (gy[r] . v[m, u]) e[k, u, t(r, m)] (position part only): grid (row tiles, b)."""
    pid_r = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    T: tl.constexpr = KH * KW
    r = pid_r * BM + tl.arange(0, BM)
    row_ok = r < N * H
    n = r // H
    kk = tl.arange(0, BK)
    gy_rows = gy + b * N * H * V + r * V
    v_b = v + b * N * U * V
    acc = tl.zeros((BM, BK), dtype=tl.float32)
    reach = CH * W + CW
    n_lo = (pid_r * BM) // H
    n_hi = tl.minimum((pid_r * BM + BM - 1) // H, N - 1)
    m_lo = tl.maximum(n_lo - reach, 0)
    if CAUSAL:
        m_hi = n_hi
    else:
        m_hi = tl.minimum(n_hi + reach, N - 1)
    for m0 in range(m_lo, m_hi + 1, BN):
        m = m0 + tl.arange(0, BN)
        t, ok = _scope(n, m, N, W, KH, KW, CH, CW, CAUSAL)
        ok = ok & row_ok[:, None]
        for u in tl.static_range(U):
            ga = tl.zeros((BM, BN), dtype=tl.float32)
            for c0 in tl.static_range(0, V, BV):  # ga = gy @ v_u^T, value depth in chunks
                c = c0 + tl.arange(0, BV)
                g = tl.load(gy_rows[:, None] + c[None, :], mask=row_ok[:, None] & (c < V)[None, :], other=0.0)
                vt = tl.load(
                    v_b + m[None, :] * (U * V) + u * V + c[:, None], mask=(c < V)[:, None] & (m < N)[None, :], other=0.0
                )
                if LOWP:
                    ga = tl.dot(g, vt, ga)
                else:
                    ga = tl.dot(g.to(tl.float32), vt.to(tl.float32), ga, input_precision=PREC)
            ga = tl.where(ok, ga, 0.0)
            for k in tl.static_range(K):
                ek = tl.load(e + k * (U * T) + u * T + t, mask=ok, other=0.0).to(tl.float32)
                col = tl.sum(ga * ek, axis=1)
                acc += tl.where(kk[None, :] == k, col[:, None], 0.0)
    out = gq + b * N * H * K + r[:, None] * K + kk[None, :]
    tl.store(out, acc.to(gq.dtype.element_ty), mask=row_ok[:, None] & (kk < K)[None, :])


@triton.jit
def dv_kernel(
    q, e, gy, gv, N, W,
    H: tl.constexpr, K: tl.constexpr, U: tl.constexpr, V: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr,
    CAUSAL: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """gv[m, u, :] = sum_r a_u[r, m] gy[r, :]: grid (context tiles, b, value tiles); logits recomputed."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    pid_v = tl.program_id(2)
    T: tl.constexpr = KH * KW
    m = pid_m * BN + tl.arange(0, BN)
    c = pid_v * BV + tl.arange(0, BV)
    c_ok = c < V
    q_b = q + b * N * H * K
    gy_b = gy + b * N * H * V
    reach = CH * W + CW
    m_last = tl.minimum(pid_m * BN + BN - 1, N - 1)
    if CAUSAL:
        n_lo = pid_m * BN
    else:
        n_lo = tl.maximum(pid_m * BN - reach, 0)
    n_hi = tl.minimum(m_last + reach, N - 1)
    for u in tl.static_range(U):
        acc = tl.zeros((BN, BV), dtype=tl.float32)
        for r0 in range(n_lo * H, (n_hi + 1) * H, BM):
            r = r0 + tl.arange(0, BM)
            row_ok = r < (n_hi + 1) * H
            n = r // H
            t, ok = _scope(n, m, N, W, KH, KW, CH, CW, CAUSAL)
            ok = ok & row_ok[:, None]
            a = _logits(q_b + r * K, row_ok, e + u * T, t, ok, BM, BN, K, U * T)
            g = tl.load(gy_b + r[:, None] * V + c[None, :], mask=row_ok[:, None] & c_ok[None, :], other=0.0)
            if LOWP:
                acc = tl.dot(tl.trans(a.to(g.dtype)), g, acc)
            else:
                acc = tl.dot(tl.trans(a), g.to(tl.float32), acc, input_precision=PREC)
        out = gv + b * N * U * V + m[:, None] * (U * V) + u * V + c[None, :]
        tl.store(out, acc.to(gv.dtype.element_ty), mask=(m < N)[:, None] & c_ok[None, :])


@triton.jit
def de_kernel(
    q, v, gy, part, B, N, W,
    H: tl.constexpr, K: tl.constexpr, U: tl.constexpr, V: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr,
    CAUSAL: tl.constexpr, PREC: tl.constexpr,
    BM: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    """Partial kernel gradients part[s, k, u, t] = sum_{r in split s} q[r, k] (gy[r] . v[n + offset(t), u]).

    Grid (offset tiles, u, splits): split s walks the (sample, row tile) items s, s + S, ...; the caller sums the
    splits (deterministic, no atomics).
    """
    pid_t = tl.program_id(0)
    u = tl.program_id(1)
    pid_s = tl.program_id(2)
    S = tl.num_programs(2)
    T: tl.constexpr = KH * KW
    HM = N // W
    t = pid_t * BT + tl.arange(0, BT)
    dy = t // KW - CH
    dx = t % KW - CW
    t_ok = t < T
    if CAUSAL:
        t_ok = t_ok & (dx <= 0)
    kk = tl.arange(0, BK)
    acc = tl.zeros((BK, BT), dtype=tl.float32)
    row_tiles = tl.cdiv(N * H, BM)
    for item in range(pid_s, B * row_tiles, S):
        b = (item // row_tiles).to(tl.int64)
        r = (item % row_tiles) * BM + tl.arange(0, BM)
        row_ok = r < N * H
        n = r // H
        mi = (n // W)[:, None] + dy[None, :]
        mj = (n % W)[:, None] + dx[None, :]
        ok = row_ok[:, None] & t_ok[None, :] & (mi >= 0) & (mi < HM) & (mj >= 0) & (mj < W)
        v_m = v + b * N * U * V + (mi * W + mj) * (U * V) + u * V
        gy_rows = gy + b * N * H * V + r * V
        grel = tl.zeros((BM, BT), dtype=tl.float32)
        for c in range(V):
            g = tl.load(gy_rows + c, mask=row_ok, other=0.0).to(tl.float32)
            grel += g[:, None] * tl.load(v_m + c, mask=ok, other=0.0).to(tl.float32)
        qt = tl.load(
            q + b * N * H * K + r[:, None] * K + kk[None, :], mask=row_ok[:, None] & (kk < K)[None, :], other=0.0
        )
        acc = tl.dot(tl.trans(qt.to(tl.float32)), grel, acc, input_precision=PREC)
    out = part + pid_s * (K * U * T) + kk[:, None] * (U * T) + u * T + t[None, :]
    tl.store(out, acc, mask=(kk < K)[:, None] & t_ok[None, :])
