"""Save and load any kinema model as safetensors weights plus a JSON config.

A model class is registered here with its config class; `load_model` only ever
builds registered classes (no arbitrary imports) and never unpickles.

    save_model(model, "out/", "denoiser")   ->  out/denoiser.safetensors, out/denoiser.json
    model = load_model("out/", "denoiser")
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kinema import config as cfg
from kinema.atomic import atomic_write, write_json
from kinema.errors import KinemaError

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


def weights_hash(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def save_model(model: nn.Module, directory: str | os.PathLike, name: str = "model", *, extra: dict[str, Any] | None = None) -> Path:
    """Write `{name}.safetensors` and `{name}.json` (kind, config, hash) atomically into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / f"{name}.safetensors"
    atomic_write(weights, lambda tmp: save_file(state_dict_for_saving(model), tmp))
    meta = {"kind": model_kind(model), "config": cfg.to_dict(model.config), "sha256": weights_hash(weights), **(extra or {})}
    write_json(directory / f"{name}.json", meta)
    return weights


def load_model(directory: str | os.PathLike, name: str = "model", *, device: str | torch.device = "cpu") -> nn.Module:
    """Build the model described by `{name}.json` and load `{name}.safetensors` into it, strictly."""
    directory = Path(directory)
    meta_path, weights = directory / f"{name}.json", directory / f"{name}.safetensors"
    for p in (meta_path, weights):
        if not p.is_file():
            raise KinemaError(f"{p}: missing; a saved model needs both {name}.json and {name}.safetensors")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise KinemaError(f"{meta_path}: not valid JSON ({e})") from None
    cls = model_class(meta.get("kind", ""))
    model = cls(cfg.from_dict(cls.config_class, meta["config"]))
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise KinemaError(f"{weights}: cannot read the weights ({e}); the file is damaged or not safetensors") from None
    expected = model.state_dict()
    wrong = [k for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise KinemaError(
            f"{weights}: weights do not match the config in {meta_path.name}: "
            f"{len(wrong)} tensor(s) of the wrong shape, e.g. {wrong[0]} {tuple(state[wrong[0]].shape)} "
            f"where the config builds {tuple(expected[wrong[0]].shape)}"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise KinemaError(
            f"{weights}: weights do not match the config in {meta_path.name}: "
            f"missing {sorted(missing)[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {sorted(unexpected)[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    return model.to(device)
