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

A pipeline folder is untrusted input, and anyone can recompute its hashes, so loading also
checks, before any module is allocated: each component is one {role}.safetensors named inside
the folder whose hash is the one the model hash covers; the file's safetensors header fits its
size; the config, built on the meta device, has exactly the header's tensors (a config edited to
ask for 154 GB is refused, not allocated). The sampling defaults and the provenance, which the
hash does not cover, are type-checked (`kinema.config.from_dict`) and bounded, with errors that
name pipeline.json; every weight must be finite; a Hugging Face text encoder folder holds only
listed files and loads from safetensors alone.

Pipelines shipped inside the package live in `kinema/assets/pipelines/<name>/`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kinema import config as cfg
from kinema.errors import KinemaError
from kinema.models.checkpoint import (
    check_finite,
    check_fits,
    model_class,
    model_kind,
    read_header,
    save_weights,
    serialize,
    short_sha,
    weights_hash,
)

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


def model_hash(components: dict[str, dict[str, Any]], process: dict[str, Any]) -> str:
    """The pipeline's identity: each component's kind, config and weight hash, and the noise process."""
    identity = {
        role: {key: record.get(key) for key in ("kind", "config", "weights")} for role, record in components.items()
    }
    return short_sha(json.dumps({"components": identity, "process": process}, sort_keys=True).encode())


def component_record(module: nn.Module) -> dict[str, Any]:
    """kind, config and weight hash of a component in memory (an HF encoder: its model's weights)."""
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
    """{name}.safetensors and {name}.json, as `save_model` writes them (so `load_model(DIR, name)` reads a
    component alone); returns the component's record."""
    record = component_record(module)
    sha = save_weights(module, folder, name, {"kind": record["kind"], "config": record["config"]})
    return {**record, "files": {f"{name}.safetensors": sha}}


def _save_text_encoder(module: nn.Module, folder: Path) -> dict[str, Any]:
    from kinema.models.text import HFTextEncoder

    if not isinstance(module, HFTextEncoder):
        return {**_save_module(module, folder, "text_encoder"), "tokenizer": "bytes"}
    record = component_record(module)
    hf = folder / HF_FOLDER
    module.model.save_pretrained(hf, safe_serialization=True)
    module.tokenizer.save_pretrained(hf)
    files = {p.relative_to(folder).as_posix(): weights_hash(p) for p in sorted(hf.rglob("*")) if p.is_file()}
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
    if not isinstance(name_or_path, (str, os.PathLike)) or not isinstance(os.fspath(name_or_path), str):
        raise KinemaError(
            f"name_or_path must be a str or pathlib.Path, got {type(name_or_path).__name__}: the name of a shipped "
            "pipeline (e.g. 'shapes') or a directory written by Pipeline.save or `kinema train`"
        )
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


OUTSIDE_HASH = (
    "this part of {manifest} is not covered by the pipeline's hash (it was edited by hand or damaged): correct it "
    "there, or save the pipeline again"
)
HF_DTYPES = ("float32", "bfloat16", "float16")


def _bad(directory: Path, problem: str, *, outside_hash: bool = True) -> KinemaError:
    """An error about {directory}/pipeline.json; `outside_hash` says the value is not covered by its hash."""
    tail = OUTSIDE_HASH.format(manifest=MANIFEST) if outside_hash else "save the pipeline again"
    return KinemaError(f"{directory / MANIFEST}: {problem}; {tail}")


def _safe_name(name: Any) -> bool:
    """A file name inside the pipeline directory: relative, "/"-separated, with no '..' or empty parts."""
    if not isinstance(name, str) or not name or "\\" in name or name.startswith("/"):
        return False
    return all(part and part not in (".", "..") for part in name.split("/"))


