"""Run configuration: typed dataclasses, YAML recipes and dotted command-line overrides.

A run's configuration is resolved in three layers: the dataclass defaults, a YAML recipe (a shipped recipe name
or a path), and ``--section.key value`` overrides, parsed and checked by :mod:`lambdanet._config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from lambdanet._config import ConfigError, check_domains, config_parser, parse, read_yaml_mapping
from lambdanet.data.loader import DataConfig

__all__ = [
    "DEFAULT_RECIPE",
    "ConfigError",
    "ModelSpec",
    "OptimConfig",
    "RunConfig",
    "SchedConfig",
    "SystemConfig",
    "TrainConfig",
    "check_hardware",
    "config_from_dict",
    "find_recipe",
    "list_recipes",
    "load_config",
    "resolve",
    "to_dict",
    "to_yaml",
]

DEFAULT_RECIPE = "digits_tiny"


@dataclass
class ModelSpec:
    """Model.

    Attributes:
        name: registered model name (``lambdanet models`` lists them).
        overrides: keyword arguments of the model builder (``--model.overrides.scope 7``); ``num_classes`` is
            linked from the data when not given.
    """

    name: str = "lambda_net_tiny"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Optimizer.

    Attributes:
        name: optimizer.
        lr: peak learning rate (at ``lr_base_batch`` when that is set).
        lr_base_batch: if set, the peak rate is ``lr * global_batch / lr_base_batch`` (the paper's linear scaling).
        momentum: SGD / RMSProp momentum.
        nesterov: Nesterov momentum (SGD).
        weight_decay: L2 weight decay (decoupled for AdamW).
        decay_norm_and_bias: apply weight decay to normalisation weights and biases too.
        betas: AdamW betas.
        eps: AdamW / RMSProp epsilon.
        alpha: RMSProp smoothing constant.
    """

    name: Literal["sgd", "adamw", "rmsprop"] = "sgd"
    lr: Annotated[float, "must be > 0"] = 0.1
    lr_base_batch: Annotated[int | None, "must be null or >= 1 (the rate is lr * batch / this)"] = None
    momentum: Annotated[float, "must be in [0, 1]"] = 0.9
    nesterov: bool = False
    weight_decay: Annotated[float, "must be >= 0"] = 1e-4
    decay_norm_and_bias: bool = True
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: Annotated[float, "must be > 0"] = 1e-8
    alpha: Annotated[float, "must be in [0, 1]"] = 0.9


@dataclass
class SchedConfig:
    """Learning-rate schedule, evaluated every optimizer step.

    Attributes:
        name: schedule after the warm-up.
        warmup_epochs: linear warm-up length in epochs (fractions allowed).
        warmup_start_factor: warm-up starts at ``lr * warmup_start_factor``.
        milestones: ``multistep``: epochs at which the rate is multiplied by ``gamma``.
        gamma: decay factor (``multistep``, ``exponential``).
        decay_every_epochs: ``exponential``: apply ``gamma`` every this many epochs.
        min_lr_factor: ``cosine``: final rate as a fraction of the peak.
    """

    name: Literal["cosine", "multistep", "exponential", "constant"] = "cosine"
    warmup_epochs: Annotated[float, "must be >= 0"] = 0.0
    warmup_start_factor: Annotated[float, "must be in [0, 1] (the warm-up rises from this fraction of lr)"] = 0.0
    milestones: list[float] = field(default_factory=list)
    gamma: Annotated[float, "must be in (0, 1] (above 1 the rate rises, at or below 0 it is not positive)"] = 0.1
    decay_every_epochs: Annotated[float, "must be > 0"] = 1.0
    min_lr_factor: Annotated[float, "must be in [0, 1] (the final rate as a fraction of the peak)"] = 0.0


@dataclass
class TrainConfig:
    """Training loop.

    Attributes:
        epochs: training epochs.
        max_steps: stop after this many optimizer steps (-1: no limit).
        label_smoothing: cross-entropy label smoothing.
        grad_clip: clip the gradient norm to this value (None: off).
        accumulate: gradient accumulation steps.
        ema_decay: exponential moving average of the weights (None: off); evaluation uses the EMA weights.
        bn_momentum: override every BatchNorm's momentum (the paper's "BN decay 0.9999" is momentum 1e-4).
        precision: Lightning precision: ``32-true``, ``bf16-mixed``, ``16-mixed``, ``bf16-true``.
        channels_last: NHWC memory format.
        compile: ``torch.compile`` the model.
        deterministic: deterministic algorithms (slower).
        val_every_epochs: validate every this many epochs.
        limit_train_batches: batches per epoch (int) or fraction (float); for smoke runs.
        log_every_steps: logging interval.
        test_after_fit: evaluate the best checkpoint on the test split at the end.
        init_from: start from these weights (checkpoint, run or pretrained directory); a classifier head of
            another class count is dropped (fine-tuning).
    """

    epochs: Annotated[int, "must be >= 1"] = 30
    max_steps: int = -1
    label_smoothing: Annotated[float, "must be in [0, 1)"] = 0.0
    grad_clip: Annotated[float | None, "must be null or > 0"] = None
    accumulate: Annotated[int, "must be >= 1"] = 1
    ema_decay: Annotated[float | None, "must be null or in (0, 1)"] = None
    bn_momentum: Annotated[float | None, "must be null or in [0, 1]"] = None
    precision: str = "32-true"
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False
    val_every_epochs: Annotated[int, "must be >= 1"] = 1
    limit_train_batches: int | float = 1.0
    log_every_steps: Annotated[int, "must be >= 1"] = 10
    test_after_fit: bool = True
    init_from: str | None = None


