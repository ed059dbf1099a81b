"""Parameter and multiply-accumulate counts in the convention of Bello, "LambdaNetworks", ICLR 2021,
arXiv:2102.08602 (App. E.2: "We do not count zeroed out flops when computing positional lambdas").

Convention:

- Everything except lambda layers is counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions,
  matrix products, linear layers, SE blocks), which counts 2 FLOPs per multiply-accumulate; we report
  ``macs = flops / 2``. Normalisation, activations, pooling, softmax and additions are not counted.
- Each :class:`~lambdanet.layers.LambdaLayer` contributes ``layer.macs(hh, ww)`` (a ``LambdaLayer3d``:
  ``layer.macs(tt, hh, ww)``) at the input size it actually receives: its Q/K/V projection, the content lambda
  and its application, and the position lambdas plus their application. What the layer's chosen algorithm runs
  (padding zeros, FFTs, masked einsums) is not counted, as the paper does not count zeroed-out work.
- Position lambdas, ``position_count="scope"`` (default, the paper's): every query is charged its scope size
  ``|m| = min(r_h * r_w, n)`` context positions (``n * |m| * k * v * u`` MACs; global scope: ``|m| = n``), the
  ``Theta(bnmkv)`` of Sec. 3.2 with m the scope. This reproduces Tables 10 and 11 (docs/reproduction.md).
  ``position_count="pairs"`` charges only the (n, m) pairs inside the image (``layer.macs``: queries near a border
  see fewer context positions), the exact count of useful work. ``position_count="taps"`` charges every query the
  full kernel ``r_h * r_w`` (what a lambda convolution computes, padding zeros included), the convention of
  d-li14/lambda.pytorch's 6.576 "GFLOPs" (a Conv3d MAC count).
- ``flops = 2 * macs``. The paper's "FLOPS" columns are 2 x MACs (docs/reproduction.md shows the check against
  Tables 10, 11 and 17).

Axis legend: b batch | c channels | tt time | hh ww spatial
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from lambdanet.layers import LambdaLayer

__all__ = ["ModelStats", "model_stats"]


@dataclass(frozen=True)
class ModelStats:
    """Counts of one forward pass of one sample.

    Attributes:
        params: trainable and frozen parameters (buffers excluded).
        macs: multiply-accumulates per sample (paper convention, see the module docstring).
        lambda_macs: the part of ``macs`` spent in lambda layers.
        input_size: the (channels, height, width) counted.
        lambda_parts: lambda-layer MACs by part ("projection", "content", "position").
    """

    params: int
    macs: int
    lambda_macs: int
    input_size: tuple[int, ...]
    lambda_parts: dict[str, int] = field(default_factory=dict)

    @property
    def flops(self) -> int:
        """Floating-point operations, 2 x ``macs``."""
        return 2 * self.macs

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    def __str__(self) -> str:
        """Readable figures, e.g. ``14.99 M params, 6.01 GMACs (12.02 GFLOPs), 3x224x224``."""
        size = "x".join(str(s) for s in self.input_size)
        return f"{_si(self.params, ' params')}, {_si(self.macs, 'MACs')} ({_si(self.flops, 'FLOPs')}), input {size}"


def _si(value: int, unit: str) -> str:
    """``value`` with an SI prefix and 2 decimals: ``14.99 M params``, ``6.01 GMACs``, ``12 MACs``."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value} {unit.strip()}"


def _counted_types() -> tuple[type[nn.Module], ...]:
    """The lambda layers counted analytically: the 2-D layer, and the 3-D one where the layers package has it."""
    import lambdanet.layers as layers

    return tuple(t for t in (LambdaLayer, getattr(layers, "LambdaLayer3d", None)) if t is not None)


