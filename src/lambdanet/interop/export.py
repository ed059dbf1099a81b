"""Export of lambdanet models (Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602) to ONNX and ``torch.export``.

Both exporters trace the model once, so two runtime choices of :class:`~lambdanet.layers.LambdaLayer` are fixed
while tracing (and restored afterwards):

- ``algorithm="auto"`` picks the position algorithm from the input shape; an exported graph must hold one, so every
  ``"auto"`` layer is set to ``algorithm`` (default ``"conv"``, the lambda convolution: linear in the number of
  positions, exact for any size). Layers set to an explicit algorithm keep it unless ``algorithm`` is given.
- For a dynamic spatial size the layer keeps its full kernel (``crop_kernel`` of the algorithms crops only for concrete
  sizes), so the convolution's padding stays static, as ONNX ``Conv`` requires; the result is the same.

Models with global relative position lambdas (``scope=None``) accept one input size only; their exports have a
dynamic batch and a fixed spatial size.

Shape: (b, c, hh, ww) -> model output; b dynamic, hh and ww dynamic for local-scope models.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lambdanet.layers import ALGORITHMS, LambdaLayer

__all__ = [
    "dynamic_shapes",
    "export_onnx",
    "export_program",
    "fixed_spatial",
    "load_program",
    "min_side",
    "model_metadata",
    "onnx_forward",
    "onnx_metadata",
    "save_program",
    "tracing_setup",
]

_MAX_SIDE = 4096


def _lambda_layers(model: nn.Module) -> list[LambdaLayer]:
    return [m for m in model.modules() if isinstance(m, LambdaLayer)]


def fixed_spatial(model: nn.Module) -> bool:
    """True when ``model`` accepts one spatial size only (a lambda layer with global position lambdas)."""
    return any(layer.scope is None and layer.pos is not None for layer in _lambda_layers(model))


def _check_input_size(input_size: Sequence[int]) -> tuple[int, int, int]:
    size = tuple(input_size)
    if len(size) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"input_size={input_size!r} must be three positive integers (channels, height, width)")
    return size  # type: ignore[return-value]


def _resolve_spatial(model: nn.Module, dynamic_spatial: bool | Literal["auto"]) -> bool:
    if dynamic_spatial == "auto":
        return not fixed_spatial(model)
    if not isinstance(dynamic_spatial, bool):
        raise ValueError(f"dynamic_spatial={dynamic_spatial!r} must be True, False or 'auto'")
    if dynamic_spatial and fixed_spatial(model):
        raise ValueError(
            "dynamic_spatial=True, but the model has global position lambdas (scope=None) that fix its input size; "
            "use dynamic_spatial=False or 'auto'"
        )
    return dynamic_spatial


def dynamic_shapes(
    *, dynamic_batch: bool = True, dynamic_spatial: bool = False, min_side: int = 2
) -> tuple[dict[int, Any]]:
    """``dynamic_shapes`` for a model with one image argument: batch (dim 0) and/or height and width (dims 2, 3).

    ``min_side`` is the smallest height and width the exported program accepts.
    """
    dims: dict[int, Any] = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=65536)
    if dynamic_spatial:
        dims[2] = torch.export.Dim("height", min=min_side, max=_MAX_SIDE)
        dims[3] = torch.export.Dim("width", min=min_side, max=_MAX_SIDE)
    return (dims,)


def min_side(model: nn.Module, x: Tensor) -> int:
    """Smallest input side for which every feature map of ``model`` keeps at least 2 pixels per side.

    The tracer specialises sizes 0 and 1, so a dynamic side must keep every map of at least 2 pixels: the side is
    ``reduction + 1`` where ``reduction`` is the largest downsampling factor seen on ``x`` (e.g. 33 for a stride-32
    ResNet). Global pools (1x1 outputs) are not feature maps and are left out.

    Raises:
        ValueError: ``x`` itself is smaller than that (the message names the size).
    """
    side = min(x.shape[-2:])
    smallest = [side]

    def hook(module: nn.Module, args: Any, out: Any) -> None:
        # 1x1 maps are global pools (heads, squeeze-excite), not downsampled feature maps
        if isinstance(out, Tensor) and out.dim() == 4 and tuple(out.shape[-2:]) != (1, 1):
            smallest[0] = min(smallest[0], *out.shape[-2:])

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    reduction = -(-side // max(smallest[0], 1))
    if smallest[0] < 2:
        raise ValueError(
            f"input_size side {side} leaves a feature map of {smallest[0]} pixel(s); a dynamic spatial export needs "
            f"an example side of at least {reduction + 1}"
        )
    return reduction + 1


@contextlib.contextmanager
def tracing_setup(model: nn.Module, *, algorithm: str | None = None) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with fixed lambda algorithms for tracing; restore everything on exit.

    Args:
        model: the model.
        algorithm: position algorithm for every lambda layer; ``None`` sets only ``"auto"`` layers, to ``"conv"``.

    Raises:
        ValueError: an unknown ``algorithm``.
    """
    if algorithm is not None and algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r} must be None or one of {ALGORITHMS}")
    layers = _lambda_layers(model)
    saved = [layer.algorithm for layer in layers]
    was_training = model.training
    for layer in layers:
        if algorithm is not None or layer.algorithm == "auto":
            layer.algorithm = algorithm or "conv"
    model.eval()
    try:
        yield model
    finally:
        for layer, value in zip(layers, saved):
            layer.algorithm = value
        model.train(was_training)


