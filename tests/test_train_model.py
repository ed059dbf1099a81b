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
