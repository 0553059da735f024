"""A pipeline as a directory: what is written, and how loading checks it.

    DIR/pipeline.json            format, every component's kind and config, the noise process,
                                 the sampling defaults, the training provenance, content hashes
    DIR/vae.safetensors          (+ vae.json: the same component record, so `load_model(DIR, "vae")`
    DIR/denoiser.safetensors      and `diffusion.vae_path=DIR` work on a pipeline directory too)
    DIR/text_encoder.safetensors the built-in text encoder; its tokenizer is UTF-8 bytes and needs no file
    DIR/text_encoder/            instead, for a Hugging Face encoder: its save_pretrained folder
                                 (config, weights, tokenizer files)

pipeline.json is the authority. Every file it lists carries a SHA-256 (the first 16 hex digits)
that loading checks before building anything; the model hash is a hash of the components'
kinds, configs and weight hashes and of the process, so two pipelines with the same hash make
the same videos. Loading names every problem: a missing file, a hash that does not match, a
config that does not fit its weights, an unknown shipped name (with the list of shipped ones).

Pipelines shipped inside the package live in `kinema/assets/pipelines/<name>/`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kinema.errors import KinemaError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from kinema.pipelines.pipeline import Pipeline

FORMAT = "kinema-pipeline"
FORMAT_VERSION = 1
MANIFEST = "pipeline.json"
HF_FOLDER = "text_encoder"
ROLES: dict[str, tuple[str, ...]] = {
    "vae": ("vae",),
    "denoiser": ("dit", "unet3d"),
    "text_encoder": ("text", "hf"),
}
"""Each component of a pipeline and the model kinds it may be (kinds of `kinema.models.checkpoint`, plus hf)."""
SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "pipelines"


def short_sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def model_hash(components: dict[str, dict[str, Any]], process: dict[str, Any]) -> str:
    """The pipeline's identity: each component's kind, config and weight hash, and the noise process."""
    identity = {
        role: {key: record.get(key) for key in ("kind", "config", "weights")} for role, record in components.items()
    }
    return short_sha(json.dumps({"components": identity, "process": process}, sort_keys=True).encode())


def serialize(module: nn.Module) -> bytes:
    """A module's weights as safetensors bytes (what `save` writes; hashing them gives the file's hash)."""
    from safetensors.torch import save

    from kinema.models.checkpoint import state_dict_for_saving

    return save(state_dict_for_saving(module))


def component_record(module: nn.Module) -> dict[str, Any]:
    """kind, config and weight hash of a component in memory (an HF encoder: its model's weights)."""
    from kinema import config as cfg
    from kinema.models.checkpoint import model_kind
    from kinema.models.text import HFTextEncoder

    if isinstance(module, HFTextEncoder):
        return {"kind": "hf", "config": {"max_length": module.max_length}, "weights": short_sha(serialize(module.model))}
    return {"kind": model_kind(module), "config": cfg.to_dict(module.config), "weights": short_sha(serialize(module))}


# ----------------------------------------------------------------------------------------------
# Saving


def save_pipeline(pipe: Pipeline, directory: str | os.PathLike[str]) -> Path:
    """Write `pipe` as a pipeline directory, atomically (built beside it, then renamed into place).

    An existing pipeline directory is replaced; a folder holding anything else is refused.
    """
    from kinema import config as cfg
    from kinema.diffusion import process_to_dict
    from kinema.video.paths import atomic_output

    target = Path(directory).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise KinemaError(f"{target} exists and is not a folder; save the pipeline to a new or empty folder")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST).is_file():
        raise KinemaError(
            f"{target} holds files and is not a pipeline directory; save to a new or empty folder "
            "(an existing pipeline directory is replaced as a whole)"
        )
    provenance = dict(pipe.provenance)
    try:
        json.dumps(provenance)
    except (TypeError, ValueError) as e:
        raise KinemaError(f"Pipeline.provenance must be JSON data (str, numbers, lists, dicts): {e}") from None

    with atomic_output(target) as tmp:
        tmp.mkdir()
        components = {
            "vae": _save_module(pipe.vae, tmp, "vae"),
            "denoiser": _save_module(pipe.denoiser, tmp, "denoiser"),
            "text_encoder": _save_text_encoder(pipe.text_encoder, tmp),
        }
        process = process_to_dict(pipe.process)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kinema_version": _kinema_version(),
            "hash": model_hash(components, process),
            "components": components,
            "process": process,
            "sampling": cfg.to_dict(pipe.settings),
            "provenance": provenance,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    pipe._hash = manifest["hash"]
    return target


