"""The ``unfold`` 3-D position algorithm against explicit sums over kernel offsets, and its traced forms.

Layer-level reference checks (all gradients, u > 1, stride, global context) run in ``tests/test_layer3d.py``, which
picks every registered algorithm up; here the plug-in's own contract is checked on shapes those configs miss.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from lambdanet import LambdaLayer3d
from lambdanet.layers.algorithms import unfold
from tests.reference import relative_error


def _explicit(q, v, weight, lam_c):
    """y[b, n, h, v] = sum_k q[b, n, h, k] (lam_c[b, k, v] + sum_{t, u} weight[k, u, t] v[b, n + t - c, u, v]),
    one zero-padded shift of the values per kernel offset t (float64, slow, independent of the algorithm)."""
    spatial, kernel = q.shape[1:4], weight.shape[2:]
    half = [s // 2 for s in kernel]
    padded = F.pad(v, [0, 0, 0, 0, *[p for c in reversed(half) for p in (c, c)]])
    lam = lam_c[:, None, None, None].expand(-1, *spatial, -1, -1).clone()  # b T H W k v
    for t in itertools.product(*[range(s) for s in kernel]):
        window = padded[(slice(None), *[slice(i, i + s) for i, s in zip(t, spatial)])]  # b T H W u v
        lam += torch.einsum("ku,bxyzuv->bxyzkv", weight[(slice(None), slice(None), *t)], window)
    return torch.einsum("bxyzhk,bxyzkv->bxyzhv", q, lam)


def _float64(generator, *shape):
    return torch.randn(*shape, dtype=torch.float64, generator=generator, requires_grad=True)


@pytest.mark.parametrize(
    ("spatial", "kernel", "dim_u"),
    [((3, 4, 6), (3, 5, 7), 1), ((2, 5, 3), (3, 3, 1), 3), ((4, 3, 2), (1, 5, 3), 2), ((1, 1, 5), (1, 1, 9), 1)],
)
def test_unfold_matches_explicit_sums_forward_and_gradients(spatial, kernel, dim_u) -> None:
    """Even and odd sides, last kernel side 1 and longer than the map, u > 1: output and every gradient to 1e-10."""
    g = torch.Generator().manual_seed(0)
    b, h, k, dv = 2, 3, 4, 5
    shapes = (b, *spatial, h, k), (b, *spatial, dim_u, dv), (k, dim_u, *kernel), (b, k, dv)
    inputs = tuple(_float64(g, *shape) for shape in shapes)
    got, want = unfold.output(*inputs), _explicit(*inputs)
    assert relative_error(got, want) < 1e-10
    grad_out = torch.randn(want.shape, dtype=torch.float64, generator=g)
    for name, a, e in zip(
        ("q", "v", "weight", "lam_c"),
        torch.autograd.grad(got, inputs, grad_out),
        torch.autograd.grad(want, inputs, grad_out),
    ):
        assert relative_error(a, e) < 1e-10, f"gradient of {name}"


def test_unfold_backward_is_itself_differentiable() -> None:
    """The hand-written backward of the per-position product keeps second derivatives (gradient penalties, double
    backward) exact: finite differences of the output and of its gradient, float64."""
    g = torch.Generator().manual_seed(1)
    shapes = (2, 2, 3, 4, 3, 4), (2, 2, 3, 4, 1, 5), (4, 1, 3, 3, 3), (2, 4, 5)
    inputs = tuple(_float64(g, *shape) for shape in shapes)
    assert torch.autograd.gradcheck(unfold.output, inputs)
    assert torch.autograd.gradgradcheck(unfold.output, inputs)


def test_unfolded_values_reach_the_convolution_as_a_dense_channels_last_copy(monkeypatch) -> None:
    """An overlapping unfold view (channel and last-axis strides both 1) gives the same numbers but runs ~3x slower
    in oneDNN: the convolution must get a dense channels-last input."""
    seen, original = [], F.conv3d

    def conv3d(x, w, **kwargs):
        seen.append(x.is_contiguous(memory_format=torch.channels_last_3d))
        return original(x, w, **kwargs)

    monkeypatch.setattr(unfold.F, "conv3d", conv3d)
    unfold.position_lambdas(torch.randn(2, 3, 4, 5, 1, 6), torch.randn(4, 1, 3, 3, 5))
    assert seen == [True]


@pytest.mark.compile
def test_unfold_under_torch_compile_and_export() -> None:
    torch._dynamo.reset()
    layer = LambdaLayer3d(8, dim_k=4, heads=2, scope=(3, 3, 5), algorithm="unfold").eval()
    x = torch.randn(2, 8, 3, 4, 5)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-5)
    program = torch.export.export(layer, (x,))
    torch.testing.assert_close(program.module()(x), layer(x), rtol=1e-5, atol=1e-5)
