"""Issue 31, configs and pipeline folders: every bad input is a one-line KinemaError naming the field or the file
and the fix (the CLI exits 2), never a traceback, a silent misreading or a huge allocation.

Table-driven: a new case is one line, the input and a regex of the message.
"""

import dataclasses
import json
import math
import shutil
import typing
from pathlib import Path

import pytest
import torch

from kinema import config as cfg
from kinema.errors import KinemaError
from kinema.models import checkpoint
from kinema.pipelines import storage
from kinema.pipelines.pipeline import Pipeline
from kinema.pipelines.presets import random_pipeline
from kinema.train.config import TrainConfig, override, parse_value
from kinema.train.presets import load_config

BASE = 'preset = "shapes-dit-debug"\n'

# ---------------------------------------------------------------------------------------------- Part A: configs

# (TOML after `preset = "shapes-dit-debug"`, message regex): one type of field each, as a config file gives it
FILE_CASES = [
    ('deterministic = "no"', r"invalid training config: deterministic takes true or false, got \"no\"$"),
    ("deterministic = 0", r"deterministic takes true or false, got 0$"),
    ('[log]\nprogress = "false"', r"log.progress takes true or false, got \"false\"$"),
    ("[log]\nevery = 1.5", r"log.every takes an integer, got 1.5$"),
    ("[data]\nbatch_size = 2.0", r"data.batch_size takes an integer, got 2.0$"),
    ("steps = true", r"steps takes an integer, got true$"),
    ('seed = "0"', r"seed takes an integer, got \"0\"$"),
    ("[optim]\nlr = inf", r"optim.lr takes a finite number, got Infinity$"),
    ("[optim]\nlr = nan", r"optim.lr takes a finite number, got NaN$"),
    ('[optim]\nlr = "1e-4"', r"optim.lr takes a finite number, got \"1e-4\"$"),
    ("[optim]\nlr = true", r"optim.lr takes a finite number, got true$"),
    ('optim = "adam"', r"optim takes a table \(a JSON object\) of OptimConfig fields, got \"adam\"$"),
    ("optim = [1, 2]", r"optim takes a table \(a JSON object\) of OptimConfig fields, got \[1, 2\]$"),
    ("dit = 3", r"dit takes a table \(a JSON object\) of DiTConfig fields or null, got 3$"),
    ("[optim]\nbetas = [0.9]", r"optim.betas takes a list of 2 items, each a finite number, got \[0.9\]$"),
    ('[optim]\nbetas = [0.9, "x"]', r"optim.betas takes a list of 2 items, each a finite number, got \[0.9, \"x\"\]$"),
    ("[dit]\npatch_size = [1, 2.0, 2]", r"dit.patch_size takes a list of 3 items, each an integer, got \[1, 2.0, 2\]$"),
    ('[sample]\nprompts = "a red circle"', r"sample.prompts takes a list, each item a string, got \"a red circle\"$"),
    ("[sample]\nprompts = [1]", r"sample.prompts takes a list, each item a string, got \[1\]$"),
    ("[data]\nfps = true", r"data.fps takes a finite number or null, got true$"),
    ("[data]\nlength = 2.5", r"data.length takes an integer or null, got 2.5$"),
    ("[data]\ndataset = 5", r"data.dataset takes a string, got 5$"),
    ("[sample]\nguidance_interval = [0.3, nan]", r"sample.guidance_interval takes a list of 2 items, each a number \(finite, or inf\), or null"),
    ("[sample]\nguidance_interval = [0.3, inf]", r"sample.guidance_interval \[0.3, inf\]: sigma_hi must be finite, as the run's config is saved as JSON"),
    ('[diffusion.flow]\ntraining_sigmas = "normal"', r"diffusion.flow.training_sigmas takes one of \"uniform\", \"logit_normal\", got \"normal\"$"),
    ('[optim]\nschedule = "linear"', r"optim.schedule must be one of \('cosine', 'constant'\), got 'linear'$"),
    ("[optim]\nlrr = 1", r"optim: unknown field\(s\) \['lrr'\]; valid fields: \[.*'lr'"),
]  # fmt: skip