@dataclass
class SystemConfig:
    """Hardware and output.

    Attributes:
        accelerator: Lightning accelerator.
        devices: devices per node (``auto``, a count, or a list of ids).
        num_nodes: nodes.
        strategy: ``auto``, ``ddp``, ``ddp_spawn``, ...
        sync_batchnorm: batch statistics over all processes (global-batch BN).
        out_dir: parent of run directories.
        run_name: run directory name (default ``<recipe>-<model>-<time>``; ``<recipe>-<model>-job<id>`` under
            SLURM/torchrun).
        progress_bar: show the progress bar.
        matmul_precision: ``torch.set_float32_matmul_precision``.
        loggers: ``csv`` (``metrics.csv``, ``curves.png``), ``tensorboard``, ``wandb``, ``mlflow`` (the last two need
            the ``wandb`` / ``mlflow`` extras).
    """

    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"] = "auto"
    devices: Any = "auto"
    num_nodes: Annotated[int, "must be >= 1"] = 1
    strategy: str = "auto"
    sync_batchnorm: bool = False
    out_dir: str = "runs"
    run_name: str | None = None
    progress_bar: bool = True
    matmul_precision: Literal["highest", "high", "medium"] = "high"
    loggers: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])


@dataclass
class RunConfig:
    """Everything a run needs; saved as ``config.yaml`` in the run directory and inside every checkpoint.

    Attributes:
        recipe: recipe name (set from the recipe file's name unless the file sets it); names the run directory.
        seed: seed of the model initialisation, the data order and the augmentation.
        quiet: no progress bar and no per-epoch lines; warnings and errors only.
    """

    recipe: str = DEFAULT_RECIPE
    seed: Annotated[int, "must be in [0, 4294967295]"] = 0
    quiet: bool = False
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    system: SystemConfig = field(default_factory=SystemConfig)

    def validate(self) -> None:
        """Raise ``ConfigError`` (a ``ValueError``; one line: key, value, rule) before anything runs for a non-finite
        number anywhere, a value outside its field's type or annotated domain, a rule of :data:`RULES` or of the data
        section. Hardware: :func:`check_hardware`."""
        _check_finite(to_dict(self))
        check_domains(self)
        for key, check, rule in RULES:
            value = functools.reduce(getattr, key.split("."), self)
            choices = check() if "{choices}" in rule else ()
            try:
                ok = value in choices if choices else bool(check(value))
            except TypeError:
                ok = False
            if not ok:
                close = difflib.get_close_matches(str(value), choices, n=3) if len(choices) > 6 else []
                raise ConfigError(f"{key}={value!r} {rule.format(choices=', '.join(close or choices[:6]))}")
        try:
            self.data.validate()
        except ValueError as e:
            raise ConfigError(" ".join(str(e).split())) from e


# ---------------------------------------------------------------------------------------------------- validation


def _devices_ok(v: Any) -> bool:
    if isinstance(v, str):  # "auto", "-1" (all), "3" (three devices), "0," or "0,2" (device ids)
        ids = [p.strip() for p in v.split(",") if p.strip()]
        one = len(ids) == 1 and ids[0].isdigit() and (int(ids[0]) >= 1 or v.strip().endswith(","))
        return v.strip() in ("auto", "-1") or one or (len(ids) > 1 and all(p.isdigit() for p in ids))
    if isinstance(v, list):
        return bool(v) and all(type(i) is int and i >= 0 for i in v)
    return type(v) is int and (v >= 1 or v == -1)


def _precisions() -> tuple[str, ...]:
    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    return typing.get_args(_PRECISION_INPUT_STR) + typing.get_args(_PRECISION_INPUT_STR_ALIAS)


def _strategies() -> tuple[str, ...]:
    from lightning.pytorch.strategies import StrategyRegistry

    return ("auto", *StrategyRegistry.available_strategies())


