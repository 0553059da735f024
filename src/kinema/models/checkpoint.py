"""Save and load any kinema model as safetensors weights plus a JSON config.

A model class is registered here with its config class; `load_model` only ever
builds registered classes (no arbitrary imports) and never unpickles.

Weights from a folder are not trusted: before a module is allocated, the file's
safetensors header is read (no tensor data) and checked against the file's size,
and the config is built on the meta device (no memory) to compare its tensors'
names and shapes with the header's (`read_header`, `check_fits`); after loading,
every weight must be finite (`check_finite`).

    save_model(model, "out/", "denoiser")   ->  out/denoiser.safetensors, out/denoiser.json
    model = load_model("out/", "denoiser")
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save
from torch import nn
from torch.overrides import TorchFunctionMode

from kinema import config as cfg
from kinema.atomic import atomic_write, write_json
from kinema.errors import KinemaError

M = TypeVar("M", bound=nn.Module)

# "kind" in the JSON -> (module, class). The class has `config_class` and takes its config.
MODEL_CLASSES: dict[str, tuple[str, str]] = {
    "dit": ("kinema.models.dit", "DiT"),
    "unet3d": ("kinema.models.unet3d", "UNet3D"),
    "vae": ("kinema.models.vae", "VideoVAE"),
    "text": ("kinema.models.text", "TextEncoder"),
}


def model_kind(model: nn.Module) -> str:
    for kind, (module, name) in MODEL_CLASSES.items():
        if type(model).__module__ == module and type(model).__name__ == name:
            return kind
    raise TypeError(f"{type(model).__name__} is not a registered kinema model ({sorted(MODEL_CLASSES)})")


def model_class(kind: str) -> type[nn.Module]:
    if kind not in MODEL_CLASSES:
        raise KinemaError(f"unknown model kind {kind!r}; known kinds: {sorted(MODEL_CLASSES)}")
    module, name = MODEL_CLASSES[kind]
    return getattr(importlib.import_module(module), name)


def state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous, de-aliased tensors (safetensors refuses shared storage)."""
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def serialize(module: nn.Module) -> bytes:
    """A module's weights as safetensors bytes: what `save_weights` writes, so hashing them gives the file's hash."""
    return save(state_dict_for_saving(module))


def short_sha(data: bytes) -> str:
    """The 16-hex-digit sha256 kinema names weights and pipelines by."""
    return hashlib.sha256(data).hexdigest()[:16]


