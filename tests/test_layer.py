"""LambdaLayer against the float64 reference, and the mathematical properties the paper's layer must have."""

from __future__ import annotations

import copy
import itertools
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambdanet import LambdaLayer, LambdaLayer1d, LambdaLayer3d, RelativePositionEmbedding
from lambdanet.layers import ALGORITHMS
from lambdanet.layers.algorithms import usable
from lambdanet.layers.algorithms.fft import fft_size
from tests.reference import DEVICES, assert_matches, randomise_state, reference_forward, relative_error

TOL = 1e-10
#: The algorithms that run in this process on CPU (``triton`` only under its interpreter: tests/test_triton.py).
HERE = tuple(a for a in ALGORITHMS if usable(a, 2, "cpu"))

# (kwargs, input shape): dim_out != dim, u > 1, odd and non-square maps, maps smaller than the scope, 1x1, batch 1,
# global context, ablations, stride 2 and the compatibility bias.
CONFIGS = [
    ({"dim": 8, "dim_k": 4, "heads": 2, "scope": 3}, (2, 8, 5, 6)),
    ({"dim": 8, "dim_out": 12, "dim_k": 3, "heads": 3, "scope": 5}, (2, 8, 6, 5)),
    ({"dim": 6, "dim_k": 2, "heads": 2, "dim_u": 3, "scope": 3}, (2, 6, 4, 7)),
    ({"dim": 8, "dim_k": 4, "heads": 4, "scope": 23}, (1, 8, 3, 5)),
    ({"dim": 4, "dim_out": 8, "dim_k": 2, "heads": 2, "scope": 1}, (2, 4, 4, 4)),
    ({"dim": 4, "dim_k": 2, "heads": 2, "scope": 3}, (3, 4, 1, 1)),
    ({"dim": 8, "dim_k": 4, "heads": 2, "scope": None, "feat_size": (4, 5)}, (2, 8, 4, 5)),
    ({"dim": 6, "dim_out": 4, "dim_k": 3, "heads": 2, "dim_u": 2, "scope": None, "feat_size": (5, 3)}, (2, 6, 5, 3)),
    ({"dim": 8, "dim_k": 4, "heads": 2, "scope": 5, "content": False}, (2, 8, 5, 5)),
    ({"dim": 8, "dim_k": 4, "heads": 2, "scope": 5, "position": False}, (2, 8, 5, 5)),
    ({"dim": 8, "dim_k": 4, "heads": 2, "scope": 3, "stride": 2}, (2, 8, 5, 6)),
    ({"dim": 8, "dim_k": 4, "heads": 2, "scope": 5, "position_bias": True}, (2, 8, 4, 6)),
]


def _ids(cfg: tuple[dict, tuple[int, ...]]) -> str:
    kwargs, shape = cfg
    return "-".join(f"{k}={v}" for k, v in kwargs.items() if k != "dim") + f"-x{'x'.join(map(str, shape))}"


def _make(kwargs: dict, algorithm: str, train: bool) -> LambdaLayer:
    layer = LambdaLayer(**kwargs, algorithm=algorithm).double()
    randomise_state(layer)
    return layer.train(train)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=[_ids(c) for c in CONFIGS])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_matches_reference_forward_and_gradients(cfg, algorithm: str, train: bool, device: str) -> None:
    if not usable(algorithm, 2, device):
        pytest.skip(f"{algorithm} does not serve 2-D inputs on {device}")
    kwargs, shape = cfg
    layer = _make(kwargs, algorithm, train)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    ref = reference_forward(layer, x)
    grad_out = torch.randn_like(ref)
    want = torch.autograd.grad(ref, [x, *layer.parameters()], grad_out)
    layer, xd = layer.to(device), x.detach().to(device).requires_grad_()
    assert_matches(layer, xd, ref, grad_out, want, TOL)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    heads=st.sampled_from([1, 2, 3]),
    dim_v=st.integers(1, 3),
    dim_k=st.integers(1, 4),
    dim_u=st.integers(1, 2),
    scope=st.sampled_from([1, 3, 5, 7, 9, None]),
    hh=st.integers(1, 5),
    ww=st.integers(1, 5),
    batch=st.integers(1, 2),
    algorithm=st.sampled_from(HERE),
)
def test_hypothesis_search_against_reference(heads, dim_v, dim_k, dim_u, scope, hh, ww, batch, algorithm) -> None:
    kwargs = {"dim": 5, "dim_out": heads * dim_v, "dim_k": dim_k, "heads": heads, "dim_u": dim_u, "scope": scope}
    if scope is None:
        kwargs["feat_size"] = (hh, ww)
    layer = _make(kwargs, algorithm, train=False)
    x = torch.randn(batch, 5, hh, ww, dtype=torch.float64)
    assert relative_error(layer(x), reference_forward(layer, x)) < TOL


