"""Triton kernels of :mod:`lambdanet.layers.triton_local` (imported only when that algorithm runs).

Axis legend: b batch | h heads (HP: padded to a power of two) | k query/key depth | u intra-depth | v value depth
             n query positions | m context positions | t kernel offsets (T = KH * KW) | r query rows (n, h)

Shape: q (b, n, h, k), v (b, m, u, v), e (k, u, T), lam (b, k, v) -> y (b, n, h, v); all contiguous

Positions are flattened row-major over an (HM, W) map (a sequence is a map of one row). The offset of context
position m from query n is (dy, dx) = (m // W - n // W, m % W - n % W); it is in scope when
``|dy| <= CH`` and ``|dx| <= CW`` (and ``dx <= 0`` for the causal 1-D case), where it selects the kernel entry
``t = (dy + CH) * KW + dx + CW``. A tile holds BMN query positions and all their heads, BMN * HP rows ordered
(n, h): the gathers that depend on positions only (kernel entries, values at an offset) are done once per position
and broadcast over the heads. Logits ``a[r, m] = q[r] . e[:, u, t(n, m)]`` are formed tile by tile in registers
from the (small, cache-resident) kernel and applied to a tile of values with one matrix product; nothing of size
(n, scope^2) or (n, k, v) is written to memory. The backward pass recomputes the logits.
"""

# Triton's convention: compile-time constants (tl.constexpr) and sizes in capitals; constexpr branches as statements.
# ruff: noqa: N803, SIM108

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["de_kernel", "dq_kernel", "dv_kernel", "forward_kernel"]