@contextmanager
def _stub_lambda_layers(model: nn.Module, record: list[tuple[nn.Module, tuple[int, ...]]]) -> Iterator[None]:
    """Replace every lambda layer's forward by a shape-only stand-in that records its input's spatial size."""
    layers = [m for m in model.modules() if isinstance(m, _counted_types())]

    def stub(layer: nn.Module) -> Callable[[Tensor], Tensor]:
        def forward(x: Tensor) -> Tensor:
            layer._check_input(x)
            spatial = tuple(x.shape[2:])
            record.append((layer, spatial))
            stride = layer.stride if isinstance(layer.stride, tuple) else (layer.stride,) * len(spatial)
            out = tuple(-(-side // st) for side, st in zip(spatial, stride, strict=True))
            return x.new_zeros(x.shape[0], layer.dim_out, *out)

        return forward

    try:
        for layer in layers:
            layer.forward = stub(layer)  # type: ignore[method-assign]
        yield
    finally:
        for layer in layers:
            del layer.forward


def _position_scope_macs(layer: nn.Module, spatial: tuple[int, ...], *, taps: bool = False) -> int:
    """Position MACs charging every query ``min(scope volume, n)`` context positions (the paper's convention)."""
    if layer.pos is None:
        return 0
    n = math.prod(spatial)
    m = math.prod(layer.pos.kernel) if taps else min(math.prod(layer.pos.kernel), n)
    k, v, u, h = layer.dim_k, layer.dim_v, layer.dim_u, layer.heads
    return n * m * k * v * u + n * h * k * v


def _is_integer(value: object) -> bool:
    """True for Python and numpy integers (not floats, even integral ones: 32.0 is probably a mistake)."""
    return hasattr(value, "__index__")


def model_stats(model: nn.Module, input_size: Sequence[int], *, position_count: str = "scope") -> ModelStats:
    """Parameters and multiply-accumulates of ``model`` for one input of ``input_size`` = (channels, H, W).

    The model runs once in eval mode with batch 1 on the device of its parameters; build large models on the meta
    device (``with torch.device("meta"): model = create_model(...)``) to count them without computing anything.

    Args:
        model: any module; lambda layers are counted analytically (module docstring).
        input_size: (channels, height, width) of one image, (channels, time, height, width) of one clip, or
            (length,) of one token sequence (int64 ids, for the language models; their sequence lambda layers are
            counted as they run).
        position_count: ``"scope"`` (the paper's convention), ``"pairs"`` (in-image pairs only) or ``"taps"`` (full
            kernel); see the module docstring.

    Returns:
        A :class:`ModelStats`.

    Raises:
        ValueError: if ``input_size`` is not one or three positive integers or ``position_count`` is unknown.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model={type(model).__name__} must be a torch.nn.Module")
    if position_count not in ("scope", "pairs", "taps"):
        raise ValueError(f"position_count={position_count!r} must be 'scope', 'pairs' or 'taps'")
    expected = "(channels, height, width), (channels, time, height, width) or (length,) with positive integers"
    if isinstance(input_size, str) or not isinstance(input_size, Sequence):
        raise ValueError(f"input_size={input_size!r} must be a sequence {expected}")
    size = tuple(input_size)
    if (
        len(size) not in (1, 3, 4)
        or any(isinstance(s, bool) or not _is_integer(s) for s in size)
        or min(int(s) for s in size) < 1
    ):
        raise ValueError(f"input_size={size!r} must be {expected}")
    size = tuple(int(s) for s in size)
    params = sum(p.numel() for p in model.parameters())
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.zeros(1, *size, device=device, dtype=torch.long if len(size) == 1 else dtype)
    record: list[tuple[nn.Module, tuple[int, ...]]] = []
    was_training = model.training
    model.eval()
    try:
        with _stub_lambda_layers(model, record), FlopCounterMode(display=False) as counter, torch.no_grad():
            try:
                model(x)
            except RuntimeError as err:  # e.g. 4 channels into a 3-channel stem
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise ValueError(f"input_size={size!r} does not fit the model: {first}") from err
    finally:
        model.train(was_training)
    parts = {"projection": 0, "content": 0, "position": 0}
    for layer, spatial in record:
        layer_parts = layer.macs(*spatial)
        if position_count != "pairs":
            layer_parts["position"] = _position_scope_macs(layer, spatial, taps=position_count == "taps")
        for key, value in layer_parts.items():
            parts[key] += value
    lambda_macs = sum(parts.values())
    macs = counter.get_total_flops() // 2 + lambda_macs
    return ModelStats(params=params, macs=macs, lambda_macs=lambda_macs, input_size=size, lambda_parts=parts)
