"""Weights on disk: one safe reader for every kind of file, checksums, finite checks and hub-style directories.

One set of rules for every entry point that reads weights (``lambdanet eval``, ``train --resume`` / ``--init-from``,
``convert``, ``export``, ``predict``, ``create_model(checkpoint=..., pretrained=...)``, the functions below):

1. **No code runs.** Files are read with ``torch.load(weights_only=True)``: tensors, containers, strings and numbers
   load; anything else (a class, a function: what a crafted pickle uses to run code) is refused with a one-line
   :class:`CheckpointError` naming the file and the object. The only globals added to torch's allowlist are numpy's
   scalar and dtype (a score saved as a numpy float). ``allow_pickle=True`` (CLI: ``--unsafe-load``) is the explicit
   opt-in to the full unpickler for a file you trust; it can run any code the file holds.
2. **Checksums.** lambdanet files store the SHA-256 of their state dict (:func:`state_dict_sha256`) in their
   metadata; a file whose tensors do not match it (a flipped bit) is refused, naming the path.
3. **Finite weights.** A state dict with NaN or Inf in any floating tensor is refused, naming the tensors.

The d-li14 Lambda-ResNet-50 checkpoint (Bello, "LambdaNetworks", ICLR 2021, arXiv:2102.08602) is read with its
lambda layers' names converted (:func:`convert_dli_state_dict`; docs/interop.md gives the mapping).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "CHECKPOINT_KEY",
    "CheckpointError",
    "CheckpointMismatchError",
    "LoadedCheckpoint",
    "atomic_save",
    "convert_dli_state_dict",
    "load_checkpoint",
    "load_checkpoint_into",
    "load_state_dict_checked",
    "non_finite_keys",
    "read_checkpoint",
    "read_pretrained",
    "remove_stray_temp_files",
    "save_pretrained",
    "seal",
    "state_dict_sha256",
    "strip_prefix",
    "torch_load",
]

CHECKPOINT_KEY = "lambdanet"  # the metadata entry of lambdanet checkpoints
CHECKSUM_KEY = "state_dict_sha256"
PRETRAINED_CONFIG = "config.json"
PRETRAINED_WEIGHTS = "model.safetensors"
_DLI_RENAMES = ((".conv_qkv.", ".qkv."), (".lambda_conv.", ".pos."))
_TEMP = re.compile(r"^\..+\.\d+\.tmp$")  # temp files of atomic_save: .<name>.<pid>.tmp
_log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A weights file that is missing, unreadable, unsafe, damaged, or does not fit the requested model."""


class CheckpointMismatchError(CheckpointError):
    """Weights that do not fit a model: the missing, unexpected and wrongly shaped keys, each by name.

    Attributes:
        missing: keys of the model that the weights lack.
        unexpected: keys of the weights that the model lacks.
        mismatched: ``(key, weights' shape, model's shape)`` for keys present in both with different shapes.
    """

    def __init__(self, source: str, missing: list[str], unexpected: list[str], mismatched: list[tuple]) -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        shapes = [f"{k} (checkpoint {list(a)}, model {list(b)})" for k, a, b in mismatched]
        found = (("missing key(s)", missing), ("unexpected key(s)", unexpected), ("shape mismatch(es)", shapes))
        parts = [f"{len(keys)} {what}: {_listing(keys)}" for what, keys in found if keys]
        super().__init__(f"weights from {source} do not fit the model; " + "; ".join(parts))


def _listing(items: list[str], limit: int = 20) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


# ---------------------------------------------------------------------------------------------- reading safely
def _safe_globals() -> list[Any]:
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    kinds = ("float16", "float32", "float64", "int32", "int64", "bool")
    return [core.multiarray.scalar, np.dtype, *(type(np.dtype(k)) for k in kinds)]


