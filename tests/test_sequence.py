"""1-D, masked and causal lambda layers (Bello, ICLR 2021, App. B.2) against a float64 reference with explicit loops.

The reference reuses only a layer's parameters: keys are softmax-normalised inside each query's own context,
each query gets its own content lambda, position embeddings are masked, and an empty context contributes nothing.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import lambdanet
from lambdanet import LambdaLayer1d
from lambdanet.layers.algorithms import ALGORITHMS, usable
from lambdanet.layers.causal_chunk import chunk_causal_content, recurrent_causal_content
from lambdanet.layers.sequence_ops import (
    CausalLambdaState,
    causal_kernel,
    masked_content_lambdas,
    masked_lambda_output,
)


def causal_content_output(q: Tensor, logits: Tensor, v: Tensor, chunk: int = 64) -> Tensor:
    """The chunkwise op in this file's (b, h, k, n) layout: (b, h, v, n)."""
    y, _ = chunk_causal_content(
        q.permute(0, 3, 1, 2), logits.permute(0, 3, 1, 2), v.permute(0, 3, 1, 2), None, False, chunk
    )
    return y.permute(0, 2, 3, 1)


def _norm(x: Tensor, norm: torch.nn.Module, kind: str) -> Tensor:
    """The layer's query/value normalisation written out on (b, n, c)."""
    if kind == "none":
        return x
    if kind == "layer":
        mean = x.mean(dim=-1, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
    if norm.training:
        mean = x.mean(dim=(0, 1), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(0, 1), keepdim=True)
    else:
        mean, var = norm.running_mean.to(x.dtype), norm.running_var.to(x.dtype)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def reference_forward(layer: LambdaLayer1d, x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Output of ``layer`` on ``x`` (b, L, d) with explicit loops over query n and context m."""
    b, length, _ = x.shape
    heads, dk, du, dv = layer.heads, layer.dim_k, layer.dim_u, layer.dim_v
    if mask is None:
        mask = torch.ones(length, length, dtype=torch.bool)
    if layer.causal:
        mask = mask & torch.ones(length, length, dtype=torch.bool).tril()
    proj = x @ layer.qkv.weight.T
    nq, nk, _ = layer.splits
    q = _norm(proj[..., :nq], layer.norm_q, layer.norm).reshape(b, length, heads, dk)
    keys = proj[..., nq : nq + nk].reshape(b, length, du, dk) if layer.content else None
    v = _norm(proj[..., nq + nk :], layer.norm_v, layer.norm).reshape(b, length, du, dv)
    weight = layer.pos.weight if layer.pos is not None else None  # k u t
    out = x.new_zeros(b, length, heads, dv)
    for n in range(length):
        ctx = [m for m in range(length) if mask[n, m]]
        lam = x.new_zeros(b, dk, dv)
        if ctx and layer.content:
            logits = keys[:, ctx]  # b m u k
            e = torch.exp(logits - logits.amax(dim=1, keepdim=True))
            kbar = e / e.sum(dim=1, keepdim=True)
            for i, m in enumerate(ctx):
                for u in range(du):
                    lam = lam + kbar[:, i, u, :, None] * v[:, m, u, None, :]
        if weight is not None:
            c = weight.shape[-1] // 2
            for m in ctx:
                off = m - n + c
                if 0 <= off < weight.shape[-1]:
                    for u in range(du):
                        lam = lam + weight[None, :, u, off, None] * v[:, m, u, None, :]
        out[:, n] = torch.einsum("bhk,bkv->bhv", q[:, n], lam)
    return out.reshape(b, length, heads * dv)


def _layer(**kwargs) -> LambdaLayer1d:
    base = {"dim_k": 3, "heads": 2, "dim_out": 8}
    base.update(kwargs)
    layer = LambdaLayer1d(6, **base).double()
    with torch.no_grad():  # non-trivial affine norms
        for norm in (layer.norm_q, layer.norm_v):
            if hasattr(norm, "weight"):
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)
    return layer


def _random_mask(length: int, empty_row: int | None = None) -> Tensor:
    mask = torch.rand(length, length) < 0.5
    if empty_row is not None:
        mask[empty_row] = False
    return mask


#: The algorithms that run in this process on CPU (``triton`` only under its interpreter: tests/test_triton.py).
HERE = tuple(a for a in ALGORITHMS if usable(a, 1, "cpu"))

CONFIGS = [
    {"scope": 3},
    {"scope": 5, "dim_u": 2},
    {"scope": None, "max_length": 9},
    {"scope": 3, "content": False},
    {"scope": 3, "position": False},
]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_every_path_matches_the_float64_reference(cfg: dict, causal: bool) -> None:
    layer = _layer(causal=causal, norm="layer", chunk=3, **cfg)
    length = 7
    x = torch.randn(2, length, 6, dtype=torch.float64)
    masks = [None, _random_mask(length, empty_row=2)]
    for mask in masks:
        expected = reference_forward(layer, x, mask)
        algorithms = HERE if mask is None and layer.position else ("auto",)
        for algorithm in algorithms:
            layer.algorithm = algorithm
            torch.testing.assert_close(layer(x, mask), expected, rtol=1e-10, atol=1e-10, msg=f"{algorithm} {mask}")


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_batch_norm_and_no_norm_paths(norm: str) -> None:
    layer = _layer(scope=3, norm=norm)
    x = torch.randn(3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), reference_forward(layer, x), rtol=1e-10, atol=1e-10)
    layer.eval()
    torch.testing.assert_close(layer(x), reference_forward(layer, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [False, True], ids=["masked", "causal"])
def test_gradients_match_the_reference(causal: bool) -> None:
    layer = _layer(scope=3, dim_u=2, causal=causal, norm="layer", chunk=2)
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    mask = None if causal else _random_mask(5, empty_row=0)
    params = [x, *layer.parameters()]
    got = torch.autograd.grad(layer(x, mask).square().sum(), params)
    want = torch.autograd.grad(reference_forward(layer, x, mask).square().sum(), params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)
    assert all(g.isfinite().all() for g in got)


def test_causal_content_gradcheck() -> None:
    q = torch.randn(1, 2, 2, 5, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(1, 2, 2, 5, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: causal_content_output(a, b, c, chunk=2), (q, logits, v))


@pytest.mark.parametrize("chunk", [1, 3, 4, 64])
def test_causal_prefix_sums_equal_the_masked_form(chunk: int) -> None:
    logits = torch.randn(2, 2, 3, 10, dtype=torch.float64) * 5
    v = torch.randn(2, 2, 4, 10, dtype=torch.float64)
    tril = torch.ones(10, 10, dtype=torch.bool).tril()
    want = masked_content_lambdas(logits, v, tril)
    q = torch.randn(2, 3, 3, 10, dtype=torch.float64)
    got = causal_content_output(q, logits, v, chunk=chunk)
    torch.testing.assert_close(got, torch.einsum("bhkn,bkvn->bhvn", q, want), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cfg", [{"scope": 5}, {"scope": None, "max_length": 12}], ids=["local", "global"])
def test_changing_future_tokens_never_changes_past_outputs(cfg: dict) -> None:
    layer = _layer(causal=True, chunk=4, **cfg)  # training mode: LayerNorm is per position
    x = torch.randn(2, 12, 6, dtype=torch.float64, requires_grad=True)
    for algorithm in HERE:
        layer.algorithm = algorithm
        y = layer(x)
        x2 = x.detach().clone()
        x2[:, 7:] = torch.randn(2, 5, 6, dtype=torch.float64) * 10
        torch.testing.assert_close(layer(x2)[:, :7], y[:, :7], rtol=0, atol=1e-12)
        (grad,) = torch.autograd.grad(y[:, 6].sum(), x)
        assert grad[:, 7:].abs().max() < 1e-12, algorithm
        assert grad[:, 6].abs().max() > 0


@pytest.mark.parametrize(
    "cfg",
    [
        {"scope": 5},
        {"scope": None, "max_length": 10},
        {"scope": 3, "dim_u": 2},
        {"content": False},
        {"position": False},
    ],
    ids=["local", "global", "u2", "position-only", "content-only"],
)
def test_incremental_decoding_equals_the_full_causal_pass(cfg: dict) -> None:
    layer = _layer(causal=True, chunk=3, **cfg).eval()
    x = torch.randn(2, 10, 6, dtype=torch.float64)
    full = layer(x)
    state = layer.init_state()
    steps = torch.stack([layer.step(x[:, i], state) for i in range(10)], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-12, atol=1e-12)
    if layer.pos is not None and cfg.get("scope"):
        assert state.values.shape[-1] == cfg["scope"] // 2 + 1  # O(scope) memory for a local position term


def test_decoding_state_limits_and_errors() -> None:
    layer = _layer(causal=True, scope=None, max_length=3).eval()
    state = layer.init_state()
    x = torch.randn(1, 6, dtype=torch.float64)
    for _ in range(3):
        layer.step(x, state)
    with pytest.raises(ValueError, match="max_length=3"):
        layer.step(x, state)
    with pytest.raises(ValueError, match="causal=True"):
        _layer(scope=3).init_state()
    with pytest.raises(ValueError, match=r"step takes one position"):
        layer.step(torch.randn(1, 2, 6, dtype=torch.float64), layer.init_state())
    with pytest.raises(TypeError, match=r"input dtype torch.float32 differs from the layer's torch.float64"):
        layer.step(torch.randn(1, 6), layer.init_state())
    with pytest.raises(TypeError, match=r"input dtype torch.int64 is not supported"):
        layer.step(torch.ones(1, 6, dtype=torch.long), layer.init_state())
    with pytest.raises(ValueError, match=r"step takes one position \(batch, dim=6\), got list"):
        layer.step([[0.0] * 6], layer.init_state())
    with pytest.raises(ValueError, match="eval mode"):
        _layer(causal=True, norm="batch").train().step(x, CausalLambdaState())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_logits_and_long_sequences_stay_finite_and_exact(dtype: torch.dtype) -> None:
    length = 1024
    logits = torch.randn(1, 1, 2, length, dtype=torch.float64) * 300  # |logits| of several hundred
    v = torch.randn(1, 1, 3, length, dtype=torch.float64)
    logits, v = logits.to(dtype).double(), v.to(dtype).double()  # the same (rounded) inputs for the reference
    tril = torch.ones(length, length, dtype=torch.bool).tril()
    want = masked_content_lambdas(logits, v, tril)  # the direct per-query softmax, float64
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    q = torch.randn(1, 2, 2, length, dtype=torch.float64).to(dtype)
    out = causal_content_output(q, logits.to(dtype), v.to(dtype))
    assert out.isfinite().all()
    expected = torch.einsum("bhkn,bkvn->bhvn", q.double(), want)
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=4 * tol)
    # The decoding state is just as stable.
    state = None
    q = torch.eye(2, dtype=dtype)[None]  # b h=2 k=2: reads back the lambda rows
    for i in (0, 1, 2):
        out, state = recurrent_causal_content(q, logits[..., i].to(dtype), v[..., i].to(dtype), state)
    torch.testing.assert_close(out.double(), want[..., 2], rtol=tol, atol=tol)


def test_layer_under_bfloat16_autocast_with_large_activations() -> None:
    layer = LambdaLayer1d(8, dim_k=4, heads=2, scope=7, causal=True)
    x = torch.randn(2, 300, 8) * 50
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    assert y.isfinite().all()
    torch.testing.assert_close(y.float(), layer(x), rtol=0.1, atol=0.15 * layer(x).abs().max().item())


def test_empty_context_gives_zero_not_nan() -> None:
    q = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(1, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 1, 5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 1, 3, dtype=torch.float64)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[1:, 0] = True
    y = masked_lambda_output(q, logits, v, mask, weight)
    assert y[..., 0].abs().max() == 0
    assert y[..., 1:].abs().min() > 0
    y.sum().backward()
    assert all(t.grad.isfinite().all() for t in (q, logits, v))


def test_causal_kernel_zeroes_only_the_future_half() -> None:
    weight = torch.randn(2, 1, 7)
    w = causal_kernel(weight)
    assert w.shape == weight.shape
    torch.testing.assert_close(w[..., :4], weight[..., :4])
    assert w[..., 4:].abs().max() == 0


def test_local_scope_and_global_positions_are_relative() -> None:
    """Position-only causal outputs depend on offsets only: shifting the input shifts the output."""
    layer = _layer(causal=True, content=False, scope=5, norm="none")
    x = torch.randn(1, 12, 6, dtype=torch.float64)
    y = layer(x)
    shifted = layer(torch.roll(x, 3, dims=1))
    torch.testing.assert_close(shifted[:, 3 + 2 :], y[:, 2:-3])  # away from the start (2 = scope // 2)


def test_memory_of_the_causal_path_is_linear_in_length() -> None:
    """No (n, m) tensor: the biggest intermediate of the causal pass grows linearly with the length."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, Tensor):
                    self.largest = max(self.largest, t.numel())
            return out

    layer = LambdaLayer1d(8, dim_k=4, heads=2, scope=7, causal=True, algorithm="conv", chunk=16)
    sizes = []
    for length in (256, 512):
        with torch.no_grad(), Largest() as mode:
            layer(torch.randn(1, length, 8))
        sizes.append(mode.largest)
    assert sizes[1] <= 2 * sizes[0]
    assert sizes[1] < 512 * 512  # far below one (n, m) map


def test_batch_norm_is_default_only_without_causality_and_warns_with_masks() -> None:
    assert LambdaLayer1d(8, causal=True).norm == "layer"
    assert LambdaLayer1d(8).norm == "batch"
    layer = LambdaLayer1d(8, dim_k=4, heads=2, scope=3)
    with pytest.warns(UserWarning, match="norm='layer'"):
        layer(torch.randn(2, 4, 8), torch.ones(4, 4, dtype=torch.bool))


def test_shapes_exports_and_parameters() -> None:
    assert lambdanet.LambdaLayer1d is LambdaLayer1d
    layer = LambdaLayer1d(12, dim_out=16, dim_k=4, heads=4, dim_u=2, scope=None, max_length=20)
    assert layer(torch.randn(3, 11, 12)).shape == (3, 11, 16)
    assert layer.pos.weight.shape == (4, 2, 39)
    assert layer.qkv.weight.shape == (4 * 4 + 2 * 4 + 2 * 4, 12)
    assert not any(n.startswith("pos") for n, _ in LambdaLayer1d(8, position=False).named_parameters())
    shared = LambdaLayer1d(8, dim_k=4, heads=2, scope=3, causal=True)
    other = LambdaLayer1d(8, dim_k=4, heads=2, scope=3, causal=True, pos_embed=shared.pos)
    assert other.pos is shared.pos
    missing = [n for n, p in layer.named_parameters() if p.grad is None]
    layer(torch.randn(2, 5, 12)).sum().backward()
    missing = [n for n, p in layer.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim_out": 10, "heads": 4}, "dim_out=10 must be divisible by heads=4"),
        ({"scope": 4}, "scope=4 must be an odd positive integer"),
        ({"scope": None}, "requires max_length"),
        ({"norm": "group"}, "norm='group' must be one of"),
        ({"algorithm": "direct"}, "algorithm='direct'"),
        ({"content": False, "position": False}, "leave nothing to compute"),
        ({"chunk": 0}, "chunk=0 must be a positive integer"),
        ({"max_length": -2}, "max_length=-2"),
    ],
)
def test_constructor_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LambdaLayer1d(8, **kwargs)


def test_forward_errors() -> None:
    layer = LambdaLayer1d(8, dim_k=4, heads=2, scope=None, max_length=6, norm="layer")
    with pytest.raises(ValueError, match=r"3-D tensor \(batch, length, dim\)"):
        layer(torch.randn(2, 8))
    with pytest.raises(ValueError, match="expected dim=8"):
        layer(torch.randn(2, 4, 7))
    with pytest.raises(ValueError, match="exceeds max_length=6"):
        layer(torch.randn(2, 7, 8))
    with pytest.raises(ValueError, match=r"boolean \(n, m\) = \(4, 4\)"):
        layer(torch.randn(2, 4, 8), torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="boolean"):
        layer(torch.randn(2, 4, 8), torch.ones(4, 4))


def test_global_positions_accept_any_length_up_to_max_length() -> None:
    layer = _layer(scope=None, max_length=9, norm="layer")
    for length in (1, 4, 9):
        x = torch.randn(1, length, 6, dtype=torch.float64)
        torch.testing.assert_close(layer(x), reference_forward(layer, x), rtol=1e-10, atol=1e-10)
    assert math.isclose(layer.pos.weight.shape[-1], 17)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_runs_on_the_meta_device(causal: bool) -> None:
    """Shape-only runs (parameter and MAC counting) work: autocast is only touched where the device supports it."""
    with torch.device("meta"):
        layer = LambdaLayer1d(16, dim_k=4, heads=2, scope=5, causal=causal)
        assert layer(torch.empty(2, 40, 16)).shape == (2, 40, 16)


@pytest.mark.compile
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_torch_compile_fullgraph(causal: bool) -> None:
    torch._dynamo.reset()
    layer = LambdaLayer1d(16, dim_k=4, heads=2, scope=5, causal=causal).eval()
    x = torch.randn(2, 40, 16)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), layer(x))