def check_components(directory: Path, manifest: dict[str, Any]) -> None:
    """Each component record's kind, config and file list are well formed (before any file is read).

    A kinema component is one {role}.safetensors whose hash is the record's `weights` (which the model hash
    covers); a Hugging Face text encoder is the files of the text_encoder/ folder, every one listed.
    """
    components = manifest["components"]
    unknown = sorted(set(components) - set(ROLES))
    if unknown:
        raise _bad(directory, f"unknown component(s) {unknown}; a pipeline has {', '.join(ROLES)}", outside_hash=False)
    for role, record in components.items():
        kind = record.get("kind")
        if kind not in ROLES[role]:
            raise _bad(
                directory,
                f"component {role!r} has kind {kind!r}; a {role} is one of {', '.join(ROLES[role])}",
                outside_hash=False,
            )
        if not isinstance(record.get("config"), dict):
            raise _bad(
                directory, f"component {role!r} has no config object (got {_show(record.get('config'))})", outside_hash=False
            )
        files = record.get("files")
        if not isinstance(files, dict) or not files:
            raise _bad(directory, f"component {role!r} lists no files")
        for name, sha in files.items():
            if not _safe_name(name) or not isinstance(sha, str):
                raise _bad(
                    directory,
                    f"component {role!r} lists the file {name!r} with hash {_show(sha)}; files are named inside "
                    "the pipeline folder (no '..', no absolute paths), each with its sha256",
                )
        if kind == "hf":
            folder = record.get("folder", HF_FOLDER)
            if folder != HF_FOLDER:
                raise _bad(directory, f"the text encoder's folder is {folder!r}; a pipeline keeps it in {HF_FOLDER!r}")
            outside = [n for n in files if not n.startswith(f"{HF_FOLDER}/")]
            if outside:
                raise _bad(directory, f"the text encoder lists {outside[0]!r}, outside its folder {HF_FOLDER}/")
            if record.get("dtype", "float32") not in HF_DTYPES:
                raise _bad(
                    directory, f"the text encoder's dtype is {_show(record.get('dtype'))}; one of {', '.join(HF_DTYPES)}"
                )
            n = record["config"].get("max_length")
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise _bad(
                    directory,
                    f"components.text_encoder.config.max_length takes an integer >= 1 or null, got {_show(n)}",
                    outside_hash=False,
                )
            continue
        if len(files) != 1:
            raise _bad(
                directory,
                f"component {role!r} lists {len(files)} weight files ({', '.join(files)}); a {role} is one file, "
                f"{role}.safetensors",
            )
        ((name, sha),) = files.items()
        if "/" in name or not name.endswith(".safetensors"):
            raise _bad(
                directory, f"component {role!r} lists {name!r}; its weights are one .safetensors file, {role}.safetensors"
            )
        if sha != record.get("weights"):
            raise _bad(
                directory,
                f"component {role!r} lists {name} with hash {sha}, its weights hash (which the model hash covers) is "
                f"{_show(record.get('weights'))}",
            )


def _show(value: Any) -> str:

    return cfg.show(value)


def check_files(directory: Path, manifest: dict[str, Any]) -> dict[str, bytes]:
    """Every listed file exists and has its hash, and a text encoder folder holds no file that is not listed;
    returns the safetensors files' bytes (read once)."""
    missing, wrong, data = [], [], {}
    for role, record in manifest["components"].items():
        files = record["files"]
        for name, expected in files.items():
            path = directory / name
            if not path.is_file():
                missing.append(f"{name} ({role})")
                continue
            if name.endswith(".safetensors") and "/" not in name:
                data[name] = path.read_bytes()
                actual = short_sha(data[name])
            else:
                actual = weights_hash(path)
            if actual != expected:
                wrong.append(f"{name} (sha256 {actual}, {MANIFEST} says {expected})")
        if record.get("kind") == "hf" and (directory / HF_FOLDER).is_dir():
            present = [p.relative_to(directory).as_posix() for p in sorted((directory / HF_FOLDER).rglob("*"))]
            extra = [
                n for n in present
                if (directory / n).is_file() and n not in files and not any(part.startswith(".") for part in n.split("/"))
            ]  # fmt: skip
            if extra:
                raise KinemaError(
                    f"{directory}: {', '.join(extra[:3])} {'is' if len(extra) == 1 else 'are'} in the text encoder's "
                    f"folder but not listed in {MANIFEST}, so not checked; remove {'it' if len(extra) == 1 else 'them'}, "
                    "or save the pipeline again"
                )
    if missing:
        raise KinemaError(f"{directory}: missing component file(s) {', '.join(missing)}; copy the whole pipeline directory")
    if wrong:
        raise KinemaError(
            f"{directory}: hash mismatch for {'; '.join(wrong)}: the file was changed or damaged after saving; "
            "copy the pipeline directory again or save it again"
        )
    return data


def check_provenance(directory: Path, provenance: Any) -> dict[str, Any]:
    """pipeline.json's provenance (JSON data kept with the model), with the values kinema reads well formed."""
    if provenance is None:
        return {}

    def need(ok: bool, name: str, takes: str, value: Any) -> None:
        if not ok:
            raise _bad(directory, f"provenance{name} takes {takes}, got {_show(value)}")

    def table(value: Any, name: str) -> dict[str, Any]:
        need(value is None or isinstance(value, dict), name, "a JSON object or null", value)
        return value or {}

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1

    table(provenance, "")
    data = table(table(provenance.get("train_config"), ".train_config").get("data"), ".train_config.data")
    dataset = data.get("dataset")
    need(dataset is None or isinstance(dataset, str), ".train_config.data.dataset", "a string", dataset)
    two = table(table(provenance.get("quality"), ".quality").get("two_objects"), ".quality.two_objects")
    if two:
        ci = two.get("ci95")
        need(number(two.get("joint")), ".quality.two_objects.joint", "a number in [0, 1]", two.get("joint"))
        pair = isinstance(ci, list) and len(ci) == 2 and all(map(number, ci))
        need(pair, ".quality.two_objects.ci95", "[lo, hi] in [0, 1]", ci)
        n = two.get("n")
        need(isinstance(n, int) and not isinstance(n, bool) and n >= 0, ".quality.two_objects.n", "an integer >= 0", n)
        for key in ("split", "report"):
            need(isinstance(two.get(key), str), f".quality.two_objects.{key}", "a string", two.get(key))
    return provenance


