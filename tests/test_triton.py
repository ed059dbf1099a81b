"""The fused Triton kernel of the ``triton`` position algorithm against a float64 explicit sum.

On a machine without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by a module fixture
before the kernels are first imported), so the shapes are tiny; on a CUDA machine the same tests run on the GPU.
Skipped when triton (or, for the interpreter, numpy) is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from lambdanet.layers.blocked import blocked_output
from lambdanet.layers.sequence_ops import causal_kernel

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or importlib.util.find_spec("numpy") is None,
    reason="needs triton and numpy (pip install lambdanet[triton])",
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: On a CPU the kernels need Triton's interpreter, which must be switched on before triton is first imported (torch
#: imports it early): the tests then run in a child pytest process started with TRITON_INTERPRET=1.
RUN_HERE = DEVICE == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
here = pytest.mark.skipif(not RUN_HERE, reason="runs in the TRITON_INTERPRET=1 child process (test_in_interpreter)")


@pytest.mark.skipif(RUN_HERE, reason="the kernel tests run in this process")
def test_in_interpreter():
    """Every kernel test of this file, in a child process with Triton's interpreter on."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", __file__]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" in done.stdout  # the kernel tests ran, this one skipped there


def _ops():
    from lambdanet.layers import triton_local

    return triton_local


def reference(q, v, weight, lam_c=None, causal=False):
    """y[n, h] = q[n, h] . (lam_c + sum_{offsets t in the kernel} sum_u E[:, u, t] v[n + t - c, u]^T), float64.

    One term per kernel offset: the values shifted by the offset (zeros outside the map). 1-D or 2-D.
    """
    q, v, weight = q.double(), v.double(), weight.double()
    one_d = q.dim() == 4
    if one_d:
        q, v, weight = q.unsqueeze(1), v.unsqueeze(1), weight.unsqueeze(2)
    _, hh, ww = q.shape[:3]
    kh, kw = weight.shape[2:]
    y = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float64)
    for ty in range(kh):
        for tx in range(kw):
            dy, dx = ty - kh // 2, tx - kw // 2
            if causal and dx > 0:
                continue
            shifted = torch.zeros_like(v)
            ys, xs = slice(max(0, -dy), min(hh, hh - dy)), slice(max(0, -dx), min(ww, ww - dx))
            yv, xv = slice(max(0, dy), min(hh, hh + dy)), slice(max(0, dx), min(ww, ww + dx))
            if ys.start < ys.stop and xs.start < xs.stop:
                shifted[:, ys, xs] = v[:, yv, xv]
            y = y + torch.einsum("bijhk,ku,bijuv->bijhv", q, weight[:, :, ty, tx], shifted)
    if lam_c is not None:
        y = y + torch.einsum("bijhk,bkv->bijhv", q, lam_c.double())
    return y.squeeze(1) if one_d else y


def _inputs(spatial, h, k, u, dv, kernel, dtype=torch.float32, lam=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, *spatial, h, k, generator=g)
    v = torch.randn(2, *spatial, u, dv, generator=g)
    w = torch.randn(k, u, *kernel, generator=g)
    lam_c = torch.randn(2, k, dv, generator=g) if lam else None
    leaves = [x.to(DEVICE, dtype).requires_grad_() if x is not None else None for x in (q, v, w, lam_c)]
    return leaves


def _check(fn, ref_fn, leaves, atol, rtol):
    """Forward and the gradient of every input against the float64 reference, under a random output gradient."""
    y = fn(*leaves)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    y.backward(grad.to(y.device, y.dtype))
    ref_leaves = [x.detach().cpu().double().requires_grad_() if x is not None else None for x in leaves]
    ref = ref_fn(*ref_leaves)
    ref.backward(grad.double())
    assert y.dtype == leaves[0].dtype
    torch.testing.assert_close(y.detach().cpu().double(), ref.detach(), atol=atol, rtol=rtol, msg="forward")
    for name, x, r in zip(("q", "v", "weight", "lam_c"), leaves, ref_leaves):
        if x is not None:
            assert x.grad is not None and x.grad.dtype == x.dtype, name
            torch.testing.assert_close(x.grad.cpu().double(), r.grad, atol=atol, rtol=rtol, msg=f"grad {name}")


