"""MQAR (Zoology's multi-query associative recall): the generator's contract, state sizes, and a smoke run of the
benchmark (no accuracy asserted: the CPU configuration that learns takes minutes, see docs/sequences.md)."""

from __future__ import annotations

import json

import pytest
import torch

from lambdanet.data.mqar import IGNORE, MQARConfig, mqar
from tests.scripts import benchmark


def _bench():
    return benchmark("mqar")


def test_every_query_asks_for_the_value_of_its_context_key() -> None:
    cfg = MQARConfig(vocab_size=64, seq_len=96, num_kv_pairs=8)
    inputs, labels = mqar(cfg, 50, torch.Generator().manual_seed(0))
    assert inputs.shape == labels.shape == (50, 96)
    for x, y in zip(inputs, labels, strict=True):
        keys, values = x[0:16:2], x[1:16:2]
        assert len(set(keys.tolist())) == 8 and keys.min() >= 1 and keys.max() < 32 and values.min() >= 32
        pairs = dict(zip(keys.tolist(), values.tolist(), strict=True))
        queries = (y != IGNORE).nonzero().flatten()
        assert len(queries) == 8 and queries.min() >= 16
        for p in queries.tolist():
            assert y[p].item() == pairs[x[p].item()]  # the label is the value that followed this key
        rest = torch.ones(96, dtype=torch.bool)
        rest[:16] = False
        rest[queries] = False
        assert (x[rest] == 0).all()  # everything else is filler
    # power-law gaps: queries near the context are more frequent than far ones
    pos = (labels != IGNORE).nonzero()[:, 1] - 16
    assert (pos < 40).sum() > (pos >= 40).sum()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_kv_pairs": 0}, "num_kv_pairs=0 must be a positive integer"),
        ({"vocab_size": 10, "num_kv_pairs": 8}, "leaves 4 keys, fewer than num_kv_pairs=8"),
        ({"seq_len": 20, "num_kv_pairs": 8}, "seq_len=20 is too short"),
        ({"power_a": 0.0}, "power_a=0.0 must lie in"),
    ],
)
def test_generator_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mqar(MQARConfig(**{"vocab_size": 64, "seq_len": 64, "num_kv_pairs": 4, **kwargs}), 2)


def test_state_sizes_count_what_decoding_carries() -> None:
    bench = _bench()
    lam = bench.LambdaMixer(32, 2, 16, 64)
    lam.layer.eval()
    _, state = lam.layer(torch.randn(1, 10, 32), return_state=True)
    carried = sum(t.numel() for t in state.content) + state.recent_values().numel()
    assert lam.state_size(64) == carried
    lin = bench.LinearAttention(32, 2, 16, 64)
    assert lin.state_size(64) == 2 * 16 * (16 + 1)
    assert bench.SoftmaxAttention(32, 2, 16, 64).state_size(64) == 2 * 64 * 32  # keys and values of 64 tokens


def test_linear_attention_anchor_is_causal_linear_attention() -> None:
    bench = _bench()
    torch.manual_seed(0)
    mix = bench.LinearAttention(8, 2, 3, 16).double()
    x = torch.randn(1, 6, 8, dtype=torch.float64)
    y = mix(x)
    q, k = (torch.nn.functional.elu(t) + 1 for t in mix.qk(x).view(1, 6, 2, 2, 3).unbind(2))
    v = mix.v(x).view(1, 6, 2, 4)
    for n in range(6):  # the recurrence: state sum_m phi(k_m) v_m^T and normaliser sum_m phi(k_m)
        s = torch.einsum("mhk,mhv->hkv", k[0, : n + 1], v[0, : n + 1])
        z = k[0, : n + 1].sum(0)
        want = torch.einsum("hk,hkv->hv", q[0, n], s) / (torch.einsum("hk,hk->h", q[0, n], z)[:, None] + 1e-6)
        torch.testing.assert_close(y[0, n].view(2, 4), want)


def test_smoke_run_writes_results_and_a_plot(tmp_path) -> None:
    assert _bench().main(["--preset", "smoke", "--threads", "1", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert {r["mixer"] for r in data["best"]} == {"lambda", "linear", "attention"}
    assert all(0 <= r["accuracy"] <= 1 and r["state_size"] > 0 for r in data["best"])
    assert (tmp_path / "accuracy_vs_state.png").stat().st_size > 0
