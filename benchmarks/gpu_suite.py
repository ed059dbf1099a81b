"""The GPU suite: tests on CUDA, layer and model speed, peak memory, DDP and timm comparisons, in one command.

    PYTHONPATH=src python3 benchmarks/gpu_suite.py --out bench-results/gpu      # on a CUDA machine (< 8 minutes)
    make bench-gpu OUT=bench-results/gpu                                         # the same
    PYTHONPATH=src python benchmarks/gpu_suite.py --device cpu --quick --out /tmp/gpu-dry   # CPU dry run
    python benchmarks/gpu_suite.py --fetch-wheels        # fill .whl/ with the pure-Python wheels a GPU box lacks

Sections (each item is timed on its own; an item that fails is recorded with its error and the suite goes on;
once the time budget is spent the remaining items are recorded as skipped):

- ``tests``: ``pytest -m cuda`` (the layer and model tests marked for CUDA) and ``tests/test_triton.py`` on CUDA.
- ``triton_check``: the Triton kernel against the ``blocked`` algorithm at the benchmark shapes (forward and every
  gradient, float32), and its bfloat16 error.
- ``layer``: forward and forward + backward milliseconds and peak memory of every position algorithm of our layer
  (``triton`` included), lambda-networks' and timm's LambdaLayer, SDPA attention (flash in bfloat16) and a 3x3
  convolution, float32 and bfloat16 autocast, at the c4, c5, CIFAR, 64x64-local and 64x64-global shapes.
- ``position_op``: the position term alone (``triton`` against ``blocked``), float32 and bfloat16 inputs.
- ``models``: training and inference images/s and peak memory of resnet50, lambda_resnet50 and its CCLL hybrid
  (bfloat16 autocast, channels_last), eager and ``torch.compile``.
- ``timm``: timm's resnet26t / lambda_resnet26t / resnet50 / lambda_resnet50ts against ours at 256 px.
- ``ddp``: one DistributedDataParallel training step of lambda_resnet50 on two GPUs (when two are present).

Writes ``suite.json`` (every number, the environment, notes) and ``suite.md`` (tables and the targets of
docs/gpu.md) into ``--out``, and ``tests.log``. Timings on a CPU (``--device cpu``) only check that the script
works; the Triton kernels are never timed on a CPU (the interpreter is no speed reference).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = Path(__file__).resolve().parent.parent
#: Pure-Python packages the GPU image lacks (docs/gpu.md); --fetch-wheels downloads these pins into .whl/.
WHEELS = ("lambda-networks==0.4.0", "jsonargparse==4.53.0", "docstring-parser==0.18.0", "typeshed-client==2.15.0")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")

# Layer cases: (name, (batch, channels, H, W), scope or None for global); |k| = 16, |h| = 4, |u| = 1.
GPU_CASES = [
    ("c4", (64, 256, 14, 14), 23),
    ("c5", (64, 512, 7, 7), 23),
    ("cifar", (256, 128, 16, 16), 7),
    ("64x64 local", (32, 64, 64, 64), 23),
    ("64x64 global", (8, 64, 64, 64), None),
]
QUICK_CASES = [
    ("c4", (2, 32, 14, 14), 23),
    ("c5", (2, 64, 7, 7), 23),
    ("cifar", (2, 32, 16, 16), 7),
    ("64x64 local", (1, 16, 16, 16), 7),
    ("64x64 global", (1, 16, 8, 8), None),
]
OURS = ("resnet50", "lambda_resnet50", "lambda_resnet50:placement=CCLL")
TIMM_MODELS = ("resnet26t", "lambda_resnet26t", "resnet50", "lambda_resnet50ts")


class Suite:
    """Results, notes and the time budget shared by the sections."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.device = args.device
        self.start = time.perf_counter()
        self.result: dict[str, Any] = {"notes": [], "sections": {}}

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.start)

    def note(self, text: str) -> None:
        if text not in self.result["notes"]:
            print(f"# {text}", file=sys.stderr, flush=True)
            self.result["notes"].append(text)

    def rows(self, section: str) -> list[dict[str, Any]]:
        return self.result["sections"].setdefault(section, [])

    def item(self, section: str, row: dict[str, Any], fn: Callable[[], dict[str, Any]], need_s: float = 5.0) -> None:
        """Run one measurement into ``row`` (appended to ``section``): skipped when under ``need_s`` seconds of
        budget are left, errors recorded instead of raised."""
        self.rows(section).append(row)
        label = " ".join(str(v) for v in row.values())
        if self.left() < need_s:
            row["skipped"] = "time budget spent"
            return
        print(f"[{time.perf_counter() - self.start:5.0f}s] {section}: {label}", file=sys.stderr, flush=True)
        try:
            row.update(fn())
        except Exception as err:  # recorded, never fatal: the suite must always write its results
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            if self.args.verbose:
                traceback.print_exc()