def _example(model: nn.Module, input_size: Sequence[int], batch: int) -> Tensor:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 2:
        raise ValueError(f"batch={batch!r} must be an integer >= 2 (size 1 would be specialised by the tracer)")
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    return torch.randn(batch, *_check_input_size(input_size), dtype=dtype, device=device)


def export_program(
    model: nn.Module,
    input_size: Sequence[int],
    *,
    batch: int = 2,
    dynamic_batch: bool = True,
    dynamic_spatial: bool | Literal["auto"] = "auto",
    algorithm: str | None = None,
) -> torch.export.ExportedProgram:
    """``torch.export`` a model in eval mode.

    Args:
        model: the model (left in its original mode and algorithms).
        input_size: (channels, height, width) of the example input.
        batch: batch of the example input (>= 2).
        dynamic_batch: export with a dynamic batch dimension.
        dynamic_spatial: dynamic height and width; ``"auto"`` = unless the model has global position lambdas.
        algorithm: position algorithm of every lambda layer (see :func:`tracing_setup`).

    Returns:
        The exported program; ``program.module()(x)`` runs it.

    Raises:
        ValueError: bad ``input_size``, ``batch`` or ``algorithm``, or dynamic spatial size for a fixed-size model
            or an algorithm that specialises on it (``"fft"``).
    """
    spatial = _resolve_spatial(model, dynamic_spatial)
    x = _example(model, input_size, batch)
    with tracing_setup(model, algorithm=algorithm):
        low = min_side(model, x) if spatial else 2
        shapes = dynamic_shapes(dynamic_batch=dynamic_batch, dynamic_spatial=spatial, min_side=low)
        try:
            return torch.export.export(model, (x,), dynamic_shapes=shapes)
        except torch._dynamo.exc.UserError as err:  # e.g. algorithm='fft' specialises on the spatial size
            if not spatial or "Constraints violated" not in str(err):
                raise
            raise ValueError(
                f"algorithm={algorithm!r} cannot keep height and width dynamic (the graph specialises on them); "
                "export with dynamic_spatial=False (CLI: --static_spatial true) or another algorithm"
            ) from err


