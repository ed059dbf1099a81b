"""Language-model task: embedded corpus and splits, the matched lambda/Transformer LMs, and the shipped recipe.

The training run itself (kill -9, resume, eval, decoding from the checkpoint) is in ``tests/test_train_resume.py``."""

from __future__ import annotations

import pytest
import torch

import lambdanet
from lambdanet.data.loader import DataConfig, build_splits, data_info
from lambdanet.data.text import CharVocab, load_corpus
from lambdanet.models.lm import MODEL_CFGS

LM_MODELS = ["lambda_lm_tiny", "transformer_lm_tiny"]
TINY = {"dim": 32, "depth": 1, "heads": 2, "dim_k": 8, "mlp_hidden": 64, "max_length": 32}


def test_corpus_vocab_and_contiguous_splits() -> None:
    text = load_corpus()
    assert len(text) > 400_000  # pydoc topics of CPython 3.11: ~465k characters
    cfg = DataConfig(name="pydoc_topics", seq_len=64, val_fraction=0.05, test_fraction=0.05, max_eval_windows=3)
    splits = build_splits(cfg)
    vocab = CharVocab(splits.classes)
    assert vocab.chars == sorted(set(text)) and data_info(cfg).num_classes == len(vocab)
    assert vocab.decode(vocab.encode(text[:500])) == text[:500]
    parts = [splits.train.ids, splits.val.ids, splits.test.ids]
    torch.testing.assert_close(torch.cat(parts), vocab.encode(text))
    assert len(parts[1]) == len(parts[2]) == int(0.05 * len(text))
    x, y = splits.val[1]
    torch.testing.assert_close(x[1:], y[:-1])  # targets are the inputs shifted by one
    torch.testing.assert_close(x, parts[1][64:128])
    assert len(splits.val) == 3
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vocab.encode("\x00")
    with pytest.raises(ValueError, match=r"data\.name='war_and_peace'"):
        DataConfig(name="war_and_peace").validate()
    with pytest.raises(ValueError, match=r"data\.val_fraction=0.0 and data\.test_fraction=0.2 must be in \(0, 0.5\)"):
        DataConfig(name="pydoc_topics", val_fraction=0.0).validate()


def test_training_windows_change_phase_per_epoch() -> None:
    train = build_splits(DataConfig(name="pydoc_topics", seq_len=32, val_fraction=0.05, test_fraction=0.05)).train
    first = train[(0, 0)][0]
    assert not torch.equal(first, train[(1, 0)][0])
    assert torch.equal(first, train[(0, 0)][0])  # the phase depends only on (seed, epoch): resumable
    assert all(train[(e, len(train) - 1)][i].shape == (32,) for e in range(5) for i in (0, 1))


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


def test_lm_tiny_is_a_shipped_recipe_on_the_one_training_path(capsys: pytest.CaptureFixture[str]) -> None:
    from lambdanet.cli import train as cli_train
    from lambdanet.train.config import list_recipes, load_config

    assert "lm_tiny" in list_recipes()
    cfg = load_config("lm_tiny")
    assert (cfg.model.name, cfg.data.name, cfg.data.seq_len) == ("lambda_lm_tiny", "pydoc_topics", 128)
    assert cfg.train.epochs * cfg.train.limit_train_batches == 400  # steps, as measured in docs/sequences.md
    assert cli_train.main(["-c", "lm_tiny", "--print-config", "--model.name", "transformer_lm_tiny"]) == 0
    assert "name: transformer_lm_tiny" in capsys.readouterr().out
