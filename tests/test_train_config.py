"""Run configuration: recipes, dotted overrides, --print-config, schedules and the recipes' stated facts."""

from __future__ import annotations

import filecmp
import math
from pathlib import Path

import pytest
import yaml

import lambdanet
from lambdanet.cli import train as cli_train
from lambdanet.train.config import (
    RunConfig,
    config_from_dict,
    find_recipe,
    list_recipes,
    load_config,
    parse_overrides,
    to_dict,
)
from lambdanet.train.optim import lr_lambda, peak_lr

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_RECIPES = ROOT / "src" / "lambdanet" / "train" / "recipes"
CONFIG_RECIPES = ROOT / "configs" / "train"


def test_default_recipe_is_the_digits_run() -> None:
    cfg = load_config()
    assert cfg.recipe == "digits_tiny"
    assert cfg.data.name == "digits"
    assert cfg.model.name == "lambda_net_tiny"
    assert cfg.model.overrides == {}  # in_chans and num_classes come from the data


def test_overrides_are_typed_and_unknown_keys_fail() -> None:
    over = parse_overrides(
        ["--optim.lr", "0.5", "--train.epochs=3", "--model.overrides.scope", "3", "--data.hflip", "true"]
    )
    cfg = load_config("digits_tiny", over)
    assert cfg.optim.lr == 0.5
    assert cfg.train.epochs == 3
    assert cfg.data.hflip is True
    assert cfg.model.overrides == {"scope": 3}
    with pytest.raises(ValueError, match=r"unknown config key 'optim.lrr'.*Did you mean optim.lr"):
        load_config(None, parse_overrides(["--optim.lrr", "1"]))
    with pytest.raises(ValueError, match=r"train.epochs='many' must be an integer"):
        load_config(None, parse_overrides(["--train.epochs", "many"]))
    with pytest.raises(ValueError, match=r"optim.name='lamb'"):
        load_config(None, parse_overrides(["--optim.name", "lamb"]))
    with pytest.raises(ValueError, match="needs a value"):
        parse_overrides(["--optim.lr"])
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        find_recipe("nope")


