"""Run configuration: typed dataclasses, YAML recipes and dotted command-line overrides.

A run's configuration is resolved in three layers: the dataclass defaults, a YAML recipe (a shipped recipe name
or a path), and ``--section.key value`` overrides. Unknown keys and ill-typed values are errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lambdanet.data.loader import DataConfig

__all__ = [
    "DEFAULT_RECIPE",
    "ModelSpec",
    "OptimConfig",
    "RunConfig",
    "SchedConfig",
    "SystemConfig",
    "TrainConfig",
    "apply_overrides",
    "find_recipe",
    "list_recipes",
    "load_config",
    "parse_overrides",
    "to_dict",
    "to_yaml",
]

DEFAULT_RECIPE = "digits_tiny"


@dataclass
class ModelSpec:
    """A registered model and its builder overrides (``num_classes`` is linked from the data when not given)."""

    name: str = "lambda_net_tiny"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Optimizer.

    Attributes:
        name: ``sgd``, ``adamw`` or ``rmsprop``.
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

    name: str = "sgd"
    lr: float = 0.1
    lr_base_batch: int | None = None
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    decay_norm_and_bias: bool = True
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    alpha: float = 0.9


@dataclass
class SchedConfig:
    """Learning-rate schedule, evaluated every optimizer step.

    Attributes:
        name: ``cosine``, ``multistep``, ``exponential`` or ``constant`` (after the warm-up).
        warmup_epochs: linear warm-up length in epochs (fractions allowed).
        warmup_start_factor: warm-up starts at ``lr * warmup_start_factor``.
        milestones: ``multistep``: epochs at which the rate is multiplied by ``gamma``.
        gamma: decay factor (``multistep``, ``exponential``).
        decay_every_epochs: ``exponential``: apply ``gamma`` every this many epochs.
        min_lr_factor: ``cosine``: final rate as a fraction of the peak.
    """

    name: str = "cosine"
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.0
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.1
    decay_every_epochs: float = 1.0
    min_lr_factor: float = 0.0


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
    """

    epochs: int = 30
    max_steps: int = -1
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    accumulate: int = 1
    ema_decay: float | None = None
    bn_momentum: float | None = None
    precision: str = "32-true"
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False
    val_every_epochs: int = 1
    limit_train_batches: int | float = 1.0
    log_every_steps: int = 10
    test_after_fit: bool = True


@dataclass
class SystemConfig:
    """Hardware and output.

    Attributes:
        accelerator: ``auto``, ``cpu``, ``gpu``, ...
        devices: devices per node (``auto``, a count, or a list of ids).
        num_nodes: nodes.
        strategy: ``auto``, ``ddp``, ``ddp_spawn``, ...
        sync_batchnorm: batch statistics over all processes (global-batch BN).
        out_dir: parent of run directories.
        run_name: run directory name (default ``<recipe>-<model>-<time>``; ``<recipe>-<model>-job<id>`` under
            SLURM/torchrun).
        progress_bar: show the progress bar.
        matmul_precision: ``torch.set_float32_matmul_precision`` (``highest``, ``high``, ``medium``).
        loggers: ``csv`` (``metrics.csv``, ``curves.png``), ``tensorboard``, ``wandb``, ``mlflow`` (the last two need
            the ``wandb`` / ``mlflow`` extras).
    """

    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    sync_batchnorm: bool = False
    out_dir: str = "runs"
    run_name: str | None = None
    progress_bar: bool = True
    matmul_precision: str = "high"
    loggers: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])


@dataclass
class RunConfig:
    """Everything a run needs; saved as ``config.yaml`` in the run directory and inside every checkpoint."""

    recipe: str = DEFAULT_RECIPE
    seed: int = 0
    quiet: bool = False
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    system: SystemConfig = field(default_factory=SystemConfig)

    def validate(self) -> None:
        """Raise ``ValueError`` for inconsistent or out-of-range values."""
        self.data.validate()
        if self.optim.name not in ("sgd", "adamw", "rmsprop"):
            raise ValueError(f"optim.name={self.optim.name!r}; expected 'sgd', 'adamw' or 'rmsprop'")
        if self.optim.lr <= 0:
            raise ValueError(f"optim.lr={self.optim.lr} must be > 0")
        if self.sched.name not in ("cosine", "multistep", "exponential", "constant"):
            raise ValueError(
                f"sched.name={self.sched.name!r}; expected 'cosine', 'multistep', 'exponential' or 'constant'"
            )
        if self.train.epochs < 1:
            raise ValueError(f"train.epochs={self.train.epochs} must be >= 1")
        if self.train.accumulate < 1:
            raise ValueError(f"train.accumulate={self.train.accumulate} must be >= 1")
        if self.train.ema_decay is not None and not 0 < self.train.ema_decay < 1:
            raise ValueError(f"train.ema_decay={self.train.ema_decay} must be in (0, 1) or null")
        precisions = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true")
        if str(self.train.precision) not in precisions:
            raise ValueError(f"train.precision={self.train.precision!r}; expected one of {list(precisions)}")
        if not 0 <= self.train.label_smoothing < 1:
            raise ValueError(f"train.label_smoothing={self.train.label_smoothing} must be in [0, 1)")