# (TOML after the preset line, what the config then holds): values of the right type are taken as before
FILE_ACCEPTS = [
    ("[data]\nfps = 8", lambda c: c.data.fps == 8.0 and isinstance(c.data.fps, float)),
    ("[optim]\nlr = 1", lambda c: c.optim.lr == 1.0 and isinstance(c.optim.lr, float)),
    ("[data]\nlength = 12", lambda c: c.data.length == 12),
    ("[sample]\nguidance_interval = [0, inf]", lambda c: c.sample.guidance_interval is None),
    ("[sample]\nguidance_interval = [0.3, 1]", lambda c: c.sample.guidance_interval == (0.3, 1.0)),
    ("[dit]\npatch_size = [1, 1, 1]", lambda c: c.dit.patch_size == (1, 1, 1)),
    ("deterministic = true\n[log]\nprogress = false", lambda c: c.deterministic is True and c.log.progress is False),
]

# (--set KEY=VALUE as typed, message regex): the same checker as the files'
SET_CASES = [
    ("optim.lr=Infinity", r"^--set optim.lr=Infinity: optim.lr takes a finite number, got Infinity$"),
    ("optim.lr=NaN", r"^--set optim.lr=NaN: optim.lr takes a finite number, got NaN$"),
    ("optim.lr=-Infinity", r"optim.lr takes a finite number, got -Infinity$"),
    ("deterministic=no", r"^--set deterministic=\"no\": deterministic takes true or false, got \"no\"$"),
    ("log.every=1.5", r"log.every takes an integer, got 1.5$"),
    ("data.batch_size=2.0", r"data.batch_size takes an integer, got 2.0$"),
    ("optim.betas=[0.9]", r"optim.betas takes a list of 2 items, each a finite number, got \[0.9\]$"),
    ('optim={"lr": "x"}', r"^--set optim=\{\"lr\": \"x\"\}: optim.lr takes a finite number, got \"x\"$"),
    ('optim={"lr": -1}', r"optim.lr must be > 0, got -1.0$"),
    ("optim=adam", r"optim takes a table \(a JSON object\) of OptimConfig fields, got \"adam\"$"),
    ("data.fps=1e400", r"data.fps takes a finite number or null, got Infinity$"),
    ("optim.learning_rate=1", r"'optim.learning_rate' is not a field of optim"),
]


@pytest.mark.parametrize("toml, message", FILE_CASES, ids=[c[0].replace("\n", " ") for c in FILE_CASES])
def test_config_file_values_are_type_checked(toml, message, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(f"{BASE}{toml}\n")
    with pytest.raises(KinemaError, match=message) as info:
        load_config(str(path))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("toml, holds", FILE_ACCEPTS, ids=[c[0].replace("\n", " ") for c in FILE_ACCEPTS])
def test_config_file_values_of_the_right_type_are_taken(toml, holds, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(f"{BASE}{toml}\n")
    assert holds(load_config(str(path)))


@pytest.mark.parametrize("item, message", SET_CASES, ids=[c[0] for c in SET_CASES])
def test_set_values_are_checked_by_the_same_checker(item, message):
    key, _, value = item.partition("=")
    with pytest.raises(KinemaError, match=message) as info:
        load_config("shapes-dit-debug", {key: parse_value(value)})
    assert "\n" not in str(info.value)


def test_a_json_config_file_is_checked_like_toml(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"preset": "shapes-dit-debug", "optim": [1, 2], "log": {"every": 1.5}}))
    with pytest.raises(KinemaError, match=r"optim takes a table \(a JSON object\) of OptimConfig fields, got \[1, 2\]"):
        load_config(str(path))
    path.write_text('{"preset": "shapes-dit-debug", "optim": {"lr": Infinity}}')
    with pytest.raises(KinemaError, match="optim.lr takes a finite number, got Infinity"):
        load_config(str(path))
    path.write_text("[1, 2]")
    with pytest.raises(KinemaError, match=r"config.json: a config is a table of fields \(a JSON object\), got list$"):
        load_config(str(path))
    path.write_text('{"steps": 1.5}')  # the file is named in the message
    with pytest.raises(KinemaError, match=r"config.json: invalid training config: steps takes an integer, got 1.5$"):
        load_config(str(path))


def test_a_saved_config_loads_back_unchanged(tmp_path):
    config = override(load_config("shapes-dit-debug"), {"sample.guidance_interval": [0.25, 1], "data.fps": 6})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict(config), allow_nan=False))
    assert load_config(str(path)) == config


