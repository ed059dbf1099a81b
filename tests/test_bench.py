"""Benchmark suite (``lambdanet bench``): memory model against measurement, and the commands at tiny sizes.

Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602, Table 4 (memory) and Table 13 (throughput). No test asserts
a time.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from lambdanet import LambdaLayer3d
from lambdanet.bench.layer import (
    LambdaConv3d,
    LayerBenchConfig,
    build_contender,
    check_model,
    growth_exponent,
    run_layer_bench,
)
from lambdanet.bench.memory import (
    CONTENDERS,
    PAPER_TABLE4_GB,
    LayerShape,
    layer_saved_bytes,
    paper_appendix_d2,
    paper_table4,
    total_mib,
)
from lambdanet.bench.model import ModelBenchConfig, parse_model_spec, run_model_bench
from lambdanet.bench.report import format_table, write_csv
from lambdanet.bench.timing import LiveBytes, forward_backward, median_ms, peak_mib, saved_for_backward_mib
from lambdanet.cli.bench import main
from lambdanet.layers.algorithms import usable
from tests.scripts import benchmark

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- memory model
def test_paper_table4_recomputed() -> None:
    gib = paper_table4()
    assert gib["global self-attention"] == pytest.approx(122.83, abs=0.01)  # the paper rounds to 120
    assert gib["lambda layer"] == pytest.approx(1.919, abs=0.001)
    assert gib["lambda layer (|k|=8)"] == pytest.approx(gib["lambda layer"] / 2)
    for name in ("axial self-attention", "lambda layer", "lambda layer (|k|=8)", "lambda layer (shared embeddings)"):
        assert gib[name] == pytest.approx(PAPER_TABLE4_GB[name], rel=0.02), name
    # Global attention's map grows with the batch, the lambda layer's embeddings do not.
    half = paper_table4(batch=64)
    assert half["global self-attention"] == pytest.approx(gib["global self-attention"] / 2)
    assert half["lambda layer"] == gib["lambda layer"]


def test_paper_appendix_d2_recomputed() -> None:
    mib = paper_appendix_d2()
    assert mib["lambda layers (k n^2 per layer)"] == pytest.approx(38.4, rel=0.03)  # "38.4MB"
    assert mib["lambda layers, shared embeddings"] == pytest.approx(4.8, rel=0.03)  # "4.8MB"
    assert mib["attention layers (b h n^2 per layer)"] / 1024 == pytest.approx(0.625, rel=0.03)  # "0.625GB"


def test_memory_model_matches_measurement() -> None:
    rows = check_model(shapes=((2, 32, 12, None), (2, 32, 12, 5)))
    usable_here = {k for k in CONTENDERS if not k.startswith("lambda ") or usable(k[7:], 2, "cpu")}
    assert {r["kind"] for r in rows} == usable_here
    for row in rows:
        assert 0.85 <= row["ratio"] <= 1.2, row


def test_attention_memory_quadratic_lambda_linear() -> None:
    """Measured saved memory from 8x8 to 16x16 (n x 4): materialised maps x ~16, SDPA and lambda conv x ~4."""
    growth = {}
    for name in ("attention (materialised)", "attention (sdpa)", "lambda conv", "lambda fft"):
        saved = []
        for side in (8, 16):
            module = build_contender(name, 16, side, scope=None)
            x = torch.randn(2, 16, side, side, requires_grad=True)
            saved.append(saved_for_backward_mib(lambda module=module, x=x: module(x)))
        growth[name] = math.log(saved[1] / saved[0], 4)  # exponent in n
    assert growth["attention (materialised)"] > 1.6
    for name in ("attention (sdpa)", "lambda conv", "lambda fft"):
        assert growth[name] < 1.3, (name, growth)


def test_layer_shape_and_model_errors() -> None:
    with pytest.raises(ValueError, match="dim=10"):
        LayerShape(2, 10, 8, heads=4)
    with pytest.raises(ValueError, match="scope=4"):
        LayerShape(2, 16, 8, scope=4)
    with pytest.raises(ValueError, match="kind='attention'"):
        layer_saved_bytes("attention", LayerShape(2, 16, 8))
    with pytest.raises(ValueError, match="batch=0"):
        paper_table4(batch=0)


# ----------------------------------------------------------------------------------------------- measurement
def test_live_bytes_peak_is_exact_for_known_allocations() -> None:
    base = torch.ones(1024)  # 4 KiB, created outside the mode: not counted

    def fn() -> torch.Tensor:
        a = base * 2  # 4 KiB
        b = torch.cat([a, a])  # 8 KiB, live with a: 12 KiB
        del a
        return b[:10] + 1  # 40 bytes after a is gone

    mode = LiveBytes()
    with mode:
        out = fn()
    assert mode.peak == 12 * 1024
    assert mode.live == 40  # a, b and the view of b are gone; only the result is alive
    del out
    assert mode.live == 0


def test_peak_covers_saved_memory() -> None:
    layer = build_contender("lambda conv", 16, 8, scope=5)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    assert peak_mib(forward_backward(layer, x)) >= saved_for_backward_mib(lambda: layer(x)) * 0.9


def test_median_ms_checks_arguments() -> None:
    with pytest.raises(ValueError, match="reps=0"):
        median_ms(lambda: None, reps=0)
    calls = []
    assert median_ms(lambda: calls.append(1), reps=3, warmup=2) >= 0
    assert len(calls) == 5


def test_benchmark_scripts_reexport_the_package_helpers() -> None:
    module = benchmark("_timing")
    assert module.median_ms is median_ms
    assert module.saved_for_backward_mib is saved_for_backward_mib


# ----------------------------------------------------------------------------------------------- layer sweep
def test_layer_bench_rows_and_memory_skip() -> None:
    cfg = LayerBenchConfig(
        sides=(4, 16),
        batch=1,
        dim=8,
        heads=2,
        dim_k=4,
        scope=3,
        contenders=("lambda conv", "attention (materialised)", "attention (sdpa)", "conv3x3"),
        reps=1,
        warmup=0,
        memory_budget_mib=0.2,
        max_call_s=1e9,  # only the memory rule skips here (a loaded machine can make the time rule fire)
        measure_peak=False,
    )
    result = run_layer_bench(cfg, progress=False)
    rows = result["rows"]
    assert len(rows) == 2 * 3 + 2 * 2  # global: 3 contenders; local: lambda conv and conv3x3
    skipped = [r for r in rows if "skipped" in r]
    assert [(r["name"], r["side"]) for r in skipped] == [("attention (materialised)", 16)]  # a 0.5 MiB map
    assert skipped[0]["model_mib"] > 0.2
    assert any("skipped" in note for note in result["notes"])
    for row in rows:
        if "skipped" not in row:
            assert row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0 and row["saved_mib"] > 0
    assert growth_exponent(rows, "lambda conv", "global", "saved_mib") is not None


def test_layer_bench_3d_context() -> None:
    """3-D rows: every algorithm serving 3-D, the Conv3d-style reference and a 3x3x3 convolution; the einsum
    embeddings of a 4x6x6 volume (k n^2 = 336 KiB) exceed the budget and are skipped by the memory model."""
    cfg = LayerBenchConfig(
        batch=1,
        dim=8,
        heads=2,
        dim_k=4,
        volumes=((4, 6, 6, 3, 3, 3),),
        contexts=("3d",),
        contenders=("lambda einsum", "lambda fft", "lambda-conv3d", "conv3x3x3", "attention (sdpa)"),
        reps=1,
        warmup=0,
        memory_budget_mib=0.25,
        measure_peak=False,
    )
    rows = run_layer_bench(cfg, progress=False)["rows"]
    assert [(r["name"], r["side"]) for r in rows] == [
        (name, "4x6x6") for name in ("lambda einsum", "lambda fft", "lambda-conv3d", "conv3x3x3")
    ]
    assert "skipped" in rows[0] and rows[0]["model_mib"] > 0.25
    assert all(r["fwd_bwd_ms"] > 0 and r["saved_mib"] > 0 for r in rows[1:])
    with pytest.raises(ValueError, match="volumes="):
        LayerBenchConfig(volumes=((4, 6, 6, 3, 4, 3),), contexts=("3d",))


def test_lambda_conv3d_reference_is_a_lambda_layer() -> None:
    """The Conv3d-style contender computes the same function as LambdaLayer3d given the same weights."""
    ours = LambdaLayer3d(8, dim_k=4, heads=2, scope=(3, 3, 5), position_bias=True).double().eval()
    ref = LambdaConv3d(8, dim_k=4, heads=2, scope=(3, 3, 5)).double().eval()
    nq, nk, _ = ours.splits
    with torch.no_grad():
        w = ours.qkv.weight
        ref.to_q.weight.copy_(w[:nq]), ref.to_k.weight.copy_(w[nq : nq + nk]), ref.to_v.weight.copy_(w[nq + nk :])
        ref.pos_conv.weight.copy_(ours.pos.weight)
        ref.pos_conv.bias.copy_(ours.pos.bias.normal_())
    x = torch.randn(2, 8, 3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(ref(x), ours(x))


def test_layer_bench_skips_predicted_slow_cases() -> None:
    cfg = LayerBenchConfig(
        sides=(4, 32),
        batch=1,
        dim=8,
        heads=2,
        dim_k=4,
        contexts=("global",),
        contenders=("lambda conv",),
        reps=1,
        warmup=0,
        max_call_s=1e-3,  # the 4x4 call takes longer than 1 ms x (64)^-2: 32x32 is predicted too slow
        measure_peak=False,
    )
    result = run_layer_bench(cfg, progress=False)
    small, large = result["rows"]
    assert "skipped" not in small or "took" in small["skipped"]
    assert "skipped" in large and "fwd_ms" not in large
    assert result["notes"]


@pytest.mark.parametrize(("fwd_bwd_ms", "large_skipped"), [(2.0, False), (10.0, True)])
def test_layer_bench_extrapolates_from_the_warm_time(
    monkeypatch: pytest.MonkeyPatch, fwd_bwd_ms: float, large_skipped: bool
) -> None:
    # A cold first call (0.9 s of one-time warm-up) must not make the next size look too slow: the prediction is the
    # warm median x (n / n_prev)^2 = fwd_bwd_ms x 16 (4x4 -> 8x8), against max_call_s = 0.1 s (32 ms: measured,
    # 160 ms: skipped).
    import lambdanet.bench.layer as layer_bench

    def fake_measure(cfg: LayerBenchConfig, module: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
        return {"first_call_s": 0.9, "fwd_ms": fwd_bwd_ms / 3, "fwd_bwd_ms": fwd_bwd_ms, "saved_mib": 0.0}

    monkeypatch.setattr(layer_bench, "_measure", fake_measure)
    cfg = LayerBenchConfig(
        sides=(4, 8, 64),
        batch=1,
        dim=8,
        heads=2,
        dim_k=4,
        contexts=("local",),
        contenders=("lambda blocked",),
        reps=1,
        warmup=0,
        max_call_s=0.1,
        measure_peak=False,
    )
    rows = run_layer_bench(cfg, progress=False)["rows"]
    assert [r["side"] for r in rows] == [4, 8, 64]
    assert "skipped" not in rows[0]
    assert ("skipped" in rows[1]) is large_skipped
    assert "skipped" in rows[2]  # 64x more positions: predicted far above the limit either way


def test_layer_bench_config_errors() -> None:
    with pytest.raises(ValueError, match="contenders"):
        LayerBenchConfig(contenders=("nope",))
    with pytest.raises(ValueError, match="contexts"):
        LayerBenchConfig(contexts=("far",))
    with pytest.raises(ValueError, match="dtype='float16'"):
        LayerBenchConfig(dtype="float16")
    for key in ("budget_s", "max_call_s", "memory_budget_mib"):  # a negative budget silently skipped cases
        with pytest.raises(ValueError, match=f"{key}=-1 must be a finite number > 0"):
            LayerBenchConfig(**{key: -1})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            LayerBenchConfig(device="cuda")


def test_cli_layer_writes_table_json_csv_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["layer", "--sides", "4", "8", "--batch", "1", "--dim", "8", "--heads", "2", "--dim-k", "4"]
    argv += ["--scope", "3", "--reps", "1", "--warmup", "0", "--no-peak", "--quiet", "--out", str(tmp_path)]
    argv += ["--contenders", "conv", "fft", "attention", "sdpa", "conv3x3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "fwd+bwd ms" in out and "attention (sdpa)" in out and "Growth exponent" in out
    assert "exponents fitted over 2 sizes are rough" in out  # two sides only: the fit is flagged
    data = json.loads((tmp_path / "layer.json").read_text())
    assert all(g["sizes"] == 2 for g in data["growth"])
    assert data["environment"]["torch"] == torch.__version__
    assert len(data["rows"]) == 2 * 4 + 2 * 3
    with (tmp_path / "layer.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(data["rows"])
    for context in ("global", "local"):
        png = tmp_path / f"layer_{context}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_layer_config_file_and_bad_contender(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text("sides: [4]\nbatch: 1\ndim: 8\nheads: 2\ndim-k: 4\nscope: 3\ncontexts: [local]\nreps: 1\n")
    argv = ["layer", "--config", str(config), "--contenders", "conv3x3", "--warmup", "0", "--no-plot", "--quiet"]
    assert main([*argv, "--no-peak", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "layer.json").read_text())["rows"]
    assert [(r["context"], r["name"], r["side"]) for r in rows] == [("local", "conv3x3", 4)]
    capsys.readouterr()
    assert main(["layer", "--contenders", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "contenders ['nope'] unknown; expected names from" in err
    config.write_text("unknown_option: 1\n")
    assert main(["layer", "--config", str(config), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--config {config}: unknown key 'unknown_option'" in err
    config.write_text("command: model\n")
    assert main(["layer", "--config", str(config), "--out", str(tmp_path)]) == 2
    assert "command='model'; expected 'layer'" in capsys.readouterr().err


def test_shipped_bench_configs_parse() -> None:
    configs = sorted((ROOT / "configs" / "bench").glob("*.yaml"))
    assert configs
    import yaml

    from lambdanet.cli.bench import _parse

    for path in configs:
        command = yaml.safe_load(path.read_text())["command"]
        _parse(command, ["--config", str(path), "--device", "cpu"])  # every key known, every value valid


# ----------------------------------------------------------------------------------------------- models and memory
def test_parse_model_spec() -> None:
    assert parse_model_spec("lambda_resnet50:placement=CCLL,layers=(1,1,1,1)") == (
        "lambda_resnet50",
        {"placement": "CCLL", "layers": (1, 1, 1, 1)},
    )
    assert parse_model_spec("resnet50") == ("resnet50", {})
    with pytest.raises(ValueError, match="key=value"):
        parse_model_spec("resnet50:placement")


def test_model_bench_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = ["resnet50:layers=(1,1,1,1)", "lambda_resnet50:layers=(1,1,1,1),placement=CCLL"]
    argv = ["model", "--models", *models, "--batch", "2", "--image-size", "32", "--reps", "1", "--warmup", "0"]
    assert main([*argv, "--quiet", "--peak", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "infer img/s" in out and "slowdown against resnet50" in out
    rows = json.loads((tmp_path / "model.json").read_text())["rows"]
    assert [r["model"] for r in rows] == models
    for row in rows:
        assert row["infer_img_s"] > 0 and row["train_img_s"] > 0 and row["peak_mib"] >= row["saved_mib"] * 0.5
        assert row["input"] == "3x32x32"
    assert rows[1]["params_m"] < rows[0]["params_m"]  # lambda layers have fewer parameters than 3x3 convs
    with pytest.raises(ValueError, match="batch=0"):
        ModelBenchConfig(batch=0)
    with pytest.raises(ValueError, match="budget_s=0 must be a finite number > 0"):
        ModelBenchConfig(budget_s=0)


def test_model_bench_reports_unknown_model() -> None:
    with pytest.raises(ValueError, match="nope"):
        run_model_bench(ModelBenchConfig(models=("nope",), reps=1, warmup=0), progress=False)


def test_cli_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["memory", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "global self-attention" in out and "saved / model" in out
    data = json.loads((tmp_path / "memory.json").read_text())
    assert {r["layer"] for r in data["table4"]} == set(PAPER_TABLE4_GB)
    assert all(0.85 <= r["ratio"] <= 1.2 for r in data["check"])
    assert (tmp_path / "memory_model.png").read_bytes()[:4] == b"\x89PNG"
    lambda_conv = next(r for r in data["resnet50"] if r["layer"] == "lambda conv")
    attention = next(r for r in data["resnet50"] if r["layer"] == "attention (materialised)")
    assert attention["global GiB"] > 10 * lambda_conv["global GiB"]


def test_format_table_and_csv(tmp_path: Path) -> None:
    rows = [{"a": "x", "b": 1.23456}, {"a": "yy", "b": None}]
    text = format_table(rows, [("a", "A"), ("b", "B")])
    assert text.splitlines()[2].startswith("x ") and "1.23" in text and "-" in text.splitlines()[3]
    md = format_table(rows, [("a", "A"), ("b", "B")], markdown=True)
    assert md.splitlines()[1] == "|---|---:|"
    with pytest.raises(ValueError, match="columns"):
        format_table(rows, [])
    path = write_csv(tmp_path / "t.csv", [{"a": 1}, {"b": 2}])
    assert path.read_text().splitlines()[0] == "a,b"


def test_total_mib_sums_terms() -> None:
    terms = layer_saved_bytes("attention (materialised)", LayerShape(1, 8, 4, heads=2))
    assert total_mib(terms) * 2**20 == sum(terms.values())
    assert terms["attention map (b h n n)"] == 1 * 2 * 16 * 16 * 4