@triton.jit
def _scope(n, m, N, W, KH: tl.constexpr, KW: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr, CAUSAL: tl.constexpr):
    """Kernel offset index t (BMN, BN) of every (query n, context m) pair and whether it lies in the scope."""
    dy = (m // W)[None, :] - (n // W)[:, None] + CH
    dx = (m % W)[None, :] - (n % W)[:, None] + CW
    ok = (dy >= 0) & (dy < KH) & (dx >= 0) & (dx < KW) & (m < N)[None, :] & (n < N)[:, None]
    if CAUSAL:
        ok = ok & (dx <= CW)
    return dy * KW + dx, ok


@triton.jit
def _logits(q3, q3_ok, e_u, t, ok, BMN: tl.constexpr, HP: tl.constexpr, BN: tl.constexpr, K: tl.constexpr,
            UT: tl.constexpr):  # fmt: skip
    """a[(n, h), m] = sum_k q[n, h, k] e[k, u, t(n, m)] (zero out of scope) as (BMN * HP, BN) float32.

    ``q3`` (BMN, HP) points at q[n, h, 0]; ``e_u`` at e[0, u, 0]. One gather of the kernel per position and k.
    """
    a = tl.zeros((BMN, HP, BN), dtype=tl.float32)
    for k in tl.static_range(K):
        qk = tl.load(q3 + k, mask=q3_ok, other=0.0).to(tl.float32)
        ek = tl.load(e_u + k * UT + t, mask=ok, other=0.0).to(tl.float32)
        a += qk[:, :, None] * ek[:, None, :]
    return tl.reshape(a, (BMN * HP, BN))


@triton.jit
def _context_range(pid_n, N, W, BMN: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr, CAUSAL: tl.constexpr):
    """First and last context position (flattened) that the scopes of query block ``pid_n`` reach."""
    reach = CH * W + CW  # largest |m - n| in the scope, flattened
    n_lo = pid_n * BMN
    n_hi = tl.minimum(n_lo + BMN - 1, N - 1)
    m_lo = tl.maximum(n_lo - reach, 0)
    if CAUSAL:
        m_hi = n_hi
    else:
        m_hi = tl.minimum(n_hi + reach, N - 1)
    return m_lo, m_hi


@triton.jit
def forward_kernel(
    q, v, e, lam, y, N, W,
    H: tl.constexpr, K: tl.constexpr, U: tl.constexpr, V: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_LAM: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
    BMN: tl.constexpr, HP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """y[r, :] = sum_{u, m} a_u[r, m] v[m, u, :] (+ q[r] @ lam): grid (position tiles, b, value tiles)."""
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    pid_v = tl.program_id(2)
    T: tl.constexpr = KH * KW
    BM: tl.constexpr = BMN * HP
    n = pid_n * BMN + tl.arange(0, BMN)
    hh = tl.arange(0, HP)
    q3 = q + b * N * H * K + n[:, None] * (H * K) + hh[None, :] * K
    q3_ok = (n < N)[:, None] & (hh < H)[None, :]
    rr = tl.arange(0, BM)  # rows (n, h) of the tile
    rn = pid_n * BMN + rr // HP
    rh = rr % HP
    r_ok = (rn < N) & (rh < H)
    c = pid_v * BV + tl.arange(0, BV)
    c_ok = c < V
    v_b = v + b * N * U * V
    acc = tl.zeros((BM, BV), dtype=tl.float32)
    m_lo, m_hi = _context_range(pid_n, N, W, BMN, CH, CW, CAUSAL)
    for m0 in range(m_lo, m_hi + 1, BN):
        m = m0 + tl.arange(0, BN)
        t, ok = _scope(n, m, N, W, KH, KW, CH, CW, CAUSAL)
        for u in tl.static_range(U):
            a = _logits(q3, q3_ok, e + u * T, t, ok, BMN, HP, BN, K, U * T)
            v_ptr = v_b + m[:, None] * (U * V) + u * V + c[None, :]
            vt = tl.load(v_ptr, mask=(m < N)[:, None] & c_ok[None, :], other=0.0)
            if LOWP:
                acc = tl.dot(a.to(vt.dtype), vt, acc)
            else:
                acc = tl.dot(a, vt.to(tl.float32), acc, input_precision=PREC)
    q_rows = q + b * N * H * K + rn * (H * K) + rh * K
    if HAS_LAM:  # the content lambda, shared by every position of the sample, in the same pass
        kk = tl.arange(0, BK)
        qt = tl.load(q_rows[:, None] + kk[None, :], mask=r_ok[:, None] & (kk < K)[None, :], other=0.0)
        lt = tl.load(lam + b * K * V + kk[:, None] * V + c[None, :], mask=(kk < K)[:, None] & c_ok[None, :], other=0.0)
        acc = tl.dot(qt.to(tl.float32), lt.to(tl.float32), acc, input_precision=PREC)
    out = y + b * N * H * V + (rn * (H * V) + rh * V)[:, None] + c[None, :]
    tl.store(out, acc.to(y.dtype.element_ty), mask=r_ok[:, None] & c_ok[None, :])


@triton.jit
def dq_kernel(
    q, v, e, gy, gq, N, W,
    H: tl.constexpr, K: tl.constexpr, U: tl.constexpr, V: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr,
    CAUSAL: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
    BMN: tl.constexpr, HP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """gq[r, k] = sum_{u, m} (gy[r] . v[m, u]) e[k, u, t(r, m)] (position part only): grid (position tiles, b)."""
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    T: tl.constexpr = KH * KW
    BM: tl.constexpr = BMN * HP
    n = pid_n * BMN + tl.arange(0, BMN)
    hh = tl.arange(0, HP)
    kk = tl.arange(0, BK)
    rr = tl.arange(0, BM)
    rn = pid_n * BMN + rr // HP
    rh = rr % HP
    r_ok = (rn < N) & (rh < H)
    gy_rows = gy + b * N * H * V + rn * (H * V) + rh * V
    v_b = v + b * N * U * V
    acc = tl.zeros((BMN, HP, BK), dtype=tl.float32)
    m_lo, m_hi = _context_range(pid_n, N, W, BMN, CH, CW, CAUSAL)
    for m0 in range(m_lo, m_hi + 1, BN):
        m = m0 + tl.arange(0, BN)
        t, ok = _scope(n, m, N, W, KH, KW, CH, CW, CAUSAL)
        for u in tl.static_range(U):
            ga = tl.zeros((BM, BN), dtype=tl.float32)
            for c0 in tl.static_range(0, V, BV):  # ga = gy @ v_u^T, value depth in chunks
                c = c0 + tl.arange(0, BV)
                g = tl.load(gy_rows[:, None] + c[None, :], mask=r_ok[:, None] & (c < V)[None, :], other=0.0)
                v_ptr = v_b + m[None, :] * (U * V) + u * V + c[:, None]
                vt = tl.load(v_ptr, mask=(c < V)[:, None] & (m < N)[None, :], other=0.0)
                if LOWP:
                    ga = tl.dot(g, vt, ga)
                else:
                    ga = tl.dot(g.to(tl.float32), vt.to(tl.float32), ga, input_precision=PREC)
            ga3 = tl.reshape(ga, (BMN, HP, BN))
            for k in tl.static_range(K):
                ek = tl.load(e + k * (U * T) + u * T + t, mask=ok, other=0.0).to(tl.float32)
                col = tl.sum(ga3 * ek[:, None, :], axis=2)  # (BMN, HP)
                acc += tl.where(kk[None, None, :] == k, col[:, :, None], 0.0)
    out = gq + b * N * H * K + n[:, None, None] * (H * K) + hh[None, :, None] * K + kk[None, None, :]
    ok3 = (n < N)[:, None, None] & (hh < H)[None, :, None] & (kk < K)[None, None, :]
    tl.store(out, acc.to(gq.dtype.element_ty), mask=ok3)


@triton.jit
def dv_kernel(
    q, e, gy, gv, N, W,
    H: tl.constexpr, K: tl.constexpr, U: tl.constexpr, V: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr,
    CAUSAL: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
    BMN: tl.constexpr, HP: tl.constexpr, BN: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """gv[m, u, :] = sum_r a_u[r, m] gy[r, :]: grid (context tiles, b, value tiles); logits recomputed."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    pid_v = tl.program_id(2)
    T: tl.constexpr = KH * KW
    BM: tl.constexpr = BMN * HP
    m = pid_m * BN + tl.arange(0, BN)
    c = pid_v * BV + tl.arange(0, BV)
    c_ok = c < V
    hh = tl.arange(0, HP)
    rr = tl.arange(0, BM)
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
        for n0 in range(n_lo, n_hi + 1, BMN):
            n = n0 + tl.arange(0, BMN)
            n_ok = n <= n_hi
            q3 = q_b + n[:, None] * (H * K) + hh[None, :] * K
            q3_ok = n_ok[:, None] & (hh < H)[None, :]
            t, ok = _scope(n, m, N, W, KH, KW, CH, CW, CAUSAL)
            ok = ok & n_ok[:, None]
            a = _logits(q3, q3_ok, e + u * T, t, ok, BMN, HP, BN, K, U * T)
            rn = n0 + rr // HP
            rh = rr % HP
            r_ok = (rn <= n_hi) & (rh < H)
            g_ptr = gy_b + (rn * (H * V) + rh * V)[:, None] + c[None, :]
            g = tl.load(g_ptr, mask=r_ok[:, None] & c_ok[None, :], other=0.0)
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
    BMN: tl.constexpr, HP: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    """Partial kernel gradients part[s, k, u, t] = sum_{r in split s} q[r, k] (gy[r] . v[n + offset(t), u]).

    Grid (offset tiles, u, splits): split s walks the (sample, position tile) items s, s + S, ...; the caller sums
    the splits (deterministic, no atomics). The values at an offset are gathered once per position for all heads.
    """
    pid_t = tl.program_id(0)
    u = tl.program_id(1)
    pid_s = tl.program_id(2)
    S = tl.num_programs(2)
    T: tl.constexpr = KH * KW
    BM: tl.constexpr = BMN * HP
    HM = N // W
    t = pid_t * BT + tl.arange(0, BT)
    dy = t // KW - CH
    dx = t % KW - CW
    t_ok = t < T
    if CAUSAL:
        t_ok = t_ok & (dx <= 0)
    kk = tl.arange(0, BK)
    hh = tl.arange(0, HP)
    rr = tl.arange(0, BM)
    acc = tl.zeros((BK, BT), dtype=tl.float32)
    tiles = tl.cdiv(N, BMN)
    for item in range(pid_s, B * tiles, S):
        b = (item // tiles).to(tl.int64)
        n0 = (item % tiles) * BMN
        n = n0 + tl.arange(0, BMN)
        mi = (n // W)[:, None] + dy[None, :]
        mj = (n % W)[:, None] + dx[None, :]
        ok = (n < N)[:, None] & t_ok[None, :] & (mi >= 0) & (mi < HM) & (mj >= 0) & (mj < W)
        v_m = v + b * N * U * V + (mi * W + mj) * (U * V) + u * V
        gy3 = gy + b * N * H * V + n[:, None] * (H * V) + hh[None, :] * V
        gy3_ok = (n < N)[:, None] & (hh < H)[None, :]
        grel = tl.zeros((BMN, HP, BT), dtype=tl.float32)
        for c in range(V):
            g = tl.load(gy3 + c, mask=gy3_ok, other=0.0).to(tl.float32)
            vm = tl.load(v_m + c, mask=ok, other=0.0).to(tl.float32)
            grel += g[:, :, None] * vm[:, None, :]
        rn = n0 + rr // HP
        rh = rr % HP
        r_ok = (rn < N) & (rh < H)
        q_ptr = q + b * N * H * K + (rn * (H * K) + rh * K)[:, None] + kk[None, :]
        qt = tl.load(q_ptr, mask=r_ok[:, None] & (kk < K)[None, :], other=0.0)
        acc = tl.dot(tl.trans(qt.to(tl.float32)), tl.reshape(grel, (BM, BT)), acc, input_precision=PREC)
    out = part + pid_s * (K * U * T) + kk[:, None] * (U * T) + u * T + t[None, :]
    tl.store(out, acc, mask=(kk < K)[:, None] & t_ok[None, :])
