"""LambdaLayer3d against the float64 explicit-sum reference, and translation equivariance along all three axes."""

from __future__ import annotations

import itertools

import pytest
import torch

from lambdanet import LambdaLayer3d, RelativePositionEmbedding
from lambdanet.layers import ALGORITHMS, choose_algorithm
from lambdanet.layers.algorithms import usable
from tests.reference import DEVICES, assert_matches, randomise_state, reference_forward, relative_error

TOL = 1e-10

# (kwargs, input shape): per-axis scope, dim_out != dim with u > 1 and a (1, 2, 2) stride, global context with the
# compatibility bias, position-only with stride 2 everywhere, content-only.
CONFIGS = [
    ({"dim": 6, "dim_k": 3, "heads": 2, "scope": (3, 5, 5)}, (2, 6, 3, 4, 5)),
    ({"dim": 6, "dim_out": 8, "dim_k": 2, "heads": 2, "dim_u": 2, "scope": 3, "stride": (1, 2, 2)}, (2, 6, 3, 4, 4)),
    ({"dim": 6, "dim_k": 3, "heads": 2, "scope": None, "feat_size": (2, 3, 4), "position_bias": True}, (2, 6, 2, 3, 4)),
    ({"dim": 6, "dim_k": 3, "heads": 3, "scope": 3, "content": False, "stride": 2}, (1, 6, 3, 3, 4)),
    ({"dim": 6, "dim_k": 3, "heads": 2, "position": False}, (2, 6, 2, 3, 3)),
]
_REFERENCE: dict[tuple[int, bool], tuple] = {}


def _make(kwargs: dict, algorithm: str, train: bool, device: str) -> LambdaLayer3d:
    torch.manual_seed(0)
    layer = LambdaLayer3d(**kwargs, algorithm=algorithm).double()
    randomise_state(layer)
    return layer.train(train).to(device)


