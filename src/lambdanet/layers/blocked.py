"""The ``blocked`` algorithm for local position lambdas: per-block position logits applied to halos of values.

Axis legend: b batch | h heads | k query/key depth | u intra-depth | v value depth | S.. spatial axes
             n.. blocks per axis | B.. block side | L.. halo side (B + 2c, c = kernel // 2) | K.. kernel side
             p = prod(B) query positions per block | l = prod(L) halo positions | t = prod(K) kernel offsets

Shape: q (b, S.., h, k), v (b, S.., u, v), weight (k, u, K..) -> y (b, S.., h, v)

Queries are cut into blocks of side B; a block's context is its halo of side L. Inside a block the relative
embeddings form one fixed (p, l) pattern, so the position output of a block is one matrix product
``y_block (h p, v) = Z (h p, u l) @ halo (u l, v)`` where row (h, i) of Z holds the query's logits
``q_i . E[t]`` at the halo offsets ``i + t`` and zeros elsewhere. Values outside the map are zero padding, which is
exact. Per query this costs ``h (k + v) u l / p``-ish multiply-adds instead of the ``h (k + v) u t`` of an explicit
sum: about twice the work for the blocks chosen here, traded for dense matrix products.

Two implementations compute the same numbers:

- :func:`blocked_output` (eager): a custom autograd function that walks the batch in cache-sized chunks with
  work buffers allocated once per call (fresh large allocations cost page faults on CPU). A query's in-scope
  entries of Z lie in one run of columns of the same length for every query, so the logits are one shared-weight
  product ``q @ E_run`` (E_run: the kernel laid out along that run, zeros between rows of the kernel) copied into Z
  run by run. The content lambda is applied in the same pass. Nothing quadratic is saved for backward (Z is
  recomputed chunk by chunk) and halo gradients go back onto the map with one ``index_add_`` per chunk.
- :func:`blocked_output_ops` (traced): the same computation in plain differentiable tensor operations, for
  ``torch.compile`` and ``torch.export``, which do not trace the in-place chunk loop.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lambdanet.layers.algorithms._base import add_content

__all__ = ["block_size", "blocked_output", "blocked_output_ops"]

#: Work-buffer size per chunk (elements of Z) on CPU: about 2 MiB of float32 keeps a chunk in a core's L2 cache.
CHUNK_ELEMENTS = 1 << 19


def block_size(half: int) -> int:
    """Query block side for a kernel radius ``half``: about the radius (measured in docs/algorithms.md)."""
    return max(2, min(4, half + 1))


class _Geometry:
    """Blocks, halos and the strided views that move data between map, block and halo layouts."""

    def __init__(self, spatial: Sequence[int], kernel: Sequence[int], q: Tensor, v: Tensor) -> None:
        self.d = len(spatial)
        self.spatial, self.kernel = tuple(spatial), tuple(kernel)
        self.half = tuple(side // 2 for side in kernel)
        self.blocks = tuple(block_size(c) for c in self.half)
        self.counts = tuple(-(-s // bs) for s, bs in zip(spatial, self.blocks))
        self.halos = tuple(bs + 2 * c for bs, c in zip(self.blocks, self.half))
        self.nb, self.p, self.ell = (math.prod(x) for x in (self.counts, self.blocks, self.halos))
        self.b, self.h, self.k = q.shape[0], q.shape[-2], q.shape[-1]
        self.u, self.dv = v.shape[-2], v.shape[-1]
        self.padded = any(c * bs != s for s, bs, c in zip(spatial, self.blocks, self.counts))
        self.sides = [cnt * bs + 2 * c for cnt, bs, c in zip(self.counts, self.blocks, self.half)]  # padded values
        # Strides of the halo axes in the flattened (L.., u) columns of Z, and the length of the run of Z columns
        # from a query's first in-scope entry to its last (the same for every query).
        self.halo_strides = [math.prod(self.halos[i + 1 :]) * self.u for i in range(self.d)]
        self.span = sum((ks - 1) * st for ks, st in zip(self.kernel, self.halo_strides)) + self.u
        per_sample = self.nb * self.h * self.p * self.ell * self.u
        self.chunk = self.b if q.device.type != "cpu" else max(1, min(self.b, CHUNK_ELEMENTS // per_sample))
        # (b, n1, B1, n2, B2, .., h, c) -> (b, n.., h, B.., c)
        d = self.d
        self.block_order = [0, *[1 + 2 * i for i in range(d)], 1 + 2 * d, *[2 + 2 * i for i in range(d)], 2 + 2 * d]

    def pad(self, x: Tensor, halo: int = 0) -> Tensor:
        """(b, S.., _, _) -> zeros after the map up to whole blocks, and with ``halo=1`` c zeros before and after."""
        if not (halo or self.padded):
            return x
        pads = [0, 0, 0, 0]
        for s, bs, cnt, c in reversed(list(zip(self.spatial, self.blocks, self.counts, self.half))):
            pads += [halo * c, halo * c + bs * cnt - s]
        return F.pad(x, pads)

    def crop(self, x: Tensor) -> Tensor:
        return x[(slice(None), *[slice(0, s) for s in self.spatial])] if self.padded else x

    def block_view(self, x: Tensor) -> Tensor:
        """(cb, nB.., h, c) -> view (cb, n.., h, B.., c)."""
        split = [x for c, bs in zip(self.counts, self.blocks) for x in (c, bs)]
        return x.reshape(x.shape[0], *split, x.shape[-2], x.shape[-1]).permute(self.block_order)

    def halo_view(self, vp: Tensor) -> Tensor:
        """(cb, P.., c) padded map -> overlapping view (cb, n.., L.., c) of every block's halo."""
        st = vp.stride()
        size = (vp.shape[0], *self.counts, *self.halos, vp.shape[-1])
        stride = (st[0], *[bs * st[1 + i] for i, bs in enumerate(self.blocks)], *st[1 : 1 + self.d], st[-1])
        return vp.as_strided(size, stride, vp.storage_offset())

    def span_view(self, z: Tensor, rows: int) -> Tensor:
        """Each Z row's run of ``span`` columns starting at its query's offset: (rows, h, B.., span).

        Query i of a block has its kernel at halo offsets i + t, so its in-scope entries lie in one run of columns
        starting at ``sum_d i_d * stride_d``; the rest of the run holds out-of-scope (zero) entries.
        """
        lstr = self.halo_strides
        pstr = [math.prod(self.blocks[i + 1 :]) * self.ell * self.u for i in range(self.d)]
        row = self.p * self.ell * self.u
        size = (rows, self.h, *self.blocks, self.span)
        stride = (self.h * row, row, *[a + c for a, c in zip(pstr, lstr)], 1)
        return z.as_strided(size, stride, z.storage_offset())

    def span_taps(self, emb: Tensor) -> Tensor:
        """(k, span) run embedding -> view (k, K.., u) of its in-scope entries (entry ``sum_d t_d stride_d + u``)."""
        return emb.as_strided((self.k, *self.kernel, self.u), (self.span, *self.halo_strides, 1))

    def span_embedding(self, weight: Tensor) -> Tensor:
        """(k, u, K..) kernel -> (k, span) run embedding, zeros between the kernel's rows."""
        emb = weight.new_zeros(self.k, self.span)
        self.span_taps(emb).copy_(weight.permute(0, *range(2, 2 + self.d), 1))
        return emb

    def halo_index(self, samples: int, device: torch.device) -> Tensor:
        """Flat position in ``samples`` padded maps (b, P.., c) of every halo entry (b, n.., L..), for index_add."""
        sides = self.sides
        index = torch.arange(samples, device=device).view(-1, *[1] * (2 * self.d)) * math.prod(sides)
        for i, (cnt, bs, hl) in enumerate(zip(self.counts, self.blocks, self.halos)):
            shape = [1] * (1 + 2 * self.d)
            shape[1 + i], shape[1 + self.d + i] = cnt, hl
            coord = torch.arange(cnt, device=device).view(-1, 1) * bs + torch.arange(hl, device=device)
            index = index + coord.view(shape) * math.prod(sides[i + 1 :])
        return index.reshape(-1)

    def padded_values(self, v: Tensor) -> Tensor:
        """(b, S.., u, v) -> (b, P.., u v) with c zeros before and c (+ block rounding) after every axis."""
        return self.pad(v, halo=1).reshape(v.shape[0], *self.sides, self.u * self.dv)


