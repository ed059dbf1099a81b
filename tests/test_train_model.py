"""``lambda_net_tiny``, the small lambda network of the default training run."""

from __future__ import annotations

import pytest
import torch

import lambdanet
from lambdanet.layers import LambdaLayer


@pytest.mark.parametrize(("in_chans", "size"), [(1, 8), (3, 32), (3, 9)])
def test_forward_backward_reaches_every_parameter(in_chans: int, size: int) -> None:
    model = lambdanet.create_model("lambda_net_tiny", in_chans=in_chans, num_classes=7).train()
    out = model(torch.randn(2, in_chans, size, size))
    assert out.shape == (2, 7) and out.isfinite().all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_layout_and_pinned_parameter_count() -> None:
    model = lambdanet.create_model("lambda_net_tiny")
    lambdas = [m for m in model.modules() if isinstance(m, LambdaLayer)]
    assert len(lambdas) == 2  # stages 2 and 3
    assert sum(p.numel() for p in model.parameters()) == 227_882  # pinned: change deliberately
    assert model.model_name == "lambda_net_tiny"
    meta = lambdanet.model_info("lambda_net_tiny")
    assert meta.input_size == (3, 32, 32) and not meta.fixed_input_size


def test_eval_is_deterministic_and_batch_independent() -> None:
    model = lambdanet.create_model("lambda_net_tiny", in_chans=1).eval()
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    out = model(x)
    assert torch.equal(out, model(x))
    (grad,) = torch.autograd.grad(out[0].sum(), x)
    assert grad[1:].abs().max() == 0


def test_bad_layout_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"lambda_stages=\(3,\) has indices outside 0..2"):
        lambdanet.create_model("lambda_net_tiny", lambda_stages=(3,))
    with pytest.raises(ValueError, match="unknown override"):
        lambdanet.create_model("lambda_net_tiny", depth=3)


# ---------------------------------------------------------------- the training module: options that change the maths


def _run_config(**sections: dict) -> object:
    from lambdanet.train.config import load_config

    return load_config("digits_tiny", sections)


def test_model_is_fitted_to_the_data_and_mismatches_are_one_line_errors() -> None:
    from lambdanet.data.loader import DataInfo
    from lambdanet.train.module import build_model

    rgb = DataInfo("classification", 5, (3, 16, 16))
    model = build_model(_run_config(), rgb)
    assert (model.model_overrides["in_chans"], model.model_overrides["num_classes"]) == (3, 5)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    with pytest.raises(ValueError, match=r"^model.overrides.in_chans=1 \(recipe digits_tiny\) but data.name='digits'"):
        build_model(_run_config(model={"overrides": {"in_chans": 1}}), rgb)
    text = DataInfo("language_model", 40, (16,))
    with pytest.raises(ValueError, match=r"is a classification model but data\.name='digits' is language_model data"):
        build_model(_run_config(), text)
    lm = build_model(_run_config(model={"name": "transformer_lm_tiny", "overrides": {"max_length": 16}}), text)
    assert lm.model_overrides["vocab_size"] == 40
    with pytest.raises(ValueError, match=r"data.seq_len=17 exceeds the max_length=16 of transformer_lm_tiny"):
        build_model(
            _run_config(model={"name": "transformer_lm_tiny", "overrides": {"max_length": 16}}),
            DataInfo("language_model", 40, (17,)),
        )


def test_bn_momentum_is_applied_to_every_batch_norm() -> None:
    from lambdanet.data.loader import DataInfo
    from lambdanet.train.module import build_model

    model = build_model(_run_config(train={"bn_momentum": 1e-4}), DataInfo("classification", 10, (1, 8, 8)))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(m.momentum == 1e-4 for m in norms)


def test_ema_update_keeps_decay_of_the_old_value() -> None:
    from lambdanet.data.loader import DataInfo
    from lambdanet.train.module import LambdaModule, ema_callback

    cfg = _run_config(train={"ema_decay": 0.9})
    module = LambdaModule(cfg, DataInfo("classification", 10, (1, 8, 8)))
    assert ema_callback(_run_config()) is None
    callback = ema_callback(cfg)
    callback.setup(None, module, "fit")
    callback._average_model.update_parameters(module)  # the first update copies the weights
    old = [p.detach().clone() for p in module.model.parameters()]
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(1.0)
    callback._average_model.update_parameters(module)
    averaged = callback._average_model.module.model.parameters()
    for e, o, p in zip(averaged, old, module.model.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * o + 0.1 * p, rtol=0, atol=1e-6)


@pytest.mark.parametrize("task", ["classification", "language_model"])
def test_training_loss_uses_label_smoothing(task: str) -> None:
    from types import SimpleNamespace

    import torch.nn.functional as F

    from lambdanet.data.loader import DataInfo
    from lambdanet.train.module import LambdaModule

    torch.manual_seed(0)
    if task == "classification":
        cfg = _run_config(train={"label_smoothing": 0.1})
        module = LambdaModule(cfg, DataInfo(task, 10, (1, 8, 8)))
        x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    else:
        lm = {"name": "lambda_lm_tiny", "overrides": {"dim": 16, "depth": 1, "heads": 2, "dim_k": 4, "max_length": 8}}
        module = LambdaModule(_run_config(model=lm, train={"label_smoothing": 0.1}), DataInfo(task, 7, (8,)))
        x, y = torch.randint(0, 7, (2, 8)), torch.randint(0, 7, (2, 8))
    module.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    module.optimizers = lambda: SimpleNamespace(param_groups=[{"lr": 0.1}])  # type: ignore[method-assign]
    module.eval()  # no dropout, fixed BN statistics: the logits below are those of the step
    loss = module.training_step((x, y), 0)
    with torch.no_grad():
        logits = module(x).float().reshape(-1, module.num_classes)
    smoothed = F.cross_entropy(logits, y.flatten(), label_smoothing=0.1)
    torch.testing.assert_close(loss.detach(), smoothed)
    assert (smoothed - F.cross_entropy(logits, y.flatten())).abs() > 1e-3


def test_norm_and_bias_parameters_get_no_weight_decay_when_asked() -> None:
    from lambdanet.train.config import OptimConfig
    from lambdanet.train.optim import build_optimizer

    model = lambdanet.create_model("lambda_net_tiny", in_chans=1)
    for flag in (False, True):
        opt = build_optimizer(model, OptimConfig(name="sgd", weight_decay=5e-4, decay_norm_and_bias=flag), 64)
        decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
        assert len(decay_of) == sum(1 for _ in model.parameters())
        for p in model.parameters():
            assert decay_of[id(p)] == (5e-4 if flag or p.ndim > 1 else 0.0)
