"""Chunkwise causal content lambdas: gated linear attention with a running-maximum gate (online softmax).

Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602, App. B.2 (masked contexts). The causal content lambda of
position n normalises the keys of positions m <= n per key channel; it is the recurrence (per batch, intra-depth
slice and key channel; M the running maximum of the key logits)::

    M_n = max(M_{n-1}, K_n)
    S_n = exp(M_{n-1} - M_n) S_{n-1} + exp(K_n - M_n) v_n^T        (numerator, k x v)
    z_n = exp(M_{n-1} - M_n) z_{n-1} + exp(K_n - M_n)              (normaliser, k)
    y_n = sum_u sum_k q_n[k] S_n[k, :] / z_n[k]

i.e. gated linear attention (the layout and op names of flash-linear-attention's ``chunk_gla``) with a data-dependent
per-channel gate ``exp(M_{n-1} - M_n) <= 1`` and keys ``exp(K_n - M_n) <= 1``, plus a normaliser per channel. Every
exponent is <= 0, so nothing overflows even for logits of 1e3 or more (a log-space form would lose the accuracy);
the running maximum of an empty prefix is ``-inf`` (its gate ``exp(-inf) = 0``), so key logits must be finite.
The running maximum is a constant for autograd: the output is invariant to it, so its gradients are exact; the
gradients into a returned state are those of (S, z) at a fixed M.

Three implementations of the same sums:

- :func:`naive_causal_content`: the recurrence above, one position at a time (the test oracle; run it in float64).
- :func:`chunk_causal_content`: chunks of ``chunk_size`` positions (64 by default). Within a chunk the (chunk x
  chunk) weights ``exp(K_s - M_t) = exp(M_end - M_t) exp(K_s - M_end)`` enter matrix products over k in factored
  form while the running maximum rises by at most 40 inside the chunk (else they are formed explicitly, per key
  channel); across chunks only the boundary states are carried. A
  custom autograd function that saves the chunk-boundary states and recomputes the intra-chunk weights in backward,
  walking groups of chunks sized to stay in cache; time and memory are linear in the length, forward and backward.
- :func:`recurrent_causal_content`: one new position from a state (decoding).

Axis legend: b batch | t positions (time) | h heads (queries) | u intra-depth |u| | k query/key depth |k|
             v value depth |v| | g chunks in a group | c, s positions within a chunk (query, key)

Shape: q (b, t, h, k), key logits (b, t, u, k), v (b, t, u, v) -> y (b, t, h, v);
       state (numerator (b, u, k, v), normaliser (b, u, k), running maximum (b, u, k))
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lambdanet.layers._common import LOW_PRECISION

__all__ = [
    "GROUP_ELEMENTS",
    "ContentState",
    "chunk_causal_content",
    "empty_content_state",
    "naive_causal_content",
    "recurrent_causal_content",
]

#: Elements of one group's (b, g, c, s, u, k) weight tensor: about 2 MiB of float32, a core's L2 cache.
GROUP_ELEMENTS = 1 << 19


class ContentState(NamedTuple):
    """Causal content state after some prefix: numerator (b, u, k, v), normaliser and running maximum (b, u, k).

    The represented sums are ``numerator * exp(running_max)`` and ``normaliser * exp(running_max)``; an empty prefix
    has zeros and a running maximum of ``-inf``.
    """

    numerator: Tensor
    normaliser: Tensor
    running_max: Tensor


def empty_content_state(
    batch: int, dim_u: int, dim_k: int, dim_v: int, device: torch.device | None = None
) -> ContentState:
    """The state of an empty prefix (float32 accumulators)."""
    kw = {"device": device, "dtype": torch.float32}
    return ContentState(
        torch.zeros(batch, dim_u, dim_k, dim_v, **kw),
        torch.zeros(batch, dim_u, dim_k, **kw),
        torch.full((batch, dim_u, dim_k), float("-inf"), **kw),
    )


def _check(q: Tensor, k: Tensor, v: Tensor, state: ContentState | None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be 4-D (b, t, h, k), (b, t, u, k), (b, t, u, v); got shapes {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    b, t, _, dk = q.shape
    if k.shape[:2] != (b, t) or v.shape[:3] != (b, t, k.shape[2]) or k.shape[3] != dk:
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not share (b, t), u and |k| as "
            f"(b, t, h, k), (b, t, u, k), (b, t, u, v)"
        )
    if state is not None:
        want = (b, k.shape[2], dk, v.shape[3])
        if tuple(state.numerator.shape) != want or tuple(state.normaliser.shape) != want[:3]:
            raise ValueError(
                f"state numerator {tuple(state.numerator.shape)} / normaliser {tuple(state.normaliser.shape)} "
                f"do not match (b, u, k, v) = {want}"
            )


# ------------------------------------------------------------------------------------------------- reference
def naive_causal_content(
    q: Tensor, k: Tensor, v: Tensor, initial_state: ContentState | None = None
) -> tuple[Tensor, ContentState]:
    """The recurrence of the module docstring, one position at a time, in the inputs' dtype (the test oracle).

    Returns:
        y (b, t, h, v) and the state after the last position.
    """
    _check(q, k, v, initial_state)
    b, t, _, dk = q.shape
    state = initial_state
    if state is None:
        state = empty_content_state(b, k.shape[2], dk, v.shape[3], q.device)
        state = ContentState(*(s.to(q.dtype) for s in state))
    num, den, top = state
    out = []
    for n in range(t):
        kn, vn = k[:, n], v[:, n]  # b u k, b u v
        new_top = torch.maximum(top, kn.detach())
        gate, key = torch.exp(top - new_top), torch.exp(kn - new_top)
        num = gate[..., None] * num + key[..., None] * vn[:, :, None, :]
        den = gate * den + key
        top = new_top
        out.append(torch.einsum("bhk,bukv->bhv", q[:, n], num / den[..., None]))
    y = torch.stack(out, dim=1) if out else q.new_zeros(b, 0, q.shape[2], v.shape[3])
    return y, ContentState(num, den, top)


def recurrent_causal_content(
    q: Tensor, k: Tensor, v: Tensor, state: ContentState | None = None
) -> tuple[Tensor, ContentState]:
    """One new position: q (b, h, k), key logits (b, u, k), v (b, u, v) -> y (b, h, v) and the updated state.

    Accumulates in float32 for float16/bfloat16 inputs; the state is float32 then.
    """
    out_dtype = q.dtype
    if out_dtype in LOW_PRECISION:
        q, k, v = q.float(), k.float(), v.float()
    if state is None:
        top = k.detach()
        num, den = v[:, :, None, :].expand(*k.shape, v.shape[-1]), torch.ones_like(k)
    else:
        top = torch.maximum(state.running_max, k.detach())
        gate, key = torch.exp(state.running_max - top), torch.exp(k - top)
        num = torch.addcmul(gate[..., None] * state.numerator, key[..., None], v[:, :, None, :])
        den = torch.addcmul(key, gate, state.normaliser)
    y = torch.matmul(q[:, None] / den[:, :, None], num).sum(dim=1)  # (b u h k) @ (b u k v), summed over u
    return y.to(out_dtype), ContentState(num, den, top)


# ------------------------------------------------------------------------------------------------- chunkwise
def _groups(t: int, chunk: int, per_chunk: int) -> list[tuple[int, int, int]]:
    """(start, chunks, chunk length) of each group: full chunks in cache-sized groups, then the remainder."""
    full, rest = divmod(t, chunk)
    per_group = max(1, GROUP_ELEMENTS // max(1, per_chunk))
    out = [(g * chunk, min(per_group, full - g), chunk) for g in range(0, full, per_group)]
    if rest:
        out.append((full * chunk, 1, rest))
    return out


def _group_tensors(q: Tensor, k: Tensor, v: Tensor, top: Tensor, start: int, g: int, c: int):
    """Views (b, g, c, ...) of one group of chunks."""
    end = start + g * c
    b = q.shape[0]
    return (
        q[:, start:end].reshape(b, g, c, *q.shape[2:]),
        k[:, start:end].reshape(b, g, c, *k.shape[2:]),
        v[:, start:end].reshape(b, g, c, *v.shape[2:]),
        top[:, start:end].reshape(b, g, c, *top.shape[2:]),
    )


def _weights(kg: Tensor, mg: Tensor) -> Tensor:
    """Intra-chunk weights (b, g, c, s, u, k): ``exp(K_s - M_c)`` for s <= c, zero above the diagonal."""
    c = kg.shape[2]
    tri = torch.ones(c, c, dtype=torch.bool, device=kg.device).tril()[:, :, None, None]
    diff = kg[:, :, None] - mg[:, :, :, None]  # b g c s u k
    return torch.exp(diff.masked_fill(~tri, float("-inf")))


def _chunk_starts(prev_top: Tensor, mg: Tensor) -> Tensor:
    """Running maximum before each chunk of the group (b, g, u, k), from the one before the group."""
    return torch.cat([prev_top[:, None], mg[:, :-1, -1]], dim=1)


#: Largest rise of the running maximum inside one chunk for the factored weights ``exp(K_s - M_end) exp(M_end -
#: M_c)``: the second factor stays below e^40 (no float32 overflow) and terms lost to underflow of the first are
#: below e^-47 of a normaliser that is always >= 1. Chunks with a larger rise form the weights explicitly.
FACTOR_MAX_RISE = 40.0


class _Intra:
    """The intra-chunk weights ``w[c, s] = exp(K_s - M_c)`` (s <= c) of a group, explicit or factored.

    Factored (the fast path, when the running maximum rises by at most :data:`FACTOR_MAX_RISE` inside every
    chunk of the group): ``w = exp(M_end - M_c) exp(K_s - M_end)``, so every contraction with w is a matrix
    product over k and no (c, s, k) tensor exists. Explicit: the (b, g, c, s, u, k) weights are formed (any
    logits, e.g. spans of 1000 inside a chunk). Under ``torch.compile``/export and on the meta device the explicit
    form is used (no data-dependent branch).
    """

    def __init__(self, kg: Tensor, mg: Tensor) -> None:
        c = kg.shape[2]
        self.tri = torch.ones(c, c, dtype=torch.bool, device=kg.device).tril()[:, None, None, :]  # c 1 1 s
        self.factored = (
            not torch.compiler.is_compiling()
            and kg.device.type != "meta"
            and (mg.numel() == 0 or bool((mg[:, :, -1] - mg[:, :, 0]).max() <= FACTOR_MAX_RISE))  # batch 0: no max
        )
        if self.factored:
            end = mg[:, :, -1:]  # b g 1 u k
            self.kf = torch.exp(kg - end)  # b g s u k, <= 1
            self.qf = torch.exp(end - mg)  # b g c u k, in [1, e^40]
            self.last = self.kf
        else:
            self.w = _weights(kg, mg)  # b g c s u k
            self.last = self.w[:, :, -1]

    def den(self) -> Tensor:
        """Intra-chunk normaliser ``sum_{s <= c} w[c, s]`` (b, g, c, u, k)."""
        return self.qf * self.kf.cumsum(dim=2) if self.factored else self.w.sum(dim=3)

    def scores(self, qn: Tensor) -> Tensor:
        """``a[c, s] = sum_k qn[c, k] w[c, s, k]`` (b, g, c, h, u, s) for qn (b, g, c, h, u, k)."""
        if self.factored:
            a = torch.einsum("bgchuk,bgsuk->bgchus", qn * self.qf[:, :, :, None], self.kf)
            return a * self.tri
        return torch.einsum("bgchuk,bgcsuk->bgchus", qn, self.w)

    def weigh(self, d: Tensor) -> Tensor:
        """``sum_s d[c, s] w[c, s, k]`` (b, g, c, h, u, k) for d (b, g, c, h, u, s) (zero above the diagonal)."""
        if self.factored:
            return self.qf[:, :, :, None] * torch.einsum("bgchus,bgsuk->bgchuk", d, self.kf)
        return torch.einsum("bgchus,bgcsuk->bgchuk", d, self.w)

    def key_grad(self, qn: Tensor, d: Tensor, dz: Tensor) -> Tensor:
        """``sum_c w[c, s, k] (sum_h qn[c, h, k] d[c, h, s] + dz[c, k])`` (b, g, s, u, k)."""
        if self.factored:
            x = torch.einsum("bgchus,bgchuk->bgsuk", d, qn * self.qf[:, :, :, None])
            return self.kf * (x + (self.qf * dz).flip(2).cumsum(dim=2).flip(2))
        x = torch.einsum("bgchuk,bgchus->bgcsuk", qn, d) + dz[:, :, :, None]
        return (self.w * x).sum(dim=2)


class _ChunkCausalContent(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, num0, den0, top0, chunk):  # type: ignore[override]
        b, t = q.shape[:2]
        top = torch.maximum(k.cummax(dim=1).values, top0[:, None])  # b t u k: running maximum (no gradient)
        per_chunk = b * chunk * chunk * k.shape[2] * max(k.shape[3], q.shape[2])  # the explicit weights' size
        groups = _groups(t, chunk, per_chunk)
        y = q.new_empty(b, t, q.shape[2], v.shape[3])
        starts_num, starts_den = [], []
        num, den, prev = num0, den0, top0
        for start, g, c in groups:
            qg, kg, vg, mg = _group_tensors(q, k, v, top, start, g, c)
            intra = _Intra(kg, mg)
            mstart = _chunk_starts(prev, mg)  # b g u k
            gate = torch.exp(mstart - mg[:, :, -1])  # b g u k: decay across each chunk
            last = intra.last  # b g s u k: weights of the chunk's last position
            d_num = torch.einsum("bgsuk,bgsuv->bgukv", last, vg)
            d_den = last.sum(dim=2)
            s_num, s_den = [], []
            for i in range(g):  # boundary states: a cheap sequential scan over the group's chunks
                s_num.append(num)
                s_den.append(den)
                num = gate[:, i, :, :, None] * num + d_num[:, i]
                den = gate[:, i] * den + d_den[:, i]
            sn, sd = torch.stack(s_num, dim=1), torch.stack(s_den, dim=1)  # b g u k v, b g u k
            starts_num.append(sn)
            starts_den.append(sd)
            scale = torch.exp(mstart[:, :, None] - mg)  # b g c u k
            zt = scale * sd[:, :, None] + intra.den()  # b g c u k
            qn = qg[:, :, :, :, None, :] / zt[:, :, :, None]  # b g c h u k
            a = intra.scores(qn)
            yg = torch.einsum("bgchus,bgsuv->bgchv", a, vg)
            yg = yg + torch.einsum("bgchuk,bgukv->bgchv", qn * scale[:, :, :, None], sn)
            y[:, start : start + g * c] = yg.reshape(b, g * c, *yg.shape[3:])
            prev = mg[:, -1, -1]
        ctx.chunk = chunk
        ctx.groups = groups
        ctx.save_for_backward(q, k, v, top, top0, *starts_num, *starts_den)
        prev = prev.clone()
        ctx.mark_non_differentiable(prev)
        return y, num, den, prev

    @staticmethod
    def backward(ctx, dy, dnum_end, dden_end, _dtop):  # type: ignore[override]
        q, k, v, top, top0, *starts = ctx.saved_tensors
        groups = ctx.groups
        starts_num, starts_den = starts[: len(groups)], starts[len(groups) :]
        b = q.shape[0]
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dnum = torch.zeros_like(starts_num[0][:, 0]) if dnum_end is None else dnum_end
        dden = torch.zeros_like(starts_den[0][:, 0]) if dden_end is None else dden_end
        if dy is None:
            dy = torch.zeros(*q.shape[:3], v.shape[3], dtype=q.dtype, device=q.device)
        for gi in range(len(groups) - 1, -1, -1):
            start, g, c = groups[gi]
            end = start + g * c
            qg, kg, vg, mg = _group_tensors(q, k, v, top, start, g, c)
            dyg = dy[:, start:end].reshape(b, g, c, *dy.shape[2:])
            sn, sd = starts_num[gi], starts_den[gi]
            prev = top0 if gi == 0 else top[:, start - 1]
            intra = _Intra(kg, mg)
            mstart = _chunk_starts(prev, mg)
            gate = torch.exp(mstart - mg[:, :, -1])
            scale = torch.exp(mstart[:, :, None] - mg)  # b g c u k
            zt = scale * sd[:, :, None] + intra.den()
            qn = qg[:, :, :, :, None, :] / zt[:, :, :, None]  # b g c h u k
            a = intra.scores(qn)
            dvv = torch.einsum("bgchv,bgsuv->bgchus", dyg, vg) * intra.tri  # dy . v_s for s <= c
            dyp = intra.weigh(dvv)  # dy . P_c[k] (intra part)
            dyp = dyp + scale[:, :, :, None] * torch.einsum("bgchv,bgukv->bgchuk", dyg, sn)
            dpq = dyp / zt[:, :, :, None]  # gradient of q through each u
            dq[:, start:end] = dpq.sum(dim=4).reshape(b, g * c, *q.shape[2:])
            dz = -(qn * dpq).sum(dim=3)  # b g c u k: gradient of z_c from the output
            qs = qn * scale[:, :, :, None]
            g_num = torch.einsum("bgchuk,bgchv->bgukv", qs, dyg)  # gradient of each chunk's start state
            g_den = (scale * dz).sum(dim=2)
            end_num, end_den = [], []
            for i in range(g - 1, -1, -1):  # reverse scan over the group's chunks
                end_num.append(dnum)
                end_den.append(dden)
                dnum = gate[:, i, :, :, None] * dnum + g_num[:, i]
                dden = gate[:, i] * dden + g_den[:, i]
            en, ed = torch.stack(end_num[::-1], dim=1), torch.stack(end_den[::-1], dim=1)  # b g u k v, b g u k
            last = intra.last  # b g s u k
            dvg = torch.einsum("bgchus,bgchv->bgsuv", a, dyg) + torch.einsum("bgsuk,bgukv->bgsuv", last, en)
            dv[:, start:end] = dvg.reshape(b, g * c, *v.shape[2:])
            dkg = intra.key_grad(qn, dvv, dz)
            dkg = dkg + last * (torch.einsum("bgukv,bgsuv->bgsuk", en, vg) + ed[:, :, None])
            dk[:, start:end] = dkg.reshape(b, g * c, *k.shape[2:])
        return dq, dk, dv, dnum, dden, None, None


def chunk_causal_content(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    initial_state: ContentState | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[Tensor, ContentState | None]:
    """Causal content output, chunk by chunk (see the module docstring); linear time and memory, both directions.

    Args:
        q: (b, t, h, k) queries.
        k: (b, t, u, k) key logits.
        v: (b, t, u, v) values.
        initial_state: the state after an earlier prefix (gradients flow into its numerator and normaliser), or
            None for an empty prefix.
        output_final_state: also return the state after the last position.
        chunk_size: positions per chunk.

    Returns:
        y (b, t, h, v) in the dtype of ``q`` (float16/bfloat16 inputs are accumulated in float32), and the final
        state (float32 for such inputs) or None.

    Raises:
        ValueError: for a non-positive ``chunk_size`` or inconsistent shapes.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be a positive integer")
    _check(q, k, v, initial_state)
    out_dtype = q.dtype
    compute = torch.float32 if out_dtype in LOW_PRECISION else out_dtype
    q, k, v = q.to(compute), k.to(compute), v.to(compute)
    b, t = q.shape[:2]
    if initial_state is None:
        initial_state = empty_content_state(b, k.shape[2], k.shape[3], v.shape[3], q.device)
    num0, den0, top0 = (s.to(compute) for s in initial_state)
    if t == 0:
        y = q.new_zeros(b, 0, q.shape[2], v.shape[3]).to(out_dtype)
        return y, (ContentState(num0, den0, top0) if output_final_state else None)
    y, num, den, top = _ChunkCausalContent.apply(q, k, v, num0, den0, top0.detach(), chunk_size)
    return y.to(out_dtype), (ContentState(num, den, top) if output_final_state else None)