# one line per type: (annotation, JSON value, message regex or None when taken)
CHECKER_CASES = [
    (bool, True, None), (bool, "true", r"^x takes true or false, got \"true\"$"), (bool, 1, "true or false"),
    (int, 3, None), (int, 3.0, r"^x takes an integer, got 3.0$"), (int, False, "an integer"),
    (float, 2, None), (float, math.inf, r"^x takes a finite number, got Infinity$"), (float, 10**400, "a finite number"),
    (str, "a", None), (str, None, r"^x takes a string, got null$"),
    (tuple[int, ...], [1, 2, 3], None), (tuple[int, ...], (1, "2"), "a list, each item an integer"),
    (tuple[float, float], [1, 2], None), (tuple[float, float], [1, 2, 3], "a list of 2 items"),
    (int | None, None, None), (int | None, "1", r"^x takes an integer or null, got \"1\"$"),
]  # fmt: skip


@pytest.mark.parametrize("hint, value, message", CHECKER_CASES)
def test_check_value_per_type(hint, value, message):
    if message is None:
        assert cfg.check_value(hint, value, "x") == (tuple(value) if isinstance(value, list) else value)
    else:
        with pytest.raises(TypeError, match=message):
            cfg.check_value(hint, value, "x")


def test_every_field_of_the_training_config_has_a_type_the_checker_knows():
    def walk(cls, prefix=""):
        for name, hint in typing.get_type_hints(cls).items():
            arms = typing.get_args(hint) if typing.get_origin(hint) not in (tuple, typing.Literal) else ()
            for arm in arms or (hint,):
                if dataclasses.is_dataclass(arm):
                    yield from walk(arm, f"{prefix}{name}.")
                else:
                    yield f"{prefix}{name}", arm

    for name, hint in walk(TrainConfig):
        assert hint in (bool, int, float, str, type(None)) or typing.get_origin(hint) in (tuple, typing.Literal), name


def test_the_cli_exits_2_with_one_line(tmp_path, capsys):
    from kinema.cli import main

    path = tmp_path / "run.toml"
    path.write_text(f'{BASE}deterministic = "no"\n')
    for argv in ([str(path)], ["shapes-dit-debug", "--set", "optim.lr=Infinity"]):
        with pytest.raises(SystemExit) as info:
            main(["train", *argv, "--out", str(tmp_path / "run"), "--dry-run"])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


# ---------------------------------------------------------------------------------------------- Part B: pipelines


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return random_pipeline("tiny", seed=0).save(tmp_path_factory.mktemp("pipe") / "pipe")


def _rehash(d: Path, m: dict) -> None:
    """What a tamperer does: recompute the model hash so that pipeline.json looks consistent."""
    m["hash"] = storage.model_hash(m["components"], m["process"])


def _file(role: str, change):
    """Rewrite {role}.safetensors as change(its bytes), and every hash that names it (as a tamperer would)."""

    def tamper(d: Path, m: dict) -> None:
        path = d / f"{role}.safetensors"
        data = change(path.read_bytes())
        path.write_bytes(data)
        sha = checkpoint.short_sha(data)
        m["components"][role].update(files={path.name: sha}, weights=sha)
        _rehash(d, m)

    return tamper


def _nan(data: bytes) -> bytes:
    """The same weights with one value NaN."""
    from safetensors.torch import load, save

    state = load(data)
    next(iter(state.values())).view(-1)[0] = float("nan")
    return save(state)


def _config(role: str, **values):
    def tamper(d, m):
        m["components"][role]["config"].update(values)
        _rehash(d, m)

    return tamper


def _set(section: str, **values):
    return lambda d, m: m[section].update(values)


def _two_files(d, m):
    shutil.copy(d / "vae.safetensors", d / "vae2.safetensors")
    m["components"]["vae"]["files"]["vae2.safetensors"] = m["components"]["vae"]["weights"]