@pytest.mark.export
def test_torch_export_roundtrip() -> None:
    layer = LambdaLayer1d(16, dim_k=4, heads=2, scope=None, max_length=40, causal=True).eval()
    x = torch.randn(2, 40, 16)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.export(layer, (x,)).module()(x), layer(x))


@pytest.mark.parametrize(
    "cfg",
    [
        {"scope": 5},
        {"scope": None, "max_length": 23},
        {"scope": 3, "dim_u": 2},
        {"content": False, "scope": 7},
        {"position": False},
    ],
    ids=["local", "global", "u2", "position-only", "content-only"],
)
@pytest.mark.parametrize("algorithm", ["auto", "fft", "logits"])
def test_prefill_continues_a_state_like_the_full_pass(cfg: dict, algorithm: str) -> None:
    """forward(x, return_state=True) on a prefix, then forward(rest, state=...) and step(...), equal the full pass;
    the local ring buffer wraps several times."""
    layer = _layer(causal=True, chunk=4, algorithm=algorithm, **cfg).eval()
    x = torch.randn(2, 23, 6, dtype=torch.float64)
    full = layer(x)
    head, state = layer(x[:, :9], return_state=True)
    mid, state2 = layer(x[:, 9:10], state=state, return_state=True)
    tail, state3 = layer(x[:, 10:17], state=state2, return_state=True)
    assert state.length == 9 and state3.length == 17
    steps = [layer.step(x[:, i], state3) for i in range(17, 23)]
    got = torch.cat([head, mid, tail, torch.stack(steps, dim=1)], dim=1)
    torch.testing.assert_close(got, full, rtol=1e-11, atol=1e-12)
    again = layer(x[:, 9:17], state=state)  # the state passed in is not modified
    torch.testing.assert_close(again, full[:, 9:17], rtol=1e-11, atol=1e-12)
    if layer.pos is not None and cfg.get("scope"):
        assert state3.values.shape[-1] == cfg["scope"] // 2 + 1  # O(scope) ring