def weights_hash(path: str | os.PathLike) -> str:
    """`short_sha` of a file, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def save_weights(module: nn.Module, directory: str | os.PathLike, name: str, meta: dict[str, Any]) -> str:
    """Write `{name}.safetensors` and `{name}.json` (`meta` plus the weights' sha256) atomically into `directory`;
    returns the hash. The one way kinema saves a module: models, pipeline components, the eval networks."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = serialize(module)
    sha = short_sha(data)
    atomic_write(directory / f"{name}.safetensors", lambda tmp: Path(tmp).write_bytes(data))
    write_json(directory / f"{name}.json", {**meta, "sha256": sha})
    return sha


def save_model(model: nn.Module, directory: str | os.PathLike, name: str = "model", *, extra: dict[str, Any] | None = None) -> Path:
    """Write `{name}.safetensors` and `{name}.json` (kind, config, hash, `extra`) atomically into `directory`."""
    save_weights(model, directory, name, {"kind": model_kind(model), "config": cfg.to_dict(model.config), **(extra or {})})
    return Path(directory) / f"{name}.safetensors"


def read_meta(directory: str | os.PathLike, name: str, missing: str | None = None) -> tuple[dict[str, Any], Path, Path]:
    """(`{name}.json` as a dict, its path, the weights' path); a missing or malformed file raises KinemaError
    (`missing`: what to do about a missing one)."""
    directory = Path(directory)
    meta_path, weights = directory / f"{name}.json", directory / f"{name}.safetensors"
    for p in (meta_path, weights):
        if not p.is_file():
            raise KinemaError(f"{p}: missing; {missing or f'a saved model needs both {name}.json and {name}.safetensors'}")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KinemaError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise KinemaError(f"{meta_path}: expected a JSON object with config and sha256; save the model again")
    return meta, meta_path, weights


def load_weights(cls: type[M], meta: dict[str, Any], meta_path: Path, weights: Path, device: str | torch.device = "cpu") -> M:
    """Build `cls` from `meta`'s config and load `weights` into it, strictly. The weights' hash (when `meta`
    records one), size and tensor shapes are checked before the model is allocated, and they must be finite."""
    try:
        config = cfg.from_dict(cls.config_class, meta.get("config"), "config")  # type: ignore[attr-defined]
    except (ValueError, TypeError) as e:
        raise KinemaError(f"{meta_path}: the {meta.get('kind', cls.__name__)} config is invalid: {e}") from None
    shapes = read_header(weights)
    stated = meta.get("sha256")
    actual = weights_hash(weights) if stated is not None else None
    if actual != stated:
        raise KinemaError(
            f"{weights}: hash mismatch (sha256 {actual}, {meta_path.name} says {stated!r}): the file "
            "was changed or damaged after saving; copy it again or save the model again"
        )
    check_fits(cls, config, shapes, weights, f"the config in {meta_path.name}")
    model = cls(config)  # type: ignore[call-arg]
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise KinemaError(f"{weights}: cannot read the weights ({e}); the file is damaged or not safetensors") from None
    check_finite(state, weights)
    model.load_state_dict(state)
    return model.to(device)


def load_model(directory: str | os.PathLike, name: str = "model", *, device: str | torch.device = "cpu") -> nn.Module:
    """The registered model described by `{name}.json`, with `{name}.safetensors` loaded (see `load_weights`)."""
    meta, meta_path, weights = read_meta(directory, name)
    return load_weights(model_class(meta.get("kind", "")), meta, meta_path, weights, device)


# ---- checks of untrusted weights, before and after loading ------------------------------------------


SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
"""Bytes per element of each safetensors dtype."""
MAX_HEADER_BYTES = 100 << 20
"""safetensors' own limit on the JSON header."""


def read_header(source: str | os.PathLike | bytes, path: str | os.PathLike | None = None) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} from a safetensors file's header, reading no tensor data.

    source: the file, or its bytes (then `path` names it in errors). The header must be JSON whose tensors,
    by dtype and shape, fill the rest of the file exactly; otherwise a KinemaError names the file.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        where = Path(path) if path is not None else Path("<weights>")
        size, head = len(source), bytes(source[:8])
        count = int.from_bytes(head, "little") if len(head) == 8 else 0
        raw = bytes(source[8 : 8 + min(count, MAX_HEADER_BYTES)])
    else:
        where = Path(source)
        size = where.stat().st_size
        with open(where, "rb") as f:
            head = f.read(8)
            count = int.from_bytes(head, "little") if len(head) == 8 else 0
            raw = f.read(min(count, MAX_HEADER_BYTES))

    def damaged(why: str) -> KinemaError:
        return KinemaError(f"{where}: not a readable safetensors file: {why}; copy it again or save the model again")

    if len(head) < 8:
        raise damaged(f"{size} bytes, shorter than a header")
    if count > MAX_HEADER_BYTES or 8 + count > size:
        raise damaged(f"its header claims {count} bytes, the file holds {size}")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise damaged("its header is not JSON") from None
    if not isinstance(header, dict):
        raise damaged("its header is not a JSON object")
    shapes, spans = {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        span = entry.get("data_offsets") if isinstance(entry, dict) else None
        if dtype not in SAFETENSORS_ITEMSIZE or not _naturals(shape) or not _naturals(span, 2) or span[0] > span[1]:
            raise damaged(f"tensor {name!r} has no valid dtype, shape and data_offsets")
        nbytes = math.prod(shape) * SAFETENSORS_ITEMSIZE[dtype]
        if span[1] - span[0] != nbytes:
            given = span[1] - span[0]
            raise damaged(f"tensor {name!r} {dtype} {tuple(shape)} needs {nbytes} bytes, its offsets give {given}")
        shapes[name] = tuple(shape)
        spans.append(tuple(span))
    data_bytes, end = size - 8 - count, 0
    for start, stop in sorted(spans):
        if start != end:
            raise damaged("its tensors overlap or leave gaps")
        end = stop
    if end != data_bytes:
        raise damaged(f"its tensors take {end} bytes, the file holds {data_bytes} after the header (truncated?)")
    return shapes


def _naturals(value: Any, length: int | None = None) -> bool:
    """A JSON list of integers >= 0 (of `length` items when given)."""
    return (
        isinstance(value, list) and (length is None or len(value) == length)
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)
    )  # fmt: skip


class _TooBig(Exception):
    pass


class _Budget(TorchFunctionMode):
    """Stops a model's construction after `limit` torch calls (about 8 are made per parameter tensor)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.calls = limit, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.calls += 1
        if self.calls > self.limit:
            raise _TooBig
        return func(*args, **(kwargs or {}))


def check_fits(
    cls: type[nn.Module], config: Any, shapes: dict[str, tuple[int, ...]], path: str | os.PathLike, described: str
) -> None:
    """Raise KinemaError unless `cls(config)` has exactly the tensors `shapes` (a file's `read_header`).

    The model is built on the meta device (no memory is allocated, whatever the config asks for), and its
    construction is stopped when it makes far more tensors than the file holds. described: the config's
    source in the message, e.g. "the denoiser config in pipeline.json".
    """
    fix = "the config and the weights come from different models (the config was edited?); save the model again"
    budget = _Budget(64 * len(shapes) + 10_000)
    try:
        with torch.device("meta"), budget:
            own = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
    except _TooBig:
        raise KinemaError(
            f"{path}: the weights do not fit {described}: the config builds a model far larger than the "
            f"{len(shapes)} tensors ({_count(shapes.values())} parameters) in the file; {fix}"
        ) from None
    missing = sorted(set(own) - set(shapes))
    unexpected = sorted(set(shapes) - set(own))
    wrong = [f"{k} {shapes[k]} vs {own[k]}" for k in own if k in shapes and shapes[k] != own[k]]
    if missing or unexpected or wrong:
        parts = [
            f"{label} {items[:4]}{'...' if len(items) > 4 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape (file vs config)", wrong))
            if items
        ]
        raise KinemaError(
            f"{path}: the weights do not fit {described}: {'; '.join(parts)} (the config builds "
            f"{_count(own.values())} parameters, the file holds {_count(shapes.values())}); {fix}"
        )


def _count(shapes: Any) -> str:
    return f"{sum(math.prod(s) for s in shapes):,}"


def check_finite(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Raise KinemaError when a floating-point weight holds NaN or inf (such a model makes blank videos)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise KinemaError(
            f"{path}: {len(bad)} weight tensor(s) hold NaN or inf values (e.g. {bad[0]}), so every video it made "
            "would be blank: the training run diverged or the file was damaged; export the model again from an "
            "earlier checkpoint, or retrain"
        )
