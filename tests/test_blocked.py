"""The blocked algorithm's chunked autograd function against an explicit sum over kernel offsets (float64)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import lambdanet.layers.blocked as blocked
from lambdanet import LambdaLayer
from lambdanet.layers.blocked import blocked_output, blocked_output_ops
from lambdanet.layers.core import lambda_output

TOL = 1e-10


def explicit_output(q, v, weight, lam_c=None):
    """y[b, n, h, :] = sum_t sum_u (q[b, n, h] . weight[:, u, t]) v[b, n + t - c, u, :] (+ q . lam_c), zero padding.

    q (b, S.., h, k), v (b, S.., u, dv), weight (k, u, K..), lam_c (b, k, dv) -> (b, S.., h, dv).
    """
    d = q.dim() - 3
    spatial, kernel = q.shape[1 : 1 + d], weight.shape[2:]
    pads = [0, 0, 0, 0]
    for side in reversed(kernel):
        pads += [side // 2, side // 2]
    vp = F.pad(v, pads)
    y = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
    for t in itertools.product(*[range(side) for side in kernel]):
        shifted = vp[(slice(None), *[slice(o, o + s) for o, s in zip(t, spatial)])]  # v[n + t - c]
        logits = torch.einsum("b...hk,ku->b...hu", q, weight[(slice(None), slice(None), *t)])
        y = y + torch.einsum("b...hu,b...uv->b...hv", logits, shifted)
    if lam_c is not None:
        y = y + torch.einsum("b...hk,bkv->b...hv", q, lam_c)
    return y


CASES = [
    # (batch, heads, dim_k, dim_u, dim_v, spatial, kernel side)
    (5, 4, 6, 1, 8, (16, 16), 7),  # CIFAR-like, whole blocks
    (5, 2, 4, 2, 5, (9, 11), 5),  # u > 1, padded blocks
    (3, 3, 4, 1, 5, (5, 7), 3),
    (4, 2, 3, 2, 4, (13,), 5),  # 1-D
    (3, 2, 3, 1, 4, (5, 6, 7), 3),  # 3-D
    (3, 1, 3, 1, 4, (6, 9), 1),  # 1x1 kernel
    (2, 2, 3, 1, 4, (3, 4), 7),  # kernel larger than the map
]


def _inputs(batch, heads, dim_k, dim_u, dim_v, spatial, side, content):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(batch, *spatial, heads, dim_k, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(batch, *spatial, dim_u, dim_v, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(dim_k, dim_u, *[side] * len(spatial), generator=gen, dtype=torch.float64, requires_grad=True)
    lam = torch.randn(batch, dim_k, dim_v, generator=gen, dtype=torch.float64, requires_grad=True) if content else None
    return q, v, w, lam


def _check(fn, args, expected_args):
    y = fn(*args)
    ref = explicit_output(*expected_args)
    grad = torch.randn_like(ref)
    leaves = [a for a in expected_args if a is not None]
    expected = torch.autograd.grad(ref, leaves, grad)
    got = torch.autograd.grad(y, leaves, grad)
    assert (y - ref).abs().max() <= TOL * ref.abs().max()
    for g_got, g_ref in zip(got, expected):
        assert (g_got - g_ref).abs().max() <= TOL * g_ref.abs().max()


@pytest.mark.parametrize("chunk_samples", [1, 2, None], ids=["chunk1", "chunk2", "whole"])
@pytest.mark.parametrize("content", [False, True], ids=["position", "position+content"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[5]}-r{c[6]}-u{c[3]}" for c in CASES])
def test_chunked_function_matches_explicit_sum(case, content: bool, chunk_samples, monkeypatch) -> None:
    """Forward and all four gradients, for chunks of one sample, of two (with a remainder) and the whole batch."""
    q, v, w, lam = _inputs(*case, content)
    if chunk_samples is not None:
        per_sample = _per_sample_elements(q, v, w)
        monkeypatch.setattr(blocked, "CHUNK_ELEMENTS", chunk_samples * per_sample)
    _check(blocked_output, (q, v, w, lam), (q, v, w, lam))


@pytest.mark.parametrize("case", CASES[:5], ids=[f"{c[5]}-r{c[6]}" for c in CASES[:5]])
def test_traceable_version_matches_explicit_sum(case) -> None:
    q, v, w, lam = _inputs(*case, content=True)
    _check(blocked_output_ops, (q, v, w, lam), (q, v, w, lam))


def test_strided_inputs_give_the_same_result() -> None:
    """Permuted (non-contiguous) queries and values, as the 1-D layer passes them, change nothing."""
    q, v, w, lam = _inputs(3, 2, 4, 2, 5, (9, 11), 5, content=True)
    q_strided = q.detach().permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2).requires_grad_()
    v_strided = v.detach().permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2).requires_grad_()
    assert not q_strided.is_contiguous() and not v_strided.is_contiguous()
    _check(blocked_output, (q_strided, v_strided, w, lam), (q_strided, v_strided, w, lam))


def test_gradcheck() -> None:
    q, v, w, lam = _inputs(2, 2, 2, 2, 3, (5, 4), 3, content=True)
    assert torch.autograd.gradcheck(blocked_output, (q, v, w, lam))


def test_lambda_output_dispatches_with_the_content_lambda() -> None:
    q, v, w, lam = _inputs(2, 2, 3, 1, 4, (6, 5), 3, content=True)
    y = lambda_output(q, v, lam, w, (6, 5), "blocked")
    assert torch.allclose(y, explicit_output(q, v, w, lam), rtol=0, atol=1e-12)


@pytest.mark.parametrize("algorithm", ["blocked", "logits"])
def test_layer_output_keeps_the_input_memory_format(algorithm: str) -> None:
    layer = LambdaLayer(8, dim_k=4, heads=2, scope=3, algorithm=algorithm).double()
    x = torch.randn(2, 8, 6, 5, dtype=torch.float64)
    y = layer(x)
    y_cl = layer(x.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous()
    assert y_cl.is_contiguous(memory_format=torch.channels_last) and not y_cl.is_contiguous()
    assert torch.allclose(y, y_cl, rtol=0, atol=1e-12)


def test_backward_keeps_nothing_quadratic() -> None:
    """Only queries, padded values, the run embedding and the content lambda are saved for backward."""
    q, v, w, lam = _inputs(4, 4, 6, 1, 8, (16, 16), 7, content=True)
    y = blocked_output(q, v, w, lam)
    saved = sum(t.numel() for t in y.grad_fn.saved_tensors if t is not None)
    padded_v = 4 * (16 + 6) ** 2 * 8
    assert saved <= q.numel() + padded_v + 6 * 200 + lam.numel()


def _per_sample_elements(q, v, w) -> int:
    geometry = blocked._Geometry(q.shape[1:-2], w.shape[2:], q, v)
    return geometry.nb * geometry.h * geometry.p * geometry.ell * geometry.u


def test_both_halo_accumulations_agree() -> None:
    """index_add_ (CPU) and the deterministic accumulating index_put_ (accelerators) add repeated rows alike."""
    index = torch.tensor([0, 2, 2, 1, 0, 2])
    src = torch.randn(6, 3, dtype=torch.float64)
    fast, safe = torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)
    blocked._accumulate_rows(fast, index, src, deterministic=False)
    blocked._accumulate_rows(safe, index, src, deterministic=True)
    expected = torch.stack([src[[0, 4]].sum(0), src[3], src[[1, 2, 5]].sum(0)])
    assert torch.allclose(fast, expected) and torch.allclose(safe, expected)
