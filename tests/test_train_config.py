"""Run configuration: recipes, dotted overrides, --help, --print-config, validation, YAML limits, schedules and the
recipes' stated facts."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import lambdanet
from lambdanet._config import MAX_YAML_NODES, config_parser, field_types, load_yaml, parse
from lambdanet.cli import train as cli_train
from lambdanet.train.config import (
    RULES,
    ConfigError,
    RunConfig,
    check_hardware,
    config_from_dict,
    find_recipe,
    list_recipes,
    load_config,
    to_dict,
)
from lambdanet.train.optim import lr_lambda, peak_lr

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_RECIPES = ROOT / "src" / "lambdanet" / "train" / "recipes"
INF, NAN = float("inf"), float("nan")


def _bomb(levels: int = 9) -> str:
    """A "billion laughs" document: 9 levels of 9 aliases, about 500 bytes, 9**9 strings when expanded."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "\n".join([*lines, f"model:\n  overrides:\n    x: *a{levels}"]) + "\n"


def _train(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli_train.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_default_recipe_is_the_digits_run() -> None:
    cfg = load_config()
    assert cfg.recipe == "digits_tiny"
    assert cfg.data.name == "digits"
    assert cfg.model.name == "lambda_net_tiny"
    assert cfg.model.overrides == {}  # in_chans and num_classes come from the data
    assert cfg.quiet is False
    assert [f.name for f in dataclasses.fields(RunConfig)][:3] == ["recipe", "seed", "quiet"]


def test_python_overrides_are_typed_and_merge_model_overrides() -> None:
    over = {"optim": {"lr": 0.5}, "train": {"epochs": 3}, "model": {"overrides": {"scope": 3}}, "data": {"hflip": True}}
    cfg = load_config("digits_tiny", over)
    assert (cfg.optim.lr, cfg.train.epochs, cfg.data.hflip) == (0.5, 3, True)
    assert cfg.model.overrides == {"scope": 3}  # free-form overrides update the recipe's
    with pytest.raises(ValueError, match=r"^unknown key 'optim.lrr'; did you mean optim.lr"):
        load_config(None, {"optim": {"lrr": 1}})
    with pytest.raises(ValueError, match=r"^train.epochs=many: expected int$"):
        load_config(None, {"train": {"epochs": "many"}})
    with pytest.raises(ValueError, match=r"^optim.name=lamb: expected one of 'sgd', 'adamw', 'rmsprop'$"):
        load_config(None, {"optim": {"name": "lamb"}})
    cfg.sched.name = "cosin"  # set in Python: validate() checks the Literal too
    with pytest.raises(ValueError, match=r"^sched.name='cosin': expected one of 'cosine', 'multistep'"):
        cfg.validate()
    with pytest.raises(ValueError, match=r"^optim=3 must be a mapping"):
        load_config(None, {"optim": 3})
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        find_recipe("nope")
    with pytest.raises(ValueError, match="does not exist"):
        find_recipe("missing/recipe.yaml")


def test_help_lists_every_key_with_type_default_and_docstring(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _train(["--help"], capsys)
    assert code == 0
    flat = " ".join(out.split())
    assert "``" not in out  # reST markup of the docstrings is not shown raw
    for key in field_types(RunConfig):
        assert f"--{key} " in flat, key
    assert "--optim.lr LR peak learning rate (at `lr_base_batch` when that is set). (type: float, default: 0.1)" in flat
    assert "--quiet {true,false} no progress bar" in flat
    assert "--model.name NAME registered model name" in flat
    assert "--data.batch_size BATCH_SIZE samples per device and step. (type: int, default: 64)" in flat
    for option in ("-c CONFIG", "--print-config", "--list-recipes", "--resume"):
        assert option in flat


def test_list_recipes_shows_model_data_length_and_description(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_train.main(["--list-recipes"]) == 0
    rows = {line.split()[0]: line.split(maxsplit=4)[1:] for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(rows) == set(list_recipes())
    assert rows["lm_tiny"][:3] == ["lambda_lm_tiny", "pydoc_topics", "2"]
    assert rows["digits_tiny"][:3] == ["lambda_net_tiny", "digits", "20"]
    assert "leaderj1001/LambdaNetworks" in rows["cifar10_lambda_resnet18"][-1]


def test_cli_dotted_overrides_and_print_config_round_trip(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["-c", "digits_tiny", "--print-config", "--optim.lr", "0.25", "--train.epochs=3", "--quiet"]
    argv += ["--model.overrides.scope", "3", "--data.hflip", "true", "--system.run_name", "r", "--seed", "7"]
    argv += ["--sched.milestones", "[1, 2.5]", "--train.ema_decay", "0.99", "--system.devices", "[0]"]
    code, out, err = _train(argv, capsys)
    assert code == 0, err
    printed = yaml.safe_load(out)
    cfg = config_from_dict(printed)
    assert (cfg.optim.lr, cfg.train.epochs, cfg.quiet, cfg.data.hflip, cfg.system.run_name, cfg.seed) == (
        0.25,
        3,
        True,
        True,
        "r",
        7,
    )
    assert cfg.model.overrides == {"scope": 3}
    assert (cfg.sched.milestones, cfg.train.ema_decay, cfg.system.devices) == ([1.0, 2.5], 0.99, [0])
    assert to_dict(cfg) == printed
    saved = tmp_path / "printed.yaml"
    saved.write_text(out)
    code, again, _ = _train(["-c", str(saved), "--print-config"], capsys)
    assert code == 0 and again == out  # the printed YAML is a recipe that resolves to itself
    code, out, err = _train(["--print-config", "-c", "synthetic_smoke", "--list-recipes", "false"], capsys)
    assert code == 0 and yaml.safe_load(out)["recipe"] == "synthetic_smoke", err  # a bare flag takes no value


def test_cli_unknown_key_is_one_line_with_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _train(["--print-config", "--optim.lrr", "1"], capsys)
    assert code == 2
    assert err == "lambdanet train: error: unknown key 'optim.lrr'; did you mean optim.lr, optim.alpha, optim.eps?\n"
    code, _, err = _train(["--nope.x", "1"], capsys)
    assert code == 2 and err.count("\n") == 1 and "unknown key 'nope.x'" in err
    code, _, err = _train(["--train.epochs", "1.5"], capsys)
    assert code == 2 and err == "lambdanet train: error: train.epochs=1.5: expected int\n"


VALIDATION = [
    ({"data": {"root": "/data/cifar"}}, r"data.root='/data/cifar' is not used by data.name='synthetic'"),
    ({"data": {"name": "digits", "root": "x"}}, r"data.root='x' is not used by data.name='digits'"),
    ({"sched": {"gamma": 1.5}}, r"sched.gamma=1.5 must be in \(0, 1\] \(above 1 the rate rises"),
    ({"sched": {"gamma": 0.0}}, r"sched.gamma=0.0 must be in \(0, 1\]"),
    ({"sched": {"gamma": -0.5}}, r"sched.gamma=-0.5"),
    ({"sched": {"warmup_start_factor": -0.1}}, r"sched.warmup_start_factor=-0.1 must be in \[0, 1\]"),
    ({"sched": {"warmup_start_factor": 2.0}}, r"sched.warmup_start_factor=2.0"),
    ({"sched": {"min_lr_factor": -1.0}}, r"sched.min_lr_factor=-1.0 must be in \[0, 1\]"),
    ({"sched": {"min_lr_factor": 1.5}}, r"sched.min_lr_factor=1.5"),
    ({"sched": {"decay_every_epochs": 0}}, r"sched.decay_every_epochs=0.0 must be > 0"),
    ({"sched": {"warmup_epochs": -1}}, r"sched.warmup_epochs=-1.0 must be >= 0"),
    ({"sched": {"milestones": [3, -1]}}, r"sched.milestones=\[3.0, -1.0\] must be epochs >= 0"),
    ({"optim": {"lr_base_batch": 0}}, r"optim.lr_base_batch=0 must be null or >= 1"),
    ({"optim": {"lr_base_batch": -256}}, r"optim.lr_base_batch=-256"),
    ({"optim": {"lr": 0}}, r"optim.lr=0.0 must be > 0"),
    ({"optim": {"weight_decay": -1e-4}}, r"optim.weight_decay=-0.0001 must be >= 0"),
    ({"optim": {"betas": [0.9]}}, r"optim.betas=\[0.9\] must be two numbers in \[0, 1\)"),
    ({"optim": {"betas": [0.9, 0.99, 0.999]}}, r"optim.betas="),
    ({"train": {"grad_clip": NAN}}, r"train.grad_clip=nan must be a finite number"),
    ({"optim": {"lr": INF}}, r"optim.lr=inf must be a finite number"),
    ({"model": {"overrides": {"drop_rate": -INF}}}, r"model.overrides.drop_rate=-inf must be a finite number"),
    ({"sched": {"milestones": [1, INF]}}, r"sched.milestones\[1\]=inf must be a finite number"),
    ({"train": {"max_steps": 0}}, r"train.max_steps=0 must be -1 \(no limit\) or a positive step count$"),
    ({"train": {"max_steps": -2}}, r"train.max_steps=-2 must be -1"),
    ({"train": {"limit_train_batches": 0}}, r"train.limit_train_batches=0 must be a batch count >= 1 or a fraction"),
    ({"train": {"limit_train_batches": 0.0}}, r"train.limit_train_batches=0.0 must be a batch count"),
    ({"train": {"limit_train_batches": 1.5}}, r"train.limit_train_batches=1.5 must be a batch count"),
    ({"train": {"bn_momentum": 1.5}}, r"train.bn_momentum=1.5 must be null or in \[0, 1\]"),
    ({"train": {"bn_momentum": -0.1}}, r"train.bn_momentum=-0.1"),
    ({"train": {"epochs": 0}}, r"train.epochs=0 must be >= 1"),
    ({"train": {"val_every_epochs": 0}}, r"train.val_every_epochs=0 must be >= 1"),
    ({"train": {"log_every_steps": 0}}, r"train.log_every_steps=0 must be >= 1"),
    ({"train": {"accumulate": 0}}, r"train.accumulate=0 must be >= 1"),
    ({"train": {"precision": "fp8"}}, r"train.precision='fp8' is not a Lightning precision"),
    ({"data": {"batch_size": 0}}, r"data.batch_size=0 must be >= 1"),
    ({"data": {"eval_batch_size": -1}}, r"data.eval_batch_size=-1 must be null or >= 1"),
    ({"data": {"image_size": 0}}, r"data.image_size=0 must be null or >= 1"),
    ({"system": {"matmul_precision": "low"}}, r"system.matmul_precision=low: expected one of 'highest', 'high'"),
    ({"system": {"run_name": "../escape"}}, r"system.run_name='../escape' must be a plain folder name"),
    ({"system": {"run_name": "a/b"}}, r"system.run_name='a/b'"),
    ({"system": {"run_name": "/tmp/x"}}, r"system.run_name='/tmp/x'"),
    ({"system": {"run_name": ".."}}, r"system.run_name='..'"),
    ({"system": {"devices": 0}}, r"system.devices=0 expected 'auto', a count >= 1"),
    ({"system": {"devices": []}}, r"system.devices=\[\]"),
    ({"system": {"strategy": "dpp"}}, r"system.strategy='dpp' is not a Lightning strategy; did you mean ddp"),
    ({"system": {"accelerator": "gpuu"}}, r"system.accelerator=gpuu: expected one of 'auto', 'cpu', 'gpu'"),
    ({"system": {"num_nodes": 0}}, r"system.num_nodes=0 must be >= 1"),
    ({"seed": -1}, r"seed=-1 must be in \[0, 4294967295\]"),
    ({"seed": 2**32}, r"seed=4294967296 must be in"),
    ({"optim": {"momentum": 2}}, r"optim.momentum=2.0 must be in \[0, 1\]"),
    ({"data": {"max_bad_fraction": -1}}, r"data.max_bad_fraction=-1.0 must be in \[0, 1\]"),
    ({"data": {"randaugment_layers": -1}}, r"data.randaugment_layers=-1 must be >= 0"),
    ({"data": {"randaugment_magnitude": 1000}}, r"data.randaugment_magnitude=1000.0 must be in \[0, 30\]"),
    ({"data": {"crop_pct": 0}}, r"data.crop_pct=0.0 must be in \(0, 1\]"),
    ({"data": {"crop_pct": 2}}, r"data.crop_pct=2.0 must be in \(0, 1\]"),
    ({"data": {"test_fraction": -0.1}}, r"data.test_fraction=-0.1 must be in \[0, 1\]"),
    ({"data": {"min_crop_scale": 0}}, r"data.min_crop_scale=0.0 must be in \(0, 1\]"),
]


@pytest.mark.parametrize(("overrides", "message"), VALIDATION, ids=[m.split("=")[0] for _, m in VALIDATION])
def test_validation_rule(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message) as info:
        load_config("synthetic_smoke", overrides)
    assert "\n" not in str(info.value)


def test_every_rule_names_an_existing_key_and_the_defaults_pass() -> None:
    keys = field_types(RunConfig)
    assert {key for key, _, _ in RULES} <= set(keys)
    RunConfig().validate()
    for name in list_recipes():
        load_config(name)  # every shipped recipe passes every rule


def test_out_dir_that_is_a_file_and_hardware(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "runs"
    afile.write_text("")
    with pytest.raises(ValueError, match=r"system.out_dir=.*must name a folder"):
        load_config(None, {"system": {"out_dir": str(afile)}})
    if not torch.cuda.is_available():
        for acc in ("gpu", "cuda"):
            with pytest.raises(ValueError, match=f"system.accelerator='{acc}' but this machine has no such device"):
                check_hardware(load_config(None, {"system": {"accelerator": acc}}))
        code, _, err = _train(["--system.accelerator", "cuda", "--train.epochs", "1"], capsys)
        assert code == 2 and err.count("\n") == 1 and "no such device" in err
    code, _, err = _train(["--system.devices", "0"], capsys)
    assert code == 2 and "system.devices=0" in err


def test_alias_bomb_is_refused_fast(tmp_path: Path) -> None:
    bomb = _bomb()
    assert len(bomb) < 1024
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=f"more than {MAX_YAML_NODES} nodes through aliases"):
        load_yaml(bomb)
    assert time.perf_counter() - start < 0.5
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(bomb)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"^recipe .*bomb.yaml: the document expands"):
        load_config(str(recipe))
    assert time.perf_counter() - start < 0.5
    with pytest.raises(ValueError, match="recursive alias"):
        load_yaml("a: &a [*a]")
    assert load_yaml("base: &b {x: 1}\nother: *b\nsmall: 1e-4\n") == {
        "base": {"x": 1},
        "other": {"x": 1},
        "small": 1e-4,
    }


def test_values_naming_classes_stay_data_and_import_nothing() -> None:
    spec = {"class_path": "this.Zen", "init_args": {"x": 1}}  # importing `this` would print the Zen of Python
    cfg = load_config(None, {"model": {"overrides": {"x": spec}}})
    assert cfg.model.overrides["x"] == spec
    with pytest.raises(ValueError, match=r"^system.devices=\{'class_path': 'this.Zen'"):
        load_config(None, {"system": {"devices": spec}})
    assert "this" not in sys.modules


def test_empty_or_malformed_recipe_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "empty.yaml"
    recipe.write_text("# nothing\n")
    with pytest.raises(ValueError, match=r"recipe .*empty.yaml is empty"):
        load_config(str(recipe))
    recipe.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config(str(recipe))
    recipe.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ValueError, match=r"^recipe .*empty.yaml: unknown key 'optim.lrr'; did you mean optim.lr"):
        load_config(str(recipe))
    recipe.write_text("train:\n  epochs: ten\n")
    with pytest.raises(ValueError, match=r"^recipe .*empty.yaml: train.epochs=ten: expected int$"):
        load_config(str(recipe))
    recipe.write_text("optim: {lr: [\n")
    code, _, err = _train(["-c", str(recipe)], capsys)
    assert code == 2 and err.count("\n") == 1 and "is not valid YAML" in err


@dataclasses.dataclass
class Inner:
    """Inner.

    Attributes:
        size: a size.
    """

    size: int = 1
    names: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Outer:
    inner: Inner = dataclasses.field(default_factory=Inner)
    flag: bool = False
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def test_parsing_is_generic_over_dataclasses() -> None:
    parser = config_parser(Outer, prog="x", description="x")
    ns = parse(
        parser, [{"inner": {"size": 2}, "extra": {"a": 1}}], ["--flag", "--inner.names", "p", "q", "--extra.b", "2"]
    )
    assert (ns.inner.size, ns.flag, ns.inner.names, ns.extra) == (2, True, ["p", "q"], {"a": 1, "b": 2})
    with pytest.raises(ConfigError, match=r"unknown key 'inner.sise'; did you mean inner.size"):
        parse(parser, [], ["--inner.sise", "3"])


def test_cli_exit_status_in_a_subprocess() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from lambdanet.cli import main; sys.exit(main())",
            "train",
            "--print-config",
            "--sched.gamma",
            "1.5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lambdanet train: error: sched.gamma=1.5 must be in (0, 1]")


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