class _Chunk:
    """Work buffers of a chunk of ``samples`` samples (``rows`` blocks) and the views the loop body uses, built once
    per call (fresh large allocations cost page faults on CPU); a smaller last chunk takes slices of ``full``'s."""

    def __init__(self, g: _Geometry, like: Tensor, samples: int, backward: bool, full: _Chunk | None = None) -> None:
        rows = samples * g.nb
        n_q = rows * g.h * g.p

        def buffer(name: str, *shape: int) -> Tensor:
            return like.new_empty(*shape) if full is None else getattr(full, name)[: shape[0]]

        # Z: the entries outside the runs stay zero for every chunk
        self.z = like.new_zeros(rows, g.h * g.p, g.ell * g.u) if full is None else full.z[:rows]
        self.q, self.rel = buffer("q", n_q, g.k), buffer("rel", n_q, g.span)
        self.halo, self.y = buffer("halo", rows, g.ell * g.u, g.dv), buffer("y", rows, g.h * g.p, g.dv)
        self.z_runs = g.span_view(self.z, rows)
        self.q_blocks = self.q.view(samples, *g.counts, g.h, *g.blocks, g.k)
        self.q_samples = self.q.view(samples, -1, g.k)
        self.rel_runs = self.rel.view(rows, g.h, *g.blocks, g.span)
        self.halo_blocks = self.halo.view(samples, *g.counts, *g.halos, g.u * g.dv)
        self.y_samples = self.y.view(samples, -1, g.dv)
        self.y_blocks = self.y.view(samples, *g.counts, g.h, *g.blocks, g.dv)
        if backward:
            self.gz, self.grel = buffer("gz", *self.z.shape), buffer("grel", n_q, g.span)
            self.gq, self.ghalo = buffer("gq", n_q, g.k), buffer("ghalo", *self.halo.shape)
            self.gz_runs = g.span_view(self.gz, rows)
            self.grel_runs = self.grel.view(rows, g.h, *g.blocks, g.span)
            self.gq_samples = self.gq.view(samples, -1, g.k)
            self.gq_blocks = self.gq.view(samples, *g.counts, g.h, *g.blocks, g.k)
            self.ghalo_rows = self.ghalo.view(rows * g.ell, g.u * g.dv)
            self.index = g.halo_index(samples, like.device) if full is None else full.index[: rows * g.ell]