def test_prefill_errors() -> None:
    layer = _layer(causal=True, scope=None, max_length=8).eval()
    _, state = layer(torch.randn(1, 6, 6, dtype=torch.float64), return_state=True)
    with pytest.raises(ValueError, match="6 positions; 3 more exceed max_length=8"):
        layer(torch.randn(1, 3, 6, dtype=torch.float64), state=state)
    with pytest.raises(ValueError, match="need causal=True"):
        _layer(scope=3)(torch.randn(1, 3, 6, dtype=torch.float64), return_state=True)
    with pytest.raises(ValueError, match="a batch of 1 sequences, got an input batch of 2"):
        layer(torch.randn(2, 1, 6, dtype=torch.float64), state=state)
    with pytest.raises(ValueError, match="a batch of 1 sequences, got an input batch of 3"):
        layer.step(torch.randn(3, 6, dtype=torch.float64), state)
    with pytest.raises(ValueError, match="mask cannot be combined"):
        layer(torch.randn(1, 2, 6, dtype=torch.float64), torch.ones(2, 2, dtype=torch.bool), state=state)


def test_causal_auto_costs_the_past_half_only() -> None:
    """Causal kernels: logits only for short sequences (it multiplies the zeroed future half too), blocked for
    1-D scopes up to 127, fft for global positions beyond 512 tokens (measured in docs/sequences.md)."""
    glob = LambdaLayer1d(64, dim_k=16, heads=4, scope=None, max_length=4096, causal=True)
    assert [glob.resolve_algorithm(b, n) for b, n in ((1, 256), (8, 512), (1, 1024), (1, 2048))] == [
        "logits",
        "logits",
        "fft",
        "fft",
    ]
    local = LambdaLayer1d(64, dim_k=16, heads=4, scope=63, causal=True)
    assert [local.resolve_algorithm(1, n) for n in (64, 1024, 65536)] == ["logits", "blocked", "blocked"]
    assert LambdaLayer1d(64, heads=4, scope=255, causal=True).resolve_algorithm(1, 4096) == "fft"