def torch_load(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> Any:
    """``torch.load`` a file onto the CPU with the safe loader (``weights_only=True``) and nothing else.

    Args:
        path: the file.
        allow_pickle: if the safe loader refuses an object, read the file with the full unpickler instead (with a
            warning): only for files you trust, since such a file can run arbitrary code while it loads.

    Raises:
        CheckpointError: a missing file, a refused object (the message names it), or an unreadable file.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e) if isinstance(e, pickle.UnpicklingError) else ""
        found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"but got <class '([\w.]+)'>", text)
        if found is None:
            raise CheckpointError(
                f"cannot read checkpoint {p}: the file is corrupt or not a PyTorch checkpoint ({type(e).__name__})"
            ) from e
    if not allow_pickle:
        raise CheckpointError(
            f"checkpoint {p} holds {found.group(1)}, which the safe loader refuses: loading it could run code; "
            "only if you trust its source, pass allow_pickle=True (CLI: --unsafe-load)"
        )
    warnings.warn(
        f"reading {p} with the full unpickler (allow_pickle=True): it holds {found.group(1)} and can run "
        "arbitrary code; do this only for files you trust",
        stacklevel=2,
    )
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {p}: {type(e).__name__}: {e}") from e


# ---------------------------------------------------------------------------------------------- integrity
def state_dict_sha256(state_dict: Mapping[str, Tensor]) -> str:
    """SHA-256 over a state dict in sorted key order: each key, dtype and shape, then the tensor's bytes (row-major).

    Sorted, so that formats that reorder keys (safetensors) give the same checksum as the model's state dict.
    """
    h = hashlib.sha256()
    for key, value in sorted(state_dict.items(), key=lambda item: item[0]):
        h.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def non_finite_keys(state_dict: Mapping[str, Any]) -> list[str]:
    """Keys of the floating (or complex) tensors of ``state_dict`` that hold a NaN or an Inf."""
    numbers = [k for k, v in state_dict.items() if isinstance(v, Tensor) and (v.is_floating_point() or v.is_complex())]
    return [k for k in numbers if not bool(torch.isfinite(state_dict[k]).all())]


def seal(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Store the checksum of ``checkpoint["state_dict"]`` in its ``lambdanet`` metadata (created if absent)."""
    checkpoint.setdefault(CHECKPOINT_KEY, {})[CHECKSUM_KEY] = state_dict_sha256(checkpoint["state_dict"])
    return checkpoint


def _verify(state_dict: Mapping[str, Tensor], expected: Any, source: str) -> None:
    if expected is not None and state_dict_sha256(state_dict) != expected:
        raise CheckpointError(
            f"checkpoint {source} is damaged: its tensors do not match the SHA-256 stored when it was written"
        )
    bad = non_finite_keys(state_dict)
    if bad:
        raise CheckpointError(f"checkpoint {source} holds NaN or Inf in {len(bad)} tensor(s): {_listing(bad)}")


def _tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _is_lambdanet(obj: Any) -> bool:
    has_meta = isinstance(obj, Mapping) and isinstance(obj.get(CHECKPOINT_KEY), Mapping)
    return has_meta and _tensor_dict(obj.get("state_dict"))


def load_checkpoint(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> dict[str, Any]:
    """Load a lambdanet training checkpoint (``lambdanet train``/``convert``) as a dict, checked.

    Raises:
        CheckpointError: unreadable or unsafe file, no lambdanet metadata, checksum mismatch, non-finite weights.
    """
    ckpt = torch_load(path, allow_pickle=allow_pickle)
    if not _is_lambdanet(ckpt):
        raise CheckpointError(
            f"{path} is not a lambdanet training checkpoint: it lacks the 'lambdanet' metadata (model name and "
            "overrides) written by `lambdanet train`"
        )
    _verify(ckpt["state_dict"], ckpt[CHECKPOINT_KEY].get(CHECKSUM_KEY), str(path))
    return ckpt


# ---------------------------------------------------------------------------------------------- one reader
@dataclass
class LoadedCheckpoint:
    """A weights file read, checked and converted to lambdanet names.

    Attributes:
        path: the file or directory.
        kind: ``"lambdanet"`` (written by ``lambdanet train`` or ``convert``: ``lambdanet`` metadata and a
            ``state_dict`` under ``model.``; with Lightning's EMA that is the average, and the trained weights are
            in ``current_model_state``), ``"pretrained"`` (a directory or Hugging Face Hub id written by
            :func:`save_pretrained`), ``"dli"`` (the d-li14 checkpoint or any state dict with its names) or
            ``"state_dict"`` (a plain state dict, bare or under a ``state_dict`` key).
        state_dict: weights under lambdanet names, prefixes removed.
        model_name: the model the file names (lambdanet and pretrained files).
        overrides: builder overrides the weights need: the stored ``model_overrides``, or ``position_bias=True``
            for d-li14 files with a biased lambda convolution.
        meta: the stored metadata (lambdanet and pretrained files): ``classes``, ``mean``, ``std``,
            ``input_size``, ``crop_pct``, ``config``, ...
        extra: other top-level entries of the file (e.g. ``epoch``, ``arch``), plain values only.
    """

    path: str
    kind: str
    state_dict: dict[str, Tensor]
    model_name: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    """Remove ``prefix`` from every key that starts with it (DataParallel/DDP's ``module.`` by default)."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def convert_dli_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a d-li14/lambda.pytorch Lambda-ResNet state dict to lambdanet names (order kept).

    Strips the ``module.`` prefix, renames ``conv_qkv`` to ``qkv`` and ``lambda_conv`` to ``pos``, and squeezes the
    Conv3d kernel (k, u, 1, r, r) to (k, u, r, r). Other keys pass through unchanged.

    Raises:
        ValueError: a ``lambda_conv.weight`` that is not 5-D with a depth-1 kernel.
    """
    out: dict[str, Tensor] = {}
    for key, value in strip_prefix(state_dict).items():
        if key.endswith(".lambda_conv.weight"):
            if value.dim() != 5 or value.shape[2] != 1:
                raise ValueError(
                    f"state_dict[{key!r}] has shape {list(value.shape)}; expected a Conv3d kernel (k, u, 1, r, r)"
                )
            value = value.squeeze(2)
        out[functools.reduce(lambda k, rename: k.replace(*rename), _DLI_RENAMES, key)] = value
    return out


def read_checkpoint(
    source: str | os.PathLike[str], *, weights: str = "auto", allow_pickle: bool = False
) -> LoadedCheckpoint:
    """Read any weights source, check it and convert it to our names: a checkpoint file (lambdanet, published d-li14
    or a plain state dict), a run directory (its ``checkpoints/best.ckpt``), a pretrained directory or a Hub id.

    Args:
        source: the file, directory or Hugging Face Hub id.
        weights: for lambdanet files: ``"auto"`` (the EMA average when the file has one), ``"ema"`` or ``"model"``.
        allow_pickle: see :func:`torch_load` (only for files you trust).

    Raises:
        CheckpointError: missing, unreadable, unsafe or damaged file, non-finite weights, no state dict in it.
    """
    if weights not in ("auto", "ema", "model"):
        raise ValueError(f"weights={weights!r}; expected 'auto', 'ema' or 'model'")
    p = Path(source)
    if p.is_dir() and not (p / PRETRAINED_CONFIG).is_file():
        p = p / "checkpoints" / "best.ckpt"
        if not p.is_file():
            raise CheckpointError(
                f"{source} is neither a pretrained directory ({PRETRAINED_CONFIG} + {PRETRAINED_WEIGHTS}) nor a run "
                "directory with checkpoints/best.ckpt"
            )
    if not p.is_file():
        return read_pretrained(source)
    obj = torch_load(p, allow_pickle=allow_pickle)
    if _is_lambdanet(obj):
        meta, state = dict(obj[CHECKPOINT_KEY]), obj["state_dict"]
        _verify(state, meta.get(CHECKSUM_KEY), str(p))
        trained = obj.get("current_model_state")  # beside the average of Lightning's EMAWeightAveraging
        if weights == "ema" and not _tensor_dict(trained):
            raise CheckpointError(f"checkpoint {p} has no EMA weights (trained without train.ema_decay)")
        if weights == "model" and _tensor_dict(trained):
            state = trained
            _verify(state, None, str(p))
        sub = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        if not sub:
            raise CheckpointError(f"checkpoint {p} has lambdanet metadata but no weights under the prefix 'model.'")
        meta.pop("torch_rng_state", None)
        name = None if meta.get("model_name") is None else str(meta["model_name"])
        return LoadedCheckpoint(str(p), "lambdanet", sub, name, dict(meta.get("model_overrides") or {}), meta)
    mapping = obj if isinstance(obj, Mapping) else {}
    extra = {k: v for k, v in mapping.items() if isinstance(v, str | int | float | bool)}
    state = mapping["state_dict"] if _tensor_dict(mapping.get("state_dict")) else obj
    if not _tensor_dict(state):
        found = sorted(map(str, obj))[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"checkpoint {p} holds no state dict: expected a dict of tensors, or a dict with a 'state_dict' entry "
            f"(found {found})"
        )
    state = strip_prefix(state)
    _verify(state, None, str(p))
    if any(old in k for k in state for old, _ in _DLI_RENAMES):
        overrides = {"position_bias": True} if any(k.endswith(".lambda_conv.bias") for k in state) else {}
        return LoadedCheckpoint(str(p), "dli", convert_dli_state_dict(state), None, overrides, {}, extra)
    return LoadedCheckpoint(str(p), "state_dict", state, None, {}, {}, extra)


def read_pretrained(source: str | os.PathLike[str]) -> LoadedCheckpoint:
    """Read a hub-style directory (``config.json`` + ``model.safetensors``) or a Hugging Face Hub id.

    A hub id (``owner/name``, not an existing local path) is fetched with ``huggingface_hub.snapshot_download``.

    Raises:
        CheckpointError: not such a directory, a failed download (e.g. offline), a damaged or non-finite file.
    """
    p, text = Path(source), str(source)
    if not p.exists():
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", text) or text.startswith((".", "/")):
            raise CheckpointError(
                f"{text!r} does not exist; expected a checkpoint file, a directory with {PRETRAINED_CONFIG} and "
                f"{PRETRAINED_WEIGHTS}, or a Hugging Face Hub id (owner/name)"
            )
        try:  # without huggingface_hub installed, the error names the module
            from huggingface_hub import snapshot_download

            p = Path(snapshot_download(text, allow_patterns=[PRETRAINED_CONFIG, PRETRAINED_WEIGHTS]))
        except Exception as e:
            raise CheckpointError(
                f"{text!r} is no local path, and fetching it from the Hugging Face Hub failed ({type(e).__name__}: "
                f"{(str(e).strip().splitlines() or [''])[0]}); offline, pass a local directory with "
                f"{PRETRAINED_CONFIG} and {PRETRAINED_WEIGHTS}"
            ) from None
    config, weights_file = p / PRETRAINED_CONFIG, p / PRETRAINED_WEIGHTS
    if not (config.is_file() and weights_file.is_file()):
        raise CheckpointError(
            f"pretrained={text!r} is not a pretrained directory: expected {PRETRAINED_CONFIG} and "
            f"{PRETRAINED_WEIGHTS} in it (written by lambdanet.save_pretrained)"
        )
    try:
        meta = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {config}: {e}") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("model_name"), str):
        raise CheckpointError(f"{config} names no model: expected a JSON object with 'model_name'")
    try:
        from safetensors.torch import load_file

        state = load_file(str(weights_file), device="cpu")
    except Exception as e:
        raise CheckpointError(f"cannot read {weights_file}: the file is corrupt ({type(e).__name__}: {e})") from e
    _verify(state, meta.get(CHECKSUM_KEY), str(weights_file))
    overrides = dict(meta.get("model_overrides") or {})
    return LoadedCheckpoint(str(p), "pretrained", state, meta["model_name"], overrides, meta)


# ---------------------------------------------------------------------------------------------- into a model
def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "state_dict") -> None:
    """Load ``state_dict`` into ``model`` after checking every key and shape.

    Raises:
        CheckpointMismatchError: missing, unexpected or wrongly shaped keys, all listed by name.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = {k: (tuple(v.shape), tuple(expected[k].shape)) for k, v in state_dict.items() if k in expected}
    mismatched = [(k, ours, theirs) for k, (ours, theirs) in shapes.items() if ours != theirs]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(source, missing, unexpected, mismatched)
    model.load_state_dict(dict(state_dict), strict=True)


def load_checkpoint_into(
    model: nn.Module,
    checkpoint: str | os.PathLike[str] | LoadedCheckpoint,
    *,
    allow_pickle: bool = False,
    fresh_head: bool = False,
) -> nn.Module:
    """Load weights (any source :func:`read_checkpoint` reads) into ``model``, strictly; returns ``model``.

    ``fresh_head`` (fine-tuning, ``train.init_from``): when only tensors of the classifier head (the module of the
    model's last parameter: ``fc``, ``classifier.1``, ...) differ in shape from the file's (another class count),
    they keep the model's fresh initialisation and a one-line message says so.

    Raises:
        CheckpointError: unreadable file, another model, or keys and shapes that do not fit.
    """
    ckpt = checkpoint
    if not isinstance(ckpt, LoadedCheckpoint):
        ckpt = read_checkpoint(ckpt, allow_pickle=allow_pickle)
    name = getattr(model, "model_name", None)
    if ckpt.model_name is not None and name is not None and ckpt.model_name != name:
        raise CheckpointError(f"checkpoint {ckpt.path!r} holds model {ckpt.model_name!r}, not {name!r}")
    expected, state = model.state_dict(), dict(ckpt.state_dict)
    head = ([n for n, _ in model.named_parameters()] or [""])[-1].rpartition(".")[0] + "."  # e.g. "fc."
    mismatched = [k for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if fresh_head and mismatched and head != "." and all(k.startswith(head) for k in mismatched):
        shapes = ", ".join(f"{k} {list(state[k].shape)} -> {list(expected[k].shape)}" for k in mismatched)
        state.update({k: expected[k] for k in mismatched})
        _log.warning(f"init_from {ckpt.path}: classifier head {head[:-1]} does not fit ({shapes}); it starts fresh")
    load_state_dict_checked(model, state, source=f"checkpoint {ckpt.path} ({ckpt.kind})")
    return model


# ---------------------------------------------------------------------------------------------- writing
def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace`` it into place.

    A crash during the write leaves the previous file untouched (and at most a stray ``.<name>.<pid>.tmp``, which
    :func:`remove_stray_temp_files` deletes).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return p


def remove_stray_temp_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temp files that interrupted :func:`atomic_save` calls left in ``directory``; returns them."""
    d = Path(directory)
    stray = [f for f in d.iterdir() if f.is_file() and _TEMP.match(f.name)] if d.is_dir() else []
    for f in stray:
        f.unlink(missing_ok=True)
    return stray


def save_pretrained(
    model: nn.Module, directory: str | os.PathLike[str], *, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``model`` as a hub-style directory: ``config.json`` and ``model.safetensors``.

    ``config.json`` holds the model name and overrides (from :func:`lambdanet.create_model`), the weights' SHA-256
    and the inference metadata (``classes``, ``mean``, ``std``, ``input_size``, ``crop_pct``): ``metadata`` if given,
    else the model's ``pretrained_cfg`` (set when it was loaded from a checkpoint). Read it back with
    ``create_model(name, pretrained=directory)`` or :func:`lambdanet.load_for_inference`; upload the directory with
    ``huggingface_hub`` to share it.

    Raises:
        ValueError: a model that was not built by ``create_model`` (no name), or metadata that is not JSON.
    """
    from safetensors.torch import save_file

    name = getattr(model, "model_name", None)
    if not isinstance(name, str):
        raise ValueError(f"save_pretrained needs a model built by lambdanet.create_model, got {type(model).__name__}")
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    info = dict(metadata if metadata is not None else getattr(model, "pretrained_cfg", None) or {})
    config = {**info, "model_name": name, "model_overrides": dict(getattr(model, "model_overrides", {}))}
    config.update({CHECKSUM_KEY: state_dict_sha256(state), "library": "lambdanet"})
    try:
        text = json.dumps(config, indent=2) + "\n"
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the metadata cannot be stored in {PRETRAINED_CONFIG}: {e}") from None
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file(state, str(d / PRETRAINED_WEIGHTS), metadata={"format": "pt"})
    (d / PRETRAINED_CONFIG).write_text(text)
    return d