def _chunks(g: _Geometry, like: Tensor, backward: bool) -> Iterator[tuple[int, int, _Chunk]]:
    """(start, end, buffers) of every chunk of samples."""
    full = _Chunk(g, like, g.chunk, backward)
    for s in range(0, g.b, g.chunk):
        e = min(g.b, s + g.chunk)
        yield s, e, full if e - s == g.chunk else _Chunk(g, like, e - s, backward, full)


def _load_chunk(g: _Geometry, c: _Chunk, qp: Tensor, vp: Tensor, emb: Tensor, s: int, e: int) -> None:
    """Queries, logits (copied into Z run by run) and halos of samples s:e into the chunk's buffers."""
    c.q_blocks.copy_(g.block_view(qp[s:e]))
    torch.mm(c.q, emb, out=c.rel)
    c.z_runs.copy_(c.rel_runs)
    c.halo_blocks.copy_(g.halo_view(vp[s:e]))


def _accumulate_rows(dst: Tensor, index: Tensor, src: Tensor, deterministic: bool | None = None) -> None:
    """``dst[index[i]] += src[i]`` with repeated indices. ``index_add_`` is deterministic (and fastest) on CPU; on
    accelerators under ``torch.use_deterministic_algorithms(True)`` the deterministic accumulating ``index_put_``
    is used instead."""
    if deterministic is None:
        deterministic = dst.device.type != "cpu" and torch.are_deterministic_algorithms_enabled()
    if deterministic:
        dst.index_put_((index,), src, accumulate=True)
    else:
        dst.index_add_(0, index, src)


