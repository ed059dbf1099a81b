"""Prefill, cached decoding and sampling of the character LMs: every cached path equals the full forward pass."""

from __future__ import annotations

import pytest
import torch

import lambdanet
from lambdanet.models.lm import KVCache

TINY = {"vocab_size": 20, "max_length": 40, "dim": 16, "depth": 2, "heads": 2, "dim_k": 4, "mlp_hidden": 32}


@pytest.mark.parametrize(
    ("name", "extra"),
    [("lambda_lm_tiny", {}), ("lambda_lm_tiny", {"scope": 5}), ("transformer_lm_tiny", {})],
    ids=["lambda-global", "lambda-local", "transformer"],
)
def test_prefill_and_cached_steps_equal_the_full_forward(name: str, extra: dict) -> None:
    torch.manual_seed(0)
    model = lambdanet.create_model(name, **TINY, **extra).eval().double()
    tokens = torch.randint(0, 20, (2, 30))
    with torch.no_grad():
        full = model(tokens)
        head, state = model.prefill(tokens[:, :11])
        mid, state = model.prefill(tokens[:, 11:19], state)  # a second chunk after the prefix (masked attention)
        steps = [model.step(tokens[:, i], state) for i in range(19, 30)]
    got = torch.cat([head, mid, torch.stack(steps, dim=1)], dim=1)
    torch.testing.assert_close(got, full, rtol=1e-10, atol=1e-10)
    if name == "transformer_lm_tiny":
        assert all(isinstance(s, KVCache) and s.length == 30 for s in state)


@pytest.mark.parametrize("name", ["lambda_lm_tiny", "transformer_lm_tiny"])
def test_generate_greedy_follows_the_full_forward(name: str) -> None:
    torch.manual_seed(0)
    model = lambdanet.create_model(name, **TINY).eval()
    prompt = torch.randint(0, 20, (2, 5))
    out = model.generate(prompt, 8, temperature=0)
    assert out.shape == (2, 13) and torch.equal(out[:, :5], prompt)
    with torch.no_grad():  # each greedy token is the argmax of the full pass over what came before
        want = model(out[:, :-1]).argmax(dim=-1)[:, 4:]
    assert torch.equal(out[:, 5:], want)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = model.generate(prompt, 6, temperature=0.8, top_k=3, generator=g1)
    assert torch.equal(a, model.generate(prompt, 6, temperature=0.8, top_k=3, generator=g2))
    with torch.no_grad():  # top_k=3: every sample is among the 3 most likely tokens of its prefix
        top3 = model(a[:, :-1]).topk(3, dim=-1).indices[:, 4:]
    assert (top3 == a[:, 5:, None]).any(dim=-1).all()


def test_decoding_errors() -> None:
    model = lambdanet.create_model("transformer_lm_tiny", **TINY).eval()
    prompt = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="max_new_tokens=-1"):
        model.generate(prompt, -1)
    with pytest.raises(ValueError, match=r"temperature=-0\.5"):
        model.generate(prompt, 2, temperature=-0.5)
    for temperature in (float("inf"), float("nan")):  # inf sampled uniformly, silently
        with pytest.raises(ValueError, match=f"temperature={temperature} must be a finite number"):
            model.generate(prompt, 2, temperature=temperature)
    with pytest.raises(ValueError, match="top_k=0"):
        model.generate(prompt, 2, top_k=0)
    with pytest.raises(ValueError, match="exceeds max_length=40"):
        model.generate(prompt, 40)
    _, state = model.prefill(torch.zeros(1, 38, dtype=torch.long))
    with pytest.raises(ValueError, match="sequence length 41 exceeds max_length=40"):
        model.prefill(prompt[:, :3], state)
    with pytest.raises(ValueError, match="the cache holds a batch of 1 sequences, got 2"):
        model.step(torch.zeros(2, dtype=torch.long), state)
    with pytest.raises(ValueError, match="expected 2 states"):
        model.step(prompt[:, 0], state[:1])