# (name, tamper(dir, manifest), message regex): what an untrusted or damaged folder can hold
PIPELINE_CASES = [
    ("provenance train_config", _set("provenance", train_config=5), r"pipeline.json: provenance.train_config takes a JSON object or null, got 5; this part of pipeline.json is not covered by the pipeline's hash"),
    ("provenance list", lambda d, m: m.update(provenance=[1]), r"pipeline.json: provenance takes a JSON object or null, got \[1\]"),
    ("provenance data", _set("provenance", train_config={"data": "shapes"}), r"provenance.train_config.data takes a JSON object or null"),
    ("provenance quality", _set("provenance", quality={"two_objects": {"joint": 2}}), r"provenance.quality.two_objects.joint takes a number in \[0, 1\], got 2"),
    ("num_frames huge", _set("sampling", num_frames=100001), r"pipeline.json: sampling.num_frames must be at most 1025 as a pipeline's default, got 100001; this part of pipeline.json is not covered"),
    ("num_frames not made", _set("sampling", num_frames=10), r"pipeline.json: sampling.num_frames=10 cannot be made: this model makes 1 \+ 4k frames; use 9 or 13"),
    ("height not made", _set("sampling", height=17), r"pipeline.json: sampling.height, sampling.width: size 17x16 \(HxW\) cannot be made"),
    ("fps inf", _set("sampling", fps=math.inf), r"pipeline.json: sampling.fps takes a finite number, got Infinity; this part of pipeline.json"),
    ("guidance inf", _set("sampling", guidance=math.inf), r"pipeline.json: sampling.guidance takes a finite number, got Infinity"),
    ("steps string", _set("sampling", steps="10"), r"pipeline.json: sampling.steps takes an integer, got \"10\""),
    ("sampler unknown", _set("sampling", sampler="magic"), r"pipeline.json: sampling.sampler must be one of"),
    ("two weight files", _two_files, r"pipeline.json: component 'vae' lists 2 weight files \(vae.safetensors, vae2.safetensors\); a vae is one file, vae.safetensors"),
    ("file outside", lambda d, m: m["components"]["vae"].update(files={"../vae.safetensors": m["components"]["vae"]["weights"]}), r"lists the file '../vae.safetensors'.*inside the pipeline folder"),
    ("file not the weights", lambda d, m: m["components"]["vae"]["files"].update({"vae.safetensors": "0" * 16}), r"component 'vae' lists vae.safetensors with hash 0{16}, its weights hash .* is \"\w{16}\""),
    ("kind", lambda d, m: m["components"]["denoiser"].update(kind="vae"), r"component 'denoiser' has kind 'vae'; a denoiser is one of dit, unet3d"),
    ("config type", _config("vae", base_channels=8.0), r"pipeline.json: the vae config is invalid: components.vae.config.base_channels takes an integer, got 8.0$"),
    ("config wider", _config("denoiser", dim=100000), r"denoiser.safetensors: the weights do not fit the denoiser config in pipeline.json: shape \(file vs config\) \['patch_embed.weight \(64, 9, 1, 2, 2\) vs \(100000, 9, 1, 2, 2\)'.*the config builds 240,068,300,272 parameters, the file holds 142,288"),
    ("config deeper", _config("denoiser", num_layers=1_000_000), r"denoiser.safetensors: the weights do not fit the denoiser config in pipeline.json: the config builds a model far larger than the 57 tensors \(142,288 parameters\)"),
    ("config text", _config("text_encoder", depth=3), r"text_encoder.safetensors: the weights do not fit the text_encoder config in pipeline.json: missing \['blocks.1"),
    ("nan weights", _file("denoiser", _nan), r"denoiser.safetensors: 1 weight tensor\(s\) hold NaN or inf values \(e.g. [\w.]+\), so every video it made would be blank"),
    ("truncated", _file("vae", lambda b: b[:-100]), r"vae.safetensors: not a readable safetensors file: its tensors take \d+ bytes, the file holds \d+ after the header"),
    ("not safetensors", _file("vae", lambda b: b"\x08" + b"\0" * 7 + b"not json"), r"vae.safetensors: not a readable safetensors file: its header is not JSON"),
    ("huge header", _file("vae", lambda b: (1 << 60).to_bytes(8, "little") + b[8:]), r"vae.safetensors: not a readable safetensors file: its header claims \d+ bytes"),
]  # fmt: skip


@pytest.mark.parametrize("name, tamper, message", PIPELINE_CASES, ids=[c[0] for c in PIPELINE_CASES])
def test_a_tampered_pipeline_folder_is_refused_with_one_line(name, tamper, message, saved, tmp_path, monkeypatch):
    folder = tmp_path / "copy"
    shutil.copytree(saved, folder)
    manifest = json.loads((folder / "pipeline.json").read_text())
    tamper(folder, manifest)
    (folder / "pipeline.json").write_text(json.dumps(manifest))

    built = []  # no module is allocated before the weights are checked: any model built is on the meta device
    real = torch.nn.Module.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        built.append(torch.empty(0).device.type)

    monkeypatch.setattr(torch.nn.Module, "__init__", spy)
    with pytest.raises(KinemaError, match=message) as info:
        Pipeline.load(folder)
    assert "\n" not in str(info.value)
    if name not in ("num_frames not made", "height not made"):  # those need the model, checked once it is loaded
        assert set(built) <= {"meta"}, built