class _BlockedLocal(torch.autograd.Function):
    """``y = q^T (lambda_c + lambda_p)`` chunk by chunk (see the module docstring); ``lam_c`` may be None."""

    @staticmethod
    def forward(ctx, q: Tensor, v: Tensor, weight: Tensor, lam_c: Tensor | None) -> Tensor:  # type: ignore[override]
        d = q.dim() - 3
        g = _Geometry(q.shape[1 : 1 + d], weight.shape[2:], q, v)
        qp, vp = g.pad(q), g.padded_values(v)
        emb = g.span_embedding(weight)  # k span
        y = q.new_empty(g.b, *[c * bs for c, bs in zip(g.counts, g.blocks)], g.h, g.dv)
        for s, e, c in _chunks(g, q, backward=False):
            _load_chunk(g, c, qp, vp, emb, s, e)
            torch.bmm(c.z, c.halo, out=c.y)
            if lam_c is not None:  # the content lambda is shared by every position of a sample
                c.y_samples.baddbmm_(c.q_samples, lam_c[s:e])
            g.block_view(y[s:e]).copy_(c.y_blocks)
        ctx.save_for_backward(qp, vp, emb, lam_c)
        ctx.geometry = g
        return g.crop(y)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:  # type: ignore[override]
        qp, vp, emb, lam_c = ctx.saved_tensors
        g: _Geometry = ctx.geometry
        gp = g.pad(grad)
        grad_q = qp.new_empty(qp.shape)
        grad_emb = torch.zeros_like(emb)
        grad_lam = None if lam_c is None else torch.empty_like(lam_c)
        grad_vp = vp.new_zeros(vp.shape)  # halo gradients go back onto the padded map, one index_add per chunk
        grad_vp_rows = grad_vp.view(g.b, -1, g.u * g.dv)
        for s, e, c in _chunks(g, qp, backward=True):
            _load_chunk(g, c, qp, vp, emb, s, e)
            c.y_blocks.copy_(g.block_view(gp[s:e]))  # c.y holds the output gradient of the chunk
            torch.bmm(c.y, c.halo.transpose(1, 2), out=c.gz)
            torch.bmm(c.z.transpose(1, 2), c.y, out=c.ghalo)
            c.grel_runs.copy_(c.gz_runs)
            torch.mm(c.grel, emb.t(), out=c.gq)
            grad_emb.addmm_(c.q.t(), c.grel)
            if lam_c is not None:
                c.gq_samples.baddbmm_(c.y_samples, lam_c[s:e].transpose(1, 2))
                torch.bmm(c.q_samples.transpose(1, 2), c.y_samples, out=grad_lam[s:e])
            g.block_view(grad_q[s:e]).copy_(c.gq_blocks)
            _accumulate_rows(grad_vp_rows[s:e].view(-1, g.u * g.dv), c.index, c.ghalo_rows)
        grad_v = grad_vp[(slice(None), *[slice(c, c + s) for c, s in zip(g.half, g.spatial)])]
        grad_v = grad_v.reshape(g.b, *g.spatial, g.u, g.dv)
        grad_w = g.span_taps(grad_emb).permute(0, 1 + g.d, *range(1, 1 + g.d))
        return g.crop(grad_q), grad_v, grad_w, grad_lam


def blocked_output(q: Tensor, v: Tensor, weight: Tensor, lam_c: Tensor | None = None) -> Tensor:
    """Local lambda output ``q^T (lambda_c + lambda_p)`` with the shapes above (any strides, the kernel cropped to the
    map, ``lam_c`` optional and fused into the same pass): the chunked autograd function in eager mode,
    :func:`blocked_output_ops` under ``torch.compile``, ``torch.export`` and TorchScript."""
    if torch.compiler.is_compiling() or torch.jit.is_scripting():
        return blocked_output_ops(q, v, weight, lam_c)
    return _BlockedLocal.apply(q, v, weight, lam_c)


def blocked_output_ops(q: Tensor, v: Tensor, weight: Tensor, lam_c: Tensor | None = None) -> Tensor:
    """:func:`blocked_output` in plain tensor operations (traceable; more memory: keeps Z for backward)."""
    d = q.dim() - 3
    g = _Geometry(q.shape[1 : 1 + d], weight.shape[2:], q, v)
    # Table (B.., K.. placed in L..): E[k, u, i, a] = weight[k, u, a - i] when 0 <= a - i < K, per axis.
    table = weight.new_zeros(g.k, g.u, *g.blocks, *g.halos)
    for idx in itertools.product(*[range(bs) for bs in g.blocks]):
        table[(slice(None), slice(None), *idx, *[slice(i, i + ks) for i, ks in zip(idx, g.kernel)])] = weight
    table = table.permute(*range(2, 2 + d), 0, *range(2 + d, 2 + 2 * d), 1).reshape(g.p, g.k, g.ell * g.u)

    qb = g.block_view(g.pad(q))  # b n.. h B.. k
    qb = qb.permute(*range(2 + d, 2 + 2 * d), *range(0, 2 + d), 2 + 2 * d).reshape(g.p, g.b * g.nb * g.h, g.k)
    logits = torch.bmm(qb, table)  # p (b nb h) (L.. u)
    logits = logits.reshape(g.p, g.b * g.nb, g.h, g.ell * g.u).permute(1, 2, 0, 3).reshape(g.b * g.nb, g.h * g.p, -1)
    halos = g.padded_values(v)
    for i, (bs, hl) in enumerate(zip(g.blocks, g.halos)):
        halos = halos.unfold(1 + i, hl, bs)  # b n.. (u v) L..
    halos = halos.permute(0, *range(1, 1 + d), *range(2 + d, 2 + 2 * d), 1 + d)
    halos = halos.reshape(g.b * g.nb, g.ell * g.u, g.dv)
    y = torch.bmm(logits, halos).reshape(g.b, *g.counts, g.h, *g.blocks, g.dv)
    inverse = [0, *[x for i in range(d) for x in (1 + i, 2 + d + i)], 1 + d, 2 + 2 * d]
    y = g.crop(y.permute(inverse).reshape(g.b, *[c * bs for c, bs in zip(g.counts, g.blocks)], g.h, g.dv))
    return add_content(y, q, lam_c)