def _reference(index: int, train: bool) -> tuple:
    """Reference output and gradients of config ``index`` (computed once; every algorithm is compared to it)."""
    if (index, train) not in _REFERENCE:
        kwargs, shape = CONFIGS[index]
        layer = _make(kwargs, "einsum", train, "cpu")
        x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
        ref = reference_forward(layer, x)
        grad_out = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        grads = torch.autograd.grad(ref, [x, *layer.parameters()], grad_out)
        _REFERENCE[index, train] = (x.detach(), ref.detach(), grad_out, grads)
    return _REFERENCE[index, train]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("index", range(len(CONFIGS)))
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_matches_reference_forward_and_gradients(index: int, algorithm: str, train: bool, device: str) -> None:
    if not usable(algorithm, 3, device):
        pytest.skip(f"{algorithm} does not serve 3-D inputs on {device}")
    x, ref, grad_out, want = _reference(index, train)
    layer = _make(CONFIGS[index][0], algorithm, train, device)
    x = x.to(device).requires_grad_()
    assert_matches(layer, x, ref, grad_out, want, TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("scope", [(3, 3, 3), (1, 3, 5), None])
def test_position_term_is_translation_equivariant(algorithm: str, scope, device: str) -> None:
    """Two crops of one larger input, offset by (1, 2, 1), give equal position-only outputs wherever the support
    lies inside both crops. Global context keeps the embedding for offsets within 1 only, so such positions exist
    and the test checks that the global table is indexed by relative offsets."""
    if not usable(algorithm, 3, device):
        pytest.skip(f"{algorithm} does not serve 3-D inputs on {device}")
    size, shift = (4, 6, 7), (1, 2, 1)
    layer = LambdaLayer3d(4, dim_k=2, heads=2, scope=scope, feat_size=size, content=False, algorithm=algorithm).double()
    layer = layer.eval().to(device)
    half = [s // 2 for s in scope] if scope is not None else [1, 1, 1]
    if scope is None:
        with torch.no_grad():
            w = layer.pos.weight
            keep = torch.zeros_like(w)
            keep[(slice(None), slice(None), *[slice(s // 2 - 1, s // 2 + 2) for s in w.shape[2:]])] = 1
            w.mul_(keep)
    big = torch.randn(1, 4, *[s + d for s, d in zip(size, shift)], dtype=torch.float64, device=device)
    a = layer(big[(..., *[slice(0, s) for s in size])])
    b = layer(big[(..., *[slice(d, d + s) for s, d in zip(size, shift)])])
    ranges = [range(d + c, s - c) for s, d, c in zip(size, shift, half)]
    assert all(len(r) > 0 for r in ranges)
    for p in itertools.product(*ranges):
        q = [pi - d for pi, d in zip(p, shift)]
        torch.testing.assert_close(a[(0, slice(None), *p)], b[(0, slice(None), *q)], rtol=1e-12, atol=1e-12)


def test_auto_is_exact_and_named() -> None:
    layer = LambdaLayer3d(8, dim_k=4, heads=2, scope=(3, 5, 5)).double().eval()
    x = torch.randn(2, 8, 4, 6, 6, dtype=torch.float64)
    assert layer.resolve_algorithm(2, (4, 6, 6)) in ALGORITHMS
    out = layer(x)
    layer.algorithm = "einsum"
    assert relative_error(out, layer(x)) < TOL


def test_output_shapes_stride_and_shared_embedding() -> None:
    shared = RelativePositionEmbedding(4, (3, 5, 5))
    a = LambdaLayer3d(8, dim_out=12, heads=3, dim_k=4, scope=(3, 5, 5), stride=(1, 2, 2), pos_embed=shared)
    b = LambdaLayer3d(16, dim_k=4, heads=2, scope=(3, 5, 5), stride=2, pos_embed=shared)
    assert a.pos.weight is b.pos.weight
    assert a(torch.randn(1, 8, 5, 7, 6)).shape == (1, 12, 5, 4, 3)
    assert b(torch.randn(1, 16, 5, 7, 6)).shape == (1, 16, 3, 4, 3)
    with pytest.raises(ValueError, match="pos_embed"):
        LambdaLayer3d(8, dim_k=4, heads=2, scope=5, pos_embed=shared)


@pytest.mark.parametrize("size", [(1, 6, 5), (2, 1, 3), (5, 4, 7)])
def test_stride_two_is_a_zero_padded_three_wide_mean_on_any_size(size: tuple[int, int, int]) -> None:
    """Stride 2 averages each 3x3x3 window around even positions, zeros outside counted (float64 explicit sum),
    also on axes shorter than the window (a single frame)."""
    torch.manual_seed(0)
    strided = LambdaLayer3d(8, dim_k=4, heads=2, scope=3, stride=2).double().eval()
    full = LambdaLayer3d(8, dim_k=4, heads=2, scope=3).double().eval()
    full.load_state_dict(strided.state_dict())
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    y, dense = strided(x), full(x)
    expected = torch.zeros(y.shape, dtype=torch.float64)
    for o in itertools.product(*(range(-(-s // 2)) for s in size)):
        window = [range(max(0, 2 * i - 1), min(s, 2 * i + 2)) for i, s in zip(o, size)]
        for p in itertools.product(*window):
            expected[(..., *o)] += dense[(..., *p)] / 27
    assert y.shape == (2, 8, *(-(-s // 2) for s in size))
    assert torch.allclose(y, expected, atol=1e-12)


def test_norm_choices_per_dimension() -> None:
    from lambdanet import LambdaLayer, LambdaLayer1d

    with pytest.raises(ValueError, match=r"norm='bogus' must be one of \('batch', 'none'\) for LambdaLayer3d"):
        LambdaLayer3d(8, dim_k=4, heads=2, scope=3, norm="bogus")
    with pytest.raises(ValueError, match=r"norm='layer' must be one of \('batch', 'none'\) for LambdaLayer"):
        LambdaLayer(8, dim_k=4, heads=2, scope=3, norm="layer")  # LayerNorm over the channels is 1-D only
    assert isinstance(LambdaLayer(8, dim_k=4, heads=2, scope=3, norm="none").norm_q, torch.nn.Identity)
    assert isinstance(LambdaLayer1d(8, dim_k=4, heads=2, scope=3, norm="layer").norm_q, torch.nn.LayerNorm)


def test_macs_count_only_in_scope_pairs() -> None:
    layer = LambdaLayer3d(8, dim_k=4, heads=2, scope=(1, 3, 3))
    pairs = sum(
        1
        for n, m in itertools.product(itertools.product(range(2), range(3), range(4)), repeat=2)
        if n[0] == m[0] and abs(n[1] - m[1]) <= 1 and abs(n[2] - m[2]) <= 1
    )
    assert layer.macs(2, 3, 4)["position"] == pairs * 4 * 4 + 24 * 2 * 4 * 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scope": (3, 4, 3)}, r"scope=\(3, 4, 3\) must be an odd positive integer \(or a tuple of 3\)"),
        ({"scope": (3, 3)}, "scope="),
        ({"scope": None}, r"requires feat_size=\(T, H, W\)"),
        ({"scope": None, "feat_size": (4, 4)}, "feat_size=.* must be"),
        ({"stride": (1, 3, 2)}, "stride="),
    ],
)
def test_constructor_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LambdaLayer3d(8, dim_k=4, heads=2, **kwargs)


def test_forward_errors() -> None:
    layer = LambdaLayer3d(8, dim_k=4, heads=2, scope=3)
    with pytest.raises(ValueError, match="5-D tensor"):
        layer(torch.randn(1, 8, 5, 5))
    glob = LambdaLayer3d(8, dim_k=4, heads=2, scope=None, feat_size=(2, 3, 3))
    with pytest.raises(ValueError, match=r"differs from feat_size=\(2, 3, 3\)"):
        glob(torch.randn(1, 8, 2, 3, 4))


@pytest.mark.compile
def test_torch_compile_fullgraph() -> None:
    torch._dynamo.reset()
    layer = LambdaLayer3d(8, dim_k=4, heads=2, scope=(3, 3, 3)).eval()
    x = torch.randn(2, 8, 3, 4, 5)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.export
def test_torch_export_roundtrip() -> None:
    layer = LambdaLayer3d(8, dim_k=4, heads=2, scope=3, stride=(1, 2, 2)).eval()
    x = torch.randn(2, 8, 3, 4, 5)
    program = torch.export.export(layer, (x,))
    torch.testing.assert_close(program.module()(x), layer(x), rtol=1e-5, atol=1e-5)


# (batch, spatial, kernel, dim_v, fastest measured on CPU): docs/algorithms.md, 2-D and 3-D sweeps (|k| 16, |h| 4).
MEASURED = [
    (8, (56, 56), (7, 7), 64, "blocked"),
    (8, (14, 14), (23, 23), 64, "logits"),
    (32, (16, 16), (7, 7), 32, "blocked"),
    (2, (64, 64), (23, 23), 16, "fft"),
    (2, (64, 64), (127, 127), 16, "fft"),
    (2, (8, 16, 16), (3, 3, 3), 16, "blocked"),
    (2, (8, 16, 16), (3, 5, 5), 16, "unfold"),
    (2, (8, 28, 28), (3, 7, 7), 16, "unfold"),
    (2, (16, 16, 16), (7, 7, 7), 16, "unfold"),
    (2, (16, 16, 16), (15, 15, 15), 16, "unfold"),
    (2, (4, 16, 16), (7, 31, 31), 16, "fft"),  # global context on small volumes: fft 79 ms, conv 205-242 ms
    (2, (8, 8, 16), (15, 15, 31), 16, "fft"),
]


@pytest.mark.parametrize(("batch", "spatial", "kernel", "dim_v", "fastest"), MEASURED)
def test_auto_rule_picks_the_measured_winner(batch, spatial, kernel, dim_v, fastest) -> None:
    kwargs = {"batch": batch, "spatial": spatial, "kernel": kernel, "dim_k": 16, "dim_v": dim_v, "dim_u": 1, "heads": 4}
    assert choose_algorithm(**kwargs) == fastest
    assert choose_algorithm(**kwargs, device="cuda") in ALGORITHMS  # a guess, not measured on a GPU yet