@pytest.mark.parametrize("device", DEVICES)
def test_algorithms_agree_at_realistic_size(device: str) -> None:
    """Every algorithm agrees with einsum (float64) on a c5-like map and a map larger than the scope."""
    for shape, scope in [((2, 32, 7, 7), 23), ((1, 16, 20, 17), 7)]:
        layer = LambdaLayer(shape[1], dim_k=8, heads=4, scope=scope).double().eval().to(device)
        x = torch.randn(shape, dtype=torch.float64, device=device)
        outs = {}
        for algorithm in (a for a in ALGORITHMS if usable(a, 2, device)):
            layer.algorithm = algorithm
            outs[algorithm] = layer(x)
        for algorithm, out in outs.items():
            assert relative_error(out, outs["einsum"]) < TOL, algorithm


# ---------------------------------------------------------------------------------------------- properties
def _position_only(scope, feat_size=None, algorithm="auto") -> LambdaLayer:
    return LambdaLayer(6, dim_k=3, heads=2, scope=scope, feat_size=feat_size, content=False, algorithm=algorithm)


@pytest.mark.parametrize("algorithm", HERE)
@pytest.mark.parametrize(("scope", "size"), [(3, (9, 8)), (5, (11, 10)), (None, (7, 6))])
def test_position_term_is_translation_equivariant(algorithm: str, scope, size) -> None:
    """Shifting the input shifts the position-only output, away from the borders.

    Two crops of one larger input, offset by (dy, dx), must give equal outputs at corresponding positions whose
    whole support lies inside both crops. For global context the embedding is kept only for offsets within 1, so
    that such positions exist; the test then checks that the global table is indexed by relative offsets.
    """
    hh, ww = size
    layer = _position_only(scope, size if scope is None else None, algorithm).double().eval()
    c = scope // 2 if scope is not None else 1
    if scope is None:
        with torch.no_grad():
            w = layer.pos.weight
            ci, cj = w.shape[2] // 2, w.shape[3] // 2
            keep = torch.zeros_like(w)
            keep[:, :, ci - 1 : ci + 2, cj - 1 : cj + 2] = 1
            w.mul_(keep)
    dy, dx = 2, 1
    big = torch.randn(1, 6, hh + dy, ww + dx, dtype=torch.float64)
    a = layer(big[:, :, :hh, :ww])  # position (i, j) of the crop is (i, j) of big
    b = layer(big[:, :, dy:, dx:])  # position (i, j) of the crop is (i + dy, j + dx) of big
    rows, cols = range(dy + c, hh - c), range(dx + c, ww - c)
    assert len(rows) > 0 and len(cols) > 0
    for i, j in itertools.product(rows, cols):
        torch.testing.assert_close(a[:, :, i, j], b[:, :, i - dy, j - dx], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("algorithm", HERE)
def test_global_relative_positions_depend_only_on_offsets(algorithm: str) -> None:
    """Global position output is y[n] = sum_m q_n . R[m - n + c] v_m: check it against that formula for a
    single-impulse value map, at every query position."""
    from lambdanet.layers.core import lambda_output

    hh, ww, k, dv = 5, 6, 2, 3
    weight = torch.randn(k, 1, 2 * hh - 1, 2 * ww - 1, dtype=torch.float64)
    q = torch.randn(1, hh, ww, 1, k, dtype=torch.float64)
    for mi, mj in [(0, 0), (1, 2), (4, 5)]:
        v = torch.zeros(1, hh, ww, 1, dv, dtype=torch.float64)
        v[0, mi, mj] = torch.randn(dv, dtype=torch.float64)
        y = lambda_output(q, v, None, weight, (hh, ww), algorithm)[0, :, :, 0]  # hh ww v
        for ni, nj in itertools.product(range(hh), range(ww)):
            coeff = (q[0, ni, nj, 0] * weight[:, 0, mi - ni + hh - 1, mj - nj + ww - 1]).sum()
            torch.testing.assert_close(y[ni, nj], coeff * v[0, mi, mj, 0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("algorithm", HERE)
def test_content_only_layer_commutes_with_permutations(algorithm: str) -> None:
    layer = LambdaLayer(6, dim_k=3, heads=2, position=False, algorithm=algorithm).double().eval()
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    perm = torch.randperm(20)
    xp = x.flatten(2)[..., perm].reshape_as(x)
    torch.testing.assert_close(layer(xp).flatten(2), layer(x).flatten(2)[..., perm], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("algorithm", HERE)
@pytest.mark.parametrize("scope", [3, 5])
def test_position_term_is_local(algorithm: str, scope: int) -> None:
    layer = _position_only(scope, algorithm=algorithm).double().eval()
    x = torch.randn(1, 6, 11, 12, dtype=torch.float64)
    p = (5, 7)
    x2 = x.clone()
    x2[0, :, p[0], p[1]] += 1.0
    changed = (layer(x2) - layer(x)).abs().amax(dim=1)[0] > 1e-12
    c = scope // 2
    ii, jj = torch.meshgrid(torch.arange(11), torch.arange(12), indexing="ij")
    inside = ((ii - p[0]).abs() <= c) & ((jj - p[1]).abs() <= c)
    assert not changed[~inside].any(), "output changed outside the scope of the perturbed position"
    assert changed[inside].all(), "every output within the scope should depend on the perturbed position"


@pytest.mark.parametrize("cfg", CONFIGS, ids=[_ids(c) for c in CONFIGS])
def test_every_parameter_receives_gradient(cfg) -> None:
    kwargs, shape = cfg
    layer = LambdaLayer(**kwargs).train()
    layer(torch.randn(shape)).square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


@pytest.mark.parametrize("algorithm", HERE)
def test_eval_is_deterministic_and_batch_independent(algorithm: str) -> None:
    layer = LambdaLayer(8, dim_k=4, heads=2, scope=5, algorithm=algorithm).eval()
    x = torch.randn(3, 8, 6, 7, requires_grad=True)
    out = layer(x)
    assert torch.equal(out, layer(x))
    (grad,) = torch.autograd.grad(out[0].sum(), x)
    assert grad[1:].abs().max() == 0, "sample 0 depends on other samples in eval mode"
    single = layer(x[1:2])
    torch.testing.assert_close(single, out[1:2], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- dtypes and precision
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("algorithm", HERE)
def test_low_precision_dtypes(dtype: torch.dtype, algorithm: str) -> None:
    kwargs = {"dim": 16, "dim_k": 4, "heads": 2, "scope": 5}
    layer64 = LambdaLayer(**kwargs, algorithm=algorithm).double().eval()
    layer = LambdaLayer(**kwargs, algorithm=algorithm).eval()
    layer.load_state_dict(layer64.state_dict())
    layer = layer.to(dtype)
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64)
    out = layer(x.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    tol = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
    assert relative_error(out.double(), layer64(x)) < tol


@pytest.mark.parametrize("algorithm", HERE)
def test_autocast_keeps_large_activations_finite(algorithm: str) -> None:
    layer = LambdaLayer(16, dim_k=4, heads=2, scope=5, algorithm=algorithm).train()
    x = 300.0 * torch.randn(2, 16, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    ref = LambdaLayer(16, dim_k=4, heads=2, scope=5, algorithm=algorithm).train()
    ref.load_state_dict(layer.state_dict())
    assert relative_error(out.double(), ref(x).double()) < 5e-2


def test_float16_model_with_large_values_stays_finite() -> None:
    """Key logits of several hundred overflow exp() in float16; the layer normalises them in float32."""
    layer = LambdaLayer(8, dim_k=4, heads=2, scope=3).eval()
    nq, nk, _ = layer.splits
    with torch.no_grad():
        layer.qkv.weight[nq : nq + nk].mul_(2000.0)  # key logits in the thousands: exp() overflows float16
    layer = layer.half()
    out = layer(torch.randn(1, 8, 5, 5).half())
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------- compile and export
@pytest.mark.compile
@pytest.mark.parametrize("algorithm", ["auto", *HERE])
def test_torch_compile_fullgraph(algorithm: str) -> None:
    torch._dynamo.reset()
    layer = LambdaLayer(8, dim_k=4, heads=2, scope=5, algorithm=algorithm).eval()
    x = torch.randn(2, 8, 6, 7)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.export
@pytest.mark.parametrize(("scope", "feat"), [(5, None), (None, (6, 7))])
def test_torch_export_roundtrip(scope, feat) -> None:
    layer = LambdaLayer(8, dim_k=4, heads=2, scope=scope, feat_size=feat, stride=2).eval()
    x = torch.randn(2, 8, 6, 7)
    program = torch.export.export(layer, (x,))
    torch.testing.assert_close(program.module()(x), layer(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- API and errors
def test_output_shapes_and_channel_order() -> None:
    layer = LambdaLayer(8, dim_out=12, heads=3, dim_k=4, scope=3, stride=2)
    assert layer(torch.randn(1, 8, 7, 6)).shape == (1, 12, 4, 3)
    assert layer.dim_v == 4


def test_content_only_has_no_position_parameters_and_position_only_no_keys() -> None:
    content = LambdaLayer(16, dim_k=4, heads=2, position=False)
    position = LambdaLayer(16, dim_k=4, heads=2, content=False, scope=5)
    assert content.pos is None and content.qkv.weight.shape[0] == 2 * 4 + 4 + 8
    assert position.qkv.weight.shape[0] == 2 * 4 + 8


def test_initialisation_follows_the_paper() -> None:
    dim, dim_k = 512, 16
    layer = LambdaLayer(dim, dim_k=dim_k, heads=4, scope=23)
    nq = layer.splits[0]
    w = layer.qkv.weight.flatten(1)
    assert abs(w[:nq].std().item() - (dim_k * dim) ** -0.5) < 0.05 * (dim_k * dim) ** -0.5
    assert abs(w[nq:].std().item() - dim**-0.5) < 0.05 * dim**-0.5
    assert abs(layer.pos.weight.std().item() - 1.0) < 0.05
    assert layer.qkv.bias is None


def test_shared_position_embedding() -> None:
    shared = RelativePositionEmbedding(4, (5, 5))
    a = LambdaLayer(8, dim_k=4, heads=2, scope=5, pos_embed=shared)
    b = LambdaLayer(16, dim_k=4, heads=2, scope=5, pos_embed=shared)
    assert a.pos.weight is b.pos.weight
    with pytest.raises(ValueError, match="pos_embed"):
        LambdaLayer(8, dim_k=4, heads=2, scope=7, pos_embed=shared)


def test_auto_algorithm_is_exact_and_named() -> None:
    layer = LambdaLayer(16, dim_k=4, heads=4, scope=7).double().eval()
    x = torch.randn(2, 16, 9, 9, dtype=torch.float64)
    chosen = layer.resolve_algorithm(2, (9, 9))
    assert chosen in ALGORITHMS
    out = layer(x)
    layer.algorithm = "einsum"
    assert relative_error(out, layer(x)) < TOL


def test_macs_count_only_in_scope_pairs() -> None:
    layer = LambdaLayer(16, dim_k=4, heads=2, scope=3)
    parts = layer.macs(4, 5)
    pairs = sum(
        1
        for ni, nj, mi, mj in itertools.product(range(4), range(5), range(4), range(5))
        if abs(mi - ni) <= 1 and abs(mj - nj) <= 1
    )
    n, k, v = 20, 4, 8
    assert parts["position"] == pairs * k * v + n * 2 * k * v
    assert parts["content"] == n * k * v + n * 2 * k * v
    assert parts["projection"] == n * 16 * (2 * 4 + 4 + 8)


def test_fft_size_is_smooth_and_large_enough() -> None:
    for size in range(1, 200):
        for half in (0, 1, 3, 11, size):
            n = fft_size(size, half)
            assert n >= size + half
            m = n
            for p in (2, 3, 5):
                while m % p == 0:
                    m //= p
            assert m == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 8, "dim_out": 10, "heads": 4}, "dim_out=10 must be divisible by heads=4"),
        ({"dim": 8, "scope": 4}, "scope=4 must be an odd positive integer"),
        ({"dim": 8, "scope": 0}, "scope=0"),
        ({"dim": 8, "scope": -3}, "scope=-3"),
        ({"dim": 8, "scope": None}, "requires feat_size"),
        ({"dim": 8, "stride": 3}, "stride=3 must be 1 or 2"),
        ({"dim": 0}, "dim=0 must be a positive integer"),
        ({"dim": 8, "heads": 0}, "heads=0"),
        ({"dim": 8, "algorithm": "magic"}, "algorithm='magic'"),
        ({"dim": 8, "content": False, "position": False}, "leave nothing to compute"),
        ({"dim": 8, "scope": None, "feat_size": (4,)}, "feat_size"),
    ],
)
def test_constructor_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LambdaLayer(**kwargs)


def test_forward_errors() -> None:
    layer = LambdaLayer(8, dim_k=4, heads=2, scope=3)
    with pytest.raises(ValueError, match="4-D tensor"):
        layer(torch.randn(8, 5, 5))
    with pytest.raises(ValueError, match="expected dim=8"):
        layer(torch.randn(1, 7, 5, 5))
    glob = LambdaLayer(8, dim_k=4, heads=2, scope=None, feat_size=(4, 4))
    with pytest.raises(ValueError, match=r"differs from feat_size=\(4, 4\)"):
        glob(torch.randn(1, 8, 4, 5))


def test_batchnorm_gradient_workaround() -> None:
    """PyTorch's CPU BatchNorm2d backward mishandles channels-last gradients for a batch of one (seen in 2.13);
    the layer hands BN a contiguous gradient. If the first assertion starts failing, the bug is fixed upstream."""
    bn = torch.nn.BatchNorm2d(2).double().eval()
    x = torch.randn(1, 2, 3, 5, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(30, dtype=torch.float64).as_strided((1, 2, 3, 5), (2, 1, 10, 2))
    (bad,) = torch.autograd.grad(bn(x), [x], grad)
    (good,) = torch.autograd.grad(bn(x), [x], grad.contiguous())
    if torch.allclose(bad, good):
        pytest.skip("BatchNorm2d handles channels-last gradients here; the workaround is harmless")
    layer = LambdaLayer(8, dim_k=4, heads=4, scope=3, algorithm="einsum").double().eval()
    xin = torch.randn(1, 8, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (xin,))


@pytest.mark.parametrize("construction", ["gather", "skew"])
@pytest.mark.parametrize(("spatial", "kernel", "dim_u"), [((4, 5), (3, 3), 1), ((3, 6), (11, 11), 2), ((7,), (5,), 1)])
def test_position_logits_constructions_match_explicit_sum(construction: str, spatial, kernel, dim_u: int) -> None:
    """Both constructions of the position logits equal sum_k q[k, n] R[k, u, m - n + c] (zero outside the kernel)."""
    from lambdanet.layers.algorithms.logits import position_logits

    n = 1
    for s in spatial:
        n *= s
    q = torch.randn(2, 3, 4, n, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, dim_u, *kernel, dtype=torch.float64, requires_grad=True)
    logits = position_logits(q, weight, spatial, construction=construction)
    coords = list(itertools.product(*[range(s) for s in spatial]))
    expected = torch.zeros(2, 3, n, dim_u, n, dtype=torch.float64)
    for i, pn in enumerate(coords):
        for j, pm in enumerate(coords):
            off = [m - p + kk // 2 for p, m, kk in zip(pn, pm, kernel)]
            if all(0 <= o < kk for o, kk in zip(off, kernel)):
                expected[:, :, i, :, j] = torch.einsum(
                    "bhk,ku->bhu", q[:, :, :, i], weight[(slice(None), slice(None), *off)]
                )
    assert relative_error(logits, expected) < TOL
    grad = torch.randn_like(logits)
    got = torch.autograd.grad(logits, [q, weight], grad)
    want = torch.autograd.grad(expected, [q, weight], grad)
    for g, w in zip(got, want):
        assert relative_error(g, w) < TOL


@pytest.mark.parametrize("algorithm", HERE)
@pytest.mark.parametrize("batch", [1, 2])
def test_channels_last_input_gradients(algorithm: str, batch: int) -> None:
    layer = LambdaLayer(8, dim_k=4, heads=4, scope=3, algorithm=algorithm).double().train()
    x = torch.randn(batch, 8, 3, 5, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(layer, (x,))
    torch.testing.assert_close(layer(x), layer(x.contiguous()), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------- reliability
def _any_layer(ndim: int, algorithm: str = "auto", **kwargs):
    """A small 1-, 2- or 3-D layer (stride 2 for 2-D and 3-D) and its input's shape without the batch."""
    kwargs = {"dim_k": 4, "heads": 2, "scope": 3, "algorithm": algorithm, **kwargs}
    if ndim == 1:
        return LambdaLayer1d(8, **kwargs), (5, 8)
    if ndim == 2:
        return LambdaLayer(8, stride=2, **kwargs), (8, 5, 6)
    return LambdaLayer3d(8, stride=(1, 2, 2), **kwargs), (8, 3, 4, 5)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("algorithm", ["auto", *ALGORITHMS])
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_empty_batch_gives_empty_output(ndim: int, algorithm: str, train: bool) -> None:
    """As nn.Conv2d: batch 0 in, batch 0 out with the shape a batch of one gets, and backward runs."""
    if algorithm != "auto" and not usable(algorithm, ndim, "cpu"):
        pytest.skip(f"{algorithm} does not run {ndim}-D inputs on this CPU")
    layer, shape = _any_layer(ndim, algorithm)
    expected = layer.eval()(torch.randn(1, *shape)).shape[1:]
    x = torch.randn(0, *shape, requires_grad=True)
    y = layer.train(train)(x)
    assert y.shape == (0, *expected)
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_empty_batch_causal_sequence(train: bool) -> None:
    """Batch 0 through the causal chunked path (it once took the max of an empty tensor)."""
    layer = LambdaLayer1d(8, dim_out=6, dim_k=4, heads=2, scope=3, causal=True).train(train)
    x = torch.randn(0, 5, 8, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 5, 6)
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("algorithm", ["auto", *HERE])
def test_empty_sequence_gives_empty_output(algorithm: str) -> None:
    layer = LambdaLayer1d(8, dim_out=6, dim_k=4, heads=2, scope=3, algorithm=algorithm).eval()
    assert layer(torch.randn(2, 0, 8)).shape == (2, 0, 6)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_flags_must_be_bool(ndim: int) -> None:
    flags = ["content", "position", "causal"] if ndim == 1 else ["content", "position", "position_bias"]
    for flag in flags:
        with pytest.raises(TypeError, match=f"{flag}='no' must be a bool"):
            _any_layer(ndim, **{flag: "no"})


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_integer_and_bool_inputs_name_the_dtype(ndim: int, dtype: torch.dtype) -> None:
    layer, shape = _any_layer(ndim)
    with pytest.raises(TypeError, match=f"input dtype {dtype}"):
        layer(torch.zeros(2, *shape, dtype=dtype))
    with pytest.raises(TypeError, match=r"input dtype torch.float64 differs from the layer's torch.float32"):
        layer(torch.zeros(2, *shape, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"input must be a torch\.Tensor"):
        layer([[0.0]])


@pytest.mark.parametrize("scale", [1.0, 1e2, 1e3, 1e4])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("ndim", [2, 3])
def test_low_precision_headroom(ndim: int, dtype: torch.dtype, scale: float) -> None:
    """Eval mode at input scales 1 to 1e4: the output grows with the square of the scale; float16 saturates at its
    largest finite value instead of overflowing to inf (and NaN in the next layer); otherwise float32's result."""
    layer32, shape = _any_layer(ndim, scope=5)
    layer32.eval()
    layer = copy.deepcopy(layer32)
    x = (scale * torch.randn(2, *shape)).to(dtype)
    limit = torch.finfo(dtype).max
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = layer.to(dtype)(x)
    saturated = dtype == torch.float16 and bool((layer32(x.float()).abs() > limit).any())
    if dtype == torch.float16:  # the warning is checked both ways
        assert saturated == (scale >= 1e3) or scale == 1e2
    assert [str(w.message)[:60] for w in caught] == (
        ["lambda layer output exceeds float16's range (65504) and is c"] if saturated else []
    )
    assert out.dtype == dtype and torch.isfinite(out).all()
    expected = layer32(x.float()).clamp(-limit, limit)
    # bfloat16 keeps 8 bits: key logits in the thousands are rounded by units, which the softmax amplifies
    assert relative_error(out.float(), expected) < (5e-3 if dtype == torch.float16 else 0.1)


def test_reset_parameters_reinitialises_everything() -> None:
    layers = [_any_layer(n, position_bias=True)[0] for n in (2, 3)] + [_any_layer(1)[0]]
    for layer in layers:
        with torch.no_grad():
            for t in [*layer.parameters(), *layer.buffers()]:
                t.fill_(3)
        layer.reset_parameters()
        for bn in (layer.norm_q, layer.norm_v):
            assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.bias.any()
            if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                assert not bn.running_mean.any() and torch.equal(bn.running_var, torch.ones_like(bn.running_var))
                assert bn.num_batches_tracked == 0
        assert not (layer.qkv.weight == 3).any() and not (layer.pos.weight == 3).any()
        assert layer.pos.bias is None or not layer.pos.bias.any()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ndim=st.integers(1, 3),
    heads=st.sampled_from([1, 2]),
    dim_v=st.integers(1, 2),
    dim_out_extra=st.sampled_from([0, 0, 0, 1]),
    dim_k=st.integers(1, 3),
    dim_u=st.integers(1, 2),
    scope=st.sampled_from([0, 1, 2, 3, 5, None, (3, 1, 3)]),
    content=st.booleans(),
    position=st.sampled_from([True, True, False, 1]),
    batch=st.integers(0, 2),
    sizes=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3)),
    algorithm=st.sampled_from(HERE),
)
def test_fuzz_layers_against_einsum(
    ndim, heads, dim_v, dim_out_extra, dim_k, dim_u, scope, content, position, batch, sizes, algorithm
) -> None:
    """Random arguments and shapes (batch 0 included): either the output equals the einsum algorithm's, or the
    constructor raises a ValueError/TypeError naming an argument it was given."""
    kwargs = {"dim_out": heads * dim_v + dim_out_extra, "dim_k": dim_k, "heads": heads, "dim_u": dim_u}
    kwargs.update(scope=scope, content=content, position=position)
    spatial = sizes[:ndim]
    if scope is None:
        kwargs["max_length" if ndim == 1 else "feat_size"] = spatial[0] if ndim == 1 else spatial
    cls = {1: LambdaLayer1d, 2: LambdaLayer, 3: LambdaLayer3d}[ndim]
    try:
        layer = cls(3, algorithm=algorithm, **kwargs).double().eval()
    except (ValueError, TypeError) as err:
        message = str(err)
    else:
        message = None
    if message is not None:
        assert any(f"{name}=" in message for name in kwargs), message
        return
    x = torch.randn(batch, *spatial, 3, dtype=torch.float64) if ndim == 1 else None
    if x is None:
        x = torch.randn(batch, 3, *spatial, dtype=torch.float64)
    out = layer(x)
    layer.algorithm = "einsum"
    expected = layer(x)
    assert out.shape == expected.shape and out.shape[0] == batch
    assert batch == 0 or relative_error(out, expected) < TOL
