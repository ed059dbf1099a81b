"""``lambdanet generate``: text from a character-LM checkpoint in today's training format; one-line errors."""

from __future__ import annotations

import pytest
import torch

import lambdanet
from lambdanet.cli import main
from lambdanet.data.text import CharVocab, load_corpus

TINY = {"max_length": 48, "dim": 16, "depth": 1, "heads": 2, "dim_k": 4, "mlp_hidden": 32}


def _checkpoint(tmp_path, name: str = "lambda_lm_tiny", vocab: str | None = None) -> str:
    """A checkpoint as ``lambdanet train`` writes it for a language model (state_dict under ``model.``)."""
    chars = CharVocab.from_text(load_corpus()).chars
    model = lambdanet.create_model(name, vocab_size=len(chars), **TINY)
    meta = {
        "model_name": name,
        "model_overrides": model.model_overrides,
        "config": {"data": {"name": "pydoc_topics"}},
        "task": "language_model",
    }
    if vocab is not None:
        meta["vocab"] = vocab
    ckpt = {"lambdanet": meta, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    return str(path)


@pytest.mark.parametrize("name", ["lambda_lm_tiny", "transformer_lm_tiny"])
def test_generate_prints_the_prompt_and_a_reproducible_continuation(tmp_path, capsys, name: str) -> None:
    path = _checkpoint(tmp_path, name)
    args = ["generate", path, "--prompt", "The ", "--max-new-tokens", "12", "--top-k", "5", "--seed", "1"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("The ") and len(first.rstrip("\n")) == 16
    assert main(args) == 0
    assert capsys.readouterr().out == first


def test_generate_errors_are_one_line_with_status_2(tmp_path, capsys) -> None:
    path = _checkpoint(tmp_path)
    cases = [
        ([path, "--prompt", "caf\u00e9"], "character '\u00e9' is not in the vocabulary"),
        ([path, "--prompt", "x", "--max-new-tokens", "100"], "exceeds max_length=48"),
        ([path, "--prompt", "x", "--top-k", "0"], "--top-k=0 must be a positive integer"),
        ([path, "--prompt", "x", "--temperature", "inf"], "--temperature=inf must be a finite number >= 0"),
        ([str(tmp_path / "missing.ckpt"), "--prompt", "x"], "does not exist"),
    ]
    for argv, message in cases:
        assert main(["generate", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    bad = _checkpoint(tmp_path, vocab="abc")
    assert main(["generate", bad, "--prompt", "a"]) == 2
    assert "the vocabulary has 3 characters" in capsys.readouterr().err


def test_eval_of_a_language_model_reports_characters_and_bpc(tmp_path, capsys) -> None:
    from lambdanet.train.config import load_config, to_dict

    path = _checkpoint(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["lambdanet"]["config"] = to_dict(load_config("lm_tiny", {"data": {"seq_len": 16, "max_eval_windows": 8}}))
    torch.save(ckpt, path)
    assert main(["eval", path, "--max-batches", "1", "--batch-size", "4"]) == 0
    line = capsys.readouterr().out.strip()
    assert " bpc " in line and " characters " in line and "char/s" in line and "images" not in line