@here
@pytest.mark.parametrize(
    ("spatial", "h", "k", "u", "dv", "kernel"),
    [
        ((5, 7), 2, 3, 2, 5, (5, 5)),  # odd sizes, u > 1, several row and context tiles
        ((3, 4), 1, 4, 1, 3, (9, 7)),  # scope larger than the map (cropped)
        ((6, 5), 3, 2, 1, 17, (11, 9)),  # global relative embeddings (2S - 1), value depth over one tile
        ((9, 2), 2, 3, 1, 4, (3, 1)),  # tall map, one-wide kernel axis
    ],
)
def test_forward_and_gradients_2d(spatial, h, k, u, dv, kernel):
    leaves = _inputs(spatial, h, k, u, dv, kernel)
    _check(_ops().triton_position_output, reference, leaves, atol=1e-4, rtol=1e-4)


@here
@pytest.mark.parametrize("causal", [False, True])
def test_forward_and_gradients_1d(causal):
    leaves = _inputs((37,), 2, 3, 2, 4, (7,))
    if causal:
        _check(_ops().triton_causal_position_output, lambda *x: reference(*x, causal=True), leaves, 1e-4, 1e-4)
        assert leaves[2].grad[..., 4:].abs().max() == 0  # the future half of the kernel is never used
    else:
        _check(_ops().triton_position_output, reference, leaves, atol=1e-4, rtol=1e-4)


@here
def test_bfloat16_inputs():
    leaves = _inputs((5, 6), 2, 4, 1, 8, (5, 5), dtype=torch.bfloat16)
    _check(_ops().triton_position_output, reference, leaves, atol=0.25, rtol=0.05)


@here
def test_matches_blocked_and_causal_kernel_without_content():
    """Same numbers as the ``blocked`` algorithm (strided inputs, no content lambda), and the causal variant equals
    the plain one with the future half of the kernel zeroed."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 6, 5, 3, generator=g).permute(0, 2, 1, 3, 4).to(DEVICE)  # (b, 6, 4, h, k), strided
    v = torch.randn(2, 6, 4, 1, 7, generator=g).to(DEVICE)
    w = torch.randn(3, 1, 3, 5, generator=g).to(DEVICE)
    out = _ops().triton_position_output(q, v, w)
    torch.testing.assert_close(out, blocked_output(q, v, w), atol=1e-4, rtol=1e-4)
    qs, vs, ws = q[:, 0], v[:, 0], w[:, :, 0]
    torch.testing.assert_close(
        _ops().triton_causal_position_output(qs, vs, ws),
        _ops().triton_position_output(qs, vs, causal_kernel(ws)),
        atol=1e-5,
        rtol=1e-5,
    )


@here
def test_layers_take_it_as_algorithm_triton():
    """Registered as ``algorithm="triton"``: the 2-D layer (u > 1, odd map) and the causal 1-D layer give the
    ``blocked`` algorithm's output and gradients."""
    from lambdanet import LambdaLayer, LambdaLayer1d
    from lambdanet.layers.algorithms import usable

    assert usable("triton", 2, DEVICE) and usable("triton", 1, DEVICE) and not usable("triton", 3, DEVICE)
    for make, shape in (
        (lambda a: LambdaLayer(8, dim_k=4, heads=2, dim_u=2, scope=5, algorithm=a), (2, 8, 5, 7)),
        (lambda a: LambdaLayer1d(8, dim_k=4, heads=2, scope=5, causal=True, algorithm=a), (2, 9, 8)),
    ):
        torch.manual_seed(0)
        fused = make("triton").to(DEVICE)
        plain = make("blocked").to(DEVICE)
        plain.load_state_dict(fused.state_dict())
        x = torch.randn(*shape, device=DEVICE, requires_grad=True)
        y = fused(x)
        (gx,) = torch.autograd.grad(y.square().sum(), x)
        y0 = plain(x)
        (gx0,) = torch.autograd.grad(y0.square().sum(), x)
        torch.testing.assert_close(y, y0, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(gx, gx0, atol=1e-3, rtol=1e-3)


@here
def test_runs_under_torch_compile():
    """Under torch.compile the kernels run as they are (excluded from the graph), with the same result."""
    q, v, w, lam = (x.detach() for x in _inputs((4, 5), 2, 3, 1, 4, (3, 3)))
    fn = torch.compile(lambda *x: _ops().triton_position_output(*x) * 2, backend="eager", fullgraph=False)
    torch.testing.assert_close(fn(q, v, w, lam), _ops().triton_position_output(q, v, w, lam) * 2)


@here
def test_bad_arguments_are_one_line_errors(monkeypatch):
    ops = _ops()
    q, v, w = torch.zeros(1, 4, 4, 2, 3), torch.zeros(1, 4, 4, 1, 5), torch.zeros(3, 1, 3, 3)
    with pytest.raises(ValueError, match=r"weight has shape \(3, 1, 2, 2\)"):
        ops.triton_position_output(q, v, torch.zeros(3, 1, 2, 2))
    with pytest.raises(ValueError, match="lam_c has shape"):
        ops.triton_position_output(q, v, w, torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match=r"expected .* with \(1,\) spatial axes"):
        ops.triton_causal_position_output(q, v, w)
    with pytest.raises(ValueError, match=r"dtype torch\.float64"):
        ops.triton_position_output(q.double(), v.double(), w)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not ops.triton_available("cpu")
    with pytest.raises(ValueError, match="device=cpu cannot run the triton algorithm"):
        ops.triton_position_output(q, v, w)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="runs in the parent process")
