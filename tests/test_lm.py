"""Language-model task: embedded corpus and splits, the matched lambda/Transformer LMs, and a short training run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lambdanet
from lambdanet.models.lm import MODEL_CFGS
from lambdanet.train import lm

ROOT = Path(__file__).resolve().parents[1]
LM_MODELS = ["lambda_lm_tiny", "transformer_lm_tiny"]
TINY = {"dim": 32, "depth": 1, "heads": 2, "dim_k": 8, "mlp_hidden": 64, "max_length": 32}


def test_corpus_vocab_and_contiguous_splits() -> None:
    text = lm.load_corpus()
    assert len(text) > 400_000  # pydoc topics of CPython 3.11: ~465k characters
    data = lm.CharDataModule(lm.TextDataConfig(seq_len=64, batch_size=8, max_eval_windows=3))
    assert data.vocab.decode(data.vocab.encode(text[:500])) == text[:500]
    parts = data.split_ids
    assert sum(len(p) for p in parts.values()) == len(text)
    torch.testing.assert_close(torch.cat([parts["train"], parts["val"], parts["test"]]), data.vocab.encode(text))
    assert len(parts["val"]) == len(parts["test"]) == int(0.05 * len(text))
    x, y = data.val_set[1]
    torch.testing.assert_close(x[1:], y[:-1])  # targets are the inputs shifted by one
    assert len(data.val_set) == 3
    with pytest.raises(ValueError, match="not in the vocabulary"):
        data.vocab.encode("\x00")
    with pytest.raises(ValueError, match=r"data\.corpus='war_and_peace'"):
        lm.TextDataConfig(corpus="war_and_peace").validate()


def test_training_windows_change_phase_per_epoch() -> None:
    data = lm.CharDataModule(lm.TextDataConfig(seq_len=32, batch_size=4))
    data.train_set.set_epoch(0)
    first = data.train_set[0][0].clone()
    data.train_set.set_epoch(1)
    assert not torch.equal(first, data.train_set[0][0])
    assert all(data.train_set[len(data.train_set) - 1][i].shape == (32,) for i in (0, 1))


def test_lm_models_are_registered_as_language_models_of_matched_size() -> None:
    counts = {}
    for name in LM_MODELS:
        info = lambdanet.model_info(name)
        assert info.extra["task"] == "language_model"
        assert info.input_size == (256,)
        with torch.device("meta"):
            counts[name] = sum(p.numel() for p in lambdanet.create_model(name).parameters())
    assert counts == {"lambda_lm_tiny": 858_720, "transformer_lm_tiny": 859_008}  # pinned; change deliberately
    assert abs(counts["lambda_lm_tiny"] / counts["transformer_lm_tiny"] - 1) < 1e-3
    assert MODEL_CFGS["lambda_lm_tiny"].dim == MODEL_CFGS["transformer_lm_tiny"].dim


@pytest.mark.parametrize("name", LM_MODELS)
def test_lm_is_causal_and_trains(name: str) -> None:
    model = lambdanet.create_model(name, vocab_size=20, **TINY)
    tokens = torch.randint(0, 20, (2, 24))
    logits = model(tokens)
    assert logits.shape == (2, 24, 20)
    changed = tokens.clone()
    changed[:, 15:] = (changed[:, 15:] + 1) % 20
    torch.testing.assert_close(model(changed)[:, :15], logits[:, :15], rtol=1e-5, atol=1e-5)
    assert (model(changed)[:, 15:] - logits[:, 15:]).abs().max() > 1e-4
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


def test_lambda_lm_decodes_token_by_token_like_the_full_pass() -> None:
    model = lambdanet.create_model("lambda_lm_tiny", vocab_size=20, **{**TINY, "depth": 2}).eval()
    tokens = torch.randint(0, 20, (2, 12))
    with torch.no_grad():
        full = model(tokens)
        states = model.init_state()
        steps = torch.stack([model.step(tokens[:, i], states) for i in range(12)], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-5)


def test_lm_errors() -> None:
    model = lambdanet.create_model("lambda_lm_tiny", vocab_size=20, **TINY)
    with pytest.raises(ValueError, match="exceeds max_length=32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="integer ids"):
        model(torch.zeros(1, 8))
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['num_classes'\]"):
        lambdanet.create_model("transformer_lm_tiny", num_classes=3)


def test_config_cli_and_a_two_step_run(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "lm.yaml"
    recipe.write_text("task: language_model\nmodel:\n  name: transformer_lm_tiny\ndata:\n  seq_len: 16\n")
    assert lm.main(["-c", str(recipe), "--print-config", "--optim.lr", "0.01"]) == 0
    printed = capsys.readouterr().out
    assert "name: transformer_lm_tiny" in printed and "lr: 0.01" in printed
    assert lm.main(["-c", str(recipe), "--data.seqlen", "3"]) == 2
    assert "unknown config key 'data.seqlen'" in capsys.readouterr().err
    assert lm.recipe_task(recipe) == lm.TASK
    assert lm.recipe_task(ROOT / "configs" / "train" / "digits_tiny.yaml") is None
    assert lm.recipe_task(ROOT / "configs" / "lm" / "lm_tiny.yaml") == lm.TASK
    shipped = lm.load_lm_config(ROOT / "configs" / "lm" / "lm_tiny.yaml")
    assert (shipped.model.name, shipped.data.seq_len, shipped.train.max_steps) == ("lambda_lm_tiny", 128, 400)
    with pytest.raises(ValueError, match="task='image'"):
        lm.load_lm_config(None, {"task": "image"})

    over = {
        "model": {"name": "lambda_lm_tiny", "overrides": TINY},
        "data": {"seq_len": 16, "batch_size": 4, "max_eval_windows": 2},
        "train": {"max_steps": 2, "epochs": 1},
        "system": {"progress_bar": False},
    }
    cfg = lm.load_lm_config(recipe, over)
    results = lm.fit_lm(cfg, run_dir=tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved == results
    assert results["global_step"] == 2 and results["train_tokens"] == 2 * 4 * 16
    for key in ("val/bpc", "test/bpc"):
        assert 0 < results[key] < 10
    assert results["tokens_per_s"] > 0
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