def save_program(program: torch.export.ExportedProgram, path: str | os.PathLike[str]) -> Path:
    """Save an exported program (``torch.export.save``; conventional suffix ``.pt2``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, p)
    return p


def load_program(path: str | os.PathLike[str]) -> torch.export.ExportedProgram:
    """Load a program saved by :func:`save_program`.

    Raises:
        ValueError: a missing file (the message names the path).
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"path={str(path)!r} does not exist; expected a program saved with save_program")
    return torch.export.load(p)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    input_size: Sequence[int],
    *,
    batch: int = 2,
    dynamic_batch: bool = True,
    dynamic_spatial: bool | Literal["auto"] = "auto",
    algorithm: str | None = None,
    opset_version: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export a model in eval mode to an ONNX file with ``torch.onnx.export(dynamo=True)``.

    The graph's input is named ``input`` and its output ``logits``; with ``dynamic_batch`` the first input axis
    is ``batch``, with dynamic spatial size the last two are ``height`` and ``width``. Weights are stored inside
    the file.

    Args:
        model: the model (left in its original mode and algorithms).
        path: the ``.onnx`` file to write (parent folders are created).
        input_size: (channels, height, width) of the example input.
        batch: batch of the example input (>= 2).
        dynamic_batch: dynamic batch axis.
        dynamic_spatial: dynamic height and width; ``"auto"`` = unless the model has global position lambdas.
        algorithm: position algorithm of every lambda layer (see :func:`tracing_setup`).
        opset_version: ONNX opset (default: the exporter's).
        metadata: stored in the file's ``metadata_props``, each value as JSON; default :func:`model_metadata`
            (model name and overrides, and with loaded weights their ``classes``, ``mean``, ``std``,
            ``input_size`` and ``crop_pct``).

    Returns:
        The path written.

    Raises:
        ValueError: bad arguments, as for :func:`export_program`, or a graph ONNX cannot express
            (``algorithm="fft"``; ``"blocked"`` with dynamic height and width).
    """
    spatial = _resolve_spatial(model, dynamic_spatial)
    x = _example(model, input_size, batch)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with tracing_setup(model, algorithm=algorithm):
        blocked = sorted({layer.algorithm for layer in _lambda_layers(model)} & {"blocked", "triton"})
        if spatial and blocked:  # its dynamic-size graph is written but fails in onnxruntime for every input
            raise ValueError(
                f"algorithm={blocked[0]!r} does not export to ONNX with dynamic height and width; pass "
                "dynamic_spatial=False (CLI: --static_spatial true) or use algorithm='conv'"
            )
        low = min_side(model, x) if spatial else 2
        try:
            program = torch.onnx.export(
                model,
                (x,),
                dynamo=True,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=dynamic_shapes(dynamic_batch=dynamic_batch, dynamic_spatial=spatial, min_side=low),
                opset_version=opset_version,
                verbose=False,
            )
        except torch.onnx.OnnxExporterError as err:  # e.g. algorithm='fft': ONNX has no complex FFT operators
            raise ValueError(
                f"ONNX cannot express this model with algorithm={algorithm!r} ({type(err).__name__}); "
                "use the default (conv), einsum or logits"
            ) from err
    if program is None:  # only the legacy exporter returns None
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no program")
    program.save(str(p), external_data=False)
    _set_onnx_metadata(p, model_metadata(model) if metadata is None else metadata)
    return p


def model_metadata(model: nn.Module) -> dict[str, Any]:
    """What an export records about a model: ``model_name``, ``model_overrides`` (from ``create_model``) and the
    inference metadata of the weights it was loaded with (``model.pretrained_cfg``)."""
    meta: dict[str, Any] = {}
    if getattr(model, "model_name", None) is not None:
        meta["model_name"] = model.model_name
        meta["model_overrides"] = dict(getattr(model, "model_overrides", {}))
    meta.update({k: v for k, v in (getattr(model, "pretrained_cfg", None) or {}).items() if k != "source"})
    return meta


def _set_onnx_metadata(path: Path, metadata: dict[str, Any]) -> None:
    import json

    import onnx

    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({str(k): json.dumps(v, default=str) for k, v in metadata.items()})
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(path))


def onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``metadata_props`` of an ONNX file written by :func:`export_onnx`, values decoded from JSON."""
    import json

    import onnx

    out: dict[str, Any] = {}
    for prop in onnx.load(str(path), load_external_data=False).metadata_props:
        try:
            out[prop.key] = json.loads(prop.value)
        except json.JSONDecodeError:
            out[prop.key] = prop.value
    return out


def onnx_forward(path: str | os.PathLike[str], x: Tensor) -> Tensor:
    """Run an ONNX file with onnxruntime on the CPU (needs the ``export`` extra) and return its first output."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    (out, *_) = session.run(None, {name: x.detach().cpu().numpy()})
    return torch.from_numpy(out)