# ---------------------------------------------------------------- dict <-> dataclass with type checks


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain nested dicts/lists (YAML-safe)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` (with int -> float widening); raise ValueError naming ``key``."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            if arm is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arm, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"{key}={value!r} has the wrong type; expected {_type_name(tp)}")
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ValueError(f"{key}={value!r} must be a list")
        (arm,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, arm, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}={value!r} must be a mapping")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{key}={value!r} must be an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{key}={value!r} must be a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{key}={value!r} must be a string")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = f"{prefix}{unknown[0]}"
        close = difflib.get_close_matches(unknown[0], names, n=3)
        hint = f" Did you mean {', '.join(prefix + c for c in close)}?" if close else ""
        raise ValueError(f"unknown config key {key!r}; valid keys here: {', '.join(names)}.{hint}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    return cls(**kwargs)


def _merge(
    base: dict[str, Any], update: dict[str, Any], free: tuple[str, ...] = ("model.overrides",), path: str = ""
) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        key = f"{path}{k}"
        if isinstance(v, dict) and isinstance(out.get(k), dict) and key not in free:
            out[k] = _merge(out[k], v, free, f"{key}.")
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------- recipes


def _recipe_dirs() -> list[Path]:
    dirs = [Path.cwd() / "configs" / "train"]
    with contextlib.suppress(ModuleNotFoundError, TypeError):
        dirs.append(Path(str(resources.files("lambdanet.train") / "recipes")))
    return dirs


def list_recipes() -> list[str]:
    """Names of the shipped recipes (package data; ``configs/train`` in a checkout holds the same files)."""
    names: set[str] = set()
    for d in _recipe_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def find_recipe(name_or_path: str) -> Path:
    """Resolve a recipe: an existing YAML path, else a name in ``./configs/train`` or the shipped recipes."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    if path.suffix in (".yaml", ".yml") and (path.parent != Path(".") or path.is_absolute()):
        raise ValueError(f"recipe file {path} does not exist")
    stem = path.stem if path.suffix in (".yaml", ".yml") else name_or_path
    for d in _recipe_dirs():
        candidate = d / f"{stem}.yaml"
        if candidate.is_file():
            return candidate
    raise ValueError(f"unknown recipe {name_or_path!r}: not a YAML file and not one of {list_recipes()}")


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--optim.lr", "0.2", "--model.overrides.scope=7"]`` -> nested dict; values are parsed as YAML."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise ValueError(f"unexpected argument {arg!r}; overrides look like --section.key value")
        key, eq, raw = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ValueError(f"override --{key} needs a value")
            raw = args[i + 1]
            i += 1
        i += 1
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ValueError(f"cannot parse the value {raw!r} of --{key}: {e}") from e
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override --{key} conflicts with another override of {part}")
        node[parts[-1]] = value
    return out


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """A new :class:`RunConfig` with nested ``overrides`` merged in (validated)."""
    merged = _merge(to_dict(cfg), overrides)
    new = _build(RunConfig, merged, "")
    new.validate()
    return new


def load_config(recipe: str | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Resolve defaults <- recipe YAML <- overrides into a validated :class:`RunConfig`.

    Args:
        recipe: recipe name (see :func:`list_recipes`) or YAML path; default :data:`DEFAULT_RECIPE`.
        overrides: nested dict, e.g. from :func:`parse_overrides`.

    Raises:
        ValueError: unknown recipe, unknown key or ill-typed value.
    """
    path = find_recipe(recipe or DEFAULT_RECIPE)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"recipe {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path} must hold a mapping of sections, got {type(data).__name__}")
    data.setdefault("recipe", path.stem)
    merged = _merge(to_dict(RunConfig()), data)
    if overrides:
        merged = _merge(merged, overrides)
    cfg = _build(RunConfig, merged, "")
    cfg.validate()
    return cfg


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a :class:`RunConfig` saved with :func:`to_dict` (e.g. from a checkpoint)."""
    return _build(RunConfig, _merge(to_dict(RunConfig()), data), "")