def test_the_untampered_copy_loads(saved, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(saved, folder)
    manifest = json.loads((folder / "pipeline.json").read_text())
    manifest["sampling"]["guidance_interval"] = [0.3, math.inf]  # a pipeline may guide from 0.3 up: inf is allowed here
    manifest["provenance"]["quality"] = {"two_objects": {"joint": 0.5, "ci95": [0.4, 0.6], "n": 64, "split": "train", "report": "r.json"}}
    (folder / "pipeline.json").write_text(json.dumps(manifest))
    pipe = Pipeline.load(folder)
    assert pipe.settings.guidance_interval == (0.3, math.inf) and pipe.provenance["quality"]["two_objects"]["n"] == 64


def test_generate_on_a_tampered_folder_exits_2_naming_the_file(saved, tmp_path, capsys):
    from kinema.cli import main

    folder = tmp_path / "copy"
    shutil.copytree(saved, folder)
    manifest = json.loads((folder / "pipeline.json").read_text())
    manifest["sampling"]["fps"] = math.inf
    (folder / "pipeline.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit) as info:
        main(["generate", "a red circle moving right", "--model", str(folder), "--out", str(tmp_path / "o.mp4"), "--quiet"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{folder / 'pipeline.json'}: sampling.fps takes a finite number" in err


# (change to DIR/vae.json of a saved component, message regex): `load_model` (diffusion.vae_path) checks the same way
LOAD_MODEL_CASES = [
    ({"config": {"num_res_blocks": 2}}, r"vae.safetensors: the weights do not fit the config in vae.json: missing"),
    ({"config": {"base_channels": "8"}}, r"vae.json: the vae config is invalid: config.base_channels takes an integer"),
    ({"sha256": "0" * 16}, r"vae.safetensors: hash mismatch \(sha256 \w{16}, vae.json says '0{16}'\)"),
]


@pytest.mark.parametrize("change, message", LOAD_MODEL_CASES)
def test_load_model_checks_before_building(change, message, saved, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(saved, folder)
    meta = json.loads((folder / "vae.json").read_text())
    meta["config"].update(change.pop("config", {}))
    meta.update(change)
    (folder / "vae.json").write_text(json.dumps(meta))
    with pytest.raises(KinemaError, match=message):
        checkpoint.load_model(folder, "vae")


# ---------------------------------------------------------------------------------------------- Hugging Face folders


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory) -> Path:
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("t5")
    config = transformers.T5Config(
        vocab_size=8, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )  # fmt: skip
    transformers.T5EncoderModel(config).save_pretrained(folder)
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", "a", "red", "circle"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>").save_pretrained(folder)
    return folder


def _as_pickle(folder: Path) -> None:
    """The same weights as pytorch_model.bin (a pickle) instead of model.safetensors; transformers 5 writes
    safetensors whatever save_pretrained is told, so the .bin is written the way older versions did."""
    from safetensors.torch import load_file

    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


def test_an_hf_folder_with_pickled_weights_is_refused(t5_folder, tmp_path):
    from kinema.models.text import HFTextEncoder

    folder = tmp_path / "t5"
    shutil.copytree(t5_folder, folder)
    assert HFTextEncoder(folder).dim == 32
    _as_pickle(folder)
    with pytest.raises(KinemaError, match=r"no .safetensors weights, only pytorch_model.bin \(a pickle, which kinema never loads\)"):
        HFTextEncoder(folder)


def test_a_pipeline_text_encoder_folder_with_pickled_weights_is_refused(t5_folder, saved, tmp_path):
    from kinema.models.text import HFTextEncoder

    tiny = Pipeline.load(saved)
    pipe = Pipeline(vae=tiny.vae, denoiser=tiny.denoiser, text_encoder=HFTextEncoder(t5_folder), process=tiny.process, settings=tiny.settings)
    path = pipe.save(tmp_path / "pipe")
    extra = path / "text_encoder" / "pytorch_model.bin"  # an unlisted file in the folder: not checked, so refused
    torch.save({}, extra)
    with pytest.raises(KinemaError, match=r"text_encoder/pytorch_model.bin is in the text encoder's folder but not listed in pipeline.json"):
        Pipeline.load(path)
    extra.unlink()
    _as_pickle(path / "text_encoder")  # and listed with its hash, as a tamperer would
    manifest = json.loads((path / "pipeline.json").read_text())
    files = manifest["components"]["text_encoder"]["files"]
    del files["text_encoder/model.safetensors"]
    files["text_encoder/pytorch_model.bin"] = checkpoint.weights_hash(path / "text_encoder" / "pytorch_model.bin")
    (path / "pipeline.json").write_text(json.dumps(manifest))
    with pytest.raises(KinemaError, match=r"no .safetensors weights, only pytorch_model.bin"):
        Pipeline.load(path)
