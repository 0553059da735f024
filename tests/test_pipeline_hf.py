"""A pipeline whose text encoder is a local Hugging Face T5: saved with its tokenizer files, hashed, loaded."""

import json

import numpy as np
import pytest
import torch

from kinema.errors import KinemaError
from kinema.pipelines.pipeline import Pipeline
from kinema.pipelines.presets import random_pipeline

WORDS = "a red blue circle square moving left right up down".split()


@pytest.fixture(scope="module")
def hf_pipe(tmp_path_factory) -> Pipeline:
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from kinema.models.text import HFTextEncoder

    folder = tmp_path_factory.mktemp("t5")
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=3 + len(WORDS), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    transformers.T5EncoderModel(config).save_pretrained(folder)
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])  # as T5: "" is one token
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")
    fast.save_pretrained(folder)
    tiny = random_pipeline("tiny", seed=0)  # text_dim 32, as the T5 above
    return Pipeline(vae=tiny.vae, denoiser=tiny.denoiser, text_encoder=HFTextEncoder(folder), process=tiny.process, settings=tiny.settings)


def test_hf_text_encoder_pipeline_round_trip(hf_pipe, tmp_path):
    before = hf_pipe.generate("a red circle moving right", seed=0, num_inference_steps=1)
    path = hf_pipe.save(tmp_path / "pipe")
    record = json.loads((path / "pipeline.json").read_text())["components"]["text_encoder"]
    assert record["kind"] == "hf" and record["folder"] == "text_encoder"
    assert "text_encoder/tokenizer.json" in record["files"] and "text_encoder/model.safetensors" in record["files"]

    loaded = Pipeline.load(path)
    assert loaded.model_hash == hf_pipe.model_hash
    after = loaded.generate("a red circle moving right", seed=0, num_inference_steps=1)
    assert np.array_equal(before.frames, after.frames)

    tokenizer = path / "text_encoder" / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"red"', '"rod"'))
    with pytest.raises(KinemaError, match="hash mismatch for text_encoder/tokenizer.json"):
        Pipeline.load(path)