def test_works_without_triton():
    """With triton not installed, lambdanet and this module import, nothing is available and a call is an error."""
    code = (
        "import sys; sys.modules['triton'] = None; "  # import triton now raises ImportError
        "import torch, lambdanet, lambdanet.layers.triton_local as t; "
        "assert not t.triton_available('cpu') and not t.triton_available('cuda'); "
        "x = torch.zeros(1, 3, 2, 1); w = torch.zeros(1, 2, 3)\n"
        "try:\n    t.triton_position_output(x, x, w)\nexcept ValueError as e:\n    print(e)"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cannot run the triton algorithm" in done.stdout


@pytest.mark.skipif(RUN_HERE, reason="runs in a process without the interpreter")
def test_interpreter_switched_on_too_late_is_a_clear_error():
    code = (
        "import os, torch, triton, lambdanet.layers.triton_local as t; os.environ['TRITON_INTERPRET'] = '1'; "
        "x = torch.zeros(1, 3, 2, 1); w = torch.zeros(1, 2, 3)\n"
        "try:\n    t.triton_position_output(x, x, w)\nexcept ValueError as e:\n    print(e)"
    )
    env = {k: val for k, val in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "TRITON_INTERPRET=1 was set after triton was first imported" in done.stdout


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="runs in the parent process")
def test_gpu_suite_reads_targets_off_results(tmp_path):
    """The GPU suite's target table: speed-ups and time ratios computed the right way round from its rows."""
    import argparse

    from tests.scripts import benchmark

    gpu_suite = benchmark("gpu_suite")
    suite = gpu_suite.Suite(argparse.Namespace(budget_s=60.0, quick=True, device="cpu", verbose=False))
    layer = suite.rows("layer")
    for name, ms in (("lambdanet auto", 2.0), ("lambda-networks", 12.0), ("conv3x3", 1.0)):
        layer.append({"case": "c4", "dtype": "bfloat16", "name": name, "fwd_bwd_ms": ms})
    layer.append({"case": "64x64 global", "dtype": "bfloat16", "name": "lambdanet auto", "fwd_bwd_ms": 4.0})
    layer.append({"case": "64x64 global", "dtype": "bfloat16", "name": "attention (sdpa)", "fwd_bwd_ms": 5.0})
    models = suite.rows("models")
    for spec_name, img_s in (
        ("resnet50", 1000.0),
        ("lambda_resnet50", 400.0),
        ("lambda_resnet50:placement=CCLL", 950.0),
    ):
        models.append({"model": spec_name, "compile": False, "train_img_s": img_s})
    got = {row["target"]: (row["value"], row["met"]) for row in gpu_suite.targets(suite)}
    assert got["c4 lambdanet auto: >= 5x lambda-networks (bf16 fwd+bwd)"] == (6.0, True)
    assert got["c4 lambdanet auto: <= 1.5x the 3x3 conv time"] == (2.0, False)
    assert got["c5 lambdanet auto: <= 1.5x the 3x3 conv time"] == (None, None)
    assert got["64x64 global lambdanet auto: faster than SDPA flash (speed-up)"] == (1.25, True)
    assert got["lambda_resnet50 training >= 0.5x resnet50 images/s"] == (0.4, False)
    assert got["lambda_resnet50:placement=CCLL training >= 0.9x resnet50 images/s"] == (0.95, True)
    suite.result.update(environment={"torch": "x"}, seconds=1.0, targets=gpu_suite.targets(suite))
    text = gpu_suite.markdown(suite)
    assert "| c4 lambdanet auto: >= 5x lambda-networks (bf16 fwd+bwd) | 6.00 | yes |" in text