def test_print_config_prints_the_resolved_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_train.main(["--print-config", "--optim.lr", "0.25", "--train.ema_decay", "0.99"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    cfg = config_from_dict(printed)
    assert cfg.optim.lr == 0.25
    assert cfg.train.ema_decay == 0.99
    assert to_dict(cfg) == printed
    assert cli_train.main(["--print-config", "--nope.x", "1"]) == 2
    assert "unknown config key 'nope'" in capsys.readouterr().err


def test_shipped_recipes_are_package_data_identical_to_configs() -> None:
    names = sorted(p.stem for p in PACKAGE_RECIPES.glob("*.yaml"))
    assert names == sorted(p.stem for p in CONFIG_RECIPES.glob("*.yaml"))
    for name in names:
        assert filecmp.cmp(PACKAGE_RECIPES / f"{name}.yaml", CONFIG_RECIPES / f"{name}.yaml", shallow=False), name
    assert set(names) <= set(list_recipes())


@pytest.mark.parametrize("name", sorted(p.stem for p in PACKAGE_RECIPES.glob("*.yaml")))
def test_recipe_loads_and_builds_its_model(name: str) -> None:
    cfg = load_config(name)
    cfg.validate()
    if cfg.model.name not in lambdanet.list_models():
        pytest.skip(f"model {cfg.model.name!r} is not registered (yet)")
    info = lambdanet.model_info(cfg.model.name)
    assert info.num_classes >= 1
    from lambdanet.data.loader import DATASETS, DataInfo
    from lambdanet.train.module import model_overrides

    num_classes = {"cifar10": 10, "cifar100": 100, "imagefolder": 1000, "digits": 10}.get(cfg.data.name, 10)
    task, size = DATASETS[cfg.data.name].task, cfg.data.size
    shape = (cfg.data.seq_len,) if task == "language_model" else (1 if cfg.data.name == "digits" else 3, size, size)
    overrides = model_overrides(cfg, DataInfo(task, num_classes, shape))
    # building the big ImageNet models costs seconds; checking the overrides against the builder is enough
    import inspect

    from lambdanet.models._registry import _MODELS

    params = inspect.signature(_MODELS[cfg.model.name]).parameters
    if cfg.model.name in ("lambda_net_tiny", "lambda_mobilenet_v1_cifar_5"):
        model = lambdanet.create_model(cfg.model.name, **overrides)
        assert model.model_name == cfg.model.name
    else:
        assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) or set(overrides) <= set(params)


def test_seed_and_paper_recipes_state_the_documented_hyperparameters() -> None:
    mob = load_config("cifar100_lambda_mobilenet")  # seed 000
    assert (mob.optim.name, mob.optim.nesterov, mob.optim.lr, mob.optim.weight_decay) == ("sgd", True, 0.1, 1e-4)
    assert (mob.sched.name, mob.sched.milestones, mob.train.epochs, mob.data.batch_size) == (
        "multistep",
        [30.0, 60.0, 90.0],
        120,
        128,
    )
    d3 = load_config("imagenet_lambda_resnet50")  # seed 003
    assert (d3.optim.lr, d3.optim.momentum, d3.optim.weight_decay, d3.sched.name) == (0.1, 0.9, 1e-4, "cosine")
    assert (d3.train.epochs, d3.train.label_smoothing) == (130, 0.1)
    assert d3.data.batch_size * d3.system.devices == 256
    p90 = load_config("imagenet_lambda_resnet50_90ep")  # paper 8.1
    global_batch = p90.data.batch_size * p90.system.devices * p90.system.num_nodes
    assert global_batch == 4096
    assert peak_lr(p90.optim, global_batch) == pytest.approx(1.6)
    assert (p90.sched.warmup_epochs, p90.train.ema_decay, p90.train.label_smoothing, p90.train.epochs) == (
        5,
        0.9999,
        0.1,
        90,
    )
    p350 = load_config("imagenet_lambda_resnet_rs50_350ep")  # paper 8.2 / Table 20
    assert (p350.optim.weight_decay, p350.data.randaugment_layers, p350.data.randaugment_magnitude) == (4e-5, 2, 10)
    assert p350.model.overrides == {"drop_rate": 0.2, "drop_path_rate": 0.0}
    assert p350.train.epochs == 350
    r18 = load_config("cifar10_lambda_resnet18")  # seed 001
    assert r18.model.name == "lambda_resnet18_cifar"
    assert r18.data.name == "cifar10"


def test_schedules() -> None:
    cfg = RunConfig().sched
    cfg.warmup_epochs, cfg.name = 2, "cosine"
    f = lr_lambda(cfg, total_steps=100, steps_per_epoch=10)
    assert f(0) == 0
    assert f(10) == pytest.approx(0.5)
    assert f(20) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5 * (1 + math.cos(math.pi * 40 / 80)))
    assert f(100) == pytest.approx(0.0)
    cfg.warmup_epochs, cfg.name, cfg.milestones, cfg.gamma = 0, "multistep", [3, 6], 0.1
    f = lr_lambda(cfg, 100, 10)
    assert [f(29), f(30), f(59), f(60)] == pytest.approx([1, 0.1, 0.1, 0.01])
    cfg.name, cfg.gamma, cfg.decay_every_epochs = "exponential", 0.99, 3
    f = lr_lambda(cfg, 100, 10)
    assert [f(29), f(30), f(61)] == pytest.approx([1, 0.99, 0.99**2])
    opt = RunConfig().optim
    opt.lr, opt.lr_base_batch = 0.1, 256
    assert peak_lr(opt, 1024) == pytest.approx(0.4)
    opt.lr_base_batch = None
    assert peak_lr(opt, 1024) == 0.1