_BATCHES = "a batch count >= 1 or a fraction in (0, 1]"
# (key, check, rule): check(value) is true for a good value; a rule with "{choices}" takes check() = the choices.
# Ranges are stated on the field (``lr: Annotated[float, "must be > 0"]``), names as ``Literal`` types; each key exists.
RULES: list[tuple[str, Any, str]] = [
    ("optim.betas", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "must be two numbers in [0, 1)"),
    ("sched.milestones", lambda v: all(m >= 0 for m in v), "must be epochs >= 0"),
    ("train.max_steps", lambda v: v == -1 or v > 0, "must be -1 (no limit) or a positive step count"),
    ("train.limit_train_batches", lambda v: v >= 1 if isinstance(v, int) else 0 < v <= 1, f"must be {_BATCHES}"),
    ("train.precision", _precisions, "is not a Lightning precision; expected e.g. {choices}"),
    ("data.eval_batch_size", lambda v: v is None or v >= 1, "must be null or >= 1"),
    ("data.image_size", lambda v: v is None or v >= 1, "must be null or >= 1"),
    ("system.devices", _devices_ok, "expected 'auto', a count >= 1 (-1: all), or a non-empty list of device ids"),
    ("system.strategy", _strategies, "is not a Lightning strategy; did you mean {choices}?"),
    ("system.out_dir", lambda v: bool(v) and not Path(v).is_file(), "must name a folder (it is empty or a file)"),
    (
        "system.run_name",
        lambda v: v is None or (v not in ("", ".", "..") and not {"/", "\\"} & set(v)),
        "must be a plain folder name (no separators, '.', '..' or root)",
    ),
]


def _check_finite(value: Any, key: str = "") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{key}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} must be a finite number")


def check_hardware(cfg: RunConfig) -> None:
    """Raise ``ConfigError`` when ``system.accelerator`` names hardware this machine does not have."""
    import torch
    from lightning.pytorch.accelerators import AcceleratorRegistry

    acc, devices, count = cfg.system.accelerator, cfg.system.devices, torch.cuda.device_count()
    have = {name: AcceleratorRegistry[name]["accelerator"].is_available() for name in ("cuda", "mps", "tpu")}
    if not {**have, "gpu": have["cuda"] or have["mps"]}.get(acc, True):
        raise ConfigError(f"system.accelerator={acc!r} but this machine has no such device; use 'cpu' or 'auto'")
    if acc in ("cuda", "gpu") and count and isinstance(devices, int) and devices > count:
        raise ConfigError(f"system.devices={devices} but this machine has {count} CUDA device(s)")


# ---------------------------------------------------------------------------------------------------- conversion


to_dict = dataclasses.asdict  # a config dataclass as plain nested dicts and lists (YAML-safe)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


@functools.cache
def _run_parser() -> Any:
    return config_parser(RunConfig, prog="lambdanet train", description="Run configuration.")


def resolve(layers: list[Any], argv: list[str] | None = None, *, check: bool = True, parser: Any = None) -> RunConfig:
    """Defaults <- each layer (a mapping or ``(source, mapping)``) <- the command line ``argv`` (``--section.key
    value`` words; ``parser``: one of :class:`RunConfig` with further options, as ``lambdanet train`` has). Raises
    ``ConfigError``: unknown key, ill-typed value or (``check``) a value outside its domain."""
    parser = parser or _run_parser()
    init = parser.instantiate(parse(parser, layers, argv))  # the sections' dataclasses have no checks of their own
    cfg = RunConfig(**{f.name: init[f.name] for f in dataclasses.fields(RunConfig)})
    if check:
        cfg.validate()
    return cfg


# ---------------------------------------------------------------------------------------------------- recipes


_RECIPES = Path(str(resources.files("lambdanet.train") / "recipes"))


def list_recipes() -> list[str]:
    """Names of the shipped recipes (package data under ``lambdanet/train/recipes``)."""
    return sorted(p.stem for p in _RECIPES.glob("*.yaml"))


def find_recipe(name_or_path: str) -> Path:
    """Resolve a recipe: an existing YAML path, else the name of a shipped recipe."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        raise ConfigError(f"recipe file {str(path)!r} does not exist")
    candidate = _RECIPES / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    raise ConfigError(f"unknown recipe {name_or_path!r}: not a YAML file and not one of {list_recipes()}")


def recipe_layer(name_or_path: str) -> tuple[str, dict[str, Any]]:
    """``("recipe <path>", mapping)`` of a recipe (bounded YAML); ``recipe`` is the file's name unless it sets it."""
    path = find_recipe(name_or_path)
    data = read_yaml_mapping(path, "recipe")
    data.setdefault("recipe", path.stem)
    return f"recipe {path}", data


def load_config(recipe: str | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Resolve defaults <- recipe YAML <- overrides into a validated :class:`RunConfig`.

    Args:
        recipe: recipe name (see :func:`list_recipes`) or YAML path; default :data:`DEFAULT_RECIPE`.
        overrides: nested dict, e.g. ``{"optim": {"lr": 0.05}, "model": {"overrides": {"scope": 7}}}``
            (a mapping for ``model.overrides`` updates the recipe's).

    Raises:
        ValueError: unknown recipe, unknown key, ill-typed or out-of-range value (one line).
    """
    return resolve([recipe_layer(recipe or DEFAULT_RECIPE), overrides or {}])


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a :class:`RunConfig` saved with :func:`to_dict` (e.g. from a checkpoint); keys it lacks default."""
    return resolve([data], check=False)
