"""The chunkwise causal content op against its float64 recurrence, in flash-linear-attention's test style.

``naive_causal_content`` (one position at a time, float64) is the oracle; ``chunk_causal_content`` must match it in
the output, the final state and every gradient (queries, key logits, values, initial numerator and normaliser), for
odd lengths and sizes, float32/bfloat16, logits of about 1000, an empty prefix and length 0. The backward's memory
traffic is counted with a dispatch mode: it must grow linearly with the length.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from lambdanet import LambdaLayer1d
from lambdanet.layers import causal_chunk
from lambdanet.layers.causal_chunk import (
    ContentState,
    chunk_causal_content,
    empty_content_state,
    naive_causal_content,
    recurrent_causal_content,
)


def _inputs(b, t, h, u, dk, dv, scale=3.0, dtype=torch.float64, state=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, h, dk, generator=g, dtype=dtype)
    k = torch.randn(b, t, u, dk, generator=g, dtype=dtype) * scale
    v = torch.randn(b, t, u, dv, generator=g, dtype=dtype)
    s0 = None
    if state:
        s0 = ContentState(
            torch.randn(b, u, dk, dv, generator=g, dtype=dtype),
            torch.rand(b, u, dk, generator=g, dtype=dtype) + 0.5,
            torch.randn(b, u, dk, generator=g, dtype=dtype) * scale,
        )
    return q, k, v, s0


def _loss_and_grads(fn, q, k, v, s0, dy, dnum, dden):
    ins = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    st = None
    if s0 is not None:
        st = ContentState(s0[0].clone().requires_grad_(), s0[1].clone().requires_grad_(), s0[2])
        ins += [st[0], st[1]]
    y, final = fn(*ins[:3], st)
    loss = (y.double() * dy).sum() + (final[0].double() * dnum).sum() + (final[1].double() * dden).sum()
    return y, final, torch.autograd.grad(loss, ins)


SHAPES = [  # b, t, h, u, k, v, chunk
    (2, 37, 3, 2, 5, 4, 8),
    (1, 64, 2, 1, 4, 3, 16),
    (2, 5, 1, 1, 3, 2, 64),
    (1, 130, 2, 2, 3, 7, 7),
    (3, 1, 2, 1, 1, 1, 4),
]


@pytest.mark.parametrize("weights", ["factored", "explicit", "mixed"])
@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "continued"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_chunk_matches_the_recurrence_in_output_state_and_every_gradient(
    shape, with_state: bool, weights: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    b, t, h, u, dk, dv, chunk = shape
    q, k, v, s0 = _inputs(b, t, h, u, dk, dv, state=with_state)
    if weights == "explicit":  # every chunk forms its (c, s, k) weights
        monkeypatch.setattr(causal_chunk, "FACTOR_MAX_RISE", -1.0)
    if weights == "mixed":  # one chunk per group; a jump of 300 in the logits makes its chunk explicit
        monkeypatch.setattr(causal_chunk, "GROUP_ELEMENTS", 1)
        k[:, t // 2, :, 0] += 300.0
    g = torch.Generator().manual_seed(1)
    dy = torch.randn(b, t, h, dv, generator=g, dtype=torch.float64)
    dnum = torch.randn(b, u, dk, dv, generator=g, dtype=torch.float64)
    dden = torch.randn(b, u, dk, generator=g, dtype=torch.float64)
    want = _loss_and_grads(naive_causal_content, q, k, v, s0, dy, dnum, dden)
    got = _loss_and_grads(
        lambda *a: chunk_causal_content(*a, output_final_state=True, chunk_size=chunk), q, k, v, s0, dy, dnum, dden
    )
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    for a, w in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(a, w, rtol=1e-12, atol=1e-12)
    assert len(got[2]) == (5 if with_state else 3)
    for a, w in zip(got[2], want[2], strict=True):
        torch.testing.assert_close(a, w, rtol=1e-10, atol=1e-11)


def test_gradcheck_of_the_chunk_function() -> None:
    q, k, v, s0 = _inputs(1, 7, 2, 2, 2, 3, state=True)
    ins = [t.requires_grad_() for t in (q, k, v, s0[0], s0[1])]

    def fn(q, k, v, num, den):
        y, st = chunk_causal_content(q, k, v, ContentState(num, den, s0[2]), True, chunk_size=3)
        # the state's ratio is invariant to the running maximum (a constant for autograd), so finite differences
        # agree with it; numerator and normaliser alone are differentiated at a fixed maximum
        return y, st.numerator / st.normaliser[..., None]

    assert torch.autograd.gradcheck(fn, ins)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("scale", [3.0, 1000.0], ids=["logits3", "logits1000"])
def test_low_precision_and_huge_logits(dtype: torch.dtype, tol: float, scale: float) -> None:
    q, k, v, _ = _inputs(2, 97, 2, 2, 4, 5, scale=scale)
    q, k, v = (t.to(dtype) for t in (q, k, v))  # the rounded inputs are the reference's inputs too
    want, wstate = naive_causal_content(q.double(), k.double(), v.double())
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    got, state = chunk_causal_content(qg, kg, vg, output_final_state=True, chunk_size=16)
    assert got.dtype == dtype and state.numerator.dtype == torch.float32
    assert got.isfinite().all()
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * want.abs().max().item())
    torch.testing.assert_close(state.normaliser.double(), wstate.normaliser, rtol=tol, atol=tol)
    got.float().square().sum().backward()
    assert all(t.grad.isfinite().all() for t in (qg, kg, vg))
    # float32 gradients against float64 ones at huge logits: the running maximum keeps every exponent <= 0
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    naive_causal_content(q64, k64, v64)[0].square().sum().backward()
    gtol = 10 * tol
    for a, w in ((qg, q64), (kg, k64), (vg, v64)):
        torch.testing.assert_close(a.grad.double(), w.grad, rtol=gtol, atol=gtol * w.grad.abs().max().item())


def test_empty_prefix_length_zero_and_continuation() -> None:
    q, k, v, _ = _inputs(2, 23, 2, 1, 3, 4)
    full, final = chunk_causal_content(q, k, v, output_final_state=True, chunk_size=4)
    # an explicit empty prefix is no prefix
    empty = ContentState(*(s.double() for s in empty_content_state(2, 1, 3, 4)))
    same, _ = chunk_causal_content(q, k, v, empty, chunk_size=4)
    torch.testing.assert_close(same, full, rtol=0, atol=0)
    # length 0: nothing out, the state passes through unchanged
    y0, s0 = chunk_causal_content(q[:, :0], k[:, :0], v[:, :0], final, output_final_state=True)
    assert y0.shape == (2, 0, 2, 4)
    assert all(torch.equal(a, b) for a, b in zip(s0, final, strict=True))
    # continuing from the state after a prefix equals the full pass; so does stepping
    head, mid = chunk_causal_content(q[:, :10], k[:, :10], v[:, :10], output_final_state=True, chunk_size=4)
    tail, end = chunk_causal_content(q[:, 10:], k[:, 10:], v[:, 10:], mid, output_final_state=True, chunk_size=5)
    torch.testing.assert_close(torch.cat([head, tail], dim=1), full, rtol=1e-12, atol=1e-12)
    for a, b in zip(end, final, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    state, steps = None, []
    for i in range(23):
        y, state = recurrent_causal_content(q[:, i], k[:, i], v[:, i], state)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps, dim=1), full, rtol=1e-12, atol=1e-12)


def test_chunk_errors() -> None:
    q, k, v, _ = _inputs(1, 5, 2, 1, 3, 4)
    with pytest.raises(ValueError, match="chunk_size=0 must be a positive integer"):
        chunk_causal_content(q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match="must be 4-D"):
        chunk_causal_content(q[0], k, v)
    with pytest.raises(ValueError, match="do not share"):
        chunk_causal_content(q, k[:, :4], v)
    bad = ContentState(torch.zeros(1, 1, 3, 5), torch.zeros(1, 1, 3), torch.zeros(1, 1, 3))
    with pytest.raises(ValueError, match=r"do not match \(b, u, k, v\) = \(1, 1, 3, 4\)"):
        chunk_causal_content(q, k, v, bad)


class _BackwardTraffic(TorchDispatchMode):
    """Elements written by every op, and the number of outputs at least ``big`` elements large."""

    def __init__(self, big: int) -> None:
        super().__init__()
        self.big, self.elements, self.large = big, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, Tensor):
                self.elements += t.numel()
                self.large += t.numel() >= self.big
        return out


def _backward_traffic(forward, length: int) -> tuple[int, int]:
    x = torch.randn(1, length, 8, requires_grad=True)
    y = forward(x)
    with _BackwardTraffic(big=x.numel()) as mode:
        y.sum().backward()
    return mode.elements, mode.large


def test_backward_traffic_is_linear_in_length() -> None:
    """Slicing full-length tensors per chunk zero-fills a full-length gradient per chunk in backward (O(n^2/chunk));
    the causal layer must write O(n) elements and a number of full-length tensors that does not grow with n."""
    torch.manual_seed(0)
    forward = LambdaLayer1d(8, dim_k=4, heads=2, scope=None, max_length=1024, causal=True, chunk=8)
    forward.algorithm = "fft"
    short, long = _backward_traffic(forward, 256), _backward_traffic(forward, 1024)
    assert long[0] <= 5 * short[0], (short, long)  # x4 length: about x4 traffic, not x16
    assert long[1] <= short[1] + 2, (short, long)  # full-length tensors: a constant number
