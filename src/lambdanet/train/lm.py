"""Character-level language modelling on an embedded corpus: data module, LightningModule, run and CLI.

The corpus is Python's bundled ``pydoc_data.topics.topics`` (the reference text behind ``help()`` topics, about
465,000 characters of English and code shipped with every CPython; no download). Its topics are joined in sorted
key order with blank lines; the vocabulary is the sorted set of its characters; the split is contiguous: the first
90% trains, the next 5% validates and the last 5% tests. Metrics are bits per character
(``loss / ln 2``) over every predicted character of non-overlapping evaluation windows, and training tokens per
second.

Run it with ``python -m lambdanet.train.lm -c configs/lm/lm_tiny.yaml`` (see ``docs/sequences.md``); the recipe
carries ``task: language_model`` so that ``lambdanet train`` can dispatch to :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

import lambdanet
from lambdanet.train.config import (
    ModelSpec,
    OptimConfig,
    SchedConfig,
    SystemConfig,
    TrainConfig,
    _build,
    _merge,
    parse_overrides,
    to_dict,
    to_yaml,
)
from lambdanet.train.optim import build_optimizer, lr_lambda

__all__ = [
    "CORPORA",
    "TASK",
    "CharDataModule",
    "CharVocab",
    "LMModule",
    "LMRunConfig",
    "TextDataConfig",
    "fit_lm",
    "load_corpus",
    "load_lm_config",
    "main",
    "recipe_task",
]

TASK = "language_model"
CORPORA = ("pydoc_topics",)
_LN2 = math.log(2.0)


def load_corpus(name: str = "pydoc_topics") -> str:
    """The text of an embedded corpus (no download).

    Raises:
        ValueError: an unknown corpus name.
    """
    if name != "pydoc_topics":
        raise ValueError(f"data.corpus={name!r}; expected one of {list(CORPORA)}")
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


class CharVocab:
    """Characters <-> integer ids (ids follow the sorted characters of the corpus)."""

    def __init__(self, text: str) -> None:
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> Tensor:
        """(len(text),) int64 ids; raises ValueError naming a character outside the vocabulary."""
        try:
            return torch.tensor([self.index[c] for c in text], dtype=torch.long)
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the vocabulary of {len(self)} characters") from e

    def decode(self, ids: Tensor) -> str:
        return "".join(self.chars[i] for i in ids.tolist())


@dataclass
class TextDataConfig:
    """Character-level text data.

    Attributes:
        corpus: embedded corpus name (``pydoc_topics``).
        seq_len: characters per training/evaluation window (the model predicts each from those before it).
        batch_size: windows per step.
        eval_batch_size: windows per evaluation step (default ``batch_size``).
        val_fraction: contiguous fraction after the training text used for validation.
        test_fraction: contiguous fraction at the end used for testing.
        max_eval_windows: cap on evaluation windows per split (None: all), for quick runs.
        num_workers: data-loader workers.
    """

    corpus: str = "pydoc_topics"
    seq_len: int = 128
    batch_size: int = 32
    eval_batch_size: int | None = None
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    max_eval_windows: int | None = None
    num_workers: int = 0

    def validate(self) -> None:
        if self.corpus not in CORPORA:
            raise ValueError(f"data.corpus={self.corpus!r}; expected one of {list(CORPORA)}")
        for key in ("seq_len", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"data.{key}={getattr(self, key)} must be >= 1")
        if not (0 < self.val_fraction < 0.5 and 0 < self.test_fraction < 0.5):
            raise ValueError(
                f"data.val_fraction={self.val_fraction} and data.test_fraction={self.test_fraction} must be in (0, 0.5)"
            )


@dataclass
class LMRunConfig:
    """A language-model run; sections other than ``data`` are those of :class:`lambdanet.train.config.RunConfig`."""

    task: str = TASK
    recipe: str = "lm_tiny"
    seed: int = 0
    model: ModelSpec = field(default_factory=lambda: ModelSpec(name="lambda_lm_tiny"))
    data: TextDataConfig = field(default_factory=TextDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adamw", lr=2e-3, weight_decay=0.01))
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1))
    system: SystemConfig = field(default_factory=lambda: SystemConfig(accelerator="cpu", devices=1))

    def validate(self) -> None:
        if self.task != TASK:
            raise ValueError(f"task={self.task!r}; this runner trains task={TASK!r}")
        self.data.validate()
        if self.optim.lr <= 0:
            raise ValueError(f"optim.lr={self.optim.lr} must be > 0")
        if self.train.epochs < 1:
            raise ValueError(f"train.epochs={self.train.epochs} must be >= 1")


def recipe_task(recipe: str | Path) -> str | None:
    """The ``task`` key of a recipe YAML file, or None (a missing file, or an image recipe without the key).

    ``lambdanet train`` can dispatch on it: ``if recipe_task(path) == TASK: return lambdanet.train.lm.main(argv)``.
    """
    path = Path(recipe)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None
    task = data.get("task") if isinstance(data, dict) else None
    return task if isinstance(task, str) else None


def load_lm_config(recipe: str | Path | None = None, overrides: dict[str, Any] | None = None) -> LMRunConfig:
    """Defaults <- recipe YAML (a path) <- nested overrides, validated.

    Raises:
        ValueError: a missing file, unknown keys, ill-typed values or a recipe for another task.
    """
    data: dict[str, Any] = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ValueError(f"recipe file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"recipe {path} must hold a mapping of sections")
        data.setdefault("recipe", path.stem)
    merged = _merge(to_dict(LMRunConfig()), data)
    if overrides:
        merged = _merge(merged, overrides)
    cfg = _build(LMRunConfig, merged, "")
    cfg.validate()
    return cfg


class _Windows(Dataset):
    """Windows of ``seq_len + 1`` ids starting every ``seq_len`` characters: (input, next-character target)."""

    def __init__(self, ids: Tensor, seq_len: int, limit: int | None = None) -> None:
        count = (len(ids) - 1) // seq_len
        if count < 1:
            raise ValueError(f"a split of {len(ids)} characters is shorter than one window of seq_len={seq_len} + 1")
        self.ids, self.seq_len = ids, seq_len
        self.count = count if limit is None else min(count, limit)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        chunk = self.ids[i * self.seq_len : (i + 1) * self.seq_len + 1]
        return chunk[:-1], chunk[1:]


class _ShiftedWindows(_Windows):
    """Training windows with a random phase per epoch, so that every boundary is seen over epochs."""

    def __init__(self, ids: Tensor, seq_len: int, seed: int) -> None:
        super().__init__(ids[:-seq_len], seq_len)
        self.all_ids, self.seed, self.offset = ids, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.offset = int(torch.randint(self.seq_len, (1,), generator=torch.Generator().manual_seed(self.seed + epoch)))

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        start = self.offset + i * self.seq_len
        chunk = self.all_ids[start : start + self.seq_len + 1]
        return chunk[:-1], chunk[1:]


class CharDataModule(pl.LightningDataModule):
    """Contiguous train/val/test splits of an embedded corpus as next-character windows.

    Args:
        cfg: text data configuration.
        seed: run seed (window order and phase).
    """

    def __init__(self, cfg: TextDataConfig, seed: int = 0) -> None:
        super().__init__()
        cfg.validate()
        self.cfg, self.seed = cfg, seed
        text = load_corpus(cfg.corpus)
        self.vocab = CharVocab(text)
        ids = self.vocab.encode(text)
        n_test, n_val = int(len(ids) * cfg.test_fraction), int(len(ids) * cfg.val_fraction)
        n_train = len(ids) - n_val - n_test
        self.split_ids = {
            "train": ids[:n_train],
            "val": ids[n_train : n_train + n_val],
            "test": ids[n_train + n_val :],
        }
        self.train_set = _ShiftedWindows(self.split_ids["train"], cfg.seq_len, seed)
        self.val_set = _Windows(self.split_ids["val"], cfg.seq_len, cfg.max_eval_windows)
        self.test_set = _Windows(self.split_ids["test"], cfg.seq_len, cfg.max_eval_windows)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        self.train_set.set_epoch(epoch)
        gen = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        return DataLoader(
            self.train_set,
            batch_size=self.cfg.batch_size,
            shuffle=True,
            generator=gen,
            drop_last=True,
            num_workers=self.cfg.num_workers,
        )

    def _eval_loader(self, ds: Dataset) -> DataLoader:
        return DataLoader(ds, batch_size=self.cfg.eval_batch_size or self.cfg.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)


class LMModule(pl.LightningModule):
    """Next-token training of a registered causal LM (``create_model(name, vocab_size=..., **overrides)``).

    Logs ``{split}/loss`` (nats per character), ``{split}/bpc`` (bits per character) and
    ``train/tokens_per_s`` (wall clock of the training step, forward + backward + optimizer).

    Args:
        cfg: the run configuration.
        vocab_size: characters in the vocabulary.
    """

    def __init__(self, cfg: LMRunConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        overrides = {"vocab_size": vocab_size, **cfg.model.overrides}
        self.model = lambdanet.create_model(cfg.model.name, **overrides)
        max_length = getattr(getattr(self.model, "cfg", None), "max_length", None)
        if max_length is not None and cfg.data.seq_len > max_length:
            raise ValueError(f"data.seq_len={cfg.data.seq_len} exceeds the model's max_length={max_length}")
        self._sums: dict[str, list[float]] = {}
        self._step_start = 0.0
        self.tokens_seen = 0
        self.train_seconds = 0.0

    def forward(self, tokens: Tensor) -> Tensor:
        return self.model(tokens)

    def _loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        logits = self.model(x)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, batch_size=batch[0].numel())
        self.log("train/bpc", loss.detach() / _LN2, on_step=True, batch_size=batch[0].numel())
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, batch_size=1)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        seconds = time.perf_counter() - self._step_start
        tokens = batch[0].numel()
        self.tokens_seen += tokens
        self.train_seconds += seconds
        self.log("train/tokens_per_s", tokens / max(seconds, 1e-9), on_step=True, prog_bar=True, batch_size=1)

    def _eval_step(self, split: str, batch: tuple[Tensor, Tensor]) -> None:
        loss = self._loss(batch)
        total, count = self._sums.setdefault(split, [0.0, 0.0])
        n = batch[1].numel()
        self._sums[split] = [total + loss.item() * n, count + n]

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _log_eval(self, split: str) -> None:
        total, count = self._sums.pop(split, [0.0, 0.0])
        if count:
            self.log(f"{split}/loss", total / count, prog_bar=split == "val")
            self.log(f"{split}/bpc", total / count / _LN2, prog_bar=split == "val")

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def configure_optimizers(self) -> dict[str, Any]:
        trainer = self.trainer
        optimizer = build_optimizer(self.model, self.cfg.optim, self.cfg.data.batch_size * trainer.world_size)
        total = int(trainer.estimated_stepping_batches)
        if not math.isfinite(total) or total < 1:
            total = 1
        per_epoch = total / max(1, trainer.max_epochs or self.cfg.train.epochs)
        if self.cfg.train.max_steps > 0:
            per_epoch = max(per_epoch, total / self.cfg.train.epochs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(self.cfg.sched, total, per_epoch))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lambdanet"] = {
            "model_name": self.cfg.model.name,
            "model_overrides": dict(getattr(self.model, "model_overrides", {})),
            "config": to_dict(self.cfg),
            "task": TASK,
            "version": lambdanet.__version__,
        }


def fit_lm(cfg: LMRunConfig, argv: list[str] | tuple[str, ...] = (), run_dir: str | Path | None = None) -> dict:
    """Train (validating every ``train.val_every_epochs``), then evaluate the final weights on the validation and
    test splits; writes ``config.yaml``, ``argv.txt``, ``logs/``, ``checkpoints/last.ckpt`` and ``results.json``.

    Returns:
        ``{"test/bpc", "val/bpc", "tokens_per_s", "params", "fit_seconds", ...}``.
    """
    from lightning.pytorch.loggers import CSVLogger

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = Path(run_dir or Path(cfg.system.out_dir) / f"{cfg.recipe}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    (run_dir / "argv.txt").write_text(" ".join(["lambdanet", "train", *argv]) + "\n")
    data = CharDataModule(cfg.data, cfg.seed)
    module = LMModule(cfg, data.vocab_size)
    trainer = pl.Trainer(
        default_root_dir=str(run_dir),
        max_epochs=cfg.train.epochs,
        max_steps=cfg.train.max_steps,
        accelerator=cfg.system.accelerator,
        devices=cfg.system.devices,
        precision=cfg.train.precision,  # type: ignore[arg-type]
        gradient_clip_val=cfg.train.grad_clip,
        limit_train_batches=cfg.train.limit_train_batches,
        check_val_every_n_epoch=cfg.train.val_every_epochs,
        log_every_n_steps=cfg.train.log_every_steps,
        num_sanity_val_steps=0,
        enable_progress_bar=cfg.system.progress_bar,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=CSVLogger(save_dir=str(run_dir), name="logs"),
        reload_dataloaders_every_n_epochs=1,  # a new window phase each epoch
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    fit_seconds = time.perf_counter() - start
    results: dict[str, Any] = {
        "task": TASK,
        "model": cfg.model.name,
        "params": sum(p.numel() for p in module.model.parameters()),
        "vocab_size": data.vocab_size,
        "global_step": int(trainer.global_step),
        "train_tokens": module.tokens_seen,
        "tokens_per_s": round(module.tokens_seen / max(module.train_seconds, 1e-9), 1),
        "fit_seconds": round(fit_seconds, 2),
    }
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    # Final weights on both evaluation splits (a max_steps run may stop before any epoch-end validation).
    validated = trainer.validate(module, datamodule=data, verbose=False)
    results.update({k: float(v) for k, v in (validated[0] if validated else {}).items()})
    if cfg.train.test_after_fit:
        tested = trainer.test(module, datamodule=data, verbose=False)
        results.update({k: float(v) for k, v in (tested[0] if tested else {}).items()})
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    summary = ", ".join(f"{k}={results[k]:.4f}" for k in ("val/bpc", "test/bpc") if k in results)
    print(f"done in {fit_seconds:.1f} s: {summary}, {results['tokens_per_s']:.0f} tokens/s; run directory {run_dir}")
    return results


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lambdanet.train.lm",
        description="Train a character-level causal LM on an embedded corpus (task: language_model).",
        epilog="overrides: --section.key VALUE, e.g. --model.name transformer_lm_tiny --train.max_steps 100",
    )
    p.add_argument("-c", "--config", default=None, help="recipe YAML path (e.g. configs/lm/lm_tiny.yaml)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    return p


def main(argv: list[str]) -> int:
    """Command-line entry point (also what ``lambdanet train`` should call for ``task: language_model``)."""
    args, rest = _parser().parse_known_args(argv)
    try:
        cfg = load_lm_config(args.config, parse_overrides(rest))
    except ValueError as e:
        print(f"lambdanet train: error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    try:
        fit_lm(cfg, argv)
    except (ValueError, FloatingPointError) as e:
        print(f"lambdanet train: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