# ---------------------------------------------------------------------------------------------------- set-up


def fetch_wheels(dest: Path) -> int:
    """Download the pinned pure-Python wheels for the GPU machine's Python 3.12 into ``dest``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
    cmd += ["--implementation", "cp", *[x for p in PLATFORMS for x in ("--platform", p)], "-d", str(dest), *WHEELS]
    print(" ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd)


def install_wheels(folder: Path) -> str | None:
    """Install the wheels of ``folder`` into a temporary target and put it on the path (this process and the
    child processes); returns the target, or None when there is nothing to install."""
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    if not wheels:
        return None
    target = Path(tempfile.gettempdir()) / "lambdanet-gpu-suite-site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir"]
    subprocess.run([*cmd, "--upgrade", "--target", str(target), *map(str, wheels)], check=True)
    sys.path.insert(0, str(target))
    return str(target)


def environment(suite: Suite) -> dict[str, Any]:

    from lambdanet.bench.report import environment as base

    env = base()
    env["device"] = suite.device
    if torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["cuda_version"] = torch.version.cuda
    for name in ("triton", "timm", "lambda_networks", "numpy"):
        try:
            module = __import__(name)
            env[name] = getattr(module, "__version__", "installed")
        except ImportError:
            env[name] = None
    return env


# ---------------------------------------------------------------------------------------------------- tests


def run_tests(suite: Suite, log: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    runs = [("pytest -m cuda", ["-m", "cuda", "tests"]), ("tests/test_triton.py", ["tests/test_triton.py"])]
    with log.open("w") as f:
        for name, extra in runs:
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "120", *extra]
            if suite.quick:
                cmd.append("--collect-only")  # the dry run checks the command, not the tests
            row: dict[str, Any] = {"name": name}

            def run(cmd: list[str] = cmd) -> dict[str, Any]:
                t0 = time.perf_counter()
                done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
                f.write(f"$ {' '.join(cmd)}\n{done.stdout}{done.stderr}\n")
                f.flush()
                out: dict[str, Any] = {"returncode": done.returncode, "seconds": time.perf_counter() - t0}
                out["ok"] = done.returncode == 0
                if done.returncode == 5:
                    out["note"] = "no test selected"
                elif done.returncode == 4 and "Unknown marker" in done.stdout + done.stderr:
                    out["note"] = "the cuda marker is not registered in this tree"
                    out["ok"] = None
                else:
                    last = (done.stdout.strip().splitlines() or [""])[-1]
                    out["summary"] = last[:200]
                return out

            suite.item("tests", row, run, need_s=30)


# ---------------------------------------------------------------------------------------------------- layers


def _triton_ready(device: str) -> bool:
    from lambdanet.layers.triton_local import triton_available

    return device == "cuda" and triton_available("cuda")


def build_layer(name: str, dim: int, side: tuple[int, int], scope: int | None, device: str) -> Any:
    """A (b, dim, H, W) -> (b, dim, H, W) module (or callable) for contender ``name``."""
    from lambdanet.bench.layer import SDPAttention2d, build_contender
    from lambdanet.layers import ALGORITHMS, LambdaLayer

    feat = side if scope is None else None
    if name == "lambdanet auto":
        return LambdaLayer(dim, dim_k=16, heads=4, scope=scope, feat_size=feat).to(device)
    if name.startswith("lambdanet "):
        algorithm = name.split(" ", 1)[1]
        if algorithm in ALGORITHMS:
            return LambdaLayer(dim, dim_k=16, heads=4, scope=scope, feat_size=feat, algorithm=algorithm).to(device)
        raise RuntimeError(f"algorithm {algorithm!r} not in this tree's ALGORITHMS {ALGORITHMS}")
    if name == "timm LambdaLayer":
        from timm.layers import LambdaLayer as TimmLambda

        return TimmLambda(dim, dim_out=dim, feat_size=feat, num_heads=4, dim_head=16, r=scope).to(device)
    if name == "attention (sdpa)":
        return _FlashInLowPrecision(SDPAttention2d(dim, 4)).to(device)
    return build_contender(name, dim, side[0], heads=4, dim_k=16, scope=scope).to(device)


class _FlashInLowPrecision(nn.Module):
    """SDPA attention restricted to the flash kernel under CUDA bfloat16 autocast (PyTorch's own choice else)."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.bfloat16:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                return self.attn(x)
        return self.attn(x)


def _time(fn: Callable[[], Any], suite: Suite) -> float:
    from lambdanet.bench.timing import median_ms

    reps, warmup = (2, 1) if suite.quick else (suite.args.reps, 3)
    return median_ms(fn, reps=reps, warmup=warmup, budget_s=1.0, device=suite.device)


def measure_layer(suite: Suite, module: Any, shape: tuple[int, ...], dtype: str) -> dict[str, Any]:

    from lambdanet.bench.timing import peak_mib, synchronize

    device = suite.device
    x = torch.randn(shape, device=device).to(memory_format=torch.channels_last).requires_grad_()
    autocast = (
        torch.autocast(device_type=device, dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
    )

    def forward():
        with autocast:
            return module(x)

    with torch.no_grad():
        grad = torch.randn_like(forward())

    def fwd_bwd() -> None:
        forward().backward(grad)

    t0 = time.perf_counter()
    fwd_bwd()
    synchronize(device)
    first = time.perf_counter() - t0
    out: dict[str, Any] = {"first_call_s": first}
    if first > suite.args.max_call_s:
        out["note"] = f"first forward+backward {first:.1f} s > {suite.args.max_call_s} s: not timed"
        return out

    def fwd() -> None:
        with torch.no_grad():
            forward()

    out["fwd_ms"] = _time(fwd, suite)
    out["fwd_bwd_ms"] = _time(fwd_bwd, suite)
    if device == "cuda":
        out["peak_mib"] = peak_mib(fwd_bwd, device=device)
    return out


def layer_contenders(suite: Suite) -> list[str]:
    """Contender names; those that cannot run here are left out with a note (once)."""
    from lambdanet.layers import ALGORITHMS

    names = ["lambdanet auto", *[f"lambdanet {a}" for a in ALGORITHMS]]
    if "lambdanet triton" in names and not _triton_ready(suite.device):
        names.remove("lambdanet triton")
        suite.note(f"lambdanet triton left out on {suite.device}: CUDA with triton only (no interpreter timings)")
    names += ["lambda-networks", "timm LambdaLayer", "attention (sdpa)", "conv3x3"]
    for package, name in (("lambda_networks", "lambda-networks"), ("timm", "timm LambdaLayer")):
        try:
            __import__(package)
        except ImportError:
            names.remove(name)
            suite.note(f"{name} left out: {package} is not installed")
    return names


def run_layers(suite: Suite, dtypes: tuple[str, ...]) -> None:
    cases = QUICK_CASES if suite.quick else GPU_CASES
    names = layer_contenders(suite)
    for dtype in dtypes:
        for case, shape, scope in cases:
            for name in names:
                if name == "conv3x3" and scope is None:
                    continue  # a local operation: listed with the local cases
                row = {"case": case, "dtype": dtype, "name": name, "shape": "x".join(map(str, shape))}
                row["scope"] = scope or "global"

                def run(name=name, shape=shape, scope=scope, dtype=dtype) -> dict[str, Any]:
                    module = build_layer(name, shape[1], shape[2:], scope, suite.device)
                    if isinstance(module, nn.Module):
                        with contextlib.suppress(RuntimeError):  # 5-D weights (Conv3d) have no channels_last
                            module = module.to(memory_format=torch.channels_last)
                    return measure_layer(suite, module, shape, dtype)

                suite.item("layer", row, run, need_s=10)


# ---------------------------------------------------------------------------------------------------- kernels


def _position_inputs(shape: tuple[int, ...], scope: int | None, device: str, dtype: Any, batch: int | None = None):

    b, c, hh, ww = shape
    b = batch or b
    h, k, dv = 4, 16, c // 4
    kernel = (scope, scope) if scope else (2 * hh - 1, 2 * ww - 1)
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(b, hh, ww, h, k, generator=g) * 0.25
    v = torch.randn(b, hh, ww, 1, dv, generator=g)
    w = torch.randn(k, 1, *kernel, generator=g) * 0.25
    lam = torch.randn(b, k, dv, generator=g) * 0.25
    return [t.to(device, dtype).requires_grad_() for t in (q, v, w, lam)]


def run_triton_check(suite: Suite) -> None:
    """Triton against ``blocked`` at the benchmark shapes (batch 4): forward and gradients, float32 and bfloat16."""

    from lambdanet.layers.algorithms._base import crop_kernel
    from lambdanet.layers.blocked import blocked_output
    from lambdanet.layers.triton_local import triton_position_output

    if not _triton_ready(suite.device):
        suite.note("triton_check skipped: needs CUDA with triton (the CPU interpreter runs in tests/test_triton.py)")
        return
    for case, shape, scope in QUICK_CASES if suite.quick else GPU_CASES:
        for dtype in (torch.float32, torch.bfloat16):
            row = {"case": case, "dtype": str(dtype).replace("torch.", "")}

            def run(shape=shape, scope=scope, dtype=dtype) -> dict[str, Any]:
                ref_in = _position_inputs(shape, scope, suite.device, torch.float32, batch=4)
                ours_in = [t.detach().to(dtype).requires_grad_() for t in ref_in]
                spatial = shape[2:]
                ref = blocked_output(ref_in[0], ref_in[1], crop_kernel(ref_in[2], spatial), ref_in[3])
                out = triton_position_output(*ours_in)
                grad = torch.randn_like(ref)
                ref.backward(grad)
                out.backward(grad.to(dtype))
                res: dict[str, Any] = {}
                for key, a, r in (("y", out, ref), *zip(("q", "v", "weight", "lam_c"), ours_in, ref_in)):
                    a = a if key == "y" else a.grad
                    r = r if key == "y" else r.grad
                    res[f"rel_err_{key}"] = ((a.float() - r).norm() / r.norm().clamp_min(1e-30)).item()
                tol = 1e-4 if dtype == torch.float32 else 2e-2
                res["ok"] = all(val < tol for key, val in res.items() if key.startswith("rel_err"))
                return res

            suite.item("triton_check", row, run, need_s=20)


def run_position_op(suite: Suite) -> None:
    """The position term alone: Triton (float32, bfloat16 inputs) against ``blocked`` (float32)."""

    from lambdanet.bench.timing import peak_mib, synchronize
    from lambdanet.layers.algorithms._base import crop_kernel
    from lambdanet.layers.blocked import blocked_output
    from lambdanet.layers.triton_local import triton_position_output

    if not _triton_ready(suite.device):
        suite.note("position_op skipped: Triton kernels are timed on CUDA only")
        return
    for case, shape, scope in QUICK_CASES if suite.quick else GPU_CASES:
        for name, dtype in (("blocked", torch.float32), ("triton", torch.float32), ("triton", torch.bfloat16)):
            row = {"case": case, "name": name, "dtype": str(dtype).replace("torch.", "")}

            def run(shape=shape, scope=scope, name=name, dtype=dtype) -> dict[str, Any]:
                q, v, w, lam = _position_inputs(shape, scope, suite.device, dtype)
                if name == "blocked":
                    w_c = crop_kernel(w.detach(), shape[2:]).requires_grad_()
                    fn = lambda: blocked_output(q, v, w_c, lam)  # noqa: E731
                else:
                    fn = lambda: triton_position_output(q, v, w, lam)  # noqa: E731
                grad = torch.randn_like(fn())
                t0 = time.perf_counter()
                fn().backward(grad)
                synchronize(suite.device)
                first = time.perf_counter() - t0
                if first > suite.args.max_call_s:
                    return {"note": f"first forward+backward {first:.1f} s > {suite.args.max_call_s} s: not timed"}

                def fwd():
                    with torch.no_grad():
                        fn()

                out = {"fwd_ms": _time(fwd, suite), "fwd_bwd_ms": _time(lambda: fn().backward(grad), suite)}
                out["peak_mib"] = peak_mib(lambda: fn().backward(grad), device=suite.device)
                return out

            suite.item("position_op", row, run, need_s=10)


# ---------------------------------------------------------------------------------------------------- models


def run_models(suite: Suite, compile: bool) -> None:
    from lambdanet.bench.model import ModelBenchConfig, run_model_bench

    specs = OURS
    batch, size = (2, 64) if suite.quick else (128, None)
    if suite.quick and compile:  # inductor takes minutes per model on a small CPU machine
        suite.note("compiled models skipped in --quick (the same run_model_bench call as eager, compile=True)")
        return
    for spec in specs:
        row = {"model": spec, "compile": compile}

        def run(spec=spec) -> dict[str, Any]:
            cfg = ModelBenchConfig(
                models=(spec,), batch=batch, image_size=size, device=suite.device, dtype="bfloat16",
                channels_last=True, compile=compile, reps=2 if suite.quick else 10, warmup=1 if suite.quick else 3,
                budget_s=20.0,
            )  # fmt: skip
            result = run_model_bench(cfg, progress=False)
            out = result["rows"][0]
            out.pop("model", None)
            out["batch"] = batch
            return out

        suite.item("models", row, run, need_s=150 if compile and not suite.quick else 20)


def bench_timm_model(suite: Suite, model: Any, size: tuple[int, ...], batch: int, compile: bool) -> dict[str, Any]:
    """Images/s of a timm model, inference and one training step (bfloat16 autocast, channels_last)."""
    from lambdanet.bench.timing import peak_mib

    device = suite.device
    model = model.to(device).to(memory_format=torch.channels_last)
    fn = torch.compile(model) if compile else model
    x = torch.randn(batch, *size, device=device).to(memory_format=torch.channels_last)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16)
    out: dict[str, Any] = {"input": "x".join(map(str, size)), "batch": batch}
    model.eval()

    def infer() -> None:
        with torch.no_grad(), autocast:
            fn(x)

    ms = _time(infer, suite)
    out["infer_img_s"] = batch / ms * 1e3
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    target = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = nn.functional.cross_entropy(fn(x).float(), target)
        loss.backward()
        opt.step()

    ms = _time(step, suite)
    out["train_img_s"] = batch / ms * 1e3
    if device == "cuda":
        out["peak_mib"] = peak_mib(step, device=device)
    return out


def run_timm(suite: Suite, compile: bool) -> None:
    """timm's models against ours, eager (all) or compiled (the resnet26t pair of timm's published figures)."""
    try:
        import timm
    except ImportError:
        suite.note("timm section skipped: timm is not installed")
        return
    import lambdanet

    batch, side = (2, 64) if suite.quick else (128, 256)
    if compile:
        if suite.quick:
            suite.note("compiled timm models skipped in --quick")
            return
        jobs = [("timm", "resnet26t"), ("timm", "lambda_resnet26t")]
    else:
        jobs = [*[("timm", m) for m in TIMM_MODELS], ("ours", "resnet50"), ("ours", "lambda_resnet50")]
    for source, name in jobs:
        row = {"source": source, "model": name, "compile": compile}

        def run(source=source, name=name) -> dict[str, Any]:
            model = timm.create_model(name) if source == "timm" else lambdanet.create_model(name)
            return bench_timm_model(suite, model, (3, side, side), batch, compile)

        suite.item("timm", row, run, need_s=150 if compile else 20)


# ---------------------------------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world: int, port: int, spec: str, batch: int, side: int, steps: int, out: str) -> None:
    import torch.distributed as dist

    import lambdanet

    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= world
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    device = torch.device(f"cuda:{rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    model = lambdanet.create_model(spec).to(device).to(memory_format=torch.channels_last)
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[rank] if cuda else None)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, side, side, device=device).to(memory_format=torch.channels_last)
    target = torch.randint(0, 10, (batch,), device=device)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = nn.functional.cross_entropy(ddp(x).float(), target)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize(device)
        dist.barrier()
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    if rank == 0:
        ms = sorted(times)[len(times) // 2] * 1e3
        result = {"step_ms": ms, "img_s": world * batch / ms * 1e3, "backend": dist.get_backend()}
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def run_ddp(suite: Suite) -> None:
    import torch.multiprocessing as mp

    if suite.device == "cuda" and torch.cuda.device_count() < 2:
        suite.note(f"ddp skipped: {torch.cuda.device_count()} GPU(s), needs 2")
        return
    spec, batch, side, steps = ("lambda_resnet18_cifar", 2, 32, 2) if suite.quick else ("lambda_resnet50", 64, 224, 10)
    row = {"model": spec, "world": 2, "batch_per_rank": batch}

    def run() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            out = str(Path(tmp) / "ddp.json")
            port = 29500 + os.getpid() % 1000
            mp.spawn(_ddp_worker, args=(2, port, spec, batch, side, steps, out), nprocs=2, join=True)
            return json.loads(Path(out).read_text())

    suite.item("ddp", row, run, need_s=60 if not suite.quick else 10)


# ---------------------------------------------------------------------------------------------------- report

#: Published and paper figures the results are read against (docs/gpu.md).
REFERENCE_FIGURES = [
    ("paper Table 13 (TPUv3, training ex/s)", "LambdaResNet-50 1,160; C4 hybrid 4,980; ResNet-50 7,240"),
    ("timm, RTX 4090 AMP inference img/s", "lambda_resnet26t 2,146 vs resnet26t 4,915; compiled 5,121 vs 8,971"),
    ("timm, RTX 3090 training img/s", "lambda_resnet50ts 515 vs resnet50 826"),
]


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def targets(suite: Suite) -> list[dict[str, Any]]:
    """The targets of docs/gpu.md, read off the results (None where a number is missing)."""
    layer = suite.result["sections"].get("layer", [])
    models = suite.result["sections"].get("models", [])
    out: list[dict[str, Any]] = []

    def ms(case: str, name: str) -> float | None:
        row = _find(layer, case=case, name=name, dtype="bfloat16")
        return row.get("fwd_bwd_ms") if row else None

    for case in ("c4", "c5"):
        for ours in ("lambdanet auto", "lambdanet triton"):
            t, lucid, conv = ms(case, ours), ms(case, "lambda-networks"), ms(case, "conv3x3")
            speed = lucid / t if t and lucid else None
            out.append({"target": f"{case} {ours}: >= 5x lambda-networks (bf16 fwd+bwd)", "value": speed,
                        "met": None if speed is None else speed >= 5})  # fmt: skip
            ratio = t / conv if t and conv else None
            out.append({"target": f"{case} {ours}: <= 1.5x the 3x3 conv time", "value": ratio,
                        "met": None if ratio is None else ratio <= 1.5})  # fmt: skip
    for ours in ("lambdanet auto", "lambdanet triton"):
        t, sdpa = ms("64x64 global", ours), ms("64x64 global", "attention (sdpa)")
        ratio = sdpa / t if t and sdpa else None
        out.append({"target": f"64x64 global {ours}: faster than SDPA flash (speed-up)", "value": ratio,
                    "met": None if ratio is None else ratio > 1})  # fmt: skip

    def img_s(spec: str) -> float | None:
        row = _find(models, model=spec, compile=False)
        return row.get("train_img_s") if row else None

    base = img_s("resnet50")
    for spec, goal in (("lambda_resnet50", 0.5), ("lambda_resnet50:placement=CCLL", 0.9)):
        val = img_s(spec)
        ratio = val / base if val and base else None
        out.append({"target": f"{spec} training >= {goal}x resnet50 images/s", "value": ratio,
                    "met": None if ratio is None else ratio >= goal})  # fmt: skip
    return out


TABLES = {
    "tests": [
        ("name", "run"), ("ok", "ok"), ("returncode", "rc"), ("seconds", "s"), ("summary", "summary"),
        ("note", "note"), ("error", "error"),
    ],
    "triton_check": [
        ("case", "case"), ("dtype", "dtype"), ("rel_err_y", "y"), ("rel_err_q", "dq"), ("rel_err_v", "dv"),
        ("rel_err_weight", "dE"), ("rel_err_lam_c", "dlam_c"), ("ok", "ok"), ("error", "error"),
    ],
    "layer": [
        ("case", "case"), ("shape", "input"), ("scope", "scope"), ("dtype", "dtype"), ("name", "contender"),
        ("fwd_ms", "fwd ms"), ("fwd_bwd_ms", "fwd+bwd ms"), ("peak_mib", "peak MiB"), ("note", "note"),
        ("error", "error"), ("skipped", "skipped"),
    ],
    "position_op": [
        ("case", "case"), ("name", "op"), ("dtype", "dtype"), ("fwd_ms", "fwd ms"), ("fwd_bwd_ms", "fwd+bwd ms"),
        ("peak_mib", "peak MiB"), ("note", "note"), ("error", "error"), ("skipped", "skipped"),
    ],
    "models": [
        ("model", "model"), ("compile", "compile"), ("batch", "batch"), ("input", "input"),
        ("train_img_s", "train img/s"), ("infer_img_s", "infer img/s"), ("peak_mib", "peak MiB"),
        ("paper_ex_s", "paper TPUv3 ex/s"), ("error", "error"), ("skipped", "skipped"),
    ],
    "timm": [
        ("source", "source"), ("model", "model"), ("compile", "compile"), ("input", "input"), ("batch", "batch"),
        ("train_img_s", "train img/s"), ("infer_img_s", "infer img/s"), ("peak_mib", "peak MiB"),
        ("error", "error"), ("skipped", "skipped"),
    ],
    "ddp": [("model", "model"), ("world", "GPUs"), ("batch_per_rank", "batch/GPU"), ("img_s", "img/s"),
            ("step_ms", "step ms"), ("backend", "backend"), ("error", "error")],
    "targets": [("target", "target"), ("value", "measured"), ("met", "met")],
}  # fmt: skip


def markdown(suite: Suite) -> str:
    from lambdanet.bench.report import format_table

    env = suite.result["environment"]
    lines = [
        "# GPU suite results",
        "",
        f"Device: {env.get('gpus') or env.get('processor')}; torch {env['torch']}, triton {env.get('triton')}, "
        f"timm {env.get('timm')}, lambda-networks {env.get('lambda_networks')}; "
        f"{suite.result['seconds']:.0f} s{' (quick CPU dry run: timings mean nothing)' if suite.quick else ''}.",
    ]
    sections = {**suite.result["sections"], "targets": suite.result["targets"]}
    for name, columns in TABLES.items():
        rows = sections.get(name)
        if rows:
            lines += ["", f"## {name}", "", format_table(rows, columns, markdown=True)]
    lines += ["", "## reference figures (not measured here)", ""]
    lines += [f"- {what}: {figures}" for what, figures in REFERENCE_FIGURES]
    if suite.result["notes"]:
        lines += ["", "## notes", "", *[f"- {n}" for n in suite.result["notes"]]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="results folder (suite.json, suite.md, tests.log)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 2 repetitions: checks the script works")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting items after this (default 420)")
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per measurement (GPU)")
    parser.add_argument("--max-call-s", type=float, default=2.0, help="slower first calls are not timed further")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="wheels to install first (if present)")
    parser.add_argument("--fetch-wheels", action="store_true", help="download the wheels into --wheels and exit")
    parser.add_argument("--skip", nargs="*", default=[], help="sections to skip (tests, layer, models, ...)")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failed items")
    args = parser.parse_args(argv)
    if args.fetch_wheels:
        return fetch_wheels(args.wheels)
    if args.out is None:
        parser.error("--out is required")
    site = install_wheels(args.wheels)
    if site:
        os.environ["PYTHONPATH"] = os.pathsep.join([site, str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    sys.path.insert(0, str(ROOT / "src"))

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_suite: --device cuda but torch.cuda.is_available() is False (try --device cpu --quick)",
            file=sys.stderr,
        )
        return 2
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    suite = Suite(args)
    suite.result["environment"] = environment(suite)
    suite.result["wheels_installed_into"] = site
    plan: list[tuple[str, Callable[[], None]]] = [
        ("tests", lambda: run_tests(suite, args.out / "tests.log")),
        ("triton_check", lambda: run_triton_check(suite)),
        ("layer", lambda: run_layers(suite, ("bfloat16",))),
        ("models", lambda: run_models(suite, compile=False)),
        ("timm", lambda: run_timm(suite, compile=False)),
        ("layer", lambda: run_layers(suite, ("float32",))),
        ("position_op", lambda: run_position_op(suite)),
        ("models", lambda: run_models(suite, compile=True)),
        ("timm", lambda: run_timm(suite, compile=True)),
        ("ddp", lambda: run_ddp(suite)),
    ]
    try:
        for name, section in plan:
            if name in args.skip:
                continue
            section()
    finally:
        suite.result["seconds"] = time.perf_counter() - suite.start
        suite.result["targets"] = targets(suite)
        suite.result["environment"]["wall_s"] = suite.result["seconds"]
        (args.out / "suite.json").write_text(json.dumps(suite.result, indent=1, default=str) + "\n")
        (args.out / "suite.md").write_text(markdown(suite))
        print(f"wrote {args.out / 'suite.json'} and {args.out / 'suite.md'} ({suite.result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