def _save_module(module: nn.Module, folder: Path, name: str) -> dict[str, Any]:
    """{name}.safetensors and {name}.json (the `kinema.models.checkpoint` layout); returns the record."""
    record = component_record(module)
    data = serialize(module)
    (folder / f"{name}.safetensors").write_bytes(data)
    sha = short_sha(data)
    # The same record `save_model` writes, so `load_model(DIR, name)` reads a component alone.
    meta = {"kind": record["kind"], "config": record["config"], "sha256": sha}
    (folder / f"{name}.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return {**record, "files": {f"{name}.safetensors": sha}}


def _save_text_encoder(module: nn.Module, folder: Path) -> dict[str, Any]:
    from kinema.models.text import HFTextEncoder

    if not isinstance(module, HFTextEncoder):
        return {**_save_module(module, folder, "text_encoder"), "tokenizer": "bytes"}
    record = component_record(module)
    hf = folder / HF_FOLDER
    module.model.save_pretrained(hf, safe_serialization=True)
    module.tokenizer.save_pretrained(hf)
    files = {p.relative_to(folder).as_posix(): file_sha(p) for p in sorted(hf.rglob("*")) if p.is_file()}
    return {**record, "folder": HF_FOLDER, "dtype": str(module.model.dtype).removeprefix("torch."), "files": files}


def _kinema_version() -> str:
    import kinema

    return kinema.__version__


# ----------------------------------------------------------------------------------------------
# Finding a pipeline


def shipped_pipelines() -> list[str]:
    """Names of the pipelines shipped inside the package (folders of kinema/assets/pipelines with a pipeline.json)."""
    if not SHIPPED.is_dir():
        return []
    return sorted(p.name for p in SHIPPED.iterdir() if (p / MANIFEST).is_file())


def resolve(name_or_path: str | os.PathLike[str]) -> Path:
    """A shipped name (no slash) -> its folder in the package; anything else -> that directory."""
    text = os.fspath(name_or_path)
    shipped = shipped_pipelines()
    is_name = bool(text) and "/" not in text and os.sep not in text and not text.startswith((".", "~"))
    if is_name and text in shipped:
        return SHIPPED / text
    path = Path(text).expanduser()
    if path.is_dir():
        return path.absolute()
    if is_name:
        if not shipped:
            raise KinemaError(
                f"no pipeline named {text!r} is shipped yet; pass --model DIR (Pipeline.load(DIR)) with a pipeline "
                "directory, e.g. the DIR/pipeline folder of a `kinema train` run"
            )
        raise KinemaError(
            f"no pipeline named {text!r}; shipped pipelines: {', '.join(shipped)}; or pass a pipeline directory"
        )
    raise KinemaError(f"{path}: no such pipeline directory; pass a folder written by Pipeline.save or `kinema train`")


# ----------------------------------------------------------------------------------------------
# Loading


def read_manifest(directory: Path) -> dict[str, Any]:
    """pipeline.json of `directory`, checked for its format (not yet against the files)."""
    path = directory / MANIFEST
    if not path.is_file():
        found = ", ".join(sorted(p.name for p in directory.iterdir())[:6]) or "nothing"
        raise KinemaError(
            f"{directory} is not a kinema pipeline: no {MANIFEST} (found {found}); pass the folder written by "
            "Pipeline.save or the DIR/pipeline folder of a diffusion `kinema train` run"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KinemaError(f"{path}: not valid JSON ({e}); the file is damaged, save the pipeline again") from None
    if not isinstance(manifest, dict):
        raise KinemaError(f"{path}: expected a JSON object; the file is damaged, save the pipeline again")
    if manifest.get("kind") == "vae":
        raise KinemaError(
            f"{directory} holds a VAE only (from a `kinema train` vae run), not a pipeline that generates; "
            f"train a diffusion stage on it (diffusion.vae_path={directory}) and load that run's DIR/pipeline"
        )
    if manifest.get("format") != FORMAT:
        raise KinemaError(f"{path}: not a kinema pipeline manifest (format {manifest.get('format')!r}, expected {FORMAT!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise KinemaError(
            f"{path}: pipeline format version {version!r}; this kinema ({_kinema_version()}) reads version "
            f"{FORMAT_VERSION}: upgrade kinema, or save the pipeline again with this one"
        )
    missing = [key for key in ("components", "process", "sampling") if not isinstance(manifest.get(key), dict)]
    missing += [role for role in ROLES if not isinstance(manifest.get("components", {}).get(role), dict)]
    if missing:
        raise KinemaError(f"{path}: missing {', '.join(missing)}; the file is damaged, save the pipeline again")
    return manifest


def check_files(directory: Path, manifest: dict[str, Any]) -> dict[str, bytes]:
    """Every listed file exists and has its hash; returns the safetensors files' bytes (read once)."""
    missing, wrong, data = [], [], {}
    for role, record in manifest["components"].items():
        files = record.get("files")
        if not isinstance(files, dict) or not files:
            raise KinemaError(f"{directory / MANIFEST}: component {role!r} lists no files; save the pipeline again")
        for name, expected in files.items():
            path = directory / name
            if not path.is_file():
                missing.append(f"{name} ({role})")
                continue
            if name.endswith(".safetensors") and "/" not in name:
                data[name] = path.read_bytes()
                actual = short_sha(data[name])
            else:
                actual = file_sha(path)
            if actual != expected:
                wrong.append(f"{name} (sha256 {actual}, {MANIFEST} says {expected})")
    if missing:
        raise KinemaError(f"{directory}: missing component file(s) {', '.join(missing)}; copy the whole pipeline directory")
    if wrong:
        raise KinemaError(
            f"{directory}: hash mismatch for {'; '.join(wrong)}: the file was changed or damaged after saving; "
            "copy the pipeline directory again or save it again"
        )
    return data


def load_pipeline(name_or_path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> Pipeline:
    """The pipeline at a shipped name or directory, every file checked against pipeline.json first."""
    from kinema import config as cfg
    from kinema.diffusion import process_from_dict
    from kinema.pipelines.pipeline import Pipeline, SamplingSettings

    directory = resolve(name_or_path)
    manifest = read_manifest(directory)
    data = check_files(directory, manifest)
    components = manifest["components"]
    stated = manifest.get("hash")
    actual = model_hash(components, manifest["process"])
    if stated != actual:
        raise KinemaError(
            f"{directory / MANIFEST}: its hash {stated!r} does not match its components ({actual}); "
            "the file was edited by hand: save the pipeline again"
        )
    where = f"{directory / MANIFEST}"
    try:
        process = process_from_dict(manifest["process"])
        settings = cfg.from_dict(SamplingSettings, manifest["sampling"])
    except (ValueError, TypeError) as e:
        raise KinemaError(f"{where}: {e}") from None
    modules = {
        role: _load_component(directory, role, components[role], data, device=device) for role in ("vae", "denoiser")
    }
    text = _load_text_encoder(directory, components["text_encoder"], data, device=device)
    return Pipeline(
        vae=modules["vae"],
        denoiser=modules["denoiser"],
        text_encoder=text,
        process=process,
        settings=settings,
        provenance=manifest.get("provenance") or {},
        model_hash=actual,
    )


def _build(directory: Path, role: str, record: dict[str, Any]) -> nn.Module:
    from kinema import config as cfg
    from kinema.models.checkpoint import model_class

    kind = record.get("kind")
    if kind not in ROLES[role]:
        raise KinemaError(
            f"{directory / MANIFEST}: component {role!r} has kind {kind!r}; a {role} is one of {', '.join(ROLES[role])}"
        )
    cls = model_class(kind)
    try:
        return cls(cfg.from_dict(cls.config_class, record.get("config") or {}))
    except (ValueError, TypeError) as e:
        raise KinemaError(f"{directory / MANIFEST}: the {role} config is invalid: {e}") from None


def _load_component(
    directory: Path, role: str, record: dict[str, Any], data: dict[str, bytes], *, device: str | torch.device
) -> nn.Module:
    from safetensors.torch import load

    model = _build(directory, role, record)
    (name,) = record["files"]
    try:
        state = load(data[name])
    except Exception as e:  # safetensors has its own error types for damaged data
        raise KinemaError(
            f"{directory / name}: cannot read the weights ({e}); the file is damaged or not safetensors"
        ) from None
    _load_state(model, state, directory / name, role)
    return model.to(device).eval()


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path, role: str) -> None:
    """Strict load whose failure says which tensors are missing, unexpected or of another shape."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{label} {items[:4]}{'...' if len(items) > 4 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape (file vs config)", shapes))
            if items
        ]
        raise KinemaError(
            f"{path}: the weights do not fit the {role} config in {MANIFEST}: {'; '.join(parts)}; "
            "the config and the weights come from different models, save the pipeline again"
        )
    model.load_state_dict(state)


def _load_text_encoder(directory: Path, record: dict[str, Any], data: dict[str, bytes], *, device: str | torch.device):
    if record.get("kind") != "hf":
        return _load_component(directory, "text_encoder", record, data, device=device)
    import torch

    from kinema.models.text import HFTextEncoder

    dtype = getattr(torch, str(record.get("dtype", "float32")), None)
    if not isinstance(dtype, torch.dtype):
        raise KinemaError(f"{directory / MANIFEST}: text_encoder dtype {record.get('dtype')!r} is not a torch dtype")
    folder = directory / record.get("folder", HF_FOLDER)
    max_length = (record.get("config") or {}).get("max_length")
    return HFTextEncoder(folder, dtype=dtype, max_length=max_length).to(device)


__all__ = ["FORMAT", "FORMAT_VERSION", "load_pipeline", "read_manifest", "resolve", "save_pipeline", "shipped_pipelines"]