def load_pipeline(name_or_path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> Pipeline:
    """The pipeline at a shipped name or directory, every file checked against pipeline.json first.

    Nothing is allocated before the weight files' hashes and sizes, and each component config's tensors
    (built on the meta device) against its file's safetensors header, are checked; the sampling defaults
    and the provenance, which the hash does not cover, are checked too, and every weight must be finite.
    """
    from kinema.diffusion import process_from_dict
    from kinema.pipelines.pipeline import Pipeline, SamplingSettings

    directory = resolve(name_or_path)
    manifest = read_manifest(directory)
    check_components(directory, manifest)
    try:
        settings = cfg.from_dict(SamplingSettings, manifest["sampling"], "sampling")
    except (ValueError, TypeError) as e:  # named as the field is in the file
        raise _bad(directory, str(e).replace("SamplingSettings.", "sampling.")) from None
    provenance = check_provenance(directory, manifest.get("provenance"))
    data = check_files(directory, manifest)
    components = manifest["components"]
    stated = manifest.get("hash")
    actual = model_hash(components, manifest["process"])
    if stated != actual:
        raise KinemaError(
            f"{directory / MANIFEST}: its hash {stated!r} does not match its components ({actual}); "
            "the file was edited by hand: save the pipeline again"
        )
    try:
        process = process_from_dict(manifest["process"])
    except (ValueError, TypeError) as e:
        raise KinemaError(f"{directory / MANIFEST}: {e}") from None
    kinema_roles = [role for role in ROLES if components[role]["kind"] != "hf"]
    configs = {}
    for role in kinema_roles:  # every config against its weights' header before any module is allocated
        record = components[role]
        cls = model_class(record["kind"])
        try:
            configs[role] = cfg.from_dict(cls.config_class, record["config"], f"components.{role}.config")
        except (ValueError, TypeError) as e:
            raise KinemaError(f"{directory / MANIFEST}: the {role} config is invalid: {e}") from None
        (name,) = record["files"]
        shapes = read_header(data[name], directory / name)
        check_fits(cls, configs[role], shapes, directory / name, f"the {role} config in {MANIFEST}")
    states = {role: _read_weights(directory, components[role], data) for role in kinema_roles}  # all finite first
    modules = {role: _build(components[role], configs[role], states.pop(role), device) for role in kinema_roles}
    if "text_encoder" not in modules:
        modules["text_encoder"] = _load_text_encoder(directory, components["text_encoder"], device=device)
    pipe = Pipeline(
        vae=modules["vae"],
        denoiser=modules["denoiser"],
        text_encoder=modules["text_encoder"],
        process=process,
        settings=settings,
        provenance=provenance,
        model_hash=actual,
    )
    _check_settings_fit(directory, pipe)
    return pipe


def _check_settings_fit(directory: Path, pipe: Pipeline) -> None:
    """The sampling defaults are a clip this model can make (frame count and size)."""
    from kinema.pipelines import common

    s = pipe.settings
    try:
        common.check_frames(pipe, s.num_frames, what="sampling.num_frames")
        try:
            common.check_size(pipe, s.height, s.width)
        except KinemaError as e:
            raise KinemaError(f"sampling.height, sampling.width: {e}") from None
    except KinemaError as e:
        raise _bad(directory, str(e)) from None


def _read_weights(directory: Path, record: dict[str, Any], data: dict[str, bytes]) -> dict[str, torch.Tensor]:
    """A component's tensors from its checked bytes, all of them finite."""
    from safetensors.torch import load


    (name,) = record["files"]
    try:
        state = load(data[name])
    except Exception as e:  # safetensors has its own error types for damaged data
        raise KinemaError(
            f"{directory / name}: cannot read the weights ({e}); the file is damaged or not safetensors"
        ) from None
    check_finite(state, directory / name)
    return state


def _build(record: dict[str, Any], config: Any, state: dict[str, torch.Tensor], device: str | torch.device) -> nn.Module:
    """The component's module, built now that its config and weights are known to fit."""

    model = model_class(record["kind"])(config)
    model.load_state_dict(state)  # names and shapes were checked against the config (check_fits)
    return model.to(device).eval()


def _load_text_encoder(directory: Path, record: dict[str, Any], *, device: str | torch.device):
    """The Hugging Face text encoder in DIR/text_encoder (a kinema text encoder is a component like the others)."""
    import torch

    from kinema.models.text import HFTextEncoder

    dtype = getattr(torch, str(record.get("dtype", "float32")))
    folder = directory / HF_FOLDER
    encoder = HFTextEncoder(folder, dtype=dtype, max_length=record["config"].get("max_length"))
    check_finite(encoder.model.state_dict(), folder)
    return encoder.to(device)


__all__ = ["FORMAT", "FORMAT_VERSION", "load_pipeline", "read_manifest", "resolve", "save_pipeline", "shipped_pipelines"]
