"""``lambdanet generate``: sample text from a character language-model checkpoint (prefill once, then cached steps).

The model is rebuilt from the checkpoint (``create_model(model_name, **model_overrides)``); the characters come
from the checkpoint's vocabulary (``checkpoint["lambdanet"]["vocab"]``) or, for checkpoints without one, from the
corpus named in its configuration (``data.corpus``).

Examples::

    lambdanet generate runs/lm_tiny-lambda_lm_tiny-20250101-120000/checkpoints/last.ckpt --prompt "The "
    lambdanet generate last.ckpt --prompt "def " --temperature 0.8 --top-k 10 --seed 1
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["load_lm_checkpoint", "main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lambdanet generate",
        description="Sample a continuation of a prompt from a character language-model checkpoint.",
        allow_abbrev=False,
    )
    p.add_argument("checkpoint", help="a .ckpt written by lambdanet train for a language model (lambda_lm_tiny, ...)")
    p.add_argument("--prompt", required=True, help="text to continue (characters of the model's vocabulary)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="characters to generate (200)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 is greedy (1.0)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely characters only")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampler (0)")
    p.add_argument("--weights", choices=("auto", "ema", "model"), default="auto", help="EMA or raw weights (auto)")
    return p


def load_lm_checkpoint(path: str, weights: str = "auto") -> tuple[Any, Any]:
    """The causal LM of a training checkpoint (eval mode, CPU) and its character vocabulary.

    Expects ``checkpoint["lambdanet"]`` with ``model_name`` and ``model_overrides`` (as every training checkpoint
    has) and either ``vocab`` (the characters in id order, as ``lambdanet train`` stores them) or a run config whose
    ``data.name`` is an embedded corpus the vocabulary is rebuilt from.

    Raises:
        ValueError: (CheckpointError included) an unreadable or unsafe checkpoint, a model that is not a language
            model, or a vocabulary that does not fit the model.
    """
    import lambdanet
    from lambdanet.checkpoint import CheckpointError, read_checkpoint
    from lambdanet.data.text import CORPORA, CharVocab, load_corpus

    ckpt = read_checkpoint(path, weights=weights)
    meta = ckpt.meta
    if ckpt.model_name is None:
        raise CheckpointError(f"checkpoint {path} names no model; expected a `lambdanet train` checkpoint")
    model = lambdanet.create_model(ckpt.model_name, checkpoint=ckpt).eval()
    if not callable(getattr(model, "generate", None)):
        raise CheckpointError(f"checkpoint {path} holds model {ckpt.model_name!r}, not a language model")
    if meta.get("vocab") is not None:
        vocab = CharVocab(list(meta["vocab"]))
    else:
        corpus = ((meta.get("config") or {}).get("data") or {}).get("name")
        if corpus not in CORPORA:
            raise CheckpointError(f"checkpoint {path} stores neither a vocabulary nor the corpus it was trained on")
        vocab = CharVocab.from_text(load_corpus(str(corpus)))
    if len(vocab) != model.cfg.vocab_size:
        raise CheckpointError(
            f"checkpoint {path}: the vocabulary has {len(vocab)} characters but the model expects "
            f"vocab_size={model.cfg.vocab_size}"
        )
    return model, vocab


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    import torch

    try:
        if args.max_new_tokens < 0:
            raise ValueError(f"--max-new-tokens={args.max_new_tokens} must be >= 0")
        if args.top_k is not None and args.top_k < 1:
            raise ValueError(f"--top-k={args.top_k} must be a positive integer")
        if not 0 <= args.temperature < float("inf"):
            raise ValueError(f"--temperature={args.temperature} must be a finite number >= 0 (0: greedy)")
        if not args.prompt:
            raise ValueError("--prompt must not be empty")
        model, vocab = load_lm_checkpoint(args.checkpoint, args.weights)
        tokens = vocab.encode(args.prompt)[None]
        generator = torch.Generator().manual_seed(args.seed)
        out = model.generate(tokens, args.max_new_tokens, args.temperature, args.top_k, generator=generator)
    except ValueError as e:
        print(f"lambdanet generate: error: {e}", file=sys.stderr)
        return 2
    print(vocab.decode(out[0]))
    return 0
